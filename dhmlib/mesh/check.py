"""Pure-numpy checks of triangle meshes: manifoldness, orientation, components, self-intersection.

Meshes are ``vertices: (V, 3)`` float (any unit; dhmlib uses mm) and
``faces: (F, 3)`` int vertex indices, counter-clockwise seen from outside.
Nothing here loops over faces or vertices in Python.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components as _cc


# --------------------------------------------------------------------- topology
def _directed_edges(faces: np.ndarray) -> np.ndarray:
    """(3F, 2) directed half-edges (a→b, b→c, c→a) in face order."""
    f = np.asarray(faces, dtype=np.int64)
    return np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])


def edge_counts(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edges and how many faces use each.

    Returns:
        edges: (E, 2) int64 with ``edges[:, 0] < edges[:, 1]``;  counts: (E,) int64.
    """
    e = np.sort(_directed_edges(faces), axis=1)
    edges, counts = np.unique(e, axis=0, return_counts=True)
    return edges, counts


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """(K, 2) undirected edges used by exactly one face (holes)."""
    edges, counts = edge_counts(faces)
    return edges[counts == 1]


def nonmanifold_edges(faces: np.ndarray) -> np.ndarray:
    """(K, 2) undirected edges that are not shared by exactly two consistently oriented faces.

    An edge fails if it is used by one face, by three or more faces, or twice in
    the same direction (the two faces disagree on orientation).
    """
    d = _directed_edges(faces)
    und = np.sort(d, axis=1)
    edges, inv, counts = np.unique(und, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    # a directed edge that occurs twice means two faces walk the edge the same way
    _, dinv, dcounts = np.unique(d, axis=0, return_inverse=True, return_counts=True)
    dup = np.zeros(len(edges), bool)
    dup[inv[dcounts[dinv.ravel()] > 1]] = True
    return edges[(counts != 2) | dup]


def edge_manifold(faces: np.ndarray) -> bool:
    """True if every undirected edge is in exactly two faces and every directed edge occurs once.

    The second condition means neighbouring faces are consistently oriented.
    """
    return len(nonmanifold_edges(faces)) == 0


def is_watertight(faces: np.ndarray) -> bool:
    """True if every undirected edge is shared by exactly two faces (no holes, no fins)."""
    _, counts = edge_counts(faces)
    return bool(np.all(counts == 2))


def connected_components(faces: np.ndarray, num_vertices: int) -> tuple[int, np.ndarray]:
    """Vertex-connected components of a mesh.

    Vertices not used by any face form components of their own.

    Returns:
        count, labels (V,) int component index per vertex.
    """
    d = _directed_edges(faces)
    A = sp.csr_matrix((np.ones(len(d)), (d[:, 0], d[:, 1])), shape=(num_vertices, num_vertices))
    n, labels = _cc(A, directed=False)
    return int(n), labels


# --------------------------------------------------------------------- geometry
def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) triangle areas (unit²)."""
    t = np.asarray(vertices, dtype=np.float64)[faces]
    return 0.5 * np.linalg.norm(np.cross(t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]), axis=1)


def degenerate_faces(vertices: np.ndarray, faces: np.ndarray, tol: float = 1e-12) -> np.ndarray:
    """(K,) indices of faces with area ≤ ``tol`` or a repeated vertex index."""
    f = np.asarray(faces)
    rep = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 2] == f[:, 0])
    return np.nonzero(rep | (face_areas(vertices, f) <= tol))[0]


def signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Enclosed volume (unit³); positive when faces are counter-clockwise seen from outside."""
    t = np.asarray(vertices, dtype=np.float64)[faces]
    return float(np.einsum("ij,ij->", t[:, 0], np.cross(t[:, 1], t[:, 2])) / 6.0)


# --------------------------------------------------------------------- self-intersection
def _orient(a, b, c, d):
    """Signed volume ×6 of tetrahedra (a, b, c, d); arrays (..., 3) → (...)."""
    return np.einsum("...i,...i->...", b - a, np.cross(c - a, d - a))


def _segments_cross_triangles(p: np.ndarray, q: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Whether segments ``p→q`` pass strictly through triangles.

    Args:
        p, q: (N, 3, 3) three segments per pair.  tri: (N, 3, 3) one triangle per pair.
    Returns:
        (N,) True if any of the three segments crosses its triangle's interior.
    """
    a, b, c = (tri[:, None, k] for k in range(3))                      # (N, 1, 3) each
    s1, s2 = _orient(a, b, c, p), _orient(a, b, c, q)                  # (N, 3)
    straddle = s1 * s2 < 0
    t1, t2, t3 = _orient(p, q, a, b), _orient(p, q, b, c), _orient(p, q, c, a)
    inside = ((t1 > 0) & (t2 > 0) & (t3 > 0)) | ((t1 < 0) & (t2 < 0) & (t3 < 0))
    return np.any(straddle & inside, axis=1)


def triangles_intersect(tri_a: np.ndarray, tri_b: np.ndarray) -> np.ndarray:
    """Exact-predicate test of triangle pairs (non-coplanar case).

    Two non-coplanar triangles intersect iff an edge of one passes through the
    other; touching contacts (an edge lying exactly in the other plane) and
    coplanar overlaps are not reported.

    Args:
        tri_a, tri_b: (N, 3, 3) triangle corners.
    Returns:
        (N,) bool.
    """
    ea_p, ea_q = tri_a, np.roll(tri_a, -1, axis=1)
    eb_p, eb_q = tri_b, np.roll(tri_b, -1, axis=1)
    return _segments_cross_triangles(ea_p, ea_q, tri_b) | _segments_cross_triangles(eb_p, eb_q, tri_a)


def candidate_pairs(vertices: np.ndarray, faces: np.ndarray, cell_size: float | None = None) -> np.ndarray:
    """Face pairs whose bounding boxes overlap and that share no vertex.

    Each face is binned into every cell of a uniform grid its bounding box
    touches; pairs are formed within cells, de-duplicated and filtered by an
    exact box-overlap test.

    Args:
        vertices: (V, 3).  faces: (F, 3).
        cell_size: grid cell edge; default the mean largest box extent of the faces.
    Returns:
        (K, 2) int64 face index pairs with ``pairs[:, 0] < pairs[:, 1]``.
    """
    faces = np.asarray(faces, dtype=np.int64)
    tri = np.asarray(vertices, dtype=np.float64)[faces]
    lo, hi = tri.min(1), tri.max(1)                                     # (F, 3)
    F = len(faces)
    if cell_size is None:
        cell_size = float(np.mean((hi - lo).max(1))) or 1.0
    origin = lo.min(0)
    g0 = np.floor((lo - origin) / cell_size).astype(np.int64)
    g1 = np.floor((hi - origin) / cell_size).astype(np.int64)
    n = g1 - g0 + 1                                                     # (F, 3) cells per axis
    dims = g1.max(0) + 1
    cnt = n.prod(1)
    fid = np.repeat(np.arange(F), cnt)
    k = np.arange(len(fid)) - np.repeat(np.cumsum(cnt) - cnt, cnt)      # index within the face's block
    nf = n[fid]
    cx = g0[fid, 0] + k % nf[:, 0]
    cy = g0[fid, 1] + (k // nf[:, 0]) % nf[:, 1]
    cz = g0[fid, 2] + k // (nf[:, 0] * nf[:, 1])
    key = (cx * dims[1] + cy) * dims[2] + cz
    order = np.argsort(key, kind="stable")
    key, fid = key[order], fid[order]
    # pairs within each cell: entry i pairs with the later entries of its cell
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    group_end = np.repeat(ends, ends - starts)
    m = group_end - np.arange(len(key)) - 1
    first = np.repeat(np.arange(len(key)), m)
    second = first + 1 + np.arange(len(first)) - np.repeat(np.cumsum(m) - m, m)
    a, b = fid[first], fid[second]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], 1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(pairs[:, 0] * F + pairs[:, 1])
    pairs = np.stack([pairs // F, pairs % F], 1)
    i, j = pairs[:, 0], pairs[:, 1]
    overlap = np.all((lo[i] <= hi[j]) & (lo[j] <= hi[i]), axis=1)
    shared = np.any(faces[i][:, :, None] == faces[j][:, None, :], axis=(1, 2))
    return pairs[overlap & ~shared]


def self_intersections(vertices: np.ndarray, faces: np.ndarray, cell_size: float | None = None,
                       chunk: int = 200_000) -> np.ndarray:
    """Pairs of non-adjacent faces that intersect.

    Faces sharing a vertex are not tested (their contact is the shared
    vertex or edge); coplanar overlaps are not reported (see
    :func:`triangles_intersect`).

    Args:
        vertices: (V, 3).  faces: (F, 3).
        cell_size: grid cell edge for the candidate search (default: mean face box extent).
        chunk: candidate pairs tested per batch (bounds memory).
    Returns:
        (K, 2) int64 intersecting face pairs, ``pairs[:, 0] < pairs[:, 1]``.
    """
    faces = np.asarray(faces, dtype=np.int64)
    v = np.asarray(vertices, dtype=np.float64)
    pairs = candidate_pairs(v, faces, cell_size)
    hits = [pairs[s:s + chunk][triangles_intersect(v[faces[pairs[s:s + chunk, 0]]],
                                                   v[faces[pairs[s:s + chunk, 1]]])]
            for s in range(0, len(pairs), chunk)]
    return np.concatenate(hits) if hits else np.zeros((0, 2), np.int64)


def check_mesh(vertices: np.ndarray, faces: np.ndarray, self_intersection: bool = True) -> dict:
    """Summary of the checks above (for CLIs and reports).

    Returns:
        dict with ``watertight``, ``edge_manifold``, ``components``, ``signed_volume``,
        ``degenerate_faces`` (count) and, if requested, ``self_intersections`` (count).
    """
    out = {
        "vertices": int(len(vertices)),
        "faces": int(len(faces)),
        "watertight": is_watertight(faces),
        "edge_manifold": edge_manifold(faces),
        "components": connected_components(faces, len(vertices))[0],
        "signed_volume": signed_volume(vertices, faces),
        "degenerate_faces": int(len(degenerate_faces(vertices, faces))),
    }
    if self_intersection:
        out["self_intersections"] = int(len(self_intersections(vertices, faces)))
    return out
