"""Small scene helpers for renders, tests and benchmarks: a ring of cameras (hand poses: :mod:`dhmlib.hand.anatomy`)."""
from __future__ import annotations

import math

import torch

from dhmlib.render.cameras import OFFICIAL_IMAGE_SIZE, Cameras


def ring_cameras(center, num_cameras: int = 6, distance: float = 550.0, elevations=(-25.0, 25.0),
                 focal: float = 1250.0, image_size: tuple[int, int] = OFFICIAL_IMAGE_SIZE,
                 dtype=torch.float32, device=None) -> Cameras:
    """Cameras on a ring around ``center`` (3,) mm, all looking at it, alternating elevations (degrees).

    Intrinsics resemble the official rig: ``focal`` pixels and the principal point at the
    image centre ``(W/2, H/2)`` of ``image_size`` (H, W). World "up" is +y.
    Returns cameras of batch shape (C,) named ``cam0`` …
    """
    center = torch.as_tensor(center, dtype=torch.float64)
    az = torch.arange(num_cameras, dtype=torch.float64) * (2 * math.pi / num_cameras)
    el = torch.tensor([elevations[i % len(elevations)] for i in range(num_cameras)], dtype=torch.float64)
    el = el * math.pi / 180
    eye = center + distance * torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], -1)
    H, W = image_size
    cams = Cameras.look_at(eye, center, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64),
                           focal=(focal, focal), principal=(W / 2, H / 2),
                           names=[f"cam{i}" for i in range(num_cameras)])
    return cams.to(device=device, dtype=dtype)

