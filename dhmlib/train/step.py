"""One training forward: pose → root by Kabsch → decode → render K views → losses.

Per sample, as in the original trainer (DESIGN.md):

::

    pose source ─► euler (B,J,3)      image: model.pose_net(model.backbone_net(image))
                                      embedding: PoseEmbedding(frame)
    rest pose (skeleton corrective) ─► alignment joints (5,3) ─Kabsch─► gt joints  ⇒ root (B,4,4)
    decode(euler, root) ─► joints (B,J,3), vertices (B,V,3), world mm
    render_depth(vertices, view cameras (B,K), view crops (B,K)) ─► depth (B,K,h,w) mm
    losses: joint (L1), depth (smooth-L1 where both maps are non-zero),
            penetration (rigid, non-rigid; optional), Laplacian (offsets | posed),
            optional: joint-limit prior on the poses, tangential part of free correctives,
            L2 prior on the pose corrective's offsets

Gradient flows through the Kabsch alignment into the skeleton corrective, as in the original.
``total = w_joint·joint + w_depth·depth + w_r·pen_rigid + w_nr·pen_nonrigid + w_lap·laplacian``;
``StepOutput.terms`` holds the unweighted terms.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dhmlib.data.sample import HandBatch
from dhmlib.hand.layer import HandPose
from dhmlib.losses import MeshLaplacian, depth_loss, joint_loss, laplacian_loss
from dhmlib.mesh.normals import vertex_normals
from dhmlib.network.fit import joint_limits_rad, limit_prior
from dhmlib.network.model import DeepHandMesh
from dhmlib.render import render_depth
from dhmlib.train.config import TrainConfig
from dhmlib.train.embedding import PoseEmbedding

#: loss terms in StepOutput.terms, in log order
TERMS = ("joint", "depth", "penetration_rigid", "penetration_nonrigid", "laplacian", "pose_prior", "tangential",
         "pose_offset")


@dataclass(frozen=True, eq=False)
class StepOutput:
    """What one training forward returns.

    Attributes:
        total: scalar weighted sum of the terms (what is back-propagated).
        terms: unweighted loss terms by name (:data:`TERMS`; the penetration terms only when the
            step has a penetration loss), scalars: joint mm, depth mm, penetration mm, Laplacian mm².
        pose: the decoded hand (world mm), with the root placed by Kabsch.
        depth: (B, K, h, w) rendered depth of the K views, mm (0 = no surface).
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    pose: HandPose
    depth: torch.Tensor


class TrainStep(nn.Module):
    """The per-batch forward of training as one module (what DDP wraps).

    Args:
        model: the network; its decoder is shared by both pose sources.
        config: loss weights, pose source, render size, Laplacian form.
        embedding: the :class:`PoseEmbedding` (required for ``pose_source="embedding"``).
        penetration: a ``dhmlib.losses.PenetrationLoss`` (optional; without it the penetration
            terms are left out).

    ``step(batch)`` → :class:`StepOutput`.
    """

    def __init__(self, model: DeepHandMesh, config: TrainConfig, embedding: PoseEmbedding | None = None,
                 penetration: nn.Module | None = None):
        super().__init__()
        if config.pose_source == "embedding" and embedding is None:
            raise ValueError("TrainStep: pose_source='embedding' needs a PoseEmbedding")
        self.model = model
        self.config = config
        self.embedding = embedding
        self.penetration = penetration
        self.laplacian = MeshLaplacian(model.hand.faces, model.hand.num_vertices)
        if config.pose_prior_weight > 0:
            lo, hi = joint_limits_rad(model, model.hand.template)
            self.register_buffer("_limit_lo", lo, persistent=False)
            self.register_buffer("_limit_hi", hi, persistent=False)
        tangential = config.tangential_weight > 0 and model.config.corrective_basis == "free"
        hand = model.hand.hand_model
        normals = vertex_normals(np.asarray(hand.vertices, np.float64), hand.faces) if tangential else None
        self.register_buffer("_normals", None if normals is None else torch.as_tensor(normals, dtype=torch.float32),
                             persistent=False)

    def euler(self, batch: HandBatch) -> torch.Tensor:
        """(B, J, 3) radians from the configured pose source."""
        if self.config.pose_source == "embedding":
            return self.embedding(batch.frame)
        if batch.image is None:
            raise ValueError("TrainStep: pose_source='image' needs images, but the batch has none "
                             "(train with pose_source='embedding' on captures without images/)")
        m = self.model
        return m.pose_net(m.backbone_net(batch.image))

    def forward(self, batch: HandBatch) -> StepOutput:
        cfg, m = self.config, self.model
        euler = self.euler(batch)                                              # (B, J, 3)
        root = m.root_from_joints(batch.joints, batch.joint_valid)             # (B, 4, 4), Kabsch
        pose = m.decode(euler, root)                                           # world mm
        h, w = cfg.render_size
        depth = render_depth(pose.vertices, m.hand.faces, batch.view_cameras, batch.view_crops, (h, w))
        terms = {
            "joint": joint_loss(pose.joints, batch.joints, batch.joint_valid, cfg.loss_normalize),
            "depth": depth_loss(depth, batch.depth, normalize=cfg.loss_normalize),
        }
        weights = {"joint": cfg.joint_weight, "depth": cfg.depth_weight}
        if self.penetration is not None:   # radii from the rest-pose refined skeleton and corrected mesh
            rest = m.rest_pose()
            pen = self.penetration(pose.joints, pose.vertices, rest.joints[0], rest.vertices[0])
            terms["penetration_rigid"], terms["penetration_nonrigid"] = pen.rigid, pen.nonrigid
            weights["penetration_rigid"] = cfg.penetration_rigid_weight
            weights["penetration_nonrigid"] = cfg.penetration_nonrigid_weight
        lap_x = pose.vertices if cfg.laplacian_form == "posed" else pose.offsets   # offsets: None without skin correctives
        terms["laplacian"] = (laplacian_loss(lap_x, self.laplacian) if lap_x is not None
                              else pose.vertices.new_zeros(()))
        weights["laplacian"] = cfg.laplacian_weight
        if cfg.pose_prior_weight > 0:
            terms["pose_prior"] = limit_prior(euler, self._limit_lo, self._limit_hi, m.hand.dof_mask).mean()
            weights["pose_prior"] = cfg.pose_prior_weight
        if self._normals is not None and pose.offsets is not None:
            n = self._normals.to(pose.offsets.dtype)
            tangent = pose.offsets - (pose.offsets * n).sum(-1, keepdim=True) * n
            terms["tangential"] = tangent.pow(2).sum(-1).mean()
            weights["tangential"] = cfg.tangential_weight
        if cfg.pose_offset_weight > 0 and "pose" in m.config.correctives:
            terms["pose_offset"] = m.pose_corrective(euler).pow(2).sum(-1).mean()
            weights["pose_offset"] = cfg.pose_offset_weight
        total = sum(weights[k] * v for k, v in terms.items())
        return StepOutput(total=total, terms=terms, pose=pose, depth=depth)
