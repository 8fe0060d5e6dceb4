"""Small mesh operations on (V, 3) vertex and (F, 3) face arrays (numpy / scipy.sparse)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dhmlib.mesh.check import connected_components


def unique_edges(faces: np.ndarray) -> np.ndarray:
    """(E, 2) undirected edges ``i < j`` of a triangle mesh with faces (F, 3)."""
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e.sort(axis=1)
    return np.unique(e, axis=0)


def adjacency(faces: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """(V, V) symmetric 0/1 vertex adjacency."""
    e = unique_edges(faces)
    ones = np.ones(2 * len(e))
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([e[:, 1], e[:, 0]])
    return sp.csr_matrix((ones, (rows, cols)), shape=(num_vertices, num_vertices))


def averaging_operator(faces: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """(V, V) row-stochastic operator: each vertex → mean of its neighbours (uniform Laplacian + I)."""
    A = adjacency(faces, num_vertices)
    deg = np.asarray(A.sum(1)).ravel()
    return sp.diags(1.0 / np.maximum(deg, 1.0)) @ A


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int = 5,
                  lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    """Taubin λ|μ smoothing (low-pass, nearly volume preserving).

    Args:
        vertices: (V, 3) mm.  faces: (F, 3).
    Returns:
        (V, 3) smoothed vertices, mm.
    """
    M = averaging_operator(faces, len(vertices))
    v = vertices.copy()
    for _ in range(iterations):
        v = v + lam * (M @ v - v)
        v = v + mu * (M @ v - v)
    return v


def largest_component(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the face-connected component with the most faces; drop unreferenced vertices.

    Returns:
        vertices (V', 3), faces (F', 3) re-indexed.
    """
    n, labels = connected_components(faces, len(vertices))
    if n > 1:
        counts = np.bincount(labels[faces[:, 0]], minlength=n)
        faces = faces[labels[faces[:, 0]] == np.argmax(counts)]
    used = np.zeros(len(vertices), bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return vertices[used], remap[faces]


def _cluster(vertices: np.ndarray, faces: np.ndarray, cell_mm: float) -> tuple[np.ndarray, np.ndarray]:
    cell = np.floor((vertices - vertices.min(0)) / cell_mm).astype(np.int64)
    _, label = np.unique(cell, axis=0, return_inverse=True)
    label = label.ravel()
    n = label.max() + 1
    centroid = np.stack([np.bincount(label, vertices[:, k], n) for k in range(3)], 1) / np.bincount(label, None, n)[:, None]
    dist = ((vertices - centroid[label]) ** 2).sum(1)
    order = np.lexsort((np.arange(len(vertices)), dist, label))          # per cell: nearest, then lowest index
    first = np.ones(len(order), bool)
    first[1:] = label[order[1:]] != label[order[:-1]]
    rep = np.empty(n, np.int64)
    rep[label[order[first]]] = order[first]                                # cell → its representative vertex
    f = rep[label[faces]]
    f = f[(f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])]
    _, first_face = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    f = f[np.sort(first_face)]                                             # drop duplicates, keep order
    keep = np.unique(f)                                                    # referenced representatives, sorted
    remap = np.full(len(vertices), -1, np.int64)
    remap[keep] = np.arange(len(keep))
    return keep, remap[f]


def decimate_by_clustering(vertices: np.ndarray, faces: np.ndarray, target_vertices: int,
                           iterations: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Decimate a triangle mesh by vertex clustering onto a cubic grid, keeping original vertices.

    Each occupied grid cell keeps the vertex nearest to its cell's centroid; faces are re-pointed
    to the kept vertices, degenerate and duplicate faces dropped, unreferenced vertices removed.
    The cell size (mm) is bisected so that about ``target_vertices`` remain. Deterministic.

    Args:
        vertices: (V, 3) mm.  faces: (F, 3).  target_vertices: wanted V' (< V).
    Returns:
        keep (V',) sorted indices into ``vertices``, faces (F', 3) indexing ``vertices[keep]``.
    """
    vertices, faces = np.asarray(vertices, dtype=np.float64), np.asarray(faces, dtype=np.int64)
    if not 3 <= target_vertices < len(vertices):
        raise ValueError(f"target_vertices: expected 3 … {len(vertices) - 1}, got {target_vertices}")
    lo, hi = 1e-6, float(np.ptp(vertices, axis=0).max())
    best = None
    for _ in range(iterations):
        mid = np.sqrt(lo * hi)
        keep, f = _cluster(vertices, faces, mid)
        if best is None or abs(len(keep) - target_vertices) < abs(len(best[0]) - target_vertices):
            best = (keep, f)
        if len(keep) > target_vertices:
            lo = mid
        else:
            hi = mid
    return best
