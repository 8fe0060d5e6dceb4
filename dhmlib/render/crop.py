"""The crop transform of the seed: joints' bounding box, 1.5× enlarged, mapped onto the render.

Pixel convention (shared with :mod:`dhmlib.render.cameras` and the rasterizer):
continuous coordinates, pixel (row ``i``, column ``j``) centred at ``(j + 0.5, i + 0.5)``,
an image of size (H, W) spans ``[0, W] × [0, H]``.

The crop maps the box ``[x0, x0 + w] × [y0, y0 + h]`` (image pixels) exactly onto
``[0, W_out] × [0, H_out]`` (render pixels): the box centre goes to the render centre
and the scale is ``W_out / w = H_out / h`` (the box is first grown to the render's
aspect ratio, as in the seed, then enlarged 1.5×). The transform is a general 2×3
affine, so rotations or flips for augmentation can be composed in.

Resampling through a crop lives here too: :func:`crop_image` (bilinear) and
:func:`crop_depth` (bilinear on smooth surfaces, nearest across depth edges) map an
image or depth map of the camera onto the render pixels of a :class:`Crop`.

To crop an image with OpenCV (``cv2.warpAffine``, whose pixel centres sit at integer
coordinates) use :meth:`Crop.opencv_matrix`; with ``torch.nn.functional.grid_sample``
use ``align_corners=False``, which shares this module's convention.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass(frozen=True, eq=False)
class Crop:
    """An affine map from image pixels to render pixels, for a batch of views.

    Attributes:
        matrix: (*S, 2, 3) ``[A | b]``: ``p_render = A @ p_image + b`` (pixels).
        size: (H_out, W_out) of the render.
    """

    matrix: torch.Tensor
    size: tuple[int, int]

    def __post_init__(self):
        if self.matrix.shape[-2:] != (2, 3):
            raise ValueError(f"Crop.matrix: expected shape (*S, 2, 3), got {tuple(self.matrix.shape)}")
        H, W = (int(s) for s in self.size)
        if H <= 0 or W <= 0:
            raise ValueError(f"Crop.size: expected positive (H, W), got {self.size}")
        object.__setattr__(self, "size", (H, W))

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.matrix.shape[:-2])

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Image pixels (*S', N, 2) → render pixels (*S', N, 2); ``S'`` broadcasts with ``S``."""
        A, b = self.matrix[..., :2], self.matrix[..., 2]
        return points @ A.transpose(-1, -2) + b.unsqueeze(-2)

    def inverse(self) -> "Crop":
        """The map render pixels → image pixels (``size`` is kept: it is the render's)."""
        return Crop(invert_affine(self.matrix), self.size)

    def opencv_matrix(self) -> torch.Tensor:
        """(*S, 2, 3) matrix for ``cv2.warpAffine(image, M, (W_out, H_out))`` (integer pixel centres)."""
        M = self.matrix.clone()
        # p_cv = p - 0.5 on both sides: b' = b + A @ (0.5, 0.5) - 0.5
        M[..., 2] = self.matrix[..., 2] + 0.5 * self.matrix[..., :2].sum(-1) - 0.5
        return M

    def compose(self, other: "Crop") -> "Crop":
        """``other ∘ self`` (apply ``self`` first), output size ``other.size``."""
        return Crop(compose_affine(other.matrix, self.matrix), other.size)

    def pixel_grid(self) -> torch.Tensor:
        """Image-pixel coordinates (*S, H_out, W_out, 2) ``(u, v)`` of the render's pixel centres."""
        H, W = self.size
        ys, xs = torch.meshgrid(torch.arange(H, dtype=self.matrix.dtype, device=self.matrix.device) + 0.5,
                                torch.arange(W, dtype=self.matrix.dtype, device=self.matrix.device) + 0.5,
                                indexing="ij")
        pts = torch.stack([xs, ys], -1).reshape(-1, 2)
        return self.inverse().apply(pts).reshape(self.batch_shape + (H, W, 2))

    # ------------------------------------------------------------------ batching
    def to(self, device=None, dtype=None) -> "Crop":
        return Crop(self.matrix.to(device=device, dtype=dtype), self.size)

    @staticmethod
    def stack(crops: Sequence["Crop"], dim: int = 0) -> "Crop":
        """Stack crops of equal batch shape S and size into (N, *S) (``dim`` counts batch dimensions)."""
        return Crop(torch.stack([c.matrix for c in _same_size(crops, "stack")], dim), crops[0].size)

    @staticmethod
    def cat(crops: Sequence["Crop"], dim: int = 0) -> "Crop":
        """Concatenate crops of equal size along batch dimension ``dim``: (N1, …), (N2, …) → (N1 + N2, …)."""
        return Crop(torch.cat([c.matrix for c in _same_size(crops, "cat")], dim), crops[0].size)


def _same_size(crops: Sequence[Crop], what: str) -> Sequence[Crop]:
    if not crops:
        raise ValueError(f"Crop.{what}: expected a non-empty sequence")
    sizes = {c.size for c in crops}
    if len(sizes) != 1:
        raise ValueError(f"Crop.{what}: expected crops of one render size, got {sorted(sizes)}")
    return crops


def crop_image(image: torch.Tensor, crop: Crop) -> torch.Tensor:
    """Resample images through ``crop``, bilinear: (*S, C, H_img, W_img) → (*S, C, H_out, W_out), 0 outside.

    ``S`` is the crop's batch shape; the result has the image's dtype and device.
    """
    Hi, Wi = image.shape[-2:]
    uv = crop.to(device=image.device).pixel_grid()
    grid = torch.stack([uv[..., 0] / Wi * 2 - 1, uv[..., 1] / Hi * 2 - 1], -1)
    lead = image.shape[:-3]
    out = F.grid_sample(image.reshape(-1, *image.shape[-3:]), grid.reshape(-1, *grid.shape[-3:]).to(image.dtype),
                        mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.reshape(lead + out.shape[1:])


def crop_depth(depth: torch.Tensor, crop: Crop, edge_mm: float = 10.0) -> torch.Tensor:
    """Resample depth maps through ``crop`` without averaging across depth edges: (*S, H_img, W_img) mm →
    (*S, H_out, W_out) mm.

    Bilinear where the four neighbouring samples are all surface (> 0) and within
    ``edge_mm`` of each other; the nearest sample elsewhere (edges, background).
    Outside the image: 0.
    """
    Hi, Wi = depth.shape[-2:]
    lead = depth.shape[:-2]
    # a zero border (1 before, 2 after) makes every tap of a clamped position valid: outside reads 0
    Wp = Wi + 3
    d = F.pad(depth.reshape(-1, Hi, Wi), (1, 2, 1, 2)).reshape(-1, (Hi + 3) * Wp)
    uv = crop.to(device=depth.device).pixel_grid().reshape(d.shape[0], -1, 2).to(d.dtype)  # (N, H*W, 2)
    x = (uv[..., 0] - 0.5).clamp(-1.0, Wi)                                 # integer = pixel centre
    y = (uv[..., 1] - 0.5).clamp(-1.0, Hi)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = x - x0, y - y0
    base = ((y0 + 1) * Wp + (x0 + 1)).long()
    offsets = torch.tensor([0, 1, Wp, Wp + 1], device=d.device)
    taps = torch.gather(d, 1, (base.unsqueeze(-1) + offsets).reshape(d.shape[0], -1)).view(*base.shape, 4)
    t00, t10, t01, t11 = taps.unbind(-1)
    smooth = (taps > 0).all(-1) & ((taps.amax(-1) - taps.amin(-1)) <= edge_mm)
    bil = torch.lerp(torch.lerp(t00, t10, fx), torch.lerp(t01, t11, fx), fy)
    near = torch.where(fy < 0.5, torch.where(fx < 0.5, t00, t10), torch.where(fx < 0.5, t01, t11))
    out = torch.where(smooth, bil, near)
    H, W = crop.size
    return out.reshape(lead + (H, W))


def invert_affine(M: torch.Tensor) -> torch.Tensor:
    """Inverse of affine maps (*S, 2, 3) → (*S, 2, 3)."""
    A, b = M[..., :2], M[..., 2:]
    Ai = torch.linalg.inv(A)
    return torch.cat([Ai, -Ai @ b], dim=-1)


def compose_affine(M2: torch.Tensor, M1: torch.Tensor) -> torch.Tensor:
    """``M2 ∘ M1`` for affine maps (*S, 2, 3)."""
    A = M2[..., :2] @ M1[..., :2]
    b = (M2[..., :2] @ M1[..., 2:]) + M2[..., 2:]
    return torch.cat([A, b], dim=-1)


def bbox_from_joints(joints_px: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Tight bounding box ``(x0, y0, w, h)`` (*S, 4) of the valid joints (*S, J, 2) in pixels.

    Raises:
        ValueError: if some view has no valid joint or non-finite valid coordinates.
    """
    if joints_px.shape[-1] != 2:
        raise ValueError(f"bbox_from_joints: expected joints (*S, J, 2) pixels, got {tuple(joints_px.shape)}")
    if valid is None:
        valid = torch.ones(joints_px.shape[:-1], dtype=torch.bool, device=joints_px.device)
    valid = valid.to(torch.bool)
    if valid.shape != joints_px.shape[:-1]:
        raise ValueError(f"bbox_from_joints: expected valid {tuple(joints_px.shape[:-1])}, got {tuple(valid.shape)}")
    if not bool(valid.any(-1).all()):
        raise ValueError("bbox_from_joints: expected at least one valid joint per view, some view has none")
    if not bool(torch.isfinite(joints_px[valid]).all()):
        raise ValueError("bbox_from_joints: valid joints must have finite pixel coordinates")
    big = torch.finfo(joints_px.dtype).max
    m = valid.unsqueeze(-1)
    lo = torch.where(m, joints_px, torch.full_like(joints_px, big)).amin(-2)
    hi = torch.where(m, joints_px, torch.full_like(joints_px, -big)).amax(-2)
    return torch.cat([lo, hi - lo], dim=-1)


def crop_from_bbox(bbox: torch.Tensor, size: tuple[int, int] = (256, 256), scale: float = 1.5,
                   min_extent: float = 1.0, keep_aspect: bool = True,
                   clamp_to: tuple[int, int] | None = None) -> Crop:
    """The crop of a box (*S, 4) ``(x0, y0, w, h)`` onto a render of ``size`` (H, W).

    The box keeps its centre and is enlarged by ``scale`` (1.5). With
    ``keep_aspect`` its short side is first grown to the render's aspect ratio
    (no distortion); without it each axis is scaled on its own, as the seed's
    ``get_bbox``/``gen_trans_from_patch_cv`` do. ``clamp_to`` (H_img, W_img)
    clips the enlarged box to the image first, as the seed does. Boxes
    narrower than ``min_extent`` pixels are widened to it (so one joint still crops).
    """
    H, W = size
    x0, y0, w, h = bbox.unbind(-1)
    cx, cy = x0 + 0.5 * w, y0 + 0.5 * h
    w = w.clamp_min(min_extent)
    h = h.clamp_min(min_extent)
    if keep_aspect:
        w2 = torch.maximum(w, h * (W / H)) * scale
        h2 = w2 * (H / W)
    else:
        w2, h2 = w * scale, h * scale
    if clamp_to is not None:
        Hi, Wi = clamp_to
        lo_x, hi_x = (cx - 0.5 * w2).clamp(0, Wi), (cx + 0.5 * w2).clamp(0, Wi)
        lo_y, hi_y = (cy - 0.5 * h2).clamp(0, Hi), (cy + 0.5 * h2).clamp(0, Hi)
        cx, cy = 0.5 * (lo_x + hi_x), 0.5 * (lo_y + hi_y)
        w2, h2 = (hi_x - lo_x).clamp_min(min_extent), (hi_y - lo_y).clamp_min(min_extent)
    sx, sy = W / w2, H / h2
    zero = torch.zeros_like(sx)
    M = torch.stack([torch.stack([sx, zero, 0.5 * W - sx * cx], -1),
                     torch.stack([zero, sy, 0.5 * H - sy * cy], -1)], -2)
    return Crop(M, (H, W))


def crop_from_joints(joints_px: torch.Tensor, valid: torch.Tensor | None = None,
                     size: tuple[int, int] = (256, 256), scale: float = 1.5, keep_aspect: bool = True,
                     clamp_to: tuple[int, int] | None = None) -> Crop:
    """Crop from projected joints (*S, J, 2) pixels and validity (*S, J); see :func:`crop_from_bbox`."""
    return crop_from_bbox(bbox_from_joints(joints_px, valid), size=size, scale=scale, keep_aspect=keep_aspect,
                          clamp_to=clamp_to)


def identity_crop(batch_shape: tuple[int, ...], size: tuple[int, int], dtype=torch.float32, device=None) -> Crop:
    """No crop: render pixels = image pixels, for full-image renders of ``size`` (H, W)."""
    M = torch.zeros(batch_shape + (2, 3), dtype=dtype, device=device)
    M[..., 0, 0] = 1
    M[..., 1, 1] = 1
    return Crop(M, size)
