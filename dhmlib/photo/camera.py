"""The camera of a photo: intrinsics from EXIF or a stated guess, or the capture's ``KRT_512`` camera.

A photo from an unknown camera gets a pinhole camera at the world origin looking along +z (world frame =
camera frame, mm), principal point at the image centre and a focal length, in order of preference:

1. ``focal_mm`` given by the user: a 35-mm-equivalent focal length (mm);
2. ``fov_deg`` given by the user: the horizontal field of view, degrees;
3. EXIF ``FocalLengthIn35mmFilm``;
4. :data:`DEFAULT_FOCAL_35MM`, a guess (a phone's main camera is 24–28 mm equivalent: 65–74° horizontal).

A 35-mm equivalent focal length ``F`` means ``f_px = F / 43.27 · diagonal_px`` (43.27 mm: the diagonal of a
36 × 24 mm frame). EXIF ``FocalLength`` alone (the lens's own mm) says nothing without the sensor's size
and is not used.

An image of a capture in the official layout (``ROOT/images/subject_N/<seq>/cam<cam>/image<frame>.jpg`` with
``ROOT/annotations/KRT_512``) gets its real camera (world frame = the capture's, mm): images of one frame
from several cameras are views of one pose.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from dhmlib.render.cameras import Cameras

DEFAULT_FOCAL_35MM = 26.0
FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
_CAPTURE_RE = re.compile(r"^image(\d+)\.jpg$")


@dataclass(frozen=True)
class CaptureView:
    """Where a capture image sits in the official layout."""

    root: Path
    subject: int
    sequence: str
    camera: str
    frame: int

    @property
    def pose_key(self) -> tuple:
        """Images with the same key show one pose (one frame of one take)."""
        return (str(self.root), self.subject, self.frame)


def capture_view(path) -> CaptureView | None:
    """The capture frame and camera of ``path`` when it is an image of the official layout with a KRT file."""
    p = Path(path).resolve()
    m = _CAPTURE_RE.match(p.name)
    parts = p.parts
    if not m or len(parts) < 6 or not parts[-2].startswith("cam") or not parts[-4].startswith("subject_"):
        return None
    if parts[-5] != "images":
        return None
    root = Path(*parts[:-5])
    if not (root / "annotations" / "KRT_512").is_file():
        return None
    try:
        subject = int(parts[-4][len("subject_"):])
    except ValueError:
        return None
    return CaptureView(root, subject, parts[-3], parts[-2][3:], int(m.group(1)))


def focal_from_35mm(f35: float, height: int, width: int) -> float:
    """35-mm equivalent focal length (mm) → focal length in pixels of an (H, W) image."""
    return f35 / FRAME_DIAGONAL_MM * math.hypot(height, width)


def focal_from_fov(fov_deg: float, width: int) -> float:
    """Horizontal field of view (degrees) → focal length in pixels."""
    return width / 2.0 / math.tan(math.radians(fov_deg) / 2.0)


def photo_focal(height: int, width: int, focal_35mm_exif: float | None = None, focal_mm: float | None = None,
                fov_deg: float | None = None) -> tuple[float, str]:
    """(focal length px, where it came from) by the module docstring's order."""
    if focal_mm is not None:
        return focal_from_35mm(focal_mm, height, width), f"--focal-mm {focal_mm:g} (35-mm equivalent)"
    if fov_deg is not None:
        return focal_from_fov(fov_deg, width), f"--fov {fov_deg:g}° horizontal"
    if focal_35mm_exif:
        return focal_from_35mm(focal_35mm_exif, height, width), f"EXIF FocalLengthIn35mmFilm {focal_35mm_exif:g} mm"
    f = focal_from_35mm(DEFAULT_FOCAL_35MM, height, width)
    fov = math.degrees(2 * math.atan(width / 2 / f))
    return f, f"a guess: {DEFAULT_FOCAL_35MM:g} mm 35-mm equivalent ({fov:.0f}° horizontal; no EXIF focal length)"


def photo_camera(height: int, width: int, focal_px: float, dtype=torch.float32) -> Cameras:
    """(1,)-batched pinhole camera at the origin looking along +z, principal point at the image centre."""
    return Cameras(R=torch.eye(3, dtype=dtype)[None], t=torch.zeros(1, 3, dtype=dtype),
                   focal=torch.tensor([[focal_px, focal_px]], dtype=dtype),
                   principal=torch.tensor([[width / 2.0, height / 2.0]], dtype=dtype))


def capture_camera(view: CaptureView, scale: float = 1.0, dtype=torch.float32) -> Cameras:
    """(1,)-batched KRT camera of a capture image (``scale``: pixels of the image used per pixel of the file)."""
    cam = Cameras.from_krt(view.root / "annotations" / "KRT_512", names=[view.camera], dtype=dtype)
    if scale != 1.0:
        cam = Cameras(cam.R, cam.t, cam.focal * scale, cam.principal * scale, cam.names)
    return cam
