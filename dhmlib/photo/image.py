"""Reading a photo: RGB pixels upright (EXIF orientation applied), huge images downscaled, EXIF focal length."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: image suffixes a folder given to ``dhm fit --image`` is searched for
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: a longer side above this is downscaled (MediaPipe works at 224 px inside; the fit needs no more)
MAX_SIDE = 2048
#: refused outright: more pixels than this (decompression bombs, panoramas)
MAX_PIXELS = 200_000_000


class PhotoError(ValueError):
    """A file that cannot be used as a photo; the message names it."""


@dataclass(frozen=True)
class Photo:
    """One photo as the detector and the fit see it.

    Attributes:
        path: the file.
        rgb: (H, W, 3) uint8, upright.
        scale: pixels of ``rgb`` per pixel of the file (1.0, or < 1 when downscaled).
        focal_35mm: EXIF ``FocalLengthIn35mmFilm`` (mm, 35-mm equivalent) or None.
        focal_mm: EXIF ``FocalLength`` (mm, the lens's own) or None.
        note: what was done to the file ("" or e.g. "downscaled 6000x4000 → 2048x1365").
    """

    path: Path
    rgb: np.ndarray
    scale: float = 1.0
    focal_35mm: float | None = None
    focal_mm: float | None = None
    note: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) pixels."""
        return self.rgb.shape[0], self.rgb.shape[1]


def _exif_focal(img) -> tuple[float | None, float | None]:
    try:
        exif = img.getexif()
        sub = exif.get_ifd(0x8769)          # the Exif sub-IFD holds the focal lengths
    except Exception:                        # noqa: BLE001 - a broken EXIF block only loses the focal length
        return None, None
    f35 = sub.get(0xA405) or exif.get(0xA405)    # FocalLengthIn35mmFilm
    f = sub.get(0x920A) or exif.get(0x920A)      # FocalLength
    f35 = float(f35) if f35 else None
    f = float(f) if f else None
    return (f35 if f35 and f35 > 0 else None), (f if f and f > 0 else None)


def load_photo(path, max_side: int = MAX_SIDE) -> Photo:
    """Read ``path`` as an upright RGB photo; raise :class:`PhotoError` (one line naming the file) if it is not one.

    A longer side above ``max_side`` is downscaled (said in ``note``); more than :data:`MAX_PIXELS` pixels
    is refused.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise PhotoError(f"{path}: file not found")
    if path.is_dir():
        raise PhotoError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise PhotoError(f"{path}: {w}x{h} pixels is too large (more than {MAX_PIXELS // 1_000_000} megapixels)")
            f35, f = _exif_focal(img)
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")
            note = ""
            if max(img.size) > max_side:
                s = max_side / max(img.size)
                new = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
                note = f"downscaled {img.size[0]}x{img.size[1]} → {new[0]}x{new[1]}"
                img = img.resize(new, Image.LANCZOS)
            rgb = np.asarray(img, dtype=np.uint8).copy()
    except PhotoError:
        raise
    except UnidentifiedImageError:
        raise PhotoError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as e:
        raise PhotoError(f"{path}: too large to open safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise PhotoError(f"{path}: cannot read the image ({e})") from None
    scale = rgb.shape[1] / w if w else 1.0
    return Photo(path, rgb, scale if note else 1.0, f35, f, note)


def find_images(paths) -> list[Path]:
    """Files and folders → image files (a folder: its files with an image suffix, sorted; not recursive).

    Files are kept as given (a file that is not an image is reported when it is read)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise PhotoError(f"{p}: folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        else:
            out.append(p)
    return out
