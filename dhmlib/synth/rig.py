"""The virtual camera rig: a dome of colour cameras around the hand.

World frame of the virtual capture (mm): the wrist near the origin, fingers
pointing up (world +z), see :data:`dhmlib.synth.poses.BASE_ROTATION`. The
cameras sit on a band of the sphere around a target above the wrist (the middle
of the hand), spread evenly by a Fibonacci spiral from slightly below the
horizon to high above, each looking at the target (with a few mm of jitter) and
upright (world +z toward the top of the image, so a raised hand fills the tall
512 × 334 frame). Names follow the colour cameras of the real capture:
six digits starting with ``40`` (``400262``, ``400263``, …).
"""
from __future__ import annotations

import numpy as np
import torch

from dhmlib.render.cameras import OFFICIAL_IMAGE_SIZE, Cameras

#: point the cameras look at: the middle of a raised hand, mm (wrist at the origin)
DEFAULT_TARGET = (0.0, 0.0, 85.0)
FIRST_CAMERA_NAME = 400262


def camera_names(num_cameras: int, first: int = FIRST_CAMERA_NAME) -> tuple[str, ...]:
    """``("400262", "400263", …)``: six-digit colour-camera names."""
    if not (400000 <= first and first + num_cameras - 1 <= 409999):
        raise ValueError(f"camera names: expected 6-digit names starting with 40, got first={first}, "
                         f"count={num_cameras}")
    return tuple(str(first + i) for i in range(num_cameras))


def dome_rig(num_cameras: int, image_size: tuple[int, int] = OFFICIAL_IMAGE_SIZE, seed: int = 0,
             distance_mm: tuple[float, float] = (680.0, 740.0), focal_px: tuple[float, float] = (1200.0, 1280.0),
             elevation_deg: tuple[float, float] = (-15.0, 65.0), target=DEFAULT_TARGET,
             aim_jitter_mm: float = 6.0) -> Cameras:
    """A dome of ``C`` pinhole cameras (float64), deterministic in ``seed``.

    Args:
        num_cameras: C ≥ 1.
        image_size: (H, W) pixels; focal lengths are given for H = 512 and scale with H,
            so a smaller image sees the same field of view.
        distance_mm: range of camera distances to the target.
        focal_px: range of focal lengths (f_x = f_y) at H = 512.
        elevation_deg: band of elevations above the horizontal plane through the target.
        target: (3,) the point the rig looks at, world mm.
        aim_jitter_mm: random offset of each camera's aim point.
    Returns:
        :class:`~dhmlib.render.Cameras` of batch shape (C,), names ``400262``…,
        principal point near the image centre.
    """
    if num_cameras < 1:
        raise ValueError(f"num_cameras: expected at least 1, got {num_cameras}")
    H, W = (int(s) for s in image_size)
    if H <= 0 or W <= 0:
        raise ValueError(f"image_size: expected positive (H, W), got {image_size}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x524947]))  # 'RIG'
    C = num_cameras
    lo, hi = np.sin(np.deg2rad(elevation_deg))
    sin_el = lo + (hi - lo) * (np.arange(C) + 0.5) / C             # equal-area band
    azimuth = np.arange(C) * np.pi * (3.0 - np.sqrt(5.0)) + rng.uniform(0, 2 * np.pi)  # golden angle
    cos_el = np.sqrt(1.0 - sin_el ** 2)
    direction = np.stack([cos_el * np.cos(azimuth), cos_el * np.sin(azimuth), sin_el], -1)
    target = np.asarray(target, dtype=float)
    eye = target + rng.uniform(*distance_mm, size=(C, 1)) * direction
    aim = target + rng.normal(0.0, aim_jitter_mm, size=(C, 3))
    scale = H / 512.0
    f = rng.uniform(*focal_px, size=(C, 1)) * scale
    principal = np.array([W / 2.0, H / 2.0]) + rng.uniform(-3.0, 3.0, size=(C, 2)) * scale
    return Cameras.look_at(torch.as_tensor(eye), torch.as_tensor(aim), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64),
                           torch.as_tensor(np.repeat(f, 2, 1)), torch.as_tensor(principal), names=camera_names(C))
