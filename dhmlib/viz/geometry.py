"""Small vectorised mesh helpers for the viewers: vertex normals, error colours, camera pose."""
from __future__ import annotations

from matplotlib import colormaps
import numpy as np
from scipy import sparse
from scipy.spatial.transform import Rotation

SKIN_RGB = (0.88, 0.71, 0.60)
#: the colour map of every per-vertex and depth error in dhmlib's figures and widgets (0 mm dark blue … top
#: yellow: no black end, which on a shaded mesh would read as shadow); depth itself is drawn with viridis
ERROR_CMAP = "plasma"


class NormalSolver:
    """Area-weighted vertex normals for a fixed face list.

    The vertex–face incidence is built once as a sparse (V, F) matrix, so each
    call is a cross product per face and one sparse product: no Python loops.

    Args:
        faces: (F, 3) int vertex indices.
        num_vertices: V.
    """

    def __init__(self, faces: np.ndarray, num_vertices: int):
        faces = np.asarray(faces, dtype=np.int64)
        if faces.ndim != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces: expected shape (F, 3), got {faces.shape}")
        if faces.size and (faces.min() < 0 or faces.max() >= num_vertices):
            raise ValueError(f"faces: indices must lie in 0..{num_vertices - 1}, got "
                             f"{faces.min()}..{faces.max()}")
        F = len(faces)
        self.faces = faces
        self.num_vertices = num_vertices
        self._incidence = sparse.csr_matrix(
            (np.ones(3 * F), (faces.reshape(-1), np.repeat(np.arange(F), 3))), shape=(num_vertices, F))

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        """(V, 3) vertices → (V, 3) float32 unit normals (zero for unreferenced vertices)."""
        v = np.asarray(vertices, dtype=np.float64)
        tri = v[self.faces]                                                # (F, 3, 3)
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])        # (F, 3), |fn| = 2·area
        vn = self._incidence @ fn                                          # (V, 3)
        norm = np.linalg.norm(vn, axis=1, keepdims=True)
        return (vn / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def error_colors(error_mm: np.ndarray, max_mm: float, cmap: str = ERROR_CMAP) -> np.ndarray:
    """(..., V) per-vertex error in mm → (..., V, 3) float32 RGB in [0, 1]; ``max_mm`` maps to the top colour."""
    t = np.clip(np.asarray(error_mm, dtype=np.float64) / max(float(max_mm), 1e-9), 0.0, 1.0)
    return colormaps[cmap](t)[..., :3].astype(np.float32)


def look_at_quaternion(position, target, up) -> tuple[float, float, float, float]:
    """Quaternion ``(x, y, z, w)`` of a camera at ``position`` looking at ``target`` (three.js: view along −z, up +y)."""
    p, t, u = (np.asarray(a, dtype=np.float64) for a in (position, target, up))
    z = p - t
    z /= np.linalg.norm(z)
    x = np.cross(u, z)
    if np.linalg.norm(x) < 1e-9:  # up parallel to the view direction
        x = np.cross(np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0]), z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return tuple(float(q) for q in Rotation.from_matrix(np.stack([x, y, z], axis=1)).as_quat())


def colorbar_extend(values, top: float) -> str:
    """``"max"`` when some of ``values`` lie above ``top`` (the colour scale is clipped there: matplotlib draws
    an arrow at the bar's end), else ``"neither"``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return "max" if v.size and float(v.max()) > float(top) else "neither"
