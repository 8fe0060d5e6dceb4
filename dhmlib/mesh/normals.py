"""Vertex normals of triangle meshes: area-weighted, unit length, outward for counter-clockwise faces.

The one definition every part of dhmlib uses (the shaded render, the per-vertex error's split along the
true normal, the normal-direction correctives, the procedural hand and its true deformation)::

    n_f = (v1 − v0) × (v2 − v0)          (|n_f| = 2·area of face f)
    n_v = Σ_{f ∋ v} n_f / |Σ_{f ∋ v} n_f|   (zero where the sum is zero: an unreferenced vertex)

Torch tensors stay tensors (batched, differentiable, on their device); numpy arrays stay numpy (float64
where given float64).
"""
from __future__ import annotations

import numpy as np
import torch

EPS = 1e-12      # |Σ n_f| below this counts as zero


def vertex_normals(vertices, faces):
    """Area-weighted unit vertex normals.

    Args:
        vertices: (B, V, 3) tensor, or (V, 3) numpy array, mm.
        faces: (F, 3) vertex indices (tensor or array), counter-clockwise seen from outside.
    Returns:
        (B, V, 3) tensor of ``vertices``' dtype and device, or (V, 3) numpy array.
    """
    if isinstance(vertices, torch.Tensor):
        f = torch.as_tensor(faces).to(device=vertices.device, dtype=torch.long)
        v0, v1, v2 = (vertices[:, f[:, k]] for k in range(3))
        fn = torch.linalg.cross(v1 - v0, v2 - v0, dim=-1)  # (B, F, 3), |fn| = 2·area
        n = torch.zeros_like(vertices)
        for k in range(3):  # three scatters, not a loop over faces
            n = n.index_add(1, f[:, k], fn)
        return torch.nn.functional.normalize(n, dim=-1, eps=EPS)
    vertices = np.asarray(vertices)
    faces = np.asarray(faces, dtype=np.int64)
    fn = np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]])
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), EPS)
