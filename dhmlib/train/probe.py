"""The held-out probe: the per-vertex error of the model being trained, measured while it trains.

``TrainConfig.probe_every = N`` makes :func:`dhmlib.train.train` call a :class:`HeldOutProbe` at
the first step (a fresh run), every N steps and at the last step, and write its measurement to
``output/log/metrics.jsonl`` as ::

    {"kind": "probe", "step": s, "seconds": t, "vertex_mean_mm": …, "vertex_p95_mm": …,
     "vertex_normal_mean_mm": …, "vertex_sideways_mean_mm": …, "frames": B}

``seconds`` counts training time only (probing is left out of it and of ``time_limit_s``).

What is measured: the current model, with its configured correctives, posed with the TRUE Euler
angles of the held-out frames (the virtual capture's ``annotations/synthetic/subject_N/poses.npz``,
read by :func:`dhmlib.data.ground_truth.true_poses`) and the root placed as the trainer does (Kabsch
of the rest-pose refined alignment joints onto the frame's ground-truth joints,
:meth:`~dhmlib.network.model.DeepHandMesh.root_from_joints`), against the capture's ground-truth meshes
(:func:`dhmlib.data.ground_truth.ground_truth_meshes`) with :func:`dhmlib.metrics.errors.vertex_error_maps`.
No pose fit: the probe isolates what the decoder (correctives, skeleton) has learned from how
well a pose can be recovered. Real data has no true angles or meshes: then there is no probe (one
log line says so).

Cost: one batched decode of at most :data:`PROBE_FRAMES` frames (evenly spaced over the held-out
frames, the first and the last included) and an error map; everything else (angles, joints, true
meshes and their normals) is read once when the probe is built.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dhmlib.data.ground_truth import ground_truth_meshes, true_poses
from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints
from dhmlib.data.layout import Layout
from dhmlib.mesh.normals import vertex_normals
from dhmlib.metrics.errors import summarize_vertex_errors, vertex_error_maps
from dhmlib.network.model import DeepHandMesh

#: at most this many held-out frames per probe (the default capture holds out 28: all of them, ~0.3 s per probe
#: with the cpu-small model on 2 loaded cores)
PROBE_FRAMES = 32


def probe_frames(frames, limit: int = PROBE_FRAMES) -> tuple[int, ...]:
    """``limit`` frames evenly spaced over ``frames`` (sorted; the first and the last kept), or all of them."""
    frames = sorted(int(f) for f in frames)
    if len(frames) <= limit:
        return tuple(frames)
    idx = np.unique(np.round(np.linspace(0, len(frames) - 1, limit)).astype(int))
    return tuple(frames[i] for i in idx)


@dataclass(frozen=True)
class HeldOutProbe:
    """The held-out frames' true angles, joints and meshes, ready to measure a model (on ``device``).

    Attributes:
        frames: (B,) frame numbers probed.  held_out: how many frames the split holds out.
        euler: (B, J, 3) true angles, radians.  joints: (B, J, 3) ground-truth joints, mm; valid (B, J).
        true_vertices: (B, V, 3) ground-truth meshes, mm (float64).  true_normals: their unit normals (B, V, 3).
    """

    frames: tuple[int, ...]
    held_out: int
    euler: torch.Tensor
    joints: torch.Tensor
    valid: torch.Tensor
    true_vertices: torch.Tensor
    true_normals: torch.Tensor

    @classmethod
    def create(cls, data_root, subject: int, frames, model: DeepHandMesh, device=None, *,
               limit: int = PROBE_FRAMES, log: Callable[[str], None] = print) -> "HeldOutProbe | None":
        """The probe of the held-out ``frames`` (at most ``limit``, :func:`probe_frames`), or None with one
        ``log`` line when the data has no true angles or meshes (real data) or there is no held-out frame."""
        data_root, device = Path(data_root), torch.device(device or "cpu")
        if not len(frames):
            log("probe: no held-out frames (held_out=null?): no probe")
            return None
        chosen = probe_frames(frames, limit)
        true = true_poses(data_root, subject, chosen, device)
        try:
            gt = ground_truth_meshes(data_root, subject, chosen) if true is not None else None
        except FileNotFoundError:
            gt = None
        if true is None or gt is None:
            log(f"probe: {data_root} has no true angles and meshes (annotations/synthetic/subject_{subject}: "
                "only the virtual capture has them): no probe")
            return None
        hand = model.hand
        if gt.shape[1] != hand.num_vertices:
            log(f"probe: the true meshes have {gt.shape[1]} vertices, the model {hand.num_vertices}: no probe")
            return None
        layout = Layout(data_root, subject)
        joints, valid = zip(*(keypoints_to_joints(read_keypoints(layout.keypoints_path(f)), hand.skeleton)
                              for f in chosen))
        gt64 = torch.as_tensor(gt, dtype=torch.float64)
        normals = vertex_normals(gt64, hand.faces.cpu().long())
        dtype = hand.template.dtype
        probe = cls(frames=chosen, held_out=len(frames), euler=true.euler.to(device, dtype),
                    joints=torch.as_tensor(np.stack(joints), dtype=dtype, device=device),
                    valid=torch.as_tensor(np.stack(valid), dtype=dtype, device=device),
                    true_vertices=gt64, true_normals=normals)
        log(f"probe: {len(chosen)} of {len(frames)} held-out frames (evenly spaced), true angles from "
            f"{true.notes['file']}, root by Kabsch on the joints")
        return probe

    def __call__(self, model: DeepHandMesh) -> dict:
        """The per-vertex error of ``model`` (mm): ``vertex_mean_mm``, ``vertex_p95_mm``,
        ``vertex_normal_mean_mm``, ``vertex_sideways_mean_mm``, and ``frames`` (how many)."""
        was_training = model.training
        model.eval()            # also drops the model's inference cache (fused Adam leaves version counters)
        try:
            with torch.no_grad():
                dtype = model.hand.template.dtype
                root = model.root_from_joints(self.joints.to(dtype), self.valid.to(dtype))
                vertices = model.decode(self.euler.to(dtype), root).vertices
        finally:
            model.train(was_training)
        maps = vertex_error_maps(vertices.cpu(), self.true_vertices, gt_normals=self.true_normals)
        s = summarize_vertex_errors(maps)
        return {"vertex_mean_mm": s["mean"], "vertex_p95_mm": s["p95"], "vertex_normal_mean_mm": s["normal_mean"],
                "vertex_sideways_mean_mm": s["sideways_mean"], "frames": len(self.frames)}
