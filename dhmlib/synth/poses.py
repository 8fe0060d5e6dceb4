"""Pose sequences of the virtual capture: joint Euler angles and wrist motion over time.

A sequence is a short take of one gesture (fist, point, pinch, spread, OK, free
natural motion, range of motion): keyframes in degrees per joint, eased into
each other (zero velocity at every key, so the hand "holds" the gesture), with
a smooth low-amplitude wobble on every degree of freedom, clipped to the
natural range of :mod:`dhmlib.hand.anatomy` (where the gestures, ranges and random
poses live). The wrist (root) moves rigidly: a base orientation that points
the fingers up (world +z), a per-sequence turn about the vertical, and a slow
smooth sway of rotation and translation.

Angles follow :mod:`dhmlib.hand.kinematics`: radians, per joint ``(x, y, z)``,
flexion about local z (positive bends toward the palm; for the thumb, across
the palm); ``y`` is abduction (for a finger, positive moves it toward the
pinky), ``x`` twist. Euler angles are relative to the hand model's bind pose,
which is already a relaxed, slightly curled hand.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhmlib.hand.anatomy import GESTURES, gesture_euler, natural_range, pose_degrees, random_plausible_pose
from dhmlib.hand.skeleton import FINGERS, Skeleton


# --------------------------------------------------------------------------- keys
def keyframe_euler(pose: str | dict, skeleton: Skeleton) -> np.ndarray:
    """A gesture of :data:`dhmlib.hand.anatomy.GESTURES` or a ``{short name: (x, y, z) degrees}`` dict → (J, 3) radians."""
    if isinstance(pose, str):
        return gesture_euler(pose, skeleton)
    return np.deg2rad(pose_degrees(pose, skeleton, what="keyframe"))


def _rom_keys(skeleton: Skeleton) -> list[np.ndarray]:
    """Range of motion: each finger alone to full flexion, spread, fist, open, a thumb circle."""
    keys = [keyframe_euler("open", skeleton)]
    for f in FINGERS[1:]:
        spec = dict(GESTURES["open"])
        spec.update({f + "1": (0, 0, 88), f + "2": (0, 0, 105), f + "3": (0, 0, 70)})
        keys += [keyframe_euler(spec, skeleton), keyframe_euler("open", skeleton)]
    keys += [keyframe_euler("spread", skeleton), keyframe_euler("fist", skeleton)]
    for a in np.linspace(0, 2 * np.pi, 5)[:-1]:  # thumb circle: abduction/flexion
        keys.append(keyframe_euler({"thumb1": (0, 22 * np.cos(a), 15 + 35 * np.sin(a)),
                                    "thumb2": (0, 0, 15 + 20 * np.sin(a))}, skeleton))
    keys.append(keyframe_euler("open", skeleton))
    return keys


# --------------------------------------------------------------------------- time curves
def ease_keys(keys: np.ndarray, num_frames: int) -> np.ndarray:
    """Ease through K keyframes over T frames: cosine easing between evenly spaced keys.

    Args:
        keys: (K, ...) values at the keys (K ≥ 1).
        num_frames: T.
    Returns:
        (T, ...) values; C¹-smooth with zero velocity at every key.
    """
    keys = np.asarray(keys, dtype=float)
    K = len(keys)
    if K == 1 or num_frames == 1:
        return np.repeat(keys[:1], num_frames, axis=0)
    s = np.linspace(0.0, K - 1, num_frames)
    i = np.minimum(np.floor(s).astype(int), K - 2)
    a = (1 - np.cos(np.pi * (s - i))) / 2
    a = a.reshape((-1,) + (1,) * (keys.ndim - 1))
    return keys[i] * (1 - a) + keys[i + 1] * a


def smooth_noise(num_frames: int, shape: tuple, amplitude: float, rng: np.random.Generator,
                 period_frames: tuple[float, float] = (15.0, 60.0), waves: int = 3) -> np.ndarray:
    """Band-limited wobble: a sum of ``waves`` sinusoids per element, random periods and phases.

    Returns:
        (T, *shape) with standard deviation ≈ ``amplitude``.
    """
    t = np.arange(num_frames, dtype=float).reshape((-1,) + (1,) * (len(shape) + 1))
    freq = 1.0 / rng.uniform(*period_frames, size=(1,) + tuple(shape) + (waves,))
    phase = rng.uniform(0, 2 * np.pi, size=(1,) + tuple(shape) + (waves,))
    return amplitude * np.sqrt(2.0 / waves) * np.sin(2 * np.pi * freq * t + phase).sum(-1)


def axis_angle_to_matrix(r: np.ndarray) -> np.ndarray:
    """Rodrigues: (..., 3) axis·angle (radians) → (..., 3, 3)."""
    th = np.linalg.norm(r, axis=-1, keepdims=True)
    k = r / np.maximum(th, 1e-12)
    K = np.zeros(r.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2], K[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    K[..., 1, 0], K[..., 2, 0], K[..., 2, 1] = k[..., 2], -k[..., 1], k[..., 0]
    th = th[..., None]
    return np.eye(3) + np.sin(th) * K + (1 - np.cos(th)) * (K @ K)


#: model → world base orientation (columns are the model axes in the world): fingers (model +x)
#: up (world +z), palm (model +y) toward world −x, thumb side (model +z) toward world −y.
BASE_ROTATION = np.array([[0.0, -1.0, 0.0],
                          [0.0, 0.0, -1.0],
                          [1.0, 0.0, 0.0]])


def wrist_motion(num_frames: int, rng: np.random.Generator, yaw: float = 0.0, sway_deg: float = 6.0,
                 twist_deg: float = 20.0, shift_mm: float = 8.0) -> np.ndarray:
    """Rigid wrist placement per frame: ``[R | t]`` mapping the hand model frame to the world (mm).

    ``R = R_sway(t) @ Rz(yaw) @ BASE_ROTATION``; the sway tilts by about ``sway_deg`` about the
    horizontal axes and ``twist_deg`` about the vertical; the wrist moves by about ``shift_mm``
    around the world origin.

    Returns:
        (T, 4, 4) float64.
    """
    rot = smooth_noise(num_frames, (3,), 1.0, rng, (40.0, 120.0), waves=2)
    rot = rot * np.deg2rad(np.array([sway_deg, sway_deg, twist_deg]))
    yaw_m = axis_angle_to_matrix(np.array([0.0, 0.0, yaw]))
    R = axis_angle_to_matrix(rot) @ yaw_m @ BASE_ROTATION
    out = np.tile(np.eye(4), (num_frames, 1, 1))
    out[:, :3, :3] = R
    out[:, :3, 3] = smooth_noise(num_frames, (3,), shift_mm, rng, (40.0, 120.0), waves=2)
    return out


# --------------------------------------------------------------------------- sequences
@dataclass(frozen=True)
class PoseSequence:
    """One take.

    Attributes:
        name: gesture name (``fist``, ``point``, ``pinch``, ``spread``, ``ok``, ``free``, ``ROM_fingers``).
        euler: (T, J, 3) joint Euler angles, radians (DoF-masked, within
            :func:`dhmlib.hand.anatomy.natural_range`).
        root: (T, 4, 4) wrist placement, model frame → world, mm.
    """

    name: str
    euler: np.ndarray
    root: np.ndarray

    @property
    def num_frames(self) -> int:
        return len(self.euler)


#: the takes in capture order; the last is a range-of-motion take (excluded from training)
SEQUENCE_KINDS = ("fist", "point", "pinch", "spread", "ok", "free", "ROM_fingers")
#: captures of at least this many frames give the free take (the default held-out take)
#: FREE_TAKE_SHARE of the frames with a new random natural pose every FREE_FRAMES_PER_KEY frames
#: (200 frames: 64 frames, 13 random poses); smaller captures split the frames evenly
FREE_TAKE_MIN_CAPTURE = 100
FREE_TAKE_SHARE = 0.32
FREE_FRAMES_PER_KEY = 5.0


def plan_sequences(num_frames: int) -> list[tuple[str, int]]:
    """Split ``num_frames`` over the takes of :data:`SEQUENCE_KINDS` (ROM kept whenever T ≥ 2).

    Returns:
        ``[(kind, frames)]`` with frames summing to ``num_frames``, each ≥ 1.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: expected at least 1, got {num_frames}")
    n = len(SEQUENCE_KINDS)
    kinds = list(SEQUENCE_KINDS) if num_frames >= n else (
        list(SEQUENCE_KINDS[:num_frames - 1]) + [SEQUENCE_KINDS[-1]] if num_frames > 1 else [SEQUENCE_KINDS[0]])
    if num_frames >= FREE_TAKE_MIN_CAPTURE:
        # the held-out take must test generalisation: many distinct poses (a third of the frames,
        # a key every FREE_FRAMES_PER_KEY frames), not two or three
        free = int(round(FREE_TAKE_SHARE * num_frames))
        others = [k for k in kinds if k != "free"]
        base, extra = divmod(num_frames - free, len(others))
        sizes = {k: base + (i < extra) for i, k in enumerate(others)}
        sizes["free"] = free
        return [(k, sizes[k]) for k in kinds]
    base, extra = divmod(num_frames, len(kinds))
    return [(k, base + (i < extra)) for i, k in enumerate(kinds)]


def make_sequence(kind: str, num_frames: int, skeleton: Skeleton, rng: np.random.Generator,
                  frames_per_key: float = 12.0, wobble_deg: float = 2.0) -> np.ndarray:
    """Euler angles of one take: (T, J, 3) radians, within :func:`dhmlib.hand.anatomy.natural_range`.

    Gesture takes go relaxed → gesture → relaxed → gesture … (each repetition of the gesture
    jittered by a few degrees, a key every ``frames_per_key`` frames); ``free`` strings random
    natural poses; ``ROM_*`` runs the range-of-motion script at the same pace (a short take plays
    only its beginning: 200 frames cover open, index, open, middle).
    """
    lo, hi = natural_range(skeleton)
    mask = skeleton.dof_mask()
    jitter = lambda: rng.normal(0.0, np.deg2rad(4.0), size=lo.shape) * mask  # noqa: E731
    n_keys = max(2, int(round(num_frames / frames_per_key)) + 1)
    if kind.startswith("ROM"):  # the script at the same pace; a short take plays its beginning only
        keys = _rom_keys(skeleton)[:n_keys]
    elif kind == "free":
        if num_frames >= FREE_TAKE_SHARE * FREE_TAKE_MIN_CAPTURE:
            n_keys = max(2, int(round(num_frames / FREE_FRAMES_PER_KEY)) + 1)
        keys = [keyframe_euler("relaxed", skeleton)] + [random_plausible_pose(skeleton, rng) for _ in range(n_keys - 1)]
    elif kind in GESTURES:
        rest, target = keyframe_euler("relaxed", skeleton), keyframe_euler(kind, skeleton)
        keys = [rest + (target - rest) * (k % 2) + jitter() * (k > 0) for k in range(n_keys)]
    else:
        raise ValueError(f"unknown sequence kind {kind!r}; expected 'free', a ROM_* name or a gesture "
                         f"({', '.join(GESTURES)})")
    e = ease_keys(np.stack(keys), num_frames)
    e = e + smooth_noise(num_frames, lo.shape, np.deg2rad(wobble_deg), rng) * mask
    return np.clip(e, lo, hi)


def generate_sequences(skeleton: Skeleton, num_frames: int, seed: int) -> list[PoseSequence]:
    """All takes of one subject, ``num_frames`` frames in total; deterministic in ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x504F5345]))  # 'POSE'
    out = []
    for i, (kind, T) in enumerate(plan_sequences(num_frames)):
        euler = make_sequence(kind, T, skeleton, rng)
        yaw = rng.uniform(-np.pi, np.pi)
        out.append(PoseSequence(kind, euler, wrist_motion(T, rng, yaw=yaw)))
    return out


def subject_sequences(skeleton: Skeleton, num_frames: int, seed: int, subject: int) -> list[PoseSequence]:
    """The takes of ``subject_<subject>`` (1-based) in the capture of master ``seed`` (what ``dhm synth`` writes)."""
    return generate_sequences(skeleton, num_frames, seed=int(seed) * 7919 + int(subject))
