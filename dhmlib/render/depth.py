"""Meshes seen by cameras: depth maps (the weak supervision) and silhouettes.

``vertices`` (B, V, 3) world mm and ``faces`` (F, 3) are projected by ``cameras``
(batch shape (C,) shared by all samples, or (B, C) per sample), mapped by an
optional :class:`~dhmlib.render.crop.Crop` (batch shape (C,) or (B, C)) and
rasterized at ``size`` = (H, W) with :func:`~dhmlib.render.rasterize.rasterize`.
All B·C views go through one rasterizer call.

How faces are drawn (near distance, back-face culling, backend) is one
:class:`~dhmlib.render.settings.RasterSettings` (``settings=``; default: near 1 mm, all
faces, automatic backend).

Behind-camera behaviour (documented, never a crash): there is no near-plane
clipping. A face with any vertex closer to the camera plane than ``settings.near``
is dropped whole, so a camera inside or behind the mesh sees only the faces entirely
in front of it, and a camera with the whole mesh behind it renders an all-zero depth map.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dhmlib.render.cameras import OFFICIAL_IMAGE_SIZE, Cameras
from dhmlib.render.crop import Crop
from dhmlib.render.interpolate_cpu import interpolate_vertex_features_cpu
from dhmlib.render.project_cpu import project_vertices_cpu
from dhmlib.render.rasterize import interpolate_vertex_features, rasterize, resolve_backend, visible_faces
from dhmlib.render.settings import DEFAULT_RASTER_SETTINGS, RasterSettings
from dhmlib.render.zbuffer_cpu import visible_faces_of_vertices, zbuffer_available


@dataclass(frozen=True, eq=False)
class ProjectedMesh:
    """A mesh in every view, ready for :func:`rasterize` (N = B·C views).

    Attributes:
        face_vertices_z: (N, F, 3) Kaolin-convention z (= −depth), mm.
        face_vertices_image: (N, F, 3, 2) normalised image coordinates.
        valid_faces: (N, F) bool, faces entirely beyond the near plane (and front-facing when culled).
        batch: (B, C).
        size: (H, W).
        vertices_image: (N, V, 2) normalised image coordinates of the vertices.
        vertices_depth: (N, V) camera depth of the vertices, mm.
    """

    face_vertices_z: torch.Tensor
    face_vertices_image: torch.Tensor
    valid_faces: torch.Tensor
    batch: tuple[int, int]
    size: tuple[int, int]
    vertices_image: torch.Tensor
    vertices_depth: torch.Tensor


def _check_mesh(vertices: torch.Tensor, faces: torch.Tensor):
    if vertices.dim() != 3 or vertices.shape[-1] != 3:
        raise ValueError(f"expected vertices (B, V, 3) mm, got {tuple(vertices.shape)}")
    if vertices.shape[0] == 0:
        raise ValueError("expected at least one mesh in the batch, got B = 0")
    if not vertices.is_floating_point():
        raise TypeError(f"expected floating point vertices, got {vertices.dtype}")
    if not bool(torch.isfinite(vertices.detach()).all()):
        raise ValueError("expected finite vertices, found NaN or inf")
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.is_floating_point():
        raise ValueError(f"expected faces (F, 3) integer vertex indices, got {tuple(faces.shape)} {faces.dtype}")
    V = vertices.shape[1]
    if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= V):
        raise ValueError(f"expected face indices in [0, {V}), got range [{int(faces.min())}, {int(faces.max())}]")


def _check_settings(settings):
    if not isinstance(settings, RasterSettings):
        raise TypeError(f"settings: expected a dhmlib.render.RasterSettings, got {type(settings).__name__} "
                        "(near, cull_backfaces and backend are its fields)")


def is_closed_mesh(faces: torch.Tensor, num_vertices: int) -> bool:
    """Whether every directed edge (a, b) of faces (F, 3) occurs once and its reverse (b, a) once."""
    f = faces.long()
    a = torch.cat([f[:, 0], f[:, 1], f[:, 2]])
    b = torch.cat([f[:, 1], f[:, 2], f[:, 0]])
    fwd = torch.sort(a * num_vertices + b).values
    if fwd.numel() == 0 or bool((fwd[1:] == fwd[:-1]).any()):
        return False
    return bool(torch.equal(fwd, torch.sort(b * num_vertices + a).values))


def project_mesh(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, crop: Crop | None = None,
                 size: tuple[int, int] | None = None,
                 settings: RasterSettings = DEFAULT_RASTER_SETTINGS) -> ProjectedMesh:
    """Project a batch of meshes into every view (differentiable in vertices and cameras).

    Args:
        vertices: (B, V, 3) world coordinates, mm.
        faces: (F, 3) long vertex indices.
        cameras: batch shape (C,) or (B, C).
        crop: image → render pixels, batch shape (C,) or (B, C); ``None`` renders the full image.
        size: (H, W) of the render; defaults to ``crop.size``, or the official 512 × 334 without crop.
        settings: ``near`` (faces with a vertex at camera depth < ``near`` mm are marked invalid)
            and ``cull_backfaces`` (faces turned away from the camera are marked invalid) of
            :class:`~dhmlib.render.settings.RasterSettings`; its ``backend`` is the renders' business.
    """
    B, C, H, W = _checked_batch(vertices, faces, cameras, crop, size, settings)
    ndc, depth = _project_vertices(vertices, cameras, crop, H, W, settings.near)
    N = B * C
    f = faces.to(device=vertices.device, dtype=torch.long).reshape(-1)
    fimg = ndc.index_select(1, f).reshape(N, -1, 3, 2)
    fz = (-depth).index_select(1, f).reshape(N, -1, 3)
    valid = _valid_faces(fz, fimg, settings.near, settings.cull_backfaces)
    return ProjectedMesh(fz, fimg, valid, (B, C), (H, W), ndc, depth)


def _checked_batch(vertices, faces, cameras, crop, size, settings) -> tuple[int, int, int, int]:
    """(B, C, H, W) of a render call, after checking its arguments (see :func:`project_mesh`)."""
    _check_settings(settings)
    _check_mesh(vertices, faces)
    B = vertices.shape[0]
    S = cameras.batch_shape
    if len(S) == 2 and S[0] != B:
        raise ValueError(f"expected cameras of batch shape (C,) or (B, C) with B = {B}, got {S}")
    if len(S) not in (1, 2):
        raise ValueError(f"expected cameras of batch shape (C,) or (B, C), got {S}")
    C = S[-1]
    if size is None:
        size = crop.size if crop is not None else OFFICIAL_IMAGE_SIZE
    H, W = (int(s) for s in size)
    if H <= 0 or W <= 0:
        raise ValueError(f"expected a positive render size (H, W), got {size}")
    if crop is not None:
        cs = crop.batch_shape
        if cs not in ((C,), (B, C)):
            raise ValueError(f"expected crop of batch shape ({C},) or ({B}, {C}) to match the cameras, got {cs}")
        if tuple(crop.size) != (H, W):
            raise ValueError(f"crop.size {crop.size} differs from the render size {(H, W)}")
    return B, C, H, W


def _project_vertices(vertices, cameras, crop, H: int, W: int, near: float):
    """NDC (B·C, V, 2) and camera depth (B·C, V), mm, of every vertex in every view.

    Every view's map world → NDC is one projective matrix: with the intrinsics, the crop and the
    pixel → NDC step folded into a (2, 3) matrix ``G`` per view (all three are affine in
    ``(x/z, y/z, 1)``), ``[h; z] = [G R | G t; R₃ | t₃] [X; 1]`` and ``ndc = h / z``. The B·C·V
    products are then a few ops over (B, 3·C, V) rows, laid out vertex-last, instead of a chain of ops
    over (B, C, V, 2)/(…, 3) tensors (this CPU runs ops with a 2- or 3-long innermost axis about ten
    times slower than long rows). Depth is clamped at ``near`` before the
    division (vertices nearer than that only belong to faces the renderers drop).
    """
    cams = cameras.to(device=vertices.device, dtype=vertices.dtype)
    B, V = vertices.shape[:2]
    S = cams.batch_shape
    C = S[-1]
    R, t = cams.R.expand(B, C, 3, 3), cams.t.expand(B, C, 3)
    f, c = cams.focal.expand(B, C, 2), cams.principal.expand(B, C, 2)
    zero = torch.zeros_like(f[..., 0])
    # K: (x, y, z) → pixel·z, rows (fx, 0, cx), (0, fy, cy)
    K = torch.stack([torch.stack([f[..., 0], zero, c[..., 0]], -1),
                     torch.stack([zero, f[..., 1], c[..., 1]], -1)], -2)          # (B, C, 2, 3)
    if crop is not None:
        M = crop.matrix.to(K).expand(B, C, 2, 3)
        K = M[..., :2] @ K + torch.cat([torch.zeros_like(M[..., :2]), M[..., 2:]], -1)
    # pixel → NDC: x' = u·2/W − 1, y' = 1 − v·2/H (times z: the constant goes to the z column)
    e3 = torch.zeros_like(K[..., 0, :])
    e3[..., 2] = 1.0
    G = torch.stack([K[..., 0, :] * (2.0 / W) - e3, e3 - K[..., 1, :] * (2.0 / H)], -2)   # (B, C, 2, 3)
    P = torch.cat([G @ R, R[..., 2:, :]], -2).reshape(B, 3 * C, 3)
    q = torch.cat([(G @ t.unsqueeze(-1)).squeeze(-1), t[..., 2:]], -1).reshape(B, 3 * C, 1)
    N = B * C
    if vertices.device.type == "cpu" and zbuffer_available() and vertices.dtype in (torch.float32, torch.float64) \
            and not (P.requires_grad or q.requires_grad):   # the same numbers in one compiled pass
        ndc, depth = project_vertices_cpu(vertices, P, q.reshape(B, 3 * C), near)
        return ndc.reshape(N, V, 2), depth.reshape(N, V)
    # the products as three broadcast multiply-adds over (B, 3C, V) rows rather than a batched matmul: a
    # matmul's blocking (and so its rounding) depends on the batch size, and training must give the same
    # numbers for a batch split over processes (DDP) as for the whole batch in one
    x = vertices.transpose(1, 2).contiguous().unsqueeze(1)                 # (B, 1, 3, V); contiguous rows: 3x faster products
    Pc = P.unsqueeze(-1)                                                   # (B, 3C, 3, 1)
    h = q + Pc[:, :, 0] * x[:, :, 0] + Pc[:, :, 1] * x[:, :, 1] + Pc[:, :, 2] * x[:, :, 2]
    hx, hy, depth = h.view(B, C, 3, V).unbind(2)
    safe = depth.clamp_min(near)                                 # avoid inf for dropped faces
    ndc = torch.stack([hx / safe, hy / safe], -1)                # (B, C, V, 2)
    return ndc.reshape(N, V, 2), depth.reshape(N, V)


def _valid_faces(fz: torch.Tensor, fimg: torch.Tensor, near: float, cull_backfaces: bool) -> torch.Tensor:
    """(N, F) bool: faces wholly beyond the near plane (and, culling, counter-clockwise in NDC)."""
    with torch.no_grad():
        valid = (fz[..., 0] < -near) & (fz[..., 1] < -near) & (fz[..., 2] < -near)
        if cull_backfaces:  # counter-clockwise outward faces appear counter-clockwise (area > 0) in NDC
            x, y = fimg[..., 0], fimg[..., 1]
            area = (x[..., 1] - x[..., 0]) * (y[..., 2] - y[..., 0]) - (x[..., 2] - x[..., 0]) * (y[..., 1] - y[..., 0])
            valid &= area > 0
    return valid


def render_depth(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, crop: Crop | None = None,
                 size: tuple[int, int] | None = None, *,
                 settings: RasterSettings = DEFAULT_RASTER_SETTINGS) -> torch.Tensor:
    """Camera-space depth maps (the official depth-map convention).

    Args: see :func:`project_mesh`; ``settings.backend`` as :func:`rasterize`.

    Returns:
        (B, C, H, W) depth z in the camera frame, mm, exact (perspective-correct) at each
        pixel centre; 0 where no surface. Differentiable w.r.t. vertices (and cameras)
        through the visible faces.
    """
    _check_settings(settings)
    if resolve_backend(settings.backend, vertices) == "torch":
        return _render_depth_at_pixels(vertices, faces, cameras, crop, size, settings)
    pm = project_mesh(vertices, faces, cameras, crop, size, settings)
    H, W = pm.size
    feat = (-pm.face_vertices_z).unsqueeze(-1)  # (N, F, 3, 1) depth
    out, _ = rasterize(H, W, pm.face_vertices_z, pm.face_vertices_image, feat, pm.valid_faces,
                       backend=settings.backend)
    return out[..., 0].reshape(*pm.batch, H, W)


def _render_depth_at_pixels(vertices, faces, cameras, crop, size, settings) -> torch.Tensor:
    """:func:`render_depth` with the built-in backend, priced by covered pixels.

    The same values as :func:`rasterize` on :func:`project_mesh`'s face tensors (the same
    visible faces, the same interpolation) without those (N, F, 3) tensors on the CPU: the
    compiled z-buffer reads the vertices through the faces, and the graph runs from the covered
    pixels to the projected vertices, so the backward scatters P·3 values into (N·V) vertices
    instead of zero-filling and scattering per-face gradients.
    """
    B, C, H, W = _checked_batch(vertices, faces, cameras, crop, size, settings)
    ndc, depth = _project_vertices(vertices, cameras, crop, H, W, settings.near)
    f = faces.to(device=vertices.device, dtype=torch.long)
    if vertices.device.type == "cpu" and zbuffer_available():     # compiled z-buffer and interpolation
        gid = visible_faces_of_vertices(H, W, ndc, -depth, f, settings.near, settings.cull_backfaces)
        return interpolate_vertex_features_cpu(ndc, -depth, depth.unsqueeze(-1), f, gid)[..., 0].reshape(B, C, H, W)
    with torch.no_grad():
        fl = f.reshape(-1)
        fimg = ndc.detach().index_select(1, fl).reshape(B * C, -1, 3, 2)
        fz = (-depth.detach()).index_select(1, fl).reshape(B * C, -1, 3)
        gid = visible_faces(H, W, fz, fimg, _valid_faces(fz, fimg, settings.near, settings.cull_backfaces))
    return interpolate_vertex_features(H, W, ndc, -depth, depth.unsqueeze(-1), f, gid)[..., 0].reshape(B, C, H, W)


def render_face_index(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, crop: Crop | None = None,
                      size: tuple[int, int] | None = None, *,
                      settings: RasterSettings = DEFAULT_RASTER_SETTINGS) -> torch.Tensor:
    """(B, C, H, W) long index of the visible face, -1 where no surface."""
    with torch.no_grad():
        pm = project_mesh(vertices, faces, cameras, crop, size, settings)
        H, W = pm.size
        feat = pm.face_vertices_z.new_zeros(pm.face_vertices_z.shape + (1,))
        _, idx = rasterize(H, W, pm.face_vertices_z, pm.face_vertices_image, feat, pm.valid_faces,
                           backend=settings.backend)
    return idx.reshape(*pm.batch, H, W)


def render_silhouette(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, crop: Crop | None = None,
                      size: tuple[int, int] | None = None, *,
                      settings: RasterSettings = DEFAULT_RASTER_SETTINGS) -> torch.Tensor:
    """(B, C, H, W) float mask, 1 where the mesh covers the pixel centre (a hard mask: no gradient)."""
    idx = render_face_index(vertices, faces, cameras, crop, size, settings=settings)
    return (idx >= 0).to(vertices.dtype)
