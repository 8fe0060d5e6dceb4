"""Statistics of a capture: joint angles from 3D keypoints, depth-map values."""
from __future__ import annotations

import numpy as np

from dhmlib.hand.skeleton import Skeleton


def bone_angles(joints: np.ndarray, valid: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """Bend angle at each joint between its incoming and outgoing bone, degrees.

    Works on keypoints alone (real data has no Euler angles): 0° for a
    straight finger, larger when flexed.  NaN where a joint has no single
    child, no parent, or an invalid neighbour.

    Args:
        joints: (N, J, 3) mm.  valid: (N, J).
    Returns:
        (N, J) degrees.
    """
    J = skeleton.num_joints
    parent = np.array(skeleton.parents)
    child = np.full(J, -1)
    for j in range(J):
        ch = skeleton.children(j)
        if len(ch) == 1:
            child[j] = ch[0]
    ok_joint = (parent >= 0) & (child >= 0)
    p, c = np.where(ok_joint, parent, 0), np.where(ok_joint, child, 0)
    a = joints - joints[:, p]                       # incoming bone (N, J, 3)
    b = joints[:, c] - joints                       # outgoing bone
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-9)
    ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    ok = ok_joint[None] & (valid > 0) & (valid[:, p] > 0) & (valid[:, c] > 0)
    return np.where(ok, ang, np.nan)


def depth_summary(depths: np.ndarray) -> dict:
    """Coverage and value range of depth maps (…, H, W) in mm (0 = no surface)."""
    d = np.asarray(depths)
    fg = d[d > 0]
    return {"maps": int(np.prod(d.shape[:-2])) if d.ndim > 2 else 1,
            "coverage": float((d > 0).mean()),
            "min_mm": float(fg.min()) if fg.size else float("nan"),
            "median_mm": float(np.median(fg)) if fg.size else float("nan"),
            "max_mm": float(fg.max()) if fg.size else float("nan")}
