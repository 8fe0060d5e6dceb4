"""Signed distance primitives, smooth union and sampling on a grid.

All functions are vectorized over points ``p: (..., 3)`` in millimetres and
return signed distances ``(...,)`` in millimetres (negative inside).  The
primitives are exact or close to exact near their surface, which is all that
marching cubes and the smooth union need.

A scene is a list of :class:`Part` objects: each is a group of primitives
combined with a plain ``min`` (e.g. the round cones of one finger) and then
joined to what came before with a smooth union of radius ``blend``.  Every
part is evaluated only inside its bounding box grown by ``blend`` plus a
margin; outside that box its distance exceeds ``blend`` and so cannot change
the smooth union, which keeps the grid evaluation cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# --------------------------------------------------------------------- primitives
@dataclass(frozen=True)
class RoundCone:
    """Tapered capsule: spheres of radius ``r1`` at ``a`` and ``r2`` at ``b`` and their hull (mm)."""

    a: tuple[float, float, float]
    b: tuple[float, float, float]
    r1: float
    r2: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return round_cone(p, np.asarray(self.a, float), np.asarray(self.b, float), self.r1, self.r2)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        a, b, r = np.asarray(self.a, float), np.asarray(self.b, float), max(self.r1, self.r2)
        return np.minimum(a, b) - r, np.maximum(a, b) + r


@dataclass(frozen=True)
class Ellipsoid:
    """Axis-aligned-in-its-frame ellipsoid: ``center`` (3,), ``radii`` (3,), ``rotation`` (3, 3) columns = axes."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        q = (p - np.asarray(self.center, float)) @ np.asarray(self.rotation, float)
        return ellipsoid(q, np.asarray(self.radii, float))

    def bounds(self):
        R = np.abs(np.asarray(self.rotation, float))
        ext = R @ np.asarray(self.radii, float)
        c = np.asarray(self.center, float)
        return c - ext, c + ext


@dataclass(frozen=True)
class RoundBox:
    """Box with rounded edges: ``center`` (3,), ``half`` (3,) outer half extents, edge ``radius`` (mm)."""

    center: tuple[float, float, float]
    half: tuple[float, float, float]
    radius: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return round_box(p - np.asarray(self.center, float), np.asarray(self.half, float), self.radius)

    def bounds(self):
        c, h = np.asarray(self.center, float), np.asarray(self.half, float)
        return c - h, c + h


@dataclass(frozen=True)
class Part:
    """Primitives joined by ``min``; the part joins the scene with a smooth union of radius ``blend`` (mm)."""

    prims: tuple
    blend: float = 0.0

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return np.min(np.stack([f(p) for f in self.prims]), axis=0)

    def bounds(self):
        lo, hi = zip(*(f.bounds() for f in self.prims))
        return np.min(lo, axis=0), np.max(hi, axis=0)


def round_cone(p: np.ndarray, a: np.ndarray, b: np.ndarray, r1: float, r2: float) -> np.ndarray:
    """Exact signed distance to a round cone (tapered capsule).

    Args:
        p: (..., 3) points, mm.  a, b: (3,) end centres.  r1, r2: end radii, mm.
    Returns:
        (...,) signed distance, mm.
    """
    ba = b - a
    l2 = float(ba @ ba)
    rr = r1 - r2
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pa = p - a
    y = pa @ ba
    z = y - l2
    perp = pa * l2 - y[..., None] * ba
    x2 = np.einsum("...i,...i->...", perp, perp)
    y2 = y * y * l2
    z2 = z * z * l2
    k = np.sign(rr) * rr * rr * x2
    d_side = (np.sqrt(x2 * a2 * il2) + y * rr) * il2 - r1
    d_b = np.sqrt(x2 + z2) * il2 - r2
    d_a = np.sqrt(x2 + y2) * il2 - r1
    return np.where(np.sign(z) * a2 * z2 > k, d_b, np.where(np.sign(y) * a2 * y2 < k, d_a, d_side))


def ellipsoid(q: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate signed distance to an origin-centred ellipsoid (bound-corrected).

    Args:
        q: (..., 3) points in the ellipsoid frame, mm.  radii: (3,) semi-axes, mm.
    """
    k0 = np.linalg.norm(q / radii, axis=-1)
    k1 = np.linalg.norm(q / (radii * radii), axis=-1)
    return np.where(k1 > 0, k0 * (k0 - 1.0) / np.maximum(k1, 1e-12), -radii.min())


def round_box(q: np.ndarray, half: np.ndarray, radius: float) -> np.ndarray:
    """Exact signed distance to a rounded box centred at the origin.

    Args:
        q: (..., 3) points, mm.  half: (3,) outer half extents, mm.  radius: edge rounding, mm.
    """
    d = np.abs(q) - (half - radius)
    outside = np.linalg.norm(np.maximum(d, 0.0), axis=-1)
    inside = np.minimum(d.max(-1), 0.0)
    return outside + inside - radius


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two distance fields with blend radius ``k`` (mm); ``k = 0`` is ``min``."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


# --------------------------------------------------------------------- scenes
def scene_bounds(parts) -> tuple[np.ndarray, np.ndarray]:
    """(3,), (3,) bounding box of all parts, mm."""
    lo, hi = zip(*(p.bounds() for p in parts))
    return np.min(lo, axis=0), np.max(hi, axis=0)


def evaluate_points(parts, p: np.ndarray) -> np.ndarray:
    """Scene distance at points ``p: (N, 3)`` → (N,), mm (no box culling; for small N)."""
    d = parts[0](p)
    for part in parts[1:]:
        d = smooth_union(d, part(p), part.blend)
    return d


def evaluate_grid(parts, origin: np.ndarray, spacing: float, shape: tuple[int, int, int],
                  far: float = 1e3) -> np.ndarray:
    """Sample the scene on a regular grid.

    Args:
        parts: list of :class:`Part`; the first is the base (its ``blend`` is ignored).
        origin: (3,) position of grid sample (0, 0, 0), mm.
        spacing: grid step, mm (same on all axes).
        shape: (nx, ny, nz) samples.
        far: value used where no part is near (mm).
    Returns:
        (nx, ny, nz) float64 signed distance, mm.
    """
    field = np.full(shape, far, dtype=np.float64)
    axes = [origin[i] + spacing * np.arange(shape[i]) for i in range(3)]
    for n, part in enumerate(parts):
        lo, hi = part.bounds()
        pad = part.blend + 2.0 * spacing
        i0 = np.clip(np.floor((lo - pad - origin) / spacing).astype(int), 0, np.array(shape))
        i1 = np.clip(np.ceil((hi + pad - origin) / spacing).astype(int) + 1, 0, np.array(shape))
        if np.any(i1 <= i0):
            continue
        sl = tuple(slice(a, b) for a, b in zip(i0, i1))
        X, Y, Z = np.meshgrid(axes[0][sl[0]], axes[1][sl[1]], axes[2][sl[2]], indexing="ij")
        d = part(np.stack([X, Y, Z], axis=-1))
        field[sl] = d if n == 0 else smooth_union(field[sl], d, part.blend)
    return field
