"""Lambertian shaded renders of a mesh, for the virtual capture's images and for figures."""
from __future__ import annotations

import torch

from .cameras import Cameras
from .crop import Crop
from .depth import project_mesh
from .rasterize import rasterize


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals (B, V, 3) of meshes (B, V, 3) with faces (F, 3) (CCW = outward)."""
    f = faces.to(device=vertices.device, dtype=torch.long)
    v0, v1, v2 = (vertices[:, f[:, k]] for k in range(3))
    fn = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # (B, F, 3), |fn| = 2·area
    n = torch.zeros_like(vertices)
    for k in range(3):  # three scatters, not a loop over faces
        n = n.index_add(1, f[:, k], fn)
    return torch.nn.functional.normalize(n, dim=-1)


def render_shaded(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, crop: Crop | None = None,
                  size: tuple[int, int] | None = None, *, colors: torch.Tensor | None = None,
                  light_dir: tuple[float, float, float] = (0.0, 0.0, -1.0), ambient: float = 0.25,
                  background: float = 0.0, near: float = 1.0, cull_backfaces: bool = False,
                  backend: str = "auto") -> torch.Tensor:
    """Lambertian shading with interpolated vertex normals.

    ``rgb = color · (ambient + (1 − ambient) · max(0, n · l))`` where ``n`` is the
    interpolated camera-space normal and ``l`` the unit direction *towards* the light
    in camera space (default ``(0, 0, -1)``: a head-light at the camera).

    Args:
        vertices: (B, V, 3) mm; faces: (F, 3); cameras, crop, size, near: as
            :func:`~dhmlib.render.depth.render_depth`.
        cull_backfaces: as :func:`~dhmlib.render.depth.project_mesh`.
        colors: (V, 3) or (B, V, 3) per-vertex RGB in [0, 1]; default a skin tone.
        background: value of pixels without surface.

    Returns:
        (B, C, H, W, 3) RGB (channels last, for matplotlib), differentiable.
    """
    pm = project_mesh(vertices, faces, cameras, crop, size, near, cull_backfaces)
    B, C = pm.batch
    H, W = pm.size
    N = B * C
    if colors is None:
        colors = vertices.new_tensor([0.87, 0.67, 0.56]).expand(B, vertices.shape[1], 3)
    colors = torch.as_tensor(colors, dtype=vertices.dtype, device=vertices.device)
    if colors.dim() == 2:
        colors = colors.expand(B, -1, -1)
    if colors.shape != vertices.shape:
        raise ValueError(f"render_shaded: expected colors (V, 3) or (B, V, 3) matching vertices "
                         f"{tuple(vertices.shape)}, got {tuple(colors.shape)}")
    R = cameras.to(device=vertices.device, dtype=vertices.dtype).R
    n_cam = vertex_normals(vertices, faces).unsqueeze(1) @ R.transpose(-1, -2)  # (B, C, V, 3)
    per_vertex = torch.cat([colors.unsqueeze(1).expand(B, C, -1, 3), n_cam], -1).reshape(N, -1, 6)
    f = faces.to(device=vertices.device, dtype=torch.long).reshape(-1)
    feats = per_vertex.index_select(1, f).reshape(N, -1, 3, 6)
    out, idx = rasterize(H, W, pm.face_vertices_z, pm.face_vertices_image, feats, pm.valid_faces, backend=backend)
    l = torch.nn.functional.normalize(vertices.new_tensor(light_dir), dim=0)
    n = torch.nn.functional.normalize(out[..., 3:], dim=-1)
    lam = (n * l).sum(-1, keepdim=True).clamp_min(0)
    rgb = out[..., :3] * (ambient + (1 - ambient) * lam)
    rgb = torch.where((idx >= 0).unsqueeze(-1), rgb, torch.full_like(rgb, background))
    return rgb.reshape(B, C, H, W, 3)
