"""Anatomical joint limits for posing, in degrees.

Axes follow the model's Euler convention (local frame of each joint, finger
bones along local x, palm normal along local y):

- ``x``: twist about the bone,
- ``y``: spread (ab-/adduction; positive moves the tip toward the little-finger side),
- ``z``: flexion (positive bends toward the palm, negative hyper-extends).

Values are generous ranges of active motion for an adult hand (finger MCP
flexion to 90°, PIP to 110°, DIP to 80°, thumb CMC and MCP smaller), chosen for
a posing UI rather than as a biomechanical model.  Only the axes a joint has
(:meth:`dhmlib.skeleton.Skeleton.dof_mask`) are listed.
"""
from __future__ import annotations

import numpy as np

from ..skeleton import FINGERS, Skeleton

AXES = ("x", "y", "z")
AXIS_LABELS = {"x": "twist", "y": "spread", "z": "flex"}

# per joint class: axis -> (lo, hi) degrees
_FINGER = {
    "1": {"x": (-15.0, 15.0), "y": (-25.0, 25.0), "z": (-30.0, 90.0)},   # MCP
    "2": {"z": (-5.0, 110.0)},                                           # PIP
    "3": {"z": (-10.0, 80.0)},                                           # DIP
}
_THUMB = {
    "thumb0": {"x": (-40.0, 40.0), "y": (-40.0, 40.0), "z": (-30.0, 60.0)},  # CMC
    "thumb1": {"x": (-20.0, 20.0), "y": (-25.0, 25.0), "z": (-20.0, 70.0)},  # MCP
    "thumb2": {"z": (-15.0, 80.0)},
    "thumb3": {"z": (-20.0, 90.0)},
}

#: Limits in degrees per short joint name and axis: ``JOINT_LIMITS_DEG["index1"]["z"] == (-30, 90)``.
JOINT_LIMITS_DEG: dict[str, dict[str, tuple[float, float]]] = {
    **_THUMB,
    **{f + k: dict(v) for f in FINGERS[1:] for k, v in _FINGER.items()},
}

#: Range used for a DoF of a joint the table does not know (a non-official skeleton).
FALLBACK_LIMIT_DEG = (-90.0, 90.0)


def joint_limits_deg(skeleton: Skeleton) -> np.ndarray:
    """(J, 3, 2) float64 ``[lo, hi]`` degrees per joint and axis; ``[0, 0]`` where the joint has no DoF."""
    mask = skeleton.dof_mask()
    out = np.zeros((skeleton.num_joints, 3, 2))
    for j, name in enumerate(skeleton.short_names):
        table = JOINT_LIMITS_DEG.get(name, {})
        for a, axis in enumerate(AXES):
            if mask[j, a]:
                out[j, a] = table.get(axis, FALLBACK_LIMIT_DEG)
    return out


def within_limits(euler_deg: np.ndarray, skeleton: Skeleton, atol: float = 1e-9) -> np.ndarray:
    """(J, 3) bool: whether each angle (degrees) lies within its limit (axes without DoF must be 0)."""
    lim = joint_limits_deg(skeleton)
    e = np.asarray(euler_deg, dtype=np.float64)
    return (e >= lim[..., 0] - atol) & (e <= lim[..., 1] + atol)


def clamp_to_limits(euler_deg: np.ndarray, skeleton: Skeleton) -> np.ndarray:
    """(J, 3) degrees clipped into the limits (axes without DoF become 0)."""
    lim = joint_limits_deg(skeleton)
    return np.clip(np.asarray(euler_deg, dtype=np.float64), lim[..., 0], lim[..., 1])
