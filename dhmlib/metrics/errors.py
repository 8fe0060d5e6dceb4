"""Error metrics over explicit tensors, all mm, per frame unless said otherwise:

- :func:`joint_error`: mean Euclidean distance over the valid joints;
- :func:`depth_error`: mean |rendered − target| over the pixels where both maps are non-zero;
- :func:`vertex_error` / :func:`vertex_error_maps`: per-vertex distance to the true mesh (same
  topology), split into the part along the TRUE surface normal ``|e·n|`` and the sideways part
  ``|e − (e·n) n|`` (the correctives can slide the surface sideways where neither depth nor joints see it);
- :func:`surface_distance`: exact point-to-triangle distance from the vertices of one mesh to the
  surface of the other, both ways (any topology, e.g. scans);

The mesh metrics (near flexed joints, penetration, smoothness) are :mod:`dhmlib.metrics.mesh`; their
aggregate over frames with these, an :class:`~dhmlib.evaluation.result.EvalResult`, is
:func:`dhmlib.evaluation.result.evaluate`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dhmlib.mesh.distance import point_to_triangles
from dhmlib.mesh.normals import vertex_normals

#: the percentile reported next to each mean
PERCENTILE = 95.0


def as_float64(x, dtype=torch.float64) -> torch.Tensor:
    """``x`` (tensor or array-like) as a detached float64 tensor (or ``dtype``)."""
    return x.detach().to(dtype) if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x), dtype=dtype)


# --------------------------------------------------------------------------- per-frame metrics
def joint_error(pred, gt, valid=None) -> torch.Tensor:
    """Mean Euclidean joint error per frame.

    Args:
        pred, gt: (B, J, 3) mm.
        valid: (B, J) or (J,) bool/0-1, the joints that count (None: all).
    Returns:
        (B,) float64 mm; NaN for a frame without a valid joint.
    """
    pred, gt = as_float64(pred), as_float64(gt)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"joint_error: pred and gt must both be (B, J, 3), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    d = (pred - gt).norm(dim=-1)                                              # (B, J)
    v = torch.ones_like(d) if valid is None else (as_float64(valid) != 0).to(d.dtype).expand_as(d)
    n = v.sum(-1)
    return torch.where(n > 0, (torch.where(v > 0, d, torch.zeros_like(d))).sum(-1) / n.clamp(min=1),
                       torch.full_like(n, math.nan))


def depth_error(rendered, target) -> torch.Tensor:
    """Mean absolute depth difference per frame over the pixels where both maps are non-zero.

    Args:
        rendered, target: (B, K, H, W) camera z, mm; 0 = no surface.
    Returns:
        (B,) float64 mm over all K views of the frame; NaN for a frame without a common pixel.
    """
    r, t = as_float64(rendered), as_float64(target)
    if r.shape != t.shape or r.ndim != 4:
        raise ValueError(f"depth_error: rendered and target must both be (B, K, H, W), got {tuple(r.shape)} "
                         f"and {tuple(t.shape)}")
    m = (r != 0) & (t != 0)
    diff = torch.where(m, (r - t).abs(), torch.zeros_like(r)).flatten(1).sum(1)
    n = m.flatten(1).sum(1).to(r.dtype)
    return torch.where(n > 0, diff / n.clamp(min=1), torch.full_like(n, math.nan))


def vertex_error_maps(pred, gt, gt_normals=None, faces=None) -> dict[str, torch.Tensor]:
    """Per-vertex error to a true mesh of the same topology, split along the true normal.

    Args:
        pred, gt: (B, V, 3) mm, vertex ``i`` of ``pred`` corresponds to vertex ``i`` of ``gt``.
        gt_normals: (B, V, 3) unit normals of the TRUE surface; or
        faces: (F, 3) faces (counter-clockwise outward), from which the area-weighted normals of ``gt``
            are computed (:func:`dhmlib.mesh.normals.vertex_normals`).
    Returns:
        ``{"total": |e|, "normal": |e·n|, "sideways": |e − (e·n) n|}``, each (B, V) float64 mm, with
        ``e = pred − gt`` (``total² = normal² + sideways²``).
    """
    pred, gt = as_float64(pred), as_float64(gt)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"vertex_error: pred and gt must both be (B, V, 3), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if gt_normals is None:
        if faces is None:
            raise ValueError("vertex_error: give gt_normals (B, V, 3) or the faces (F, 3) to compute them")
        n = vertex_normals(gt, torch.as_tensor(np.asarray(faces) if not isinstance(faces, torch.Tensor) else faces))
    else:
        n = torch.nn.functional.normalize(as_float64(gt_normals), dim=-1)
        if n.shape != gt.shape:
            raise ValueError(f"vertex_error: gt_normals must be {tuple(gt.shape)}, got {tuple(n.shape)}")
    e = pred - gt
    along = (e * n).sum(-1, keepdim=True)
    return {"total": e.norm(dim=-1), "normal": along.abs().squeeze(-1), "sideways": (e - along * n).norm(dim=-1)}


def summarize_vertex_errors(maps: dict[str, torch.Tensor], percentile: float = PERCENTILE) -> dict[str, float]:
    """Mean and ``percentile`` (numpy's linear interpolation) over all B·V values of each map, mm.

    Keys ``mean``, ``p95``, ``normal_mean``, ``normal_p95``, ``sideways_mean``, ``sideways_p95``
    (``p95`` spelled after ``percentile``).
    """
    tag = f"p{percentile:g}"
    out = {}
    for key, prefix in (("total", ""), ("normal", "normal_"), ("sideways", "sideways_")):
        x = maps[key].detach().cpu().numpy().reshape(-1)
        out[prefix + "mean"] = float(x.mean())
        out[prefix + tag] = float(np.percentile(x, percentile))
    return out


def vertex_error(pred, gt, gt_normals=None, faces=None, percentile: float = PERCENTILE) -> dict[str, float]:
    """Per-vertex error summary over all frames and vertices, mm (see :func:`vertex_error_maps`).

    Returns ``{"mean", "p95", "normal_mean", "normal_p95", "sideways_mean", "sideways_p95"}``.
    """
    return summarize_vertex_errors(vertex_error_maps(pred, gt, gt_normals, faces), percentile)


# --------------------------------------------------------------------------- surface distance
def point_to_surface(points, vertices, faces) -> np.ndarray:
    """Exact distance from each point to a triangle mesh's surface, mm.

    :func:`dhmlib.mesh.distance.point_to_triangles`: a uniform grid of cells lists the faces whose bounding box
    meets each cell, and each point searches rings of cells outward, skipping cells farther than the best
    face so far, until no unseen face can be nearer (exact, no approximation).

    Args:
        points: (N, 3) mm.  vertices: (V, 3) mm.  faces: (F, 3) vertex indices.
    Returns:
        (N,) float64 mm.
    """
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]     # (F, 3, 3)
    if len(tri) == 0:
        raise ValueError("point_to_surface: the mesh has no faces")
    return point_to_triangles(np.asarray(points, dtype=np.float64).reshape(-1, 3), tri)


def surface_distance(verts_a, faces_a, verts_b, faces_b) -> dict[str, float]:
    """Mean surface distance both ways between two triangle meshes (any topology), mm.

    Returns ``{"a_to_b": mean over a's vertices of their distance to b's surface, "b_to_a": the reverse,
    "symmetric": their average}`` (exact point-triangle distances, :func:`point_to_surface`).
    """
    ab = float(point_to_surface(verts_a, verts_b, faces_b).mean())
    ba = float(point_to_surface(verts_b, verts_a, faces_a).mean())
    return {"a_to_b": ab, "b_to_a": ba, "symmetric": 0.5 * (ab + ba)}
