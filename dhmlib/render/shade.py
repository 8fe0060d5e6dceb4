"""Lambertian shaded renders of a mesh: the virtual capture's images and figures, one code path.

Model, per pixel covered by the mesh::

    rgb = color · (ambient + Σ_k intensity_k · max(0, n · l_k))

``color`` the interpolated per-vertex colour, ``n`` the normalized, interpolated camera-space
vertex normal (area-weighted, outward for counter-clockwise faces), ``l_k`` the unit direction
*toward* light ``k`` in camera space: a :class:`Light` in ``"camera"`` space moves with each
camera (``(0, 0, -1)`` is a head-light: camera z points forward, so ``-z`` points back at the
camera); one in ``"world"`` space is fixed in the scene and turned into each camera by its ``R``.
Pixels without surface get ``background``. No clamping (the capture clamps when it quantizes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dhmlib.mesh.normals import vertex_normals
from dhmlib.render.cameras import Cameras
from dhmlib.render.crop import Crop
from dhmlib.render.depth import project_mesh
from dhmlib.render.rasterize import rasterize
from dhmlib.render.settings import DEFAULT_RASTER_SETTINGS, RasterSettings

#: default per-vertex colour of :func:`render_shaded` (RGB in [0, 1])
SKIN_TONE = (0.87, 0.67, 0.56)


@dataclass(frozen=True)
class Light:
    """A directional light.

    Attributes:
        direction: (3,) direction *toward* the light (normalized when used).
        intensity: its weight in the Lambert sum.
        space: ``"camera"`` (fixed to each camera, e.g. a head-light ``(0, 0, -1)``) or ``"world"``.
    """

    direction: tuple[float, float, float]
    intensity: float
    space: str = "camera"

    def __post_init__(self):
        if self.space not in ("camera", "world"):
            raise ValueError(f"Light.space: expected 'camera' or 'world', got {self.space!r}")
        if len(self.direction) != 3:
            raise ValueError(f"Light.direction: expected 3 numbers, got {self.direction!r}")


#: the default lighting of :func:`render_shaded`: a head-light of weight 0.75 (with ambient 0.25)
HEADLIGHT = (Light((0.0, 0.0, -1.0), 0.75),)


@dataclass(frozen=True, eq=False)
class ShadedRender:
    """Result of :func:`render_shaded`.

    Attributes:
        rgb: (B, C, H, W, 3) colour (channels last, for matplotlib), differentiable.
        depth: (B, C, H, W) camera z, mm, exact at pixel centres (as
            :func:`~dhmlib.render.depth.render_depth`); 0 where no surface.
        face_idx: (B, C, H, W) long, visible face, -1 where no surface.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    face_idx: torch.Tensor


def render_shaded(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, crop: Crop | None = None,
                  size: tuple[int, int] | None = None, *, colors: torch.Tensor | None = None,
                  ambient: float = 0.25, lights: tuple[Light, ...] = HEADLIGHT,
                  background: float | tuple[float, float, float] = 0.0,
                  settings: RasterSettings = DEFAULT_RASTER_SETTINGS) -> ShadedRender:
    """Lambertian shading with interpolated vertex normals (the model is in the module doc).

    Colour, normals and depth are interpolated in one rasterizer call for all B·C views.

    Args:
        vertices: (B, V, 3) mm; faces: (F, 3); cameras, crop, size, settings: as
            :func:`~dhmlib.render.depth.render_depth`.
        colors: (V, 3) or (B, V, 3) per-vertex RGB in [0, 1]; default :data:`SKIN_TONE`.
        ambient: constant light term.
        lights: directional :class:`Light` s, summed in order after ``ambient``.
        background: value (or RGB) of pixels without surface.

    Returns:
        :class:`ShadedRender` (``rgb`` (B, C, H, W, 3), ``depth`` (B, C, H, W), ``face_idx``).
    """
    pm = project_mesh(vertices, faces, cameras, crop, size, settings)
    B, C = pm.batch
    H, W = pm.size
    N = B * C
    if colors is None:
        colors = vertices.new_tensor(SKIN_TONE).expand(B, vertices.shape[1], 3)
    colors = torch.as_tensor(colors, dtype=vertices.dtype, device=vertices.device)
    if colors.dim() == 2:
        colors = colors.expand(B, -1, -1)
    if colors.shape != vertices.shape:
        raise ValueError(f"render_shaded: expected colors (V, 3) or (B, V, 3) matching vertices "
                         f"{tuple(vertices.shape)}, got {tuple(colors.shape)}")
    R = cameras.to(device=vertices.device, dtype=vertices.dtype).R                     # (C, 3, 3) or (B, C, 3, 3)
    n_cam = vertex_normals(vertices, faces).unsqueeze(1) @ R.transpose(-1, -2)          # (B, C, V, 3)
    per_vertex = torch.cat([pm.vertices_depth.reshape(B, C, -1, 1), colors.unsqueeze(1).expand(B, C, -1, 3), n_cam], -1)
    f = faces.to(device=vertices.device, dtype=torch.long).reshape(-1)
    feats = per_vertex.reshape(N, -1, 7).index_select(1, f).reshape(N, -1, 3, 7)
    out, idx = rasterize(H, W, pm.face_vertices_z, pm.face_vertices_image, feats, pm.valid_faces,
                         backend=settings.backend)
    hit = idx >= 0                                                                     # (N, H, W)
    n = torch.nn.functional.normalize(out[..., 4:], dim=-1)                            # (N, H, W, 3)
    light = ambient
    for lt in lights:
        d = torch.nn.functional.normalize(vertices.new_tensor(lt.direction), dim=0)
        if lt.space == "world":                                   # per view: R d, (N, 1, 1, 3)
            d = (R @ d).expand(B, C, 3).reshape(N, 1, 1, 3)
        light = light + lt.intensity * (n * d).sum(-1).clamp_min(0)
    rgb = out[..., 1:4] * torch.as_tensor(light, dtype=out.dtype, device=out.device).unsqueeze(-1)
    rgb = torch.where(hit.unsqueeze(-1), rgb, out.new_tensor(background))
    return ShadedRender(rgb.reshape(B, C, H, W, 3), torch.where(hit, out[..., 0], 0).reshape(B, C, H, W),
                        idx.reshape(B, C, H, W))
