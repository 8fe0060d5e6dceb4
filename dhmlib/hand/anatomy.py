"""The hand's anatomy in one table: joint ranges, named gestures, random plausible poses.

Used by the virtual capture (:mod:`dhmlib.synth.poses`), the posing widget
(:mod:`dhmlib.viz.posing`), ``dhm demo`` and the renderer's test scenes.

Joints (short names of :mod:`dhmlib.hand.skeleton`; see its diagram for the order)::

    finger  index/middle/ring/pinky  1 = MCP (knuckle), 2 = PIP, 3 = DIP, _null = fingertip end
    thumb   thumb0 = carpal base (trapezium; carries the thenar pad), thumb1 = CMC (moves the
            metacarpal), thumb2 = MCP, thumb3 = IP, thumb_null = thumb tip end
    wrist   the root: no Euler angles, placed by the global rotation/translation

Axes: Euler angles per joint ``(x, y, z)`` in the joint's local frame (x along the bone toward
its child, ``R = Rz·Ry·Rx``):

- ``x`` twist about the bone;
- ``y`` spread (ab-/adduction; positive moves a finger's tip toward the little-finger side);
- ``z`` flex: positive bends toward the palm (the thumb: across the palm), negative hyper-extends.

*1 joints and thumb0 have all three axes, *2/*3 flex only, ``_null`` and the wrist none
(:meth:`~dhmlib.hand.skeleton.Skeleton.dof_mask`). Angles are relative to the hand model's bind pose,
which is already a relaxed, slightly curled hand.

Two ranges, both degrees per short joint name and axis:

- :data:`JOINT_LIMITS_DEG`, the **range of motion**: generous active ranges of an adult hand,
  what the widget's sliders and ``dhm demo`` allow;
- :data:`NATURAL_RANGE_DEG`, the **natural range** inside it: where the virtual capture draws
  its random poses from and clips its takes to (a test asserts it lies inside the range of
  motion, so every captured frame can be shown by the widget).

:data:`GESTURES` maps a name to ``{short joint: degrees}``: a number is flexion (z), a 3-tuple
``(x, y, z)``; joints not named stay at 0 (the bind pose).
"""
from __future__ import annotations

import numpy as np

from dhmlib.hand.skeleton import FINGERS, Skeleton, official_skeleton

AXES = ("x", "y", "z")
AXIS_LABELS = {"x": "twist", "y": "spread", "z": "flex"}

# --------------------------------------------------------------------------- ranges (degrees)
_FINGER_ROM = {
    "1": {"x": (-15.0, 15.0), "y": (-25.0, 25.0), "z": (-30.0, 95.0)},   # MCP
    "2": {"z": (-5.0, 110.0)},                                           # PIP
    "3": {"z": (-10.0, 80.0)},                                           # DIP
}
_THUMB_ROM = {
    "thumb0": {"x": (-40.0, 40.0), "y": (-40.0, 40.0), "z": (-30.0, 60.0)},  # carpal base
    "thumb1": {"x": (-20.0, 20.0), "y": (-30.0, 30.0), "z": (-25.0, 70.0)},  # CMC
    "thumb2": {"z": (-15.0, 80.0)},                                          # MCP
    "thumb3": {"z": (-20.0, 90.0)},                                          # IP
}
_FINGER_NATURAL = {
    "1": {"x": (-8.0, 8.0), "y": (-25.0, 25.0), "z": (-20.0, 95.0)},
    "2": {"z": (-5.0, 110.0)},
    "3": {"z": (-8.0, 80.0)},
}
_THUMB_NATURAL = {
    "thumb0": {"x": (-15.0, 15.0), "y": (-20.0, 20.0), "z": (-15.0, 25.0)},
    "thumb1": {"x": (-20.0, 20.0), "y": (-30.0, 30.0), "z": (-25.0, 60.0)},
    "thumb2": {"z": (-15.0, 60.0)},
    "thumb3": {"z": (-20.0, 80.0)},
}


def _per_joint(thumb: dict, finger: dict) -> dict[str, dict[str, tuple[float, float]]]:
    return {**{k: dict(v) for k, v in thumb.items()},
            **{f + k: dict(v) for f in FINGERS[1:] for k, v in finger.items()}}


#: Range of motion, degrees per short joint name and axis: ``JOINT_LIMITS_DEG["index1"]["z"] == (-30, 95)``.
#: Only the axes a joint has are listed.
JOINT_LIMITS_DEG: dict[str, dict[str, tuple[float, float]]] = _per_joint(_THUMB_ROM, _FINGER_ROM)

#: Natural range (inside :data:`JOINT_LIMITS_DEG`): the virtual capture's random poses and clipping.
NATURAL_RANGE_DEG: dict[str, dict[str, tuple[float, float]]] = _per_joint(_THUMB_NATURAL, _FINGER_NATURAL)

#: Range of motion of a DoF of a joint the table does not know (a non-official skeleton); such a
#: joint's natural range is [0, 0]: random poses leave it at its bind pose.
FALLBACK_LIMIT_DEG = (-90.0, 90.0)


def _range_deg(skeleton: Skeleton, table: dict, fallback: tuple[float, float]) -> np.ndarray:
    mask = skeleton.dof_mask()
    out = np.zeros((skeleton.num_joints, 3, 2))
    for j, name in enumerate(skeleton.short_names):
        known = table.get(name, {})
        for a, axis in enumerate(AXES):
            if mask[j, a]:
                out[j, a] = known.get(axis, fallback)
    return out


def joint_limits_deg(skeleton: Skeleton) -> np.ndarray:
    """Range of motion: (J, 3, 2) float64 ``[lo, hi]`` degrees; ``[0, 0]`` where the joint has no DoF."""
    return _range_deg(skeleton, JOINT_LIMITS_DEG, FALLBACK_LIMIT_DEG)


def natural_range_deg(skeleton: Skeleton) -> np.ndarray:
    """Natural range: (J, 3, 2) float64 ``[lo, hi]`` degrees; ``[0, 0]`` where no DoF (or unknown joint)."""
    return _range_deg(skeleton, NATURAL_RANGE_DEG, (0.0, 0.0))


def natural_range(skeleton: Skeleton) -> tuple[np.ndarray, np.ndarray]:
    """Natural range in radians: ``lo, hi`` each (J, 3); 0 on axes a joint does not have."""
    r = np.deg2rad(natural_range_deg(skeleton))
    return r[..., 0], r[..., 1]


def within_limits(euler_deg: np.ndarray, skeleton: Skeleton, atol: float = 1e-9) -> np.ndarray:
    """(J, 3) bool: whether each angle (degrees) lies in the range of motion (no-DoF axes must be 0).

    ``euler_deg`` may carry leading batch axes (..., J, 3).
    """
    lim = joint_limits_deg(skeleton)
    e = np.asarray(euler_deg, dtype=np.float64)
    return (e >= lim[..., 0] - atol) & (e <= lim[..., 1] + atol)


def clamp_to_limits(euler_deg: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """(..., J, 3) degrees clipped into the range of motion (axes without DoF become 0)."""
    lim = joint_limits_deg(skeleton)
    return np.clip(np.asarray(euler_deg, dtype=np.float64), lim[..., 0], lim[..., 1])


# --------------------------------------------------------------------------- gestures (degrees)
def _fingers(values: dict, fingers=FINGERS[1:]) -> dict:
    """``{"1": (x, y, z), "2": z, "3": z}`` applied to several fingers."""
    return {f + s: v for f in fingers for s, v in values.items()}


_RELAXED = {**_fingers({"1": (0, 0, 12), "2": 18, "3": 10}), "thumb1": (0, 0, 8), "thumb2": (0, 0, 8)}
_OPEN = {**_fingers({"1": (0, 0, -4), "2": -5, "3": -4}), "thumb1": (0, 0, -10)}
_FIST = {**_fingers({"1": (0, 0, 85), "2": 100, "3": 62}), "pinky1": (0, 6, 90),
         "thumb0": (0, 0, 12), "thumb1": (0, 8, 30), "thumb2": (0, 0, 35), "thumb3": (0, 0, 40)}

#: Named gestures: ``{name: {short joint: flex degrees or (x, y, z) degrees}}``, joints not named at 0.
#: ``relaxed`` … ``ok`` shape the virtual capture's takes (changing them changes the capture);
#: ``rest`` is the bind pose; ``thumbs_up`` is for the widget and ``dhm demo``.
GESTURES: dict[str, dict[str, float | tuple[float, float, float]]] = {
    "rest": {},
    "relaxed": _RELAXED,
    "open": _OPEN,
    "fist": _FIST,
    "point": {**_FIST, **_fingers({"1": (0, 0, 2), "2": 3, "3": 2}, ("index",)),
              "thumb1": (0, 5, 25), "thumb2": (0, 0, 30), "thumb3": (0, 0, 35)},
    "pinch": {**_fingers({"1": (0, 0, 22), "2": 30, "3": 15}, ("middle", "ring", "pinky")),
              "ring1": (0, 4, 28), "pinky1": (0, 8, 34),
              "index1": (0, 0, 42), "index2": (0, 0, 45), "index3": (0, 0, 22),
              "thumb0": (0, 0, 16), "thumb1": (0, -8, 28), "thumb2": (0, 0, 22), "thumb3": (0, 0, 14)},
    "spread": {**_fingers({"1": (0, 0, -6), "2": -4, "3": -4}),
               "index1": (0, -20, -6), "middle1": (0, -4, -6), "ring1": (0, 12, -6), "pinky1": (0, 24, -6),
               "thumb0": (0, 0, -10), "thumb1": (0, -15, -20), "thumb2": (0, 0, -10)},
    "ok": {**_fingers({"1": (0, 0, 8), "2": 10, "3": 6}, ("middle", "ring", "pinky")),
           "middle1": (0, -3, 8), "ring1": (0, 6, 12), "pinky1": (0, 12, 16),
           "index1": (0, 0, 48), "index2": (0, 0, 58), "index3": (0, 0, 35),
           "thumb0": (0, 0, 18), "thumb1": (0, -5, 35), "thumb2": (0, 0, 26), "thumb3": (0, 0, 22)},
    "thumbs_up": {**_fingers({"1": (0, 0, 80), "2": 100, "3": 60}),
                  "thumb0": (0, -20, -20), "thumb1": (0, 0, -10), "thumb2": 0, "thumb3": -5},
}


def gesture_names() -> tuple[str, ...]:
    return tuple(GESTURES)


def pose_degrees(spec: dict, skeleton: Skeleton, what: str = "pose") -> np.ndarray:
    """``{short joint: flex degrees or (x, y, z) degrees}`` → (J, 3) float64 degrees (others 0).

    Raises ``KeyError`` for a joint the skeleton lacks and ``ValueError`` for a malformed value
    or an axis the joint does not have; ``what`` names the spec in the message.
    """
    out = np.zeros((skeleton.num_joints, 3))
    mask = skeleton.dof_mask()
    for joint, value in spec.items():
        try:
            j = skeleton.index(joint)
        except KeyError as e:
            raise KeyError(f"{what}: {e.args[0]}") from None
        v = np.array([0.0, 0.0, float(value)]) if np.isscalar(value) else np.asarray(value, dtype=np.float64)
        if v.shape != (3,):
            raise ValueError(f"{what}, joint {joint!r}: expected a number or (x, y, z) degrees, got {value!r}")
        bad = (v != 0) & ~mask[j]
        if bad.any():
            axes = ", ".join(AXES[a] for a in np.nonzero(bad)[0])
            raise ValueError(f"{what} rotates {joint!r} about {axes}, which the joint does not have")
        out[j] = v
    return out


def gesture_degrees(name: str, skeleton: Skeleton) -> np.ndarray:
    """(J, 3) float64 Euler angles in **degrees** of gesture ``name`` (see :func:`pose_degrees`).

    Raises ``KeyError`` listing the known gestures for an unknown name.
    """
    if name not in GESTURES:
        raise KeyError(f"unknown gesture {name!r}; known gestures: {', '.join(GESTURES)}")
    return pose_degrees(GESTURES[name], skeleton, what=f"gesture {name!r}")


def gesture_euler(name: str, skeleton: Skeleton) -> np.ndarray:
    """(J, 3) float64 Euler angles in **radians** of gesture ``name`` (the model's unit)."""
    return np.deg2rad(gesture_degrees(name, skeleton))


# --------------------------------------------------------------------------- random poses
def random_plausible_pose(skeleton: Skeleton, rng: np.random.Generator, batch: int | None = None,
                          dip_follows_pip: float = 0.65) -> np.ndarray:
    """A random natural pose: (J, 3) radians, or (batch, J, 3) from ``batch`` draws in a row.

    Each DoF uniform in the inner part (10 … 75 %) of its natural range
    (:func:`natural_range`), then each finger's DIP flexion set to ``dip_follows_pip`` × its
    PIP flexion plus N(0, 0.08 rad), clipped to its range (DIP follows PIP in real fingers).
    This is the virtual capture's ``free`` take: its draws (``rng`` call order) are part of the
    capture's bytes.
    """
    if batch is not None:
        return np.stack([random_plausible_pose(skeleton, rng, None, dip_follows_pip) for _ in range(batch)])
    lo, hi = natural_range(skeleton)
    u = rng.uniform(0.1, 0.75, size=lo.shape)
    e = lo + u * (hi - lo)
    for f in FINGERS[1:]:
        pip, dip = skeleton.index(f + "2"), skeleton.index(f + "3")
        e[dip, 2] = np.clip(dip_follows_pip * e[pip, 2] + rng.normal(0, 0.08), lo[dip, 2], hi[dip, 2])
    return e


# --------------------------------------------------------------------------- help text
_FINGER_PART = {"1": "MCP (knuckle): moves the proximal phalanx", "2": "PIP: moves the middle phalanx",
                "3": "DIP: moves the distal phalanx", "_null": "fingertip end (no rotation)"}
_THUMB_PART = {"thumb0": "carpal base (trapezium): moves the thumb and thenar pad",
               "thumb1": "CMC: moves the thumb metacarpal", "thumb2": "MCP: moves the proximal phalanx",
               "thumb3": "IP: moves the distal phalanx", "thumb_null": "thumb tip end (no rotation)"}


def joint_description(short: str) -> str:
    """What a joint is anatomically (``index1`` → ``MCP (knuckle): ...``); ``""`` if unknown."""
    if short in _THUMB_PART:
        return _THUMB_PART[short]
    if short == "wrist":
        return "root: no Euler angles (use the global rotation)"
    for f in FINGERS[1:]:
        if short.startswith(f) and short[len(f):] in _FINGER_PART:
            return _FINGER_PART[short[len(f):]]
    return ""


def describe_joints(skeleton: Skeleton | None = None) -> str:
    """Text for ``dhm demo --help``: the axes, then each joint (skeleton order), its axes and range.

    Default skeleton: the official 22-joint tree.
    """
    sk = official_skeleton() if skeleton is None else skeleton
    lim = joint_limits_deg(sk)
    mask = sk.dof_mask()
    lines = ["axes (degrees, relative to the bind pose, in the joint's own frame):",
             "  x = twist about the bone, y = spread (+ toward the little finger),",
             "  z = flex (+ toward the palm, the thumb across it; - hyper-extends)",
             "fingers: 1 = MCP (knuckle), 2 = PIP, 3 = DIP, _null = fingertip end (no rotation)",
             "thumb: thumb0 = carpal base, thumb1 = CMC, thumb2 = MCP, thumb3 = IP, thumb_null = tip end",
             "joints in skeleton order, with their axes and range of motion:"]
    width = max(len(s) for s in sk.short_names)
    for j, short in enumerate(sk.short_names):
        axes = " ".join(f"{AXES[a]} {lim[j, a, 0]:g}..{lim[j, a, 1]:g}" for a in range(3) if mask[j, a]) or "-"
        lines.append(f"  {short:<{width}}  {axes:<30}  {joint_description(short)}".rstrip())
    return "\n".join(lines)
