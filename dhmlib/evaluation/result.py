"""The evaluation of a set of frames: every metric it is given, as one :class:`EvalResult`, and its files.

:func:`evaluate` computes the metrics of :mod:`dhmlib.metrics.errors` and :mod:`dhmlib.metrics.mesh`
(precise definitions there) for what it is given; flat summary keys of the mesh metrics:
``vertex_near_flexed_mean_mm`` / ``_p95_mm`` (the per-vertex error on the vertices within 15 mm of a
joint flexed > 30° in the frame, skinning weight > 0.3 to it or its parent; ``_count`` and
``_fraction`` of (frame, vertex) pairs; ``vertex_not_near_flexed_mean_mm`` the rest),
``penetration_depth_mean_mm`` / ``_max_mm`` / ``penetration_fraction`` / ``penetration_count`` (vertices
lying inside the surface of the parts not adjacent to theirs; depth = distance to that surface),
``smoothness_laplacian_mm`` (mean ‖uniform Laplacian‖ of the predicted mesh), ``smoothness_laplacian_gt_mm``
and ``smoothness_ratio`` (prediction / truth; 1.0 = as smooth as the truth).
:func:`write_results` writes ``metrics.json`` and ``meshes/<frame:06d>.obj``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dhmlib.mesh.io import write_obj
from dhmlib.metrics import mesh as mm
from dhmlib.metrics.errors import (PERCENTILE, as_float64, depth_error, joint_error, summarize_vertex_errors,
                                   surface_distance, vertex_error_maps)


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
            (:func:`dhmlib.metrics.mesh.near_flexed_mask`); with the per-vertex error: its restriction.
        parts: a :class:`dhmlib.metrics.mesh.Parts` of the predicted mesh: penetration of non-adjacent parts.
        smoothness: with ``pred_vertices`` and ``faces``, the Laplacian smoothness (and its ratio to the truth's
            with same-topology ``gt_vertices``).
    """
    frames = tuple(int(f) for f in np.asarray(frames).reshape(-1))
    kw: dict = {"frames": frames, "info": dict(info or {})}
    mesh: dict = {}
    mesh_pf: dict = {}
    if pred_joints is not None and gt_joints is not None:
        kw["joint_error"] = tuple(joint_error(pred_joints, gt_joints, joint_valid).tolist())
    if rendered_depth is not None and target_depth is not None:
        kw["depth_error"] = tuple(depth_error(rendered_depth, target_depth).tolist())
    if pred_vertices is not None and gt_vertices is not None:
        pv, gv = np.asarray(as_float64(pred_vertices)), np.asarray(as_float64(gt_vertices))
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
        pv = np.asarray(as_float64(pred_vertices))
        if len(scans) != len(frames) or len(pv) != len(frames):
            raise ValueError(f"evaluate: {len(frames)} frames but {len(pv)} predicted meshes and {len(scans)} scans")
        d = [surface_distance(a, faces, sv, sf) for a, (sv, sf) in zip(pv, scans)]
        kw["surface"] = {k: tuple(x[k] for x in d) for k in ("a_to_b", "b_to_a", "symmetric")}
        kw["info"].setdefault("surface_reference", "scans")
    if pred_vertices is not None and parts is not None:
        pen = mm.penetration(as_float64(pred_vertices).numpy(), parts)
        mesh.update({"penetration_depth_mean_mm": pen["penetration_depth_mean"],
                     "penetration_depth_max_mm": pen["penetration_depth_max"],
                     "penetration_fraction": pen["penetration_fraction"], "penetration_count": pen["penetration_count"]})
        mesh_pf.update({"penetration_depth_mean_mm": tuple(pen["per_frame"]["penetration_depth_mean"]),
                        "penetration_fraction": tuple(pen["per_frame"]["penetration_fraction"])})
    if smoothness and pred_vertices is not None and faces is not None:
        gv = None
        if gt_vertices is not None and gt_faces is None and np.shape(gt_vertices) == np.shape(pred_vertices):
            gv = as_float64(gt_vertices).numpy()
        sm = mm.smoothness(as_float64(pred_vertices).numpy(), faces, gv)
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
            coordinates (a :class:`~dhmlib.hand.handmodel.HandModel`'s ``uvs`` / ``uv_faces``), kept in the OBJ.
    Returns:
        the path of ``metrics.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if vertices is not None:
        v = np.asarray(as_float64(vertices))
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
