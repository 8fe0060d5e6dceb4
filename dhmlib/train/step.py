"""One training forward: pose → root by Kabsch → decode → render K views → losses.

Per sample, as in the original trainer (DESIGN.md):

::

    pose source ─► euler (B,J,3)      image: model.pose_net(model.backbone_net(image))
                                      embedding: PoseEmbedding(frame)
    rest pose (skeleton corrective) ─► alignment joints (5,3) ─Kabsch─► gt joints  ⇒ root (B,4,4)
    decode(euler, root) ─► joints (B,J,3), vertices (B,V,3), world mm
    render_depth(vertices, view cameras (B,K), view crops (B,K)) ─► depth (B,K,h,w) mm
    losses: joint (L1), depth (smooth-L1 where both maps are non-zero),
            penetration (rigid, non-rigid; optional), Laplacian (offsets | posed)

Gradient flows through the Kabsch alignment into the skeleton corrective, as in the original.
``total = w_joint·joint + w_depth·depth + w_r·pen_rigid + w_nr·pen_nonrigid + w_lap·laplacian``;
``StepOutput.terms`` holds the unweighted terms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..data.sample import HandBatch
from ..kinematics import rigid_align, rigid_transform_matrix
from ..losses import MeshLaplacian, depth_loss, joint_loss, laplacian_loss
from ..model import DeepHandMesh, HandPose
from ..render import render_depth
from .config import TrainConfig
from .embedding import PoseEmbedding

#: loss terms in StepOutput.terms, in log order
TERMS = ("joint", "depth", "penetration_rigid", "penetration_nonrigid", "laplacian")


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


def rest_pose(model: DeepHandMesh) -> HandPose:
    """The rest pose (zero angles, root at its bind pose) with the default correctives, B = 1."""
    if hasattr(model, "rest_pose"):
        return model.rest_pose()
    J = model.hand.num_joints
    return model.decode(model.hand.template.new_zeros(1, J, 3))


def root_from_joints(model: DeepHandMesh, joints: torch.Tensor, valid: torch.Tensor,
                     rest_joints: torch.Tensor | None = None) -> torch.Tensor:
    """Root placement (B, 4, 4) by Kabsch of the rest-pose refined alignment joints onto ``joints``.

    Args:
        joints: (B, J, 3) ground-truth joints, world mm.
        valid: (B, J) validity (weights of the alignment).
        rest_joints: (1, J, 3) rest-pose refined joints (default: computed from the model; the
            gradient flows into the skeleton corrective either way).
    Returns:
        (B, 4, 4) ``M @ G_bind[root]`` with M the rigid map of the rest alignment joints
        (the four ``*1`` joints and the root) onto the ground truth.
    """
    if rest_joints is None and hasattr(model, "root_from_joints"):
        return model.root_from_joints(joints, valid)
    if rest_joints is None:
        rest_joints = rest_pose(model).joints
    align = model.hand.skeleton.alignment_joints()
    B = joints.shape[0]
    src = rest_joints[:, align].expand(B, -1, -1)
    R, t = rigid_align(src, joints[:, align], valid[:, align].to(joints.dtype))
    root = model.hand.skeleton.root
    return rigid_transform_matrix(R, t) @ model.hand.global_bind[root].to(joints.dtype)


def skin_offsets(model: DeepHandMesh, pose: HandPose) -> torch.Tensor:
    """(B, V, 3) or (V, 3) total skin corrective (identity + pose) of a decoded pose, mm.

    ``pose.offsets`` when the model provides it; else recomputed as the decoder does.
    """
    offsets = getattr(pose, "offsets", None)
    if offsets is not None:
        return offsets
    on = model.config.correctives
    V = model.hand.num_vertices
    out = pose.vertices.new_zeros(V, 3)
    if "identity" in on:
        out = out + model.identity_corrective()
    if "pose" in on:
        e = pose.euler.detach() if model.config.detach_pose_corrective_input else pose.euler
        out = out + model.pose_corrective(e)
    return out


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
        rest = rest_pose(m)                                                    # B = 1
        root = root_from_joints(m, batch.joints, batch.joint_valid, rest.joints)   # (B, 4, 4)
        pose = m.decode(euler, root)                                           # world mm
        h, w = cfg.render_size
        depth = render_depth(pose.vertices, m.hand.faces, batch.view_cameras, batch.view_crops, (h, w))
        terms = {
            "joint": joint_loss(pose.joints, batch.joints, batch.joint_valid, cfg.loss_normalize),
            "depth": depth_loss(depth, batch.depth, normalize=cfg.loss_normalize),
        }
        weights = {"joint": cfg.joint_weight, "depth": cfg.depth_weight}
        if self.penetration is not None:
            pen = self.penetration(pose.joints, pose.vertices, rest.joints[0], rest.vertices[0])
            terms["penetration_rigid"], terms["penetration_nonrigid"] = pen.rigid, pen.nonrigid
            weights["penetration_rigid"] = cfg.penetration_rigid_weight
            weights["penetration_nonrigid"] = cfg.penetration_nonrigid_weight
        lap_x = pose.vertices if cfg.laplacian_form == "posed" else skin_offsets(m, pose)
        if lap_x.dim() == 2:
            lap_x = lap_x.unsqueeze(0)
        terms["laplacian"] = laplacian_loss(lap_x, self.laplacian)
        weights["laplacian"] = cfg.laplacian_weight
        total = sum(weights[k] * v for k, v in terms.items())
        return StepOutput(total=total, terms=terms, pose=pose, depth=depth)
