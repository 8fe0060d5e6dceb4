"""Keypoint files: ``annotations/keypoints/subject_N/keypoints<frame:04d>.pts``.

One line per point, ``idx x y z score num_views`` (mm, world frame).  Indices
0–20 are the right hand in the order of :data:`KEYPOINT_NAMES`, 21–41 the left
hand.  The official skeleton's ``thumb0`` has no keypoint: it is mapped by
name and marked invalid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dhmlib.hand.skeleton import FINGERS, Skeleton, short_name

#: right-hand keypoint names in file order (short joint names)
KEYPOINT_NAMES = tuple(
    ["thumb_null", "thumb3", "thumb2", "thumb1"]
    + [f + s for f in FINGERS[1:] for s in ("_null", "3", "2", "1")]
    + ["wrist"])
NUM_RIGHT = 21
NUM_POINTS = 42


class KeypointFileError(ValueError):
    """A malformed keypoint file; the message names file and line."""


def read_keypoints(path) -> np.ndarray:
    """Read a ``.pts`` file → (42, 5) float64 array of ``x y z score num_views`` by index.

    Indices the file does not list are rows of NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: keypoint file not found")
    out = np.full((NUM_POINTS, 5), np.nan)
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh, 1):
            tok = line.split()
            if not tok or tok[0].startswith("#"):
                continue
            if len(tok) != 6:
                raise KeypointFileError(f"{path}:{n}: expected 6 columns 'idx x y z score num_views', "
                                        f"got {len(tok)}")
            try:
                idx = int(tok[0])
                vals = [float(t) for t in tok[1:]]
            except ValueError:
                raise KeypointFileError(f"{path}:{n}: expected numbers, got {line.strip()!r}") from None
            if not 0 <= idx < NUM_POINTS:
                raise KeypointFileError(f"{path}:{n}: index {idx} out of range, expected 0..{NUM_POINTS - 1}")
            out[idx] = vals
    return out


def write_keypoints(path, right_xyz: np.ndarray, score=None, num_views=None) -> Path:
    """Write 21 right-hand points (mm) in file order; the left hand is written as zeros."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    right_xyz = np.asarray(right_xyz, dtype=np.float64).reshape(NUM_RIGHT, 3)
    score = np.ones(NUM_RIGHT) if score is None else np.asarray(score, dtype=np.float64)
    num_views = np.zeros(NUM_RIGHT, dtype=int) if num_views is None else np.asarray(num_views, dtype=int)
    lines = [f"{i} {x!r} {y!r} {z!r} {s!r} {int(v)}" for i, ((x, y, z), s, v)
             in enumerate(zip(right_xyz.tolist(), score.tolist(), num_views.tolist()))]
    lines += [f"{i} 0.0 0.0 0.0 0.0 0" for i in range(NUM_RIGHT, NUM_POINTS)]
    path.write_text("\n".join(lines) + "\n")
    return path


def keypoints_to_joints(points: np.ndarray, skeleton: Skeleton, min_score: float | None = None):
    """Map file rows onto the skeleton's joints by name.

    A point is valid when the file lists it (as the original code has it); with
    ``min_score`` also only when its score is above that.

    Args:
        points: (42, 5) from :func:`read_keypoints`.
    Returns:
        joints (J, 3) mm (0 where invalid), valid (J,) float (0 for thumb0, unlisted points,
        and scores ≤ ``min_score``).
    """
    J = skeleton.num_joints
    joints, valid = np.zeros((J, 3)), np.zeros(J)
    for j, name in enumerate(skeleton.names):
        s = short_name(name)
        if s in KEYPOINT_NAMES:
            row = points[KEYPOINT_NAMES.index(s)]
            ok = bool(np.isfinite(row).all()) and (min_score is None or row[3] > min_score)
            if ok:
                joints[j] = row[:3]
            valid[j] = float(ok)
    return joints, valid


def joints_to_keypoints(joints: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """(J, 3) skeleton joints → (21, 3) right-hand keypoints in file order."""
    return np.stack([joints[skeleton.index(n)] for n in KEYPOINT_NAMES])
