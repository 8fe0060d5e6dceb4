"""Named hand poses for the posing widget.

A preset maps short joint names to degrees: a number is flexion (about local
z, positive toward the palm); a 3-tuple is ``(x twist, y spread, z flex)``.
Joints not named stay at 0.  Every preset lies within
:mod:`dhmlib.viz.limits` and uses only the axes the official skeleton has
(checked by the tests).  Spread: positive y moves a tip toward the
little-finger side.
"""
from __future__ import annotations

import numpy as np

from ..skeleton import Skeleton

_CURL = {"1": 80.0, "2": 100.0, "3": 60.0}


def _curl(*fingers, scale=1.0):
    return {f + k: v * scale for f in fingers for k, v in _CURL.items()}


#: Presets: name -> {short joint name: degrees (flex) or (x, y, z) degrees}.
PRESETS: dict[str, dict[str, float | tuple[float, float, float]]] = {
    "rest": {},
    "fist": {
        **_curl("index", "middle", "ring", "pinky"),
        "thumb0": (33.0, 28.0, 15.0), "thumb1": (12.0, -13.0, 19.0), "thumb2": 30.0, "thumb3": 55.0,
    },
    "point": {
        **_curl("middle", "ring", "pinky"),
        "index1": (0.0, 0.0, 5.0), "index2": 5.0, "index3": 5.0,
        "thumb0": (33.0, 28.0, 15.0), "thumb1": (12.0, -13.0, 19.0), "thumb2": 30.0, "thumb3": 55.0,
    },
    "pinch": {
        "index1": (0.0, 0.0, 45.0), "index2": 55.0, "index3": 30.0,
        "middle1": 15.0, "middle2": 15.0, "ring1": 20.0, "ring2": 20.0, "pinky1": 25.0, "pinky2": 25.0,
        "thumb0": (40.0, 8.0, 21.0), "thumb1": (15.0, -14.0, 6.0), "thumb2": 16.0, "thumb3": 23.0,
    },
    "spread": {
        "index1": (0.0, -20.0, -5.0), "middle1": (0.0, -3.0, -5.0), "ring1": (0.0, 12.0, -5.0),
        "pinky1": (0.0, 22.0, -5.0), "thumb0": (0.0, -25.0, -15.0), "thumb1": (0.0, 0.0, -10.0),
    },
    "ok": {
        "index1": (0.0, 0.0, 50.0), "index2": 60.0, "index3": 35.0,
        "middle1": (0.0, 0.0, 5.0), "ring1": (0.0, 8.0, 5.0), "pinky1": (0.0, 15.0, 5.0),
        "thumb0": (40.0, 11.0, 17.0), "thumb1": (16.0, -17.0, 1.0), "thumb2": 19.0, "thumb3": 56.0,
    },
    "thumbs_up": {
        **_curl("index", "middle", "ring", "pinky"),
        "thumb0": (0.0, -20.0, -20.0), "thumb1": (0.0, 0.0, -10.0), "thumb2": 0.0, "thumb3": -5.0,
    },
}

#: Display labels of the presets, in button order.
PRESET_LABELS = {"rest": "rest", "fist": "fist", "point": "point", "pinch": "pinch",
                 "spread": "spread", "ok": "OK", "thumbs_up": "thumbs-up"}


def preset_names() -> tuple[str, ...]:
    return tuple(PRESETS)


def preset_degrees(name: str, skeleton: Skeleton) -> np.ndarray:
    """(J, 3) float64 Euler angles in **degrees** of preset ``name`` for ``skeleton``.

    Raises ``KeyError`` for an unknown preset or a joint the skeleton lacks,
    and ``ValueError`` if the preset sets an axis the joint does not have.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    out = np.zeros((skeleton.num_joints, 3))
    mask = skeleton.dof_mask()
    for joint, value in PRESETS[name].items():
        j = skeleton.index(joint)
        v = np.array([0.0, 0.0, float(value)]) if np.isscalar(value) else np.asarray(value, dtype=np.float64)
        if v.shape != (3,):
            raise ValueError(f"preset {name!r}, joint {joint!r}: expected a number or (x, y, z), got {value!r}")
        bad = (v != 0) & ~mask[j]
        if bad.any():
            axes = ", ".join("xyz"[a] for a in np.nonzero(bad)[0])
            raise ValueError(f"preset {name!r} rotates {joint!r} about {axes}, which the joint does not have")
        out[j] = v
    return out


def preset_euler(name: str, skeleton: Skeleton) -> np.ndarray:
    """(J, 3) float64 Euler angles in **radians** of preset ``name`` (the model's unit)."""
    return np.deg2rad(preset_degrees(name, skeleton))
