"""Diagnostics of the ablation: why a variant generalises or not, measured on the virtual capture.

:func:`score_model` scores one trained model several ways, each per frame (mm, mean per-vertex
distance to the true mesh):

- ``true_held_out``: held-out frames posed with the TRUE angles (root by Kabsch on the joints): the
  decoder alone, no pose-fitting error;
- ``true_train``: the same on training frames (the gap to ``true_held_out`` is overfitting);
- ``shared_fit``: held-out frames posed with ONE set of angles fitted with plain LBS (the same
  poses for every model: only the decoder differs);
- ``protocol``: the evaluation of notebooks 02/03 (``fit_held_out``: joint fit, then a short
  joint + depth fit, the pose corrective's input detached as in training);
- ``full_fit``: a fit through the pose corrective (not detached) with ``depth_steps`` depth steps.

:func:`paired_interval` gives the mean paired per-frame difference of two runs with a 95 % interval
over blocks of consecutive frames (frames of one take are correlated; a block is the unit).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .evaluate import ground_truth_meshes
from .fit import fit_pose
from .model import DeepHandMesh

#: frames per block of the paired interval (the free take has a new pose every 5 frames)
BLOCK = 5


def per_frame_vertex_error(model: DeepHandMesh, euler, root, true_vertices, correctives=None) -> np.ndarray:
    """(B,) mean per-vertex distance (mm) of ``model.decode(euler, root)`` to ``true_vertices`` (B, V, 3)."""
    model.eval()
    with torch.no_grad():
        v = torch.cat([model.decode(euler[s:s + 16], root[s:s + 16], correctives=correctives).vertices
                       for s in range(0, len(euler), 16)])
    return (v.double().cpu() - torch.as_tensor(true_vertices, dtype=torch.float64)).norm(dim=-1).mean(1).numpy()


@dataclass
class FrameSet:
    """Frames with their true angles, Kabsch-ready joints and true meshes (virtual capture)."""

    frames: tuple[int, ...]
    euler: torch.Tensor
    joints: torch.Tensor
    valid: torch.Tensor
    true_vertices: np.ndarray

    @classmethod
    def load(cls, data_root, subject: int, frames, skeleton) -> "FrameSet":
        from .data.keypoints import keypoints_to_joints, read_keypoints
        from .data.layout import Layout
        from .train.evaluation import true_poses

        frames = tuple(int(f) for f in frames)
        true = true_poses(data_root, subject, frames, "cpu")
        lay = Layout(data_root, subject)
        j, v = zip(*(keypoints_to_joints(read_keypoints(lay.keypoints_path(f)), skeleton) for f in frames))
        return cls(frames, true.euler, torch.as_tensor(np.stack(j), dtype=torch.float32),
                   torch.as_tensor(np.stack(v), dtype=torch.float32), ground_truth_meshes(data_root, subject, frames))

    def true_error(self, model: DeepHandMesh) -> np.ndarray:
        with torch.no_grad():
            root = model.root_from_joints(self.joints, self.valid)
        return per_frame_vertex_error(model, self.euler, root, self.true_vertices)


def fit_through_pose_corrective(model: DeepHandMesh, held, joint_steps: int = 300, depth_steps: int = 120):
    """Held-out poses fitted with the pose corrective's input NOT detached (its dependence on the angles is
    part of the fit), ``depth_steps`` joint + depth steps after the joint fit. Returns (euler, root)."""
    from .train.evaluation import DEPTH_FIT_LR, JOINT_FIT_LR

    config = model.config
    model._config = config.replace(detach_pose_corrective_input=False)
    try:
        r1 = fit_pose(model, joints=held.joints, joint_valid=held.valid, steps=joint_steps, lr=JOINT_FIT_LR[0],
                      lr_end=JOINT_FIT_LR[1])
        r = fit_pose(model, joints=held.joints, joint_valid=held.valid, depth=held.depth, cameras=held.cameras,
                     crops=held.crops, steps=depth_steps, lr=DEPTH_FIT_LR[0], lr_end=DEPTH_FIT_LR[1],
                     init=r1.euler, root_init=r1.root) if depth_steps else r1
    finally:
        model._config = config
    return r.euler, r.root


def paired_interval(a: Sequence[float], b: Sequence[float], block: int = BLOCK) -> dict:
    """Mean of ``b − a`` per frame with a 95 % t-interval over blocks of ``block`` consecutive frames.

    Returns ``{"mean", "low", "high", "blocks", "relative"}`` (``relative``: mean ÷ mean of ``a``).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = b - a
    n = max(1, len(d) // block)
    means = np.array([c.mean() for c in np.array_split(d, n)])
    m = float(d.mean())
    if n < 2:
        return {"mean": m, "low": float("nan"), "high": float("nan"), "blocks": n, "relative": m / a.mean()}
    from scipy.stats import t as student

    half = float(student.ppf(0.975, n - 1) * means.std(ddof=1) / math.sqrt(n))
    return {"mean": m, "low": m - half, "high": m + half, "blocks": n, "relative": m / float(a.mean())}
