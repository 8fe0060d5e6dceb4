"""Exact point-to-triangle distance, vectorized (used by the surface distance and the mesh metrics)."""
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


try:  # compiled nearest-candidate distance (Numba, a dependency); the vectorized form above otherwise
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


def _nearest_of_candidates(p, tri, cand):
    """(N,) distance from each point p (N, 3) to the nearest of its candidate triangles cand (N, k) of tri (F, 3, 3)."""
    N, k = cand.shape
    out = np.empty(N)
    for n in range(N):
        best = np.inf
        for m in range(k):
            f = cand[n, m]
            d2 = _point_triangle_distance2(p[n, 0], p[n, 1], p[n, 2], tri[f, 0, 0], tri[f, 0, 1], tri[f, 0, 2],
                                           tri[f, 1, 0], tri[f, 1, 1], tri[f, 1, 2],
                                           tri[f, 2, 0], tri[f, 2, 1], tri[f, 2, 2])
            best = min(best, d2)
        out[n] = np.sqrt(best)
    return out


if njit is not None:
    _seg2 = njit(cache=True, inline="always")(_seg2)
    _point_triangle_distance2 = njit(cache=True)(_point_triangle_distance2)
    _nearest_of_candidates = njit(cache=True)(_nearest_of_candidates)


def nearest_of_candidates(points: np.ndarray, triangles: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Exact distance from each point to the nearest of its candidate triangles, mm.

    points (N, 3), triangles (F, 3, 3), candidates (N, k) indices into triangles. Compiled when
    Numba imports (the same regions as :func:`point_triangle_distance`), else vectorized.
    """
    p = np.ascontiguousarray(points, dtype=np.float64)
    tri = np.ascontiguousarray(triangles, dtype=np.float64)
    cand = np.ascontiguousarray(candidates, dtype=np.int64)
    if njit is None:  # pragma: no cover
        t = tri[cand]
        return point_triangle_distance(p[:, None], t[..., 0, :], t[..., 1, :], t[..., 2, :]).min(1)
    return _nearest_of_candidates(p, tri, cand)
