"""One differentiable rasterizer call, Kaolin's shape, with a built-in PyTorch backend.

``rasterize(height, width, face_vertices_z, face_vertices_image, face_features,
valid_faces=None, backend="auto")`` follows ``kaolin.render.mesh.rasterize``:

- ``face_vertices_image`` (B, F, 3, 2): vertices in normalised image coordinates,
  ``x ∈ [-1, 1]`` left → right, ``y ∈ [-1, 1]`` **bottom → top**; row 0 of the
  output is the top (``y = 1``). Pixel (row ``i``, column ``j``) is sampled at its
  centre ``x = (2j + 1) / W − 1``, ``y = 1 − (2i + 1) / H``.
- ``face_vertices_z`` (B, F, 3): camera-space z, the camera looking along **−z**
  (OpenGL/Kaolin): points in front have ``z < 0`` and the **largest** z is the
  nearest.
- ``face_features`` (B, F, 3, D) (or a list of such tensors; then a tuple of
  feature images is returned): per-face-vertex features to interpolate.
- ``valid_faces`` (B, F) bool: faces to draw (default all).

Returns ``(features (B, H, W, D), face_idx (B, H, W) long)``, ``face_idx = -1``
and features 0 where no face covers the pixel centre.

One deliberate extension, ``perspective_correct`` (default ``True``): features are
interpolated with perspective-correct barycentrics ``b_k ∝ w_k / z_k`` (``w_k`` the
screen-space barycentrics), so interpolating camera depth gives the exact depth
of the surface, and visibility is decided on that exact depth. This needs every
drawn face in front of the camera: faces with a vertex at ``z ≥ 0`` are skipped.
``perspective_correct=False`` reproduces Kaolin's own behaviour (screen-space
linear interpolation and depth test on linearly interpolated z).

Backends:

- ``"torch"``: built in, pure PyTorch, any device. Visibility is a vectorised
  z-buffer over (face, pixel) candidates from each face's bounding box (see
  :func:`_visible_faces`); the interpolation is then computed, differentiably (a
  small autograd Function with an explicit backward), for the winning face of each
  covered pixel only. Gradients reach
  ``face_vertices_image``, ``face_vertices_z`` (through the perspective weights)
  and ``face_features`` through the visible face's barycentrics (no gradient
  from silhouette changes: coverage is a step function, as in Kaolin's ``cuda``
  rasterizer).
- ``"kaolin"``: ``kaolin.render.mesh.rasterize(..., backend="cuda")`` when Kaolin
  imports with CUDA and the inputs are on CUDA. Conventions are Kaolin's own, so
  inputs pass through unchanged; perspective-correct interpolation is obtained by
  rasterizing the features ``f / z`` and ``1 / z`` (both affine in screen space)
  and dividing. ``multiplier`` and ``eps`` go to Kaolin.
- ``"auto"``: ``"kaolin"`` when available and the inputs are on CUDA, else
  ``"torch"``.

The slow, obviously correct twin used by the tests is
:func:`dhmlib.render.reference.rasterize_reference`.
"""
from __future__ import annotations

import sys
import warnings
from typing import NamedTuple, Sequence

import torch

from dhmlib.render.zbuffer_cpu import visible_faces_cpu, zbuffer_available

__all__ = ["rasterize", "RasterOutput", "kaolin_available", "KAOLIN_UNAVAILABLE_REASON", "visible_faces",
           "interpolate_vertex_features", "resolve_backend"]

_INT64_MIN = torch.iinfo(torch.int64).min
# The z-buffer packs (face id, value) int32 pairs into int64 keys: the value must be the high word.
_LITTLE_ENDIAN = sys.byteorder == "little"
_TILES = (1, 2, 3, 4, 6, 8)  # square tile sizes; faces larger than the last are split into tiles
_INSIDE_TOL = 1e-5
_BIG = 3.0e38  # below every finite float32 value we rank, above -inf  # barycentric tolerance of the coverage test (shared edges are never missed)


def _probe_kaolin() -> tuple[object | None, str | None]:
    try:
        import kaolin  # noqa: F401
        import kaolin.render.mesh as kmesh
    except Exception as exc:  # pragma: no cover - depends on the machine
        return None, f"kaolin does not import ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():  # pragma: no cover
        return None, "kaolin imports but CUDA is not available (its rasterizer is CUDA-only)"
    return kmesh, None  # pragma: no cover


_KAOLIN_MESH, KAOLIN_UNAVAILABLE_REASON = _probe_kaolin()


def kaolin_available() -> bool:
    """Whether the ``"kaolin"`` backend can run (see ``KAOLIN_UNAVAILABLE_REASON`` if not)."""
    return _KAOLIN_MESH is not None


class RasterOutput(NamedTuple):
    """Result of :func:`rasterize`; unpacks like Kaolin's ``(features, face_idx)``.

    Attributes:
        features: (B, H, W, D) interpolated features (0 on background), or a tuple
            of such tensors when ``face_features`` was a list.
        face_idx: (B, H, W) long, index of the visible face in [0, F), -1 on background.
    """

    features: torch.Tensor | tuple[torch.Tensor, ...]
    face_idx: torch.Tensor


# ---------------------------------------------------------------------------- validation
def _check_inputs(height, width, face_vertices_z, face_vertices_image, face_features, valid_faces):
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"rasterize: expected {name} a positive int, got {v!r}")
    if face_vertices_z.dim() != 3 or face_vertices_z.shape[-1] != 3:
        raise ValueError(f"rasterize: expected face_vertices_z (B, F, 3), got {tuple(face_vertices_z.shape)}")
    B, F = face_vertices_z.shape[:2]
    if B == 0:
        raise ValueError("rasterize: expected a batch of at least one image, got B = 0")
    if tuple(face_vertices_image.shape) != (B, F, 3, 2):
        raise ValueError(f"rasterize: expected face_vertices_image (B, F, 3, 2) = {(B, F, 3, 2)} to match "
                         f"face_vertices_z, got {tuple(face_vertices_image.shape)}")
    if face_features.dim() != 4 or tuple(face_features.shape[:3]) != (B, F, 3):
        raise ValueError(f"rasterize: expected face_features (B, F, 3, D) with (B, F) = {(B, F)}, "
                         f"got {tuple(face_features.shape)}")
    if valid_faces is not None and tuple(valid_faces.shape) != (B, F):
        raise ValueError(f"rasterize: expected valid_faces (B, F) = {(B, F)}, got {tuple(valid_faces.shape)}")
    if not (face_vertices_z.is_floating_point() and face_vertices_image.is_floating_point()
            and face_features.is_floating_point()):
        raise TypeError("rasterize: expected floating point face_vertices_z, face_vertices_image, face_features")
    for name, t in (("face_vertices_z", face_vertices_z), ("face_vertices_image", face_vertices_image)):
        if bool(torch.isfinite(t.detach().sum())):  # fast path: one reduction
            continue
        bad = ~torch.isfinite(t.detach())
        if valid_faces is not None:
            bad = bad & valid_faces.reshape(B, F, *([1] * (t.dim() - 2)))
        if bool(bad.any()):
            raise ValueError(f"rasterize: expected finite {name} (on valid faces), found NaN or inf")


# ---------------------------------------------------------------------------- public call
def rasterize(height: int, width: int, face_vertices_z: torch.Tensor, face_vertices_image: torch.Tensor,
              face_features: torch.Tensor | Sequence[torch.Tensor], valid_faces: torch.Tensor | None = None,
              backend: str = "auto", *, multiplier: int | None = None, eps: float | None = None,
              perspective_correct: bool = True, max_candidates: int | None = None) -> RasterOutput:
    """Rasterize faces and interpolate per-face-vertex features (Kaolin's call shape; see module doc).

    Args:
        height, width: output size H, W (pixels).
        face_vertices_z: (B, F, 3) camera z, camera looking along −z (nearest = largest z).
        face_vertices_image: (B, F, 3, 2) normalised image coordinates (x right, y up, [-1, 1]).
        face_features: (B, F, 3, D) features, or a list of (B, F, 3, D_i).
        valid_faces: (B, F) bool mask of faces to draw (default all).
        backend: ``"auto"``, ``"torch"`` or ``"kaolin"``.
        multiplier, eps: Kaolin's numerical settings (``"kaolin"`` only; ignored with a warning
            by ``"torch"``).
        perspective_correct: perspective-correct interpolation and exact-depth visibility
            (default); ``False`` gives Kaolin's screen-space interpolation.
        max_candidates: ``"torch"`` only: (face, pixel) candidates evaluated at once (about 40
            bytes each); default 2¹⁸ on CPU (cache-sized chunks are fastest there), 2²² on GPU.

    Returns:
        :class:`RasterOutput` ``(features (B, H, W, D), face_idx (B, H, W))``.

    Raises:
        ValueError: bad sizes, mismatched batch or face counts, non-finite coordinates on
            valid faces, an unknown backend, or ``"kaolin"`` requested where it cannot run.
    """
    is_list = isinstance(face_features, (list, tuple))
    feats = torch.cat(list(face_features), dim=-1) if is_list else face_features
    _check_inputs(height, width, face_vertices_z, face_vertices_image, feats, valid_faces)
    backend = resolve_backend(backend, face_vertices_z)
    if backend == "torch":
        if multiplier is not None or eps is not None:
            warnings.warn("rasterize(backend='torch') ignores Kaolin's multiplier and eps", stacklevel=2)
        out, idx = _rasterize_torch(height, width, face_vertices_z, face_vertices_image, feats, valid_faces,
                                    perspective_correct, max_candidates)
    elif backend == "kaolin":
        if _KAOLIN_MESH is None:
            raise ValueError(f"rasterize: backend 'kaolin' unavailable: {KAOLIN_UNAVAILABLE_REASON}")
        if not face_vertices_z.is_cuda:
            raise ValueError("rasterize: backend 'kaolin' needs CUDA tensors, got "
                             f"{face_vertices_z.device}; use backend='torch' on CPU")
        out, idx = _rasterize_kaolin(height, width, face_vertices_z, face_vertices_image, feats, valid_faces,
                                     perspective_correct, multiplier, eps)
    else:
        raise ValueError(f"rasterize: expected backend 'auto', 'torch' or 'kaolin', got {backend!r}")
    if is_list:
        out = tuple(torch.split(out, [f.shape[-1] for f in face_features], dim=-1))
    return RasterOutput(out, idx)


# ---------------------------------------------------------------------------- kaolin backend
def _rasterize_kaolin(H, W, fz, fimg, feats, valid, perspective_correct, multiplier, eps):  # pragma: no cover
    kw = {}
    if multiplier is not None:
        kw["multiplier"] = multiplier
    if eps is not None:
        kw["eps"] = eps
    if perspective_correct:
        front = (fz < 0).all(-1)
        valid = front if valid is None else (valid & front)
        q = -1.0 / torch.where(fz < 0, fz, -torch.ones_like(fz))  # 1/depth, affine in screen space
        feats = torch.cat([feats * q.unsqueeze(-1), q.unsqueeze(-1)], dim=-1)
    out, idx = _KAOLIN_MESH.rasterize(H, W, fz, fimg, feats, valid_faces=valid, backend="cuda", **kw)
    if perspective_correct:
        fg = (idx >= 0).unsqueeze(-1)
        den = torch.where(fg, out[..., -1:], torch.ones_like(out[..., -1:]))
        out = torch.where(fg, out[..., :-1] / den, torch.zeros_like(out[..., :-1]))
    return out, idx


# ---------------------------------------------------------------------------- torch backend
# Performance notes (CPU): reductions over a trailing dimension of size 3 are ~20× slower
# than elementwise ops in PyTorch, so per-face data is kept as separate columns
# ("structure of arrays") and combined with elementwise ops only.

def _pixel_coords(xy: torch.Tensor, H: int, W: int):
    """(M, 6) NDC ``x0 y0 x1 y1 x2 y2`` → pixel-index coordinates ``[px0, px1, px2], [py0, py1, py2]``.

    Column ``j`` ↔ ``px = j`` at the pixel centre, row ``i`` ↔ ``py = i`` (row 0 at NDC y = 1).
    """
    px = [xy[:, 2 * k] * (0.5 * W) + (0.5 * W - 0.5) for k in range(3)]
    py = [xy[:, 2 * k + 1] * (-0.5 * H) + (0.5 * H - 0.5) for k in range(3)]
    return px, py


def _boxes(px, py, H: int, W: int):
    """Bounding boxes of pixel centres ``i0, j0, i1, j1`` (float, whole numbers, clamped to the image)."""
    j0 = torch.minimum(torch.minimum(px[0], px[1]), px[2]).ceil_().clamp_(min=0)
    j1 = torch.maximum(torch.maximum(px[0], px[1]), px[2]).floor_().clamp_(max=W - 1)
    i0 = torch.minimum(torch.minimum(py[0], py[1]), py[2]).ceil_().clamp_(min=0)
    i1 = torch.maximum(torch.maximum(py[0], py[1]), py[2]).floor_().clamp_(max=H - 1)
    return i0, j0, i1, j1


def _face_coefficients(px, py, z, i0, j0, perspective_correct: bool) -> list[torch.Tensor]:
    """Affine functions of the pixel index for faces (M,), relative to their box origin (no grad).

    ``px``, ``py``, ``z``: three (M,) tensors each (per face vertex); ``i0``, ``j0``: box origins.

    ``g(i0 + di, j0 + dj) = A·dj + Bc·di + C`` for the three barycentrics ``w0, w1, w2``
    and the visibility value ``v`` (``1/depth`` when perspective-correct, else ``z``;
    larger is nearer). Shifting to the box origin first keeps float32 precise.

    Returns:
        12 tensors (M,): ``A0..A3, Bc0..Bc3, C0..C3`` (index 3 = v). A zero-area face gets
        ``C0 = -1e30`` so that it never covers a pixel while its values stay finite.
    """
    x0, x1, x2 = (p - j0 for p in px)
    y0, y1, y2 = (p - i0 for p in py)
    # w_k(p) = ((x_{k+1} − p_x)(y_{k+2} − p_y) − (x_{k+2} − p_x)(y_{k+1} − p_y)) / area
    A = [y1 - y2, y2 - y0, y0 - y1]
    Bc = [x2 - x1, x0 - x2, x1 - x0]
    C = [x1 * y2 - x2 * y1, x2 * y0 - x0 * y2, x0 * y1 - x1 * y0]
    area = C[0] + C[1] + C[2]
    flat = area == 0
    inv = 1.0 / (area + flat)  # no torch.where (slow on CPU)
    val = [-1.0 / q for q in z] if perspective_correct else list(z)
    rows = []
    for part in (A, Bc, C):
        part = [q * inv for q in part]
        rows += part + [part[0] * val[0] + part[1] * val[1] + part[2] * val[2]]
    rows[8] = rows[8] - flat * 1e30
    return rows


def _tile_index(size: torch.Tensor) -> torch.Tensor:
    """Index into ``_TILES`` = (1, 2, 3, 4, 6, 8) of the smallest tile ≥ ``size`` (float, ≥ 1); 6 if > 8."""
    s = size.long()
    return s.clamp(max=4) - 1 + (s > 4).long() + (s > 6).long() + (s > 8).long()


def _orderable(bits: torch.Tensor) -> torch.Tensor:
    """int32 bit patterns of float32 → int32 with the same order as the floats."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def _scatter_tiles(zbuf: torch.Tensor, Ti: int, Tj: int, Wp: int, face_id: torch.Tensor, coef: torch.Tensor,
                   base: torch.Tensor, signed: bool, max_candidates: int, tol: float):
    """z-buffer update from tiles of Ti×Tj pixel centres (no grad).

    Args:
        zbuf: (B·Hp·Wp,) int64 keys, viewed as int32 pairs ``(face id, orderable float32 value)``
            (little-endian: value in the high word), updated in place by ``amax``.
        face_id: (N,) int32 global face ids ``b·F + f`` (< 2³¹).
        coef: 12 × (N,) ``A, Bc, C`` of (w0, w1, w2, v) relative to each tile's origin (separate
            tensors: one big (12, N) block would cost page faults on every call).
        base: (N,) long flat index of each tile's origin in ``zbuf``.
    """
    dev = zbuf.device
    # faces on the last (contiguous) axis: broadcasts over tiny tile axes are slow otherwise
    di = torch.arange(Ti, device=dev, dtype=coef[0].dtype).reshape(Ti, 1)
    dj = torch.arange(Tj, device=dev, dtype=coef[0].dtype).reshape(Tj, 1)
    offs = (torch.arange(Ti, device=dev).reshape(Ti, 1) * Wp + torch.arange(Tj, device=dev)).reshape(Ti, Tj, 1)
    step = max(1, max_candidates // (Ti * Tj))
    for s in range(0, face_id.shape[0], step):
        A, Bc, C = (torch.stack([c[s:s + step] for c in coef[4 * q:4 * q + 4]]).unsqueeze(1) for q in range(3))
        row = (C + Bc * di).unsqueeze(2)  # (4, Ti, 1, n): value at (di, 0)
        col = (A * dj).unsqueeze(1)  # (4, 1, Tj, n)
        g = row + col  # (4, Ti, Tj, n)
        inside = torch.minimum(torch.minimum(g[0], g[1]), g[2]) >= -tol
        # mask by arithmetic (torch.where is ~8× slower on CPU): outside → 0 (perspective: inside
        # values are > 0) or → -_BIG (signed values)
        v = g[3] * inside if not signed else g[3] * inside - (~inside) * _BIG
        if v.dtype != torch.float32:
            v = v.float()
        bits = v.view(torch.int32)
        if signed:
            bits = _orderable(bits)
        key = torch.empty(bits.shape + (2,), dtype=torch.int32, device=dev)
        key[..., 0] = face_id[s:s + step]
        key[..., 1] = bits
        key = key.view(torch.int64).squeeze(-1)  # (Ti, Tj, n)
        idx = base[s:s + step] + offs  # (Ti, Tj, n)
        zbuf.scatter_reduce_(0, idx.reshape(-1), key.reshape(-1), "amax", include_self=True)


def _draw_bins(zbuf, counts, fid32, coef, base_all, ni, nj, Wp, signed, max_candidates, tol):
    """Draw faces grouped by tile shape (``counts`` per shape index, then the "big" group)."""
    nt = len(_TILES)
    Tm = _TILES[-1]
    dev = zbuf.device
    start = 0
    for k, cnt in enumerate(counts):
        sl = slice(start, start + cnt)
        start += cnt
        if cnt == 0:
            continue
        if k < nt * nt:
            _scatter_tiles(zbuf, _TILES[k // nt], _TILES[k % nt], Wp, fid32[sl], [c[sl] for c in coef],
                           base_all[sl], signed, max_candidates, tol)
            continue
        # cut large faces into Tm×Tm tiles
        nti = (ni[sl] + Tm - 1) // Tm
        ntj = (nj[sl] + Tm - 1) // Tm
        cnt_t = nti * ntj
        item = torch.repeat_interleave(torch.arange(sl.start, sl.stop, device=dev), cnt_t)
        first = torch.cumsum(cnt_t, 0) - cnt_t
        local = torch.arange(int(cnt_t.sum()), device=dev) - torch.repeat_interleave(first, cnt_t)
        ntj_i = torch.repeat_interleave(ntj, cnt_t)
        ti, tj = (local // ntj_i) * Tm, (local % ntj_i) * Tm
        c = [x.index_select(0, item) for x in coef]
        for q in range(4):
            c[8 + q] = c[8 + q] + c[q] * tj.to(c[q].dtype) + c[4 + q] * ti.to(c[q].dtype)
        _scatter_tiles(zbuf, Tm, Tm, Wp, fid32[item], c, base_all[item] + ti * Wp + tj, signed,
                       max_candidates, tol)


@torch.no_grad()
def _visible_faces(H: int, W: int, fz: torch.Tensor, fimg: torch.Tensor, valid: torch.Tensor | None,
                   perspective_correct: bool, max_candidates: int) -> torch.Tensor:
    """Visible face of every pixel centre: (B, H, W) long global ids ``b·F + f``, -1 on background.

    1. Per face (vectorised): bounding box of pixel centres, validity, orientation.
    2. One int16 sort groups faces by (phase, tile shape ``Ti × Tj`` with ``Ti, Tj`` in
       ``_TILES``); faces larger than the largest tile are cut into tiles of that size.
    3. Per group, tiles are evaluated densely (faces on the contiguous axis) with precomputed
       affine edge functions and an affine visibility value (1/depth); winners by
       ``scatter_reduce(amax)`` over a packed int64 key (value bits high, face id low;
       equal values → larger face id), in chunks of ``max_candidates``.
    4. Phase 1 draws faces facing the camera; phase 2 first drops faces whose nearest point is
       behind the farthest surface drawn in every 8×8 block their box touches (exact), then
       draws the rest.

    The z-buffer is padded by at least one tile on the bottom/right so tiles never wrap.
    """
    if not _LITTLE_ENDIAN:  # pragma: no cover
        raise RuntimeError("rasterize(backend='torch') packs z-buffer keys for little-endian machines only")
    B, F = fz.shape[:2]
    dev = fz.device
    work = torch.float64 if fz.dtype == torch.float64 else torch.float32
    tol = 1e-9 if work == torch.float64 else _INSIDE_TOL
    xy_all = fimg.detach().reshape(B * F, 6)
    z_all = fz.detach().reshape(B * F, 3)
    px, py = _pixel_coords(xy_all.to(work), H, W)
    i0, j0, i1, j1 = _boxes(px, py, H, W)
    ok = (j1 >= j0) & (i1 >= i0)
    if valid is not None:
        ok &= valid.reshape(-1)
    if perspective_correct:
        ok &= (z_all[:, 0] < 0) & (z_all[:, 1] < 0) & (z_all[:, 2] < 0)
    Tm = _TILES[-1]
    Hp, Wp = -(-(H + Tm) // Tm) * Tm, -(-(W + Tm) // Tm) * Tm  # ≥ one tile of padding, whole Tm×Tm blocks
    zbuf = torch.full((B * Hp * Wp,), _INT64_MIN, dtype=torch.int64, device=dev)
    signed = not perspective_correct
    nt = len(_TILES)
    nb = nt * nt + 1  # tile shapes + "big", per phase
    # Two phases (perspective mode): faces facing the camera (counter-clockwise in NDC, i.e.
    # clockwise in pixel rows/columns) first, then the others, each skipped when it lies
    # entirely behind the farthest surface already drawn in every Tm×Tm block its box
    # touches. Exact (a conservative occlusion test); removes most back faces of closed
    # meshes; any orientation convention stays correct, only slower.
    if perspective_correct:
        phase = ((px[1] - px[0]) * (py[2] - py[0]) - (px[2] - px[0]) * (py[1] - py[0])) >= 0
    else:
        phase = torch.zeros_like(ok)
    # group faces by phase and tile shape with one small-integer sort, then gather their rows once
    bi, bj = _tile_index(i1 - i0 + 1), _tile_index(j1 - j0 + 1)  # smallest tile ≥ size; nt if too large
    big = (bi == nt) | (bj == nt)
    binid = (bi * nt + bj) * ~big + (nt * nt) * big + nb * phase
    binid = (binid * ok + (2 * nb) * ~ok).to(torch.int16)
    binid, order = torch.sort(binid, stable=True)
    counts = torch.bincount(binid.long(), minlength=2 * nb + 1).tolist()[:2 * nb]
    M = sum(counts)
    order = order[:M]
    if M:
        rows = xy_all.index_select(0, order).to(work).T.contiguous()  # (6, M) rows: contiguous maths
        zr = z_all.index_select(0, order).to(work).T.contiguous()  # (3, M)
        px, py = [rows[0] * (0.5 * W) + (0.5 * W - 0.5), rows[2] * (0.5 * W) + (0.5 * W - 0.5),
                  rows[4] * (0.5 * W) + (0.5 * W - 0.5)], \
            [rows[1] * (-0.5 * H) + (0.5 * H - 0.5), rows[3] * (-0.5 * H) + (0.5 * H - 0.5),
             rows[5] * (-0.5 * H) + (0.5 * H - 0.5)]
        i0, j0, i1, j1 = _boxes(px, py, H, W)
        ni = (i1 - i0 + 1).long()
        nj = (j1 - j0 + 1).long()
        b = order // F
        base_all = (b * Hp + i0.long()) * Wp + j0.long()
        fid32 = order.to(torch.int32)

        def draw(sel, cnts):
            coef = _face_coefficients([p[sel] for p in px], [p[sel] for p in py], [q[sel] for q in zr],
                                      i0[sel], j0[sel], perspective_correct)
            _draw_bins(zbuf, cnts, fid32[sel], coef, base_all[sel], ni[sel], nj[sel], Wp, signed,
                       max_candidates, tol)

        n1 = sum(counts[:nb])
        if n1:
            draw(slice(0, n1), counts[:nb])
        if n1 < M:  # phase 2: drop faces hidden behind phase 1, then draw the rest
            p2 = slice(n1, M)
            nearest = torch.maximum(torch.maximum(zr[0, p2], zr[1, p2]), zr[2, p2])  # z < 0: max = nearest
            qmax = (-1.0 / nearest).float() * (1 + 1e-5)  # 1/depth of the face's nearest point
            Hb, Wb = Hp // Tm, Wp // Tm
            q = zbuf.view(torch.int32)[1::2].contiguous().view(torch.float32).reshape(B, 1, Hp, Wp)
            far = -torch.nn.functional.max_pool2d(-q.clamp_min(0), Tm, Tm)  # min 1/depth per block, 0 if empty
            far = far.reshape(-1)
            bb = b[p2] * Hb
            r0, r1 = i0[p2].long() // Tm, (i0[p2].long() + ni[p2] - 1) // Tm
            c0, c1 = j0[p2].long() // Tm, (j0[p2].long() + nj[p2] - 1) // Tm
            blk = torch.minimum(torch.minimum(far[(bb + r0) * Wb + c0], far[(bb + r0) * Wb + c1]),
                                torch.minimum(far[(bb + r1) * Wb + c0], far[(bb + r1) * Wb + c1]))
            show = ((qmax >= blk) | (ni[p2] > Tm) | (nj[p2] > Tm)).nonzero().squeeze(-1) + n1
            if show.numel():
                draw(show, torch.bincount(binid[show].long() - nb, minlength=nb).tolist())
    key = zbuf.view(torch.int32).reshape(B, Hp, Wp, 2)[:, :H, :W]
    floor = _orderable(torch.tensor(-_BIG, dtype=torch.float32).view(torch.int32)) if signed else 0
    fg = key[..., 1] > floor  # int64-min init and masked candidates are at or below the floor
    return (key[..., 0].long() + 1) * fg - 1


class _Interpolate(torch.autograd.Function):
    """Barycentric interpolation at P pixels with a hand-written backward.

    Autograd through column slices of (P, 6) tensors allocates a zero-filled (P, 6) gradient
    per slice; this Function keeps everything as (3, P) rows and scatters each input's
    gradient once. Maths, per pixel with vertex offsets ``d_k = v_k − p`` (NDC):

    - ``e_k = dx_{k+1} dy_{k+2} − dx_{k+2} dy_{k+1}`` (∝ screen-space barycentric ``w_k``)
    - ``u_k = e_k / z_k`` when perspective-correct (else ``u_k = e_k``), ``b_k = u_k / Σ u``
    - ``out = Σ b_k f_k``

    Backward with ``g = ∂L/∂out``: ``∂L/∂f_k = b_k g``; ``gb_k = ⟨g, f_k⟩``;
    ``gu_k = (gb_k − Σ_j b_j gb_j) / Σ u``; ``∂L/∂z_k = −gu_k u_k / z_k``; ``ge_k = gu_k / z_k``;
    ``∂L/∂x_m = ge_{m−1} dy_{m+1} − ge_{m+1} dy_{m−1}``, ``∂L/∂y_m = ge_{m+1} dx_{m−1} − ge_{m−1} dx_{m+1}``.
    """

    @staticmethod
    def forward(ctx, fimg, fz, feats, f, x, y, perspective: bool):
        # f None: fimg (P, 6), fz (P, 3), feats (P, 3, D) are already the pixels' faces
        tri = fimg if f is None else fimg.index_select(0, f)  # (P, 6) x0 y0 x1 y1 x2 y2
        dx = [tri[:, 2 * k] - x for k in range(3)]  # vertex − pixel, three (P,)
        dy = [tri[:, 2 * k + 1] - y for k in range(3)]
        e = [dx[(k + 1) % 3] * dy[(k + 2) % 3] - dx[(k + 2) % 3] * dy[(k + 1) % 3] for k in range(3)]
        if perspective:
            zf = fz if f is None else fz.index_select(0, f)
            z = [zf[:, k].contiguous() for k in range(3)]
            u = [e[k] / z[k] for k in range(3)]
        else:
            z, u = [None] * 3, e
        inv_s = 1.0 / (u[0] + u[1] + u[2])
        b = [u[k] * inv_s for k in range(3)]
        fv = feats if f is None else feats.index_select(0, f)  # (P, 3, D)
        vals = b[0].unsqueeze(-1) * fv[:, 0] + b[1].unsqueeze(-1) * fv[:, 1] + b[2].unsqueeze(-1) * fv[:, 2]
        ctx.save_for_backward(feats, f, inv_s, *dx, *dy, *b, *(z if perspective else ()))
        ctx.gathered = f is None
        ctx.perspective = perspective
        ctx.shapes = (fimg.shape, fz.shape)
        return vals

    @staticmethod
    def backward(ctx, g):
        feats, f, inv_s, *rest = ctx.saved_tensors
        dx, dy, b = rest[0:3], rest[3:6], rest[6:9]
        z = rest[9:12] if ctx.perspective else None
        fimg_shape, fz_shape = ctx.shapes
        g_fimg = g_fz = g_feats = None
        D = feats.shape[-1]
        if ctx.needs_input_grad[2]:
            gfv = torch.stack([b[k].unsqueeze(-1) * g for k in range(3)], 1)  # (P, 3, D)
            g_feats = gfv if ctx.gathered else torch.zeros_like(feats).index_add_(0, f, gfv)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            fv = feats if ctx.gathered else feats.index_select(0, f)  # (P, 3, D)
            if D == 1:
                gb = [g[:, 0] * fv[:, k, 0] for k in range(3)]
            else:
                gb = [(g * fv[:, k]).sum(-1) for k in range(3)]
            gbar = b[0] * gb[0] + b[1] * gb[1] + b[2] * gb[2]
            gu = [(gb[k] - gbar) * inv_s for k in range(3)]
            if ctx.perspective:
                ge = [gu[k] / z[k] for k in range(3)]
                if ctx.needs_input_grad[1]:
                    gz = torch.stack([-ge[k] * b[k] / inv_s for k in range(3)], 1)  # −gu_k u_k / z_k
                    g_fz = gz if ctx.gathered else \
                        torch.zeros(fz_shape, dtype=gz.dtype, device=gz.device).index_add_(0, f, gz)
            else:
                ge = gu
            if ctx.needs_input_grad[0]:
                cols = []
                for m in range(3):
                    mm, mp = (m - 1) % 3, (m + 1) % 3
                    cols.append(ge[mm] * dy[mp] - ge[mp] * dy[mm])  # ∂L/∂x_m
                    cols.append(ge[mp] * dx[mm] - ge[mm] * dx[mp])  # ∂L/∂y_m
                gt = torch.stack(cols, 1)  # (P, 6)
                g_fimg = gt if ctx.gathered else \
                    torch.zeros(fimg_shape, dtype=gt.dtype, device=gt.device).index_add_(0, f, gt)
        return g_fimg, g_fz, g_feats, None, None, None, None


def _interpolate(H: int, W: int, fz: torch.Tensor, fimg: torch.Tensor, feats: torch.Tensor,
                 gid: torch.Tensor, perspective_correct: bool) -> torch.Tensor:
    """Differentiable interpolation at covered pixels.

    Args:
        gid: (B, H, W) long global face ids (``b·F + f``), -1 on background.

    Returns:
        (B, H, W, D) features; autograd reaches ``fimg``, ``fz`` and ``feats``.
    """
    B, F = fz.shape[:2]
    D = feats.shape[-1]
    flat = gid.reshape(-1)
    pix = (flat >= 0).nonzero().squeeze(-1)  # (P,)
    f = flat[pix]
    dtype = torch.promote_types(torch.promote_types(fimg.dtype, fz.dtype), feats.dtype)
    out = torch.zeros(B * H * W, D, dtype=dtype, device=feats.device)
    if pix.numel() == 0:
        return out.reshape(B, H, W, D) + 0 * feats.sum()  # keep the graph connected
    j = (pix % W).to(dtype)
    i = ((pix // W) % H).to(dtype)
    x = (2 * j + 1) / W - 1  # pixel centre, NDC
    y = 1 - (2 * i + 1) / H
    vals = _Interpolate.apply(fimg.reshape(B * F, 6).to(dtype), fz.reshape(B * F, 3).to(dtype),
                              feats.reshape(B * F, 3, D).to(dtype), f, x, y, perspective_correct)
    return out.index_copy(0, pix, vals).reshape(B, H, W, D)


def interpolate_vertex_features(H: int, W: int, vertices_image: torch.Tensor, vertices_z: torch.Tensor,
                                vertex_features: torch.Tensor, faces: torch.Tensor,
                                gid: torch.Tensor) -> torch.Tensor:
    """Perspective-correct interpolation of per-vertex features at the covered pixels.

    What :func:`rasterize` interpolates from face tensors, read from the vertices instead, so
    that the graph (and the backward's scatter) is as large as the covered pixels:

    Args:
        vertices_image: (N, V, 2) normalised image coordinates.
        vertices_z: (N, V) Kaolin-convention z (= −depth, < 0 in front).
        vertex_features: (N, V, D).
        faces: (F, 3) long.
        gid: (N, H, W) long global visible-face ids ``n·F + f`` (:func:`visible_faces`), -1 on background.

    Returns:
        (N, H, W, D); autograd reaches the three vertex tensors.
    """
    N, V = vertices_z.shape
    F = faces.shape[0]
    D = vertex_features.shape[-1]
    flat = gid.reshape(-1)
    pix = (flat >= 0).nonzero().squeeze(-1)  # (P,)
    dtype = torch.promote_types(torch.promote_types(vertices_image.dtype, vertices_z.dtype), vertex_features.dtype)
    out = torch.zeros(N * H * W, D, dtype=dtype, device=vertex_features.device)
    if pix.numel() == 0:
        return out.reshape(N, H, W, D) + 0 * vertex_features.sum()  # keep the graph connected
    g = flat[pix]
    n = g // F
    vid = (faces.index_select(0, g - n * F) + (n * V).unsqueeze(-1)).reshape(-1)  # (P·3,)
    P = pix.shape[0]
    tri = vertices_image.reshape(N * V, 2).to(dtype).index_select(0, vid).reshape(P, 6)
    zf = vertices_z.reshape(N * V).to(dtype).index_select(0, vid).reshape(P, 3)
    fv = vertex_features.reshape(N * V, D).to(dtype).index_select(0, vid).reshape(P, 3, D)
    j = (pix % W).to(dtype)
    i = ((pix // W) % H).to(dtype)
    x = (2 * j + 1) / W - 1  # pixel centre, NDC
    y = 1 - (2 * i + 1) / H
    vals = _Interpolate.apply(tri, zf, fv, None, x, y, True)
    return out.index_copy(0, pix, vals).reshape(N, H, W, D)


def resolve_backend(backend: str, like: torch.Tensor) -> str:
    """``"auto"`` → ``"kaolin"`` when Kaolin runs and ``like`` is on CUDA, else ``"torch"``."""
    if backend == "auto":
        return "kaolin" if (_KAOLIN_MESH is not None and like.is_cuda) else "torch"
    return backend


def visible_faces(H: int, W: int, fz: torch.Tensor, fimg: torch.Tensor, valid: torch.Tensor | None,
                  perspective_correct: bool = True, max_candidates: int | None = None) -> torch.Tensor:
    """The built-in backend's z-buffer: (B, H, W) long global ids ``b·F + f`` of the visible faces, -1 on background.

    CPU tensors go to the compiled kernel (:mod:`dhmlib.render.zbuffer_cpu`) when Numba imports,
    anything else to the vectorised :func:`_visible_faces`; both choose the same faces.
    """
    if fz.device.type == "cpu" and zbuffer_available():
        return visible_faces_cpu(H, W, fz, fimg, valid, perspective_correct)
    if max_candidates is None:
        max_candidates = (1 << 22) if fz.is_cuda else (1 << 18)
    return _visible_faces(H, W, fz, fimg, valid, perspective_correct, max_candidates)


def _rasterize_torch(H, W, fz, fimg, feats, valid, perspective_correct, max_candidates):
    B, F = fz.shape[:2]
    gid = visible_faces(H, W, fz, fimg, valid, perspective_correct, max_candidates)
    out = _interpolate(H, W, fz, fimg, feats, gid, perspective_correct)
    fg = gid >= 0
    boff = torch.arange(B, device=gid.device).reshape(B, 1, 1) * F
    face_idx = (gid - boff + 1) * fg - 1  # global b·F + f → f (no torch.where / remainder: slow on CPU)
    return out, face_idx
