"""Exact point-to-triangle distance: vectorized, and a compiled nearest-triangle search over a grid
(the surface distances of the evaluation)."""
from __future__ import annotations

import numpy as np


def point_triangle_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact distance from points p (..., 3) to triangles (a, b, c) (..., 3), by Voronoi region.

    The region tests of Ericson, *Real-Time Collision Detection*, §5.1.5, vectorized; degenerate
    triangles fall back to the nearest of their vertices and edges.
    """
    def dot(x, y):
        return (x * y).sum(-1)

    ab, ac, ap = b - a, c - a, p - a
    bp, cp = p - b, p - c
    d1, d2 = dot(ab, ap), dot(ac, ap)
    d3, d4 = dot(ab, bp), dot(ac, bp)
    d5, d6 = dot(ab, cp), dot(ac, cp)
    vc, vb, va = d1 * d4 - d3 * d2, d5 * d2 - d1 * d6, d3 * d6 - d5 * d4
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ab = d1 / (d1 - d3)
        t_ac = d2 / (d2 - d6)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        den = va + vb + vc
        v, w = vb / den, vc / den
    cases = [
        ((d1 <= 0) & (d2 <= 0), a),
        ((d3 >= 0) & (d4 <= d3), b),
        ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + t_ab[..., None] * ab),
        ((d6 >= 0) & (d5 <= d6), c),
        ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + t_ac[..., None] * ac),
        ((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0), b + t_bc[..., None] * (c - b)),
    ]
    q = a + v[..., None] * ab + w[..., None] * ac
    for cond, point in reversed(cases):          # the first matching region wins
        q = np.where(cond[..., None], point, q)
    dist = np.linalg.norm(p - q, axis=-1)
    bad = ~np.isfinite(dist)
    if bad.any():                                 # degenerate triangle: vertices and edges
        def seg(x, y):
            d = y - x
            t = np.clip(dot(p - x, d) / np.maximum(dot(d, d), 1e-300), 0, 1)
            return np.linalg.norm(p - x - t[..., None] * d, axis=-1)
        dist = np.where(bad, np.minimum(np.minimum(seg(a, b), seg(b, c)), seg(c, a)), dist)
    return dist


try:  # the compiled grid search below (Numba is a dependency; a broken install falls back to brute force)
    from numba import njit
except Exception:  # pragma: no cover - depends on the installation
    njit = None


def _seg2(px, py, pz, ax, ay, az, bx, by, bz):
    """Squared distance from a point to the segment a–b (scalars)."""
    dx, dy, dz = bx - ax, by - ay, bz - az
    dd = dx * dx + dy * dy + dz * dz
    t = 0.0
    if dd > 0:
        t = ((px - ax) * dx + (py - ay) * dy + (pz - az) * dz) / dd
        t = min(max(t, 0.0), 1.0)
    ex, ey, ez = px - ax - t * dx, py - ay - t * dy, pz - az - t * dz
    return ex * ex + ey * ey + ez * ez


def _point_triangle_distance2(px, py, pz, ax, ay, az, bx, by, bz, cx, cy, cz):
    """Squared point-triangle distance by Voronoi region (the same tests as point_triangle_distance)."""
    abx, aby, abz = bx - ax, by - ay, bz - az
    acx, acy, acz = cx - ax, cy - ay, cz - az
    apx, apy, apz = px - ax, py - ay, pz - az
    d1 = abx * apx + aby * apy + abz * apz
    d2 = acx * apx + acy * apy + acz * apz
    if d1 <= 0 and d2 <= 0:
        return apx * apx + apy * apy + apz * apz
    bpx, bpy, bpz = px - bx, py - by, pz - bz
    d3 = abx * bpx + aby * bpy + abz * bpz
    d4 = acx * bpx + acy * bpy + acz * bpz
    if d3 >= 0 and d4 <= d3:
        return bpx * bpx + bpy * bpy + bpz * bpz
    vc = d1 * d4 - d3 * d2
    if vc <= 0 and d1 >= 0 and d3 <= 0 and d1 - d3 != 0:
        t = d1 / (d1 - d3)
        qx, qy, qz = ax + t * abx, ay + t * aby, az + t * abz
        return (px - qx) ** 2 + (py - qy) ** 2 + (pz - qz) ** 2
    cpx, cpy, cpz = px - cx, py - cy, pz - cz
    d5 = abx * cpx + aby * cpy + abz * cpz
    d6 = acx * cpx + acy * cpy + acz * cpz
    if d6 >= 0 and d5 <= d6:
        return cpx * cpx + cpy * cpy + cpz * cpz
    vb = d5 * d2 - d1 * d6
    if vb <= 0 and d2 >= 0 and d6 <= 0 and d2 - d6 != 0:
        t = d2 / (d2 - d6)
        qx, qy, qz = ax + t * acx, ay + t * acy, az + t * acz
        return (px - qx) ** 2 + (py - qy) ** 2 + (pz - qz) ** 2
    va = d3 * d6 - d5 * d4
    if va <= 0 and d4 - d3 >= 0 and d5 - d6 >= 0 and (d4 - d3) + (d5 - d6) != 0:
        t = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        qx, qy, qz = bx + t * (cx - bx), by + t * (cy - by), bz + t * (cz - bz)
        return (px - qx) ** 2 + (py - qy) ** 2 + (pz - qz) ** 2
    den = va + vb + vc
    if den != 0:
        v, w = vb / den, vc / den
        qx, qy, qz = ax + v * abx + w * acx, ay + v * aby + w * acy, az + v * abz + w * acz
        return (px - qx) ** 2 + (py - qy) ** 2 + (pz - qz) ** 2
    # degenerate triangle: the nearest of its edges
    return min(min(_seg2(px, py, pz, ax, ay, az, bx, by, bz), _seg2(px, py, pz, bx, by, bz, cx, cy, cz)),
               _seg2(px, py, pz, cx, cy, cz, ax, ay, az))


def _grid_nearest(p, tri, lo, h, dims, start, items, out):
    """out[n] ← exact distance from p[n] to the nearest triangle, by rings of grid cells around p's cell.

    Cell (i, j, k) covers ``lo + h·[i, i+1) × …``; ``items[start[c]:start[c+1]]`` are the triangles whose
    bounding box meets cell c. After the cells within Chebyshev ring r of p's cell, every triangle not yet
    seen lies in cells outside that cube, so at least the distance from p to the cube's boundary away:
    the search stops when the best distance found is within that bound (p lies inside the grid).
    """
    nx, ny, nz = dims[0], dims[1], dims[2]
    rmax = max(nx, max(ny, nz))
    for n in prange(p.shape[0]):
        px, py, pz = p[n, 0], p[n, 1], p[n, 2]
        ci = min(max(int((px - lo[0]) / h), 0), nx - 1)
        cj = min(max(int((py - lo[1]) / h), 0), ny - 1)
        ck = min(max(int((pz - lo[2]) / h), 0), nz - 1)
        best = np.inf
        for r in range(rmax + 1):
            for i in range(max(ci - r, 0), min(ci + r, nx - 1) + 1):
                for j in range(max(cj - r, 0), min(cj + r, ny - 1) + 1):
                    shell = abs(i - ci) == r or abs(j - cj) == r
                    k = max(ck - r, 0)
                    while k <= min(ck + r, nz - 1):
                        c = (i * ny + j) * nz + k
                        # the cell's box is farther than the best triangle so far: nothing in it can be nearer
                        ex = max(max(lo[0] + h * i - px, px - lo[0] - h * (i + 1)), 0.0)
                        ey = max(max(lo[1] + h * j - py, py - lo[1] - h * (j + 1)), 0.0)
                        ez = max(max(lo[2] + h * k - pz, pz - lo[2] - h * (k + 1)), 0.0)
                        near = ex * ex + ey * ey + ez * ez < best
                        for m in range(start[c], start[c + 1] if near else start[c]):
                            f = items[m]
                            d2 = _point_triangle_distance2(px, py, pz, tri[f, 0, 0], tri[f, 0, 1], tri[f, 0, 2],
                                                           tri[f, 1, 0], tri[f, 1, 1], tri[f, 1, 2],
                                                           tri[f, 2, 0], tri[f, 2, 1], tri[f, 2, 2])
                            best = min(best, d2)
                        # inside the shell's faces only the two z ends are new in ring r
                        if shell or k == ck + r or r == 0:
                            k += 1
                        else:
                            k = ck + r
            # the cube of rings 0..r: [lo + h·(ci − r), lo + h·(ci + r + 1)) per axis
            gap = min(min(px - (lo[0] + h * (ci - r)), lo[0] + h * (ci + r + 1) - px),
                      min(min(py - (lo[1] + h * (cj - r)), lo[1] + h * (cj + r + 1) - py),
                          min(pz - (lo[2] + h * (ck - r)), lo[2] + h * (ck + r + 1) - pz)))
            if best <= max(gap, 0.0) ** 2:
                break
        out[n] = np.sqrt(best)


def _boxes(tri):
    """(F, 3) lower and upper corners of each triangle's bounding box (``tri.min(1)``, ``tri.max(1)``)."""
    F = tri.shape[0]
    tlo = np.empty((F, 3))
    thi = np.empty((F, 3))
    for f in range(F):
        for d in range(3):
            tlo[f, d] = min(min(tri[f, 0, d], tri[f, 1, d]), tri[f, 2, d])
            thi[f, d] = max(max(tri[f, 0, d], tri[f, 1, d]), tri[f, 2, d])
    return tlo, thi


def _grid_cells(tlo, thi, lo, h, dims):
    """The grid's lists: ``items[start[c]:start[c+1]]`` are the triangles (in index order) whose bounding box
    (``tlo``, ``thi`` (F, 3)) meets cell c; a counting sort over the cells, two passes over the boxes."""
    nx, ny, nz = dims[0], dims[1], dims[2]
    F = tlo.shape[0]
    a = np.empty((F, 3), dtype=np.int64)
    b = np.empty((F, 3), dtype=np.int64)
    count = np.zeros(nx * ny * nz + 1, dtype=np.int64)
    for f in range(F):
        for d in range(3):   # first and last cell per axis, as int((x − lo) / h) clamped to the grid
            a[f, d] = min(max(np.int64((tlo[f, d] - lo[d]) / h), 0), dims[d] - 1)
            b[f, d] = min(max(np.int64((thi[f, d] - lo[d]) / h), 0), dims[d] - 1)
        for i in range(a[f, 0], b[f, 0] + 1):
            for j in range(a[f, 1], b[f, 1] + 1):
                for k in range(a[f, 2], b[f, 2] + 1):
                    count[(i * ny + j) * nz + k + 1] += 1
    start = np.cumsum(count)
    fill = start[:-1].copy()
    items = np.empty(start[-1], dtype=np.int64)
    for f in range(F):
        for i in range(a[f, 0], b[f, 0] + 1):
            for j in range(a[f, 1], b[f, 1] + 1):
                for k in range(a[f, 2], b[f, 2] + 1):
                    c = (i * ny + j) * nz + k
                    items[fill[c]] = f
                    fill[c] += 1
    return start, items


if njit is not None:
    from numba import prange

    _seg2 = njit(cache=True, inline="always")(_seg2)
    _point_triangle_distance2 = njit(cache=True)(_point_triangle_distance2)
    _grid_nearest = njit(cache=True, parallel=True)(_grid_nearest)
    _grid_cells = njit(cache=True)(_grid_cells)
    _boxes = njit(cache=True)(_boxes)


def point_to_triangles(points: np.ndarray, triangles: np.ndarray, cells_per_triangle: float = 1.0) -> np.ndarray:
    """Exact distance from each point (N, 3) to the nearest of the triangles (F, 3, 3), mm (compiled).

    A uniform grid over the points and triangles (cell size from the triangles' mean extent, at most
    128 cells per axis) lists each triangle in the cells its bounding box meets; each point searches
    rings of cells outward until no unseen triangle can be nearer (see :func:`_grid_nearest`). Needs
    Numba (a dependency).
    """
    p = np.ascontiguousarray(points, dtype=np.float64).reshape(-1, 3)
    tri = np.ascontiguousarray(triangles, dtype=np.float64).reshape(-1, 3, 3)
    if len(tri) == 0:
        raise ValueError("point_to_triangles: no triangles")
    if njit is None:  # pragma: no cover - brute force in blocks of points
        return np.concatenate([point_triangle_distance(p[s:s + 64, None], tri[None, :, 0], tri[None, :, 1],
                                                       tri[None, :, 2]).min(1) for s in range(0, len(p), 64)] or
                              [np.zeros(0)])
    tlo, thi = _boxes(tri)                                                     # (F, 3) boxes
    lo = np.minimum(tlo.min(0), p.min(0) if len(p) else tlo.min(0))
    hi = np.maximum(thi.max(0), p.max(0) if len(p) else thi.max(0))
    span = float((hi - lo).max())
    h = max(float((thi - tlo).max(1).mean()) * cells_per_triangle, span / 128, 1e-9)
    dims = np.maximum(np.ceil((hi - lo) / h).astype(np.int64), 1)
    start, items = _grid_cells(tlo, thi, lo, float(h), dims)
    out = np.empty(len(p))
    _grid_nearest(p, tri, lo, float(h), dims, start, items, out)
    return out
