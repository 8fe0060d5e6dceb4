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
