"""The CPU z-buffer: which face is visible at each pixel centre, compiled with Numba.

The vectorised z-buffer of :func:`dhmlib.render.rasterize._visible_faces` spends most of its
time on per-face bookkeeping (boxes, binning by tile shape, a sort, culling) as dozens of
whole-array PyTorch ops over every (view, face) pair; at 96² a face covers about one pixel
centre, so that bookkeeping, not the pixels, sets the price. This kernel visits each view's
faces once and each face's box of pixel centres once, in compiled code, views in parallel:
its cost is the faces' box pixels plus a small per-face constant.

It computes the same thing with the same float arithmetic, operation by operation, so the
winners are the same faces (tested bit for bit against the vectorised path):

- pixel coordinates ``px = x·(W/2) + (W/2 − ½)``, ``py = y·(−H/2) + (H/2 − ½)``; the box of
  pixel centres ``[ceil(min), floor(max)]`` clamped to the image;
- edge functions and the visibility value (1/depth when perspective-correct, else z) as
  affine functions of the pixel offset from the box origin, ``g = (C + Bc·di) + A·dj``;
  boxes larger than 8 pixels are evaluated relative to the origin of their 8 × 8 tile
  (``C' = (C + A·tj) + Bc·ti``), as the tiled path does;
- inside when ``min(w0, w1, w2) ≥ −tol``; the winner has the largest value as float32,
  ties to the larger global face id.

Used by the ``"torch"`` backend for CPU tensors when Numba imports (else the vectorised path
runs); CUDA tensors always take the vectorised path.
"""
from __future__ import annotations

import numpy as np
import torch

from dhmlib.render.compiled import NUMBA_UNAVAILABLE_REASON, match_torch_threads, numba

if numba is not None:
    from numba import njit, prange

__all__ = ["zbuffer_available", "visible_faces_cpu", "visible_faces_of_vertices", "NUMBA_UNAVAILABLE_REASON"]

_TILE = 8  # the vectorised path's largest tile: bigger boxes are evaluated per 8 × 8 tile
#: tile size (rasterize._TILES = 1, 2, 3, 4, 6, 8) the vectorised path uses for a box of n pixels
_TILE_OF_SIZE = np.array([0, 1, 2, 3, 4, 6, 6, 8, 8], dtype=np.int64)


def zbuffer_available() -> bool:
    """Whether the compiled CPU z-buffer can run (see ``NUMBA_UNAVAILABLE_REASON`` if not)."""
    return numba is not None


if numba is not None:

    @njit(cache=True, parallel=True)
    def _zbuffer(xy, z, faces, valid, use_valid, near, cull, perspective, k, ramp, tile, tiles,
                 out):  # pragma: no cover - compiled
        """out (N, H, W) int64 ← global face id ``n·F + f`` of the visible face, -1 where none.

        xy (N, V, 2) NDC and z (N, V) Kaolin z of the vertices, in the work dtype; faces (F, 3);
        a face is drawn when ``valid[n, f]`` (if ``use_valid``), its three z < −near (if
        ``near`` ≥ 0), it is counter-clockwise in NDC (if ``cull``) and, perspective-correct,
        wholly in front (z < 0). k: the work dtype's constants (W/2, −H/2, W/2 − ½, H/2 − ½, 0,
        1, −tol, 1e30, W − 1, H − 1, −near); ramp: 0, 1, 2 … in the work dtype (integers as
        floats without a cast, which Numba would promote to float64); tiles[n]: the tile size
        the tiled path uses for a box of n ≤ 8 pixels.
        """
        N, H, W = out.shape
        F = faces.shape[0]
        hw, hh, ow, oh, zero, one, ntol, huge, wmax, hmax, nnear = k[0], k[1], k[2], k[3], k[4], k[5], \
            k[6], k[7], k[8], k[9], k[10]
        # int32 bit patterns of float32 values (the vectorised path's key), order-preserving when signed
        fbits = np.empty(1, dtype=np.float32)
        ibits = fbits.view(np.int32)
        floor = np.int64(0)
        if not perspective:
            fbits[0] = np.float32(-3.0e38)
            floor = np.int64(ibits[0])
            if floor < 0:
                floor = floor ^ np.int64(0x7FFFFFFF)
        V = z.shape[1]
        for n in prange(N):
            fb = np.empty(1, dtype=np.float32)
            ib32 = fb.view(np.int32)
            best_v = np.full((H, W), np.iinfo(np.int64).min, dtype=np.int64)
            best_f = np.full((H, W), -1, dtype=np.int64)
            # per-vertex terms once per view (a vertex is shared by ~6 faces): the same operations as per face
            pxv = np.empty(V, dtype=xy.dtype)
            pyv = np.empty(V, dtype=xy.dtype)
            vv = np.empty(V, dtype=z.dtype)
            for q in range(V):
                pxv[q] = xy[n, q, 0] * hw + ow
                pyv[q] = xy[n, q, 1] * hh + oh
                vv[q] = -one / z[n, q] if perspective else z[n, q]
            for f in range(F):
                r = n * F + f
                if use_valid and not valid[n, f]:
                    continue
                q0 = faces[f, 0]
                q1 = faces[f, 1]
                q2 = faces[f, 2]
                # the box of pixel centres first: at 96² most faces hold none (the tests commute)
                px0 = pxv[q0]
                px1 = pxv[q1]
                px2 = pxv[q2]
                py0 = pyv[q0]
                py1 = pyv[q1]
                py2 = pyv[q2]
                j0 = max(np.ceil(min(min(px0, px1), px2)), zero)
                j1 = min(np.floor(max(max(px0, px1), px2)), wmax)
                i0 = max(np.ceil(min(min(py0, py1), py2)), zero)
                i1 = min(np.floor(max(max(py0, py1), py2)), hmax)
                if j1 < j0 or i1 < i0:
                    continue
                z0 = z[n, q0]
                z1 = z[n, q1]
                z2 = z[n, q2]
                if near >= 0 and not (z0 < nnear and z1 < nnear and z2 < nnear):
                    continue
                if perspective and not (z0 < zero and z1 < zero and z2 < zero):
                    continue
                if cull:
                    nx0 = xy[n, q0, 0]
                    ny0 = xy[n, q0, 1]
                    nx1 = xy[n, q1, 0]
                    ny1 = xy[n, q1, 1]
                    nx2 = xy[n, q2, 0]
                    ny2 = xy[n, q2, 1]
                    if not ((nx1 - nx0) * (ny2 - ny0) - (nx2 - nx0) * (ny1 - ny0) > zero):
                        continue
                x0 = px0 - j0
                x1 = px1 - j0
                x2 = px2 - j0
                y0 = py0 - i0
                y1 = py1 - i0
                y2 = py2 - i0
                c0 = x1 * y2 - x2 * y1
                c1 = x2 * y0 - x0 * y2
                c2 = x0 * y1 - x1 * y0
                area = c0 + c1 + c2
                flat = area == zero
                inv = one / (area + (one if flat else zero))
                v0 = vv[q0]
                v1 = vv[q1]
                v2 = vv[q2]
                a0 = (y1 - y2) * inv
                a1 = (y2 - y0) * inv
                a2 = (y0 - y1) * inv
                b0 = (x2 - x1) * inv
                b1 = (x0 - x2) * inv
                b2 = (x1 - x0) * inv
                c0 = c0 * inv
                c1 = c1 * inv
                c2 = c2 * inv
                a3 = a0 * v0 + a1 * v1 + a2 * v2
                b3 = b0 * v0 + b1 * v1 + b2 * v2
                c3 = c0 * v0 + c1 * v1 + c2 * v2
                if flat:
                    c0 = c0 - huge
                ni = np.int64(i1 - i0) + 1
                nj = np.int64(j1 - j0) + 1
                big = ni > tile or nj > tile
                ibase = np.int64(i0)
                jbase = np.int64(j0)
                # the tiled path evaluates whole tiles (its tile shape ≥ the box), so do we: a
                # pixel centre just outside the box can still be inside within the tolerance
                if big:
                    ni = -(-ni // tile) * tile
                    nj = -(-nj // tile) * tile
                else:
                    ni = tiles[ni]
                    nj = tiles[nj]
                ni = min(ni, H - ibase)
                nj = min(nj, W - jbase)
                for di in range(ni):
                    ti = (di // tile) * tile if big else 0
                    ddi = ramp[di - ti]
                    for dj in range(nj):
                        tj = (dj // tile) * tile if big else 0
                        ddj = ramp[dj - tj]
                        if big:
                            e0 = (c0 + a0 * ramp[tj]) + b0 * ramp[ti]
                            e1 = (c1 + a1 * ramp[tj]) + b1 * ramp[ti]
                            e2 = (c2 + a2 * ramp[tj]) + b2 * ramp[ti]
                        else:
                            e0 = c0
                            e1 = c1
                            e2 = c2
                        g0 = (e0 + b0 * ddi) + a0 * ddj
                        g1 = (e1 + b1 * ddi) + a1 * ddj
                        g2 = (e2 + b2 * ddi) + a2 * ddj
                        if min(min(g0, g1), g2) < ntol:
                            continue
                        e3 = ((c3 + a3 * ramp[tj]) + b3 * ramp[ti]) if big else c3
                        fb[0] = np.float32((e3 + b3 * ddi) + a3 * ddj)
                        key = np.int64(ib32[0])
                        if not perspective and key < 0:
                            key = key ^ np.int64(0x7FFFFFFF)
                        i = ibase + di
                        j = jbase + dj
                        if key > best_v[i, j] or (key == best_v[i, j] and r > best_f[i, j]):
                            best_v[i, j] = key
                            best_f[i, j] = r
            for i in range(H):
                for j in range(W):
                    out[n, i, j] = best_f[i, j] if best_v[i, j] > floor else -1


def _run(H, W, xy, z, faces, valid, near, cull, perspective_correct, work):
    tol = 1e-9 if work == torch.float64 else 1e-5
    np_work = np.float64 if work == torch.float64 else np.float32
    k = np.array([0.5 * W, -0.5 * H, 0.5 * W - 0.5, 0.5 * H - 0.5, 0.0, 1.0, -tol, 1e30, W - 1, H - 1,
                  -near if near is not None else 0.0], dtype=np_work)
    ramp = np.arange(max(H, W) + _TILE, dtype=np_work)
    N = xy.shape[0]
    out = np.empty((N, H, W), dtype=np.int64)
    v = np.ones((1, 1), dtype=np.bool_) if valid is None else valid.contiguous().numpy()
    match_torch_threads()
    _zbuffer(xy.to(work).contiguous().numpy(), z.to(work).contiguous().numpy(), faces.contiguous().numpy(), v,
             valid is not None, -1.0 if near is None else float(near), bool(cull), bool(perspective_correct), k,
             ramp, _TILE, _TILE_OF_SIZE, out)
    return torch.from_numpy(out)


@torch.no_grad()
def visible_faces_cpu(H: int, W: int, fz: torch.Tensor, fimg: torch.Tensor, valid: torch.Tensor | None,
                      perspective_correct: bool) -> torch.Tensor:
    """Visible face of every pixel centre, (B, H, W) long global ids ``b·F + f``, -1 on background.

    Same inputs and result as :func:`dhmlib.render.rasterize._visible_faces` (CPU tensors):
    fz (B, F, 3) camera z (nearest = largest), fimg (B, F, 3, 2) NDC, valid (B, F) bool or None.
    """
    B, F = fz.shape[:2]
    work = torch.float64 if fz.dtype == torch.float64 else torch.float32
    faces = torch.arange(3 * F, dtype=torch.int64).reshape(F, 3)  # face tensors as 3F "vertices"
    return _run(H, W, fimg.detach().reshape(B, 3 * F, 2), fz.detach().reshape(B, 3 * F), faces, valid, None,
                False, perspective_correct, work)


@torch.no_grad()
def visible_faces_of_vertices(H: int, W: int, vertices_image: torch.Tensor, vertices_z: torch.Tensor,
                              faces: torch.Tensor, near: float, cull_backfaces: bool) -> torch.Tensor:
    """Perspective-correct z-buffer read through the faces, without per-face tensors.

    vertices_image (N, V, 2) NDC, vertices_z (N, V) Kaolin z (= −depth) of the vertices, faces
    (F, 3); faces with a vertex at depth ≤ ``near`` are skipped, and with ``cull_backfaces``
    those clockwise in NDC. Returns (N, H, W) long ``n·F + f``, -1 on background: the faces
    that :func:`visible_faces_cpu` picks from :func:`~dhmlib.render.depth.project_mesh`'s tensors.
    """
    work = torch.float64 if vertices_z.dtype == torch.float64 else torch.float32
    return _run(H, W, vertices_image.detach(), vertices_z.detach(), faces.to(torch.int64), None, float(near),
                cull_backfaces, True, work)
