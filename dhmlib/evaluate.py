"""Evaluation: metrics over explicit tensors, their aggregate over frames, and the result files.

Metrics (all mm, per frame unless said otherwise):

- :func:`joint_error`: mean Euclidean distance over the valid joints;
- :func:`depth_error`: mean |rendered − target| over the pixels where both maps are non-zero;
- :func:`vertex_error` / :func:`vertex_error_maps`: per-vertex distance to the true mesh (same
  topology), split into the part along the TRUE surface normal ``|e·n|`` and the sideways part
  ``|e − (e·n) n|`` (the correctives can slide the surface sideways where neither depth nor joints see it);
- :func:`surface_distance`: exact point-to-triangle distance from the vertices of one mesh to the
  surface of the other, both ways (any topology, e.g. scans);
- mesh metrics of :mod:`dhmlib.metrics_mesh` (precise definitions there), flat summary keys:
  ``vertex_near_flexed_mean_mm`` / ``_p95_mm`` (the per-vertex error on the vertices within 15 mm of a
  joint flexed > 30° in the frame, skinning weight > 0.3 to it or its parent; ``_count`` and
  ``_fraction`` of (frame, vertex) pairs; ``vertex_not_near_flexed_mean_mm`` the rest),
  ``penetration_depth_mean_mm`` / ``_max_mm`` / ``penetration_fraction`` / ``penetration_count`` (vertices
  lying inside the surface of the parts not adjacent to theirs; depth = distance to that surface),
  ``smoothness_laplacian_mm`` (mean ‖uniform Laplacian‖ of the predicted mesh), ``smoothness_laplacian_gt_mm``
  and ``smoothness_ratio`` (prediction / truth; 1.0 = as smooth as the truth).

:func:`evaluate` computes what it is given and returns an :class:`EvalResult`;
:func:`write_results` writes ``metrics.json`` and ``meshes/<frame:06d>.obj``.
:func:`ground_truth_meshes` reads the virtual capture's true meshes (real data has none).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .meshio import write_obj
from .render.shade import vertex_normals
from .trigeom import point_to_triangles

#: the percentile reported next to each mean
PERCENTILE = 95.0


def _t(x, dtype=torch.float64) -> torch.Tensor:
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
    pred, gt = _t(pred), _t(gt)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"joint_error: pred and gt must both be (B, J, 3), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    d = (pred - gt).norm(dim=-1)                                              # (B, J)
    v = torch.ones_like(d) if valid is None else (_t(valid) != 0).to(d.dtype).expand_as(d)
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
    r, t = _t(rendered), _t(target)
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
            are computed (:func:`dhmlib.render.vertex_normals`).
    Returns:
        ``{"total": |e|, "normal": |e·n|, "sideways": |e − (e·n) n|}``, each (B, V) float64 mm, with
        ``e = pred − gt`` (``total² = normal² + sideways²``).
    """
    pred, gt = _t(pred), _t(gt)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"vertex_error: pred and gt must both be (B, V, 3), got {tuple(pred.shape)} and {tuple(gt.shape)}")
    if gt_normals is None:
        if faces is None:
            raise ValueError("vertex_error: give gt_normals (B, V, 3) or the faces (F, 3) to compute them")
        n = vertex_normals(gt, torch.as_tensor(np.asarray(faces) if not isinstance(faces, torch.Tensor) else faces))
    else:
        n = torch.nn.functional.normalize(_t(gt_normals), dim=-1)
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

    :func:`dhmlib.trigeom.point_to_triangles`: a uniform grid of cells lists the faces whose bounding box
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


# --------------------------------------------------------------------------- aggregate
def _nanmean(x) -> float | None:
    x = np.asarray(x, dtype=np.float64)
    return None if x.size == 0 or np.isnan(x).all() else float(np.nanmean(x))


@dataclass(frozen=True)
class EvalResult:
    """Metrics of a set of frames, mm. Fields that were not measured are None.

    Attributes:
        frames: the frame numbers, in order.
        joint_error: per frame mean joint error (NaN: no valid joint).
        depth_error: per frame mean |depth difference| where both maps are non-zero.
        vertex: per-vertex error to the true meshes over all frames and vertices
            (:func:`vertex_error` keys: mean, p95, normal_*, sideways_*).
        vertex_per_frame: per frame mean of the total, normal and sideways per-vertex error.
        surface: per frame surface distances ``{"a_to_b", "b_to_a", "symmetric"}`` (prediction = a,
            ground truth or scan = b).
        mesh: flat mesh-metric summary (``vertex_near_flexed_mean_mm``, ``penetration_*``, ``smoothness_*``;
            see the module docstring), merged into :meth:`summary`.
        mesh_per_frame: per frame values of some of them (``penetration_fraction`` …).
        info: free-form JSON-able notes (subject, epoch, split …).
    """

    frames: tuple[int, ...]
    joint_error: tuple[float, ...] | None = None
    depth_error: tuple[float, ...] | None = None
    vertex: dict[str, float] | None = None
    vertex_per_frame: dict[str, tuple[float, ...]] | None = None
    surface: dict[str, tuple[float, ...]] | None = None
    mesh: dict | None = None
    mesh_per_frame: dict[str, tuple[float, ...]] | None = None
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """The means over frames (and the per-vertex statistics), mm; absent metrics left out."""
        s: dict = {"frames": len(self.frames)}
        if self.joint_error is not None:
            s["joint_error_mm"] = _nanmean(self.joint_error)
        if self.depth_error is not None:
            s["depth_error_mm"] = _nanmean(self.depth_error)
        if self.vertex is not None:
            s.update({f"vertex_{k}_mm": v for k, v in self.vertex.items()})
        if self.surface is not None:
            s.update({f"surface_{k}_mm": _nanmean(v) for k, v in self.surface.items()})
        if self.mesh is not None:
            s.update(self.mesh)
        return s

    def to_dict(self) -> dict:
        """JSON-able: ``summary`` (means) and ``per_frame`` lists (NaN written as None)."""
        def clean(x):
            return [None if not math.isfinite(v) else float(v) for v in x]

        per_frame: dict = {"frame": [int(f) for f in self.frames]}
        if self.joint_error is not None:
            per_frame["joint_error_mm"] = clean(self.joint_error)
        if self.depth_error is not None:
            per_frame["depth_error_mm"] = clean(self.depth_error)
        for k, v in (self.vertex_per_frame or {}).items():
            per_frame[f"vertex_{k}_mm"] = clean(v)
        for k, v in (self.surface or {}).items():
            per_frame[f"surface_{k}_mm"] = clean(v)
        for k, v in (self.mesh_per_frame or {}).items():
            per_frame[k] = clean(v)
        return {"summary": self.summary(), "per_frame": per_frame, "info": dict(self.info)}


def evaluate(frames, *, pred_joints=None, gt_joints=None, joint_valid=None, rendered_depth=None,
             target_depth=None, pred_vertices=None, gt_vertices=None, faces=None, gt_faces=None,
             scans=None, surface: bool = True, near_flexed=None, parts=None, smoothness: bool = True,
             info: dict | None = None, surface_every: int = 1) -> EvalResult:
    """Compute every metric whose inputs are given, for B frames.

    Args:
        frames: (B,) frame numbers.
        pred_joints, gt_joints: (B, J, 3) mm; joint_valid: (B, J).
        rendered_depth, target_depth: (B, K, H, W) mm.
        pred_vertices: (B, V, 3) mm with ``faces`` (F, 3) (the hand model's).
        gt_vertices: (B, V', 3) mm, the true meshes (or scans) with ``gt_faces`` (None: ``faces``).
            With the same topology (V' = V, ``gt_faces`` None) the per-vertex error is computed.
        scans: per frame ``(vertices (V_i, 3) mm, faces (F_i, 3))`` of a scan of any topology (e.g. the
            decimated scans); the surface distances are then to the scans (``surface`` becomes
            ``scan``-based: prediction = a, scan = b).
        surface: also compute surface-to-surface distances (needs ``faces``).
        near_flexed: (B, V) bool, the vertices near a flexed joint per frame
            (:func:`dhmlib.metrics_mesh.near_flexed_mask`); with the per-vertex error: its restriction.
        parts: a :class:`dhmlib.metrics_mesh.Parts` of the predicted mesh: penetration of non-adjacent parts.
        smoothness: with ``pred_vertices`` and ``faces``, the Laplacian smoothness (and its ratio to the truth's
            with same-topology ``gt_vertices``).
    """
    from . import metrics_mesh as mm

    frames = tuple(int(f) for f in np.asarray(frames).reshape(-1))
    kw: dict = {"frames": frames, "info": dict(info or {})}
    mesh: dict = {}
    mesh_pf: dict = {}
    if pred_joints is not None and gt_joints is not None:
        kw["joint_error"] = tuple(joint_error(pred_joints, gt_joints, joint_valid).tolist())
    if rendered_depth is not None and target_depth is not None:
        kw["depth_error"] = tuple(depth_error(rendered_depth, target_depth).tolist())
    if pred_vertices is not None and gt_vertices is not None:
        pv, gv = np.asarray(_t(pred_vertices)), np.asarray(_t(gt_vertices))
        if len(pv) != len(frames) or len(gv) != len(frames):
            raise ValueError(f"evaluate: {len(frames)} frames but {len(pv)} predicted and {len(gv)} true meshes")
        if gt_faces is None and pv.shape == gv.shape:
            if faces is None:
                raise ValueError("evaluate: per-vertex error needs the faces (F, 3) for the true normals")
            maps = vertex_error_maps(pv, gv, faces=faces)
            kw["vertex"] = summarize_vertex_errors(maps)
            kw["vertex_per_frame"] = {k: tuple(v.mean(1).tolist()) for k, v in maps.items()}
            if near_flexed is not None:
                nf = mm.near_flexed_error(maps["total"], near_flexed, PERCENTILE)
                mesh.update({f"vertex_{k}_mm" if not k.endswith(("count", "fraction")) else f"vertex_{k}": v
                             for k, v in nf.items()})
        if surface and faces is not None:
            gf = faces if gt_faces is None else gt_faces
            nan = {"a_to_b": math.nan, "b_to_a": math.nan, "symmetric": math.nan}
            d = [surface_distance(a, faces, b, gf) if i % surface_every == 0 else nan
                 for i, (a, b) in enumerate(zip(pv, gv))]
            kw["surface"] = {k: tuple(x[k] for x in d) for k in ("a_to_b", "b_to_a", "symmetric")}
    if scans is not None:
        if pred_vertices is None or faces is None:
            raise ValueError("evaluate: distances to scans need pred_vertices and faces")
        pv = np.asarray(_t(pred_vertices))
        if len(scans) != len(frames) or len(pv) != len(frames):
            raise ValueError(f"evaluate: {len(frames)} frames but {len(pv)} predicted meshes and {len(scans)} scans")
        d = [surface_distance(a, faces, sv, sf) for a, (sv, sf) in zip(pv, scans)]
        kw["surface"] = {k: tuple(x[k] for x in d) for k in ("a_to_b", "b_to_a", "symmetric")}
        kw["info"].setdefault("surface_reference", "scans")
    if pred_vertices is not None and parts is not None:
        pen = mm.penetration(_t(pred_vertices).numpy(), parts)
        mesh.update({"penetration_depth_mean_mm": pen["penetration_depth_mean"],
                     "penetration_depth_max_mm": pen["penetration_depth_max"],
                     "penetration_fraction": pen["penetration_fraction"], "penetration_count": pen["penetration_count"]})
        mesh_pf.update({"penetration_depth_mean_mm": tuple(pen["per_frame"]["penetration_depth_mean"]),
                        "penetration_fraction": tuple(pen["per_frame"]["penetration_fraction"])})
    if smoothness and pred_vertices is not None and faces is not None:
        gv = None
        if gt_vertices is not None and gt_faces is None and np.shape(gt_vertices) == np.shape(pred_vertices):
            gv = _t(gt_vertices).numpy()
        sm = mm.smoothness(_t(pred_vertices).numpy(), faces, gv)
        mesh.update({"smoothness_laplacian_mm": sm["smoothness_laplacian"]})
        if gv is not None:
            mesh.update({"smoothness_laplacian_gt_mm": sm["smoothness_laplacian_gt"],
                         "smoothness_ratio": sm["smoothness_ratio"]})
        mesh_pf.update({(k + "_mm" if k == "smoothness_laplacian" else k): tuple(v) for k, v in sm["per_frame"].items()})
    if mesh:
        kw["mesh"], kw["mesh_per_frame"] = mesh, mesh_pf
    return EvalResult(**kw)


def write_results(result: EvalResult, out_dir, vertices=None, faces=None, uvs=None, uv_faces=None) -> Path:
    """Write ``out_dir/metrics.json`` and, with ``vertices``, ``out_dir/meshes/<frame:06d>.obj``.

    Args:
        result: the metrics.
        vertices: (B, V, 3) mm, one mesh per ``result.frames`` entry (world frame).
        faces: (F, 3), the hand model's face order; uvs (T, 2) and uv_faces (F, 3) optional texture
            coordinates (a :class:`~dhmlib.handmodel.HandModel`'s ``uvs`` / ``uv_faces``), kept in the OBJ.
    Returns:
        the path of ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vertices is not None:
        v = np.asarray(_t(vertices))
        if faces is None:
            raise ValueError("write_results: meshes need the faces (F, 3)")
        if len(v) != len(result.frames):
            raise ValueError(f"write_results: {len(result.frames)} frames but {len(v)} meshes")
        for f, verts in zip(result.frames, v):
            write_obj(out / "meshes" / f"{f:06d}.obj", verts, faces, uvs=uvs, uv_faces=uv_faces)
    path = out / "metrics.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2))
    tmp.replace(path)
    return path


# --------------------------------------------------------------------------- virtual-capture ground truth
def _synthetic_dir(root, subject: int) -> Path:
    return Path(root) / "annotations" / "synthetic" / f"subject_{int(subject)}"


def ground_truth_meshes(root, subject: int, frames) -> np.ndarray:
    """The virtual capture's true meshes: (F, V, 3) float32 world mm for ``frames``.

    Reads ``root/annotations/synthetic/subject_N/meshes/<frame:06d>.npy`` (written by ``dhm synth``;
    the real DeepHandMesh release has no such folder). Faces: :func:`ground_truth_faces`.
    """
    folder = _synthetic_dir(root, subject) / "meshes"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no ground-truth meshes (only the virtual capture, dhm synth, writes "
                                "them; the real data has none)")
    out = []
    for f in np.asarray(frames).reshape(-1):
        p = folder / f"{int(f):06d}.npy"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no ground-truth mesh for frame {int(f)}")
        out.append(np.load(p, allow_pickle=False))
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0, 3), np.float32)


def ground_truth_faces(root, subject: int) -> np.ndarray:
    """(F, 3) int64 faces of the virtual capture's true meshes (``subject_N/faces.npy``, the hand model's)."""
    p = _synthetic_dir(root, subject) / "faces.npy"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no ground-truth faces (only the virtual capture, dhm synth, writes them)")
    return np.load(p, allow_pickle=False).astype(np.int64)
