"""The hand as a function of its pose: forward kinematics + linear blend skinning of a :class:`HandModel`.

::

    euler (B,J,3) ─► R = Rz·Ry·Rx ─► FK over the tree (local bind poses, + joint offsets) ─► G (B,J,4,4)
    template (+ vertex offsets) ─► LBS with G·G_bind⁻¹ ─► vertices (B,V,3)

:class:`HandLayer` holds no learnable parameter; :class:`~dhmlib.network.model.DeepHandMesh` adds the
correctives on top of it, and the virtual capture (:mod:`dhmlib.synth`) poses its true hands with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.kinematics import (KinematicTree, euler_to_matrix, forward_kinematics, linear_blend_skinning,
                                    skinning_transforms)


@dataclass(frozen=True)
class HandPose:
    """Output of the decoder.

    Attributes:
        joints: (B, J, 3) joint positions, mm.
        vertices: (B, V, 3) mesh vertices, mm.
        transforms: (B, J, 4, 4) global joint transforms.
        euler: (B, J, 3) the DoF-masked Euler angles that were applied, radians.
        offsets: (B, V, 3) the total skin corrective (identity + pose, after any projection) that
            was added to the template before skinning, mm; None when no skin corrective was applied.
    """

    joints: torch.Tensor
    vertices: torch.Tensor
    transforms: torch.Tensor
    euler: torch.Tensor
    offsets: torch.Tensor | None = None


class HandLayer(nn.Module):
    """Forward kinematics + linear blend skinning of a :class:`HandModel`.

    Holds the model as buffers (float32 by default); no learnable parameters.
    ``layer(euler)`` with all-zero angles and no offsets returns the template
    and the bind joints.  Moving the layer to another dtype or device re-reads its
    floating-point buffers from the hand model's float64 arrays, so ``.double()`` after a
    float32 build is as exact as ``HandLayer(hand_model, torch.float64)``.
    """

    #: float buffers and the HandModel arrays they hold
    _SOURCES = {"template": "vertices", "skin_weights": "skinning_weights", "local_bind": "local_pose",
                "global_bind": "global_pose", "global_bind_inv": "global_pose_inv"}

    def __init__(self, hand_model: HandModel, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.hand_model = hand_model
        self.skeleton = hand_model.skeleton
        self.tree = KinematicTree(hand_model.parents)

        def buf(name, x, dt=dtype):
            self.register_buffer(name, torch.as_tensor(np.asarray(x), dtype=dt), persistent=False)

        buf("template", hand_model.vertices)
        buf("skin_weights", hand_model.skinning_weights)
        buf("local_bind", hand_model.local_pose)
        buf("global_bind", hand_model.global_pose)
        buf("global_bind_inv", hand_model.global_pose_inv)
        buf("dof_mask", hand_model.dof_mask, torch.bool)
        buf("faces", hand_model.faces, torch.long)
        for d, (joints, slots) in enumerate(zip(self.tree.level_joints[1:], self.tree.parent_slots)):
            self.register_buffer(f"_level{d}", joints, persistent=False)
            self.register_buffer(f"_slots{d}", slots, persistent=False)
        self.register_buffer("_inverse_order", self.tree.inverse_order, persistent=False)
        nonroot = torch.ones(self.skeleton.num_joints, 1)
        nonroot[self.skeleton.root] = 0
        self.register_buffer("_nonroot", nonroot, persistent=False)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for name, source in self._SOURCES.items():
            b = self._buffers[name]
            if b.is_floating_point() and b.device.type != "meta":   # no float32 rounding carried over
                self._buffers[name] = torch.as_tensor(np.asarray(getattr(self.hand_model, source)),
                                                      dtype=b.dtype).to(b.device)
        return self

    @property
    def num_joints(self) -> int:
        return self.skeleton.num_joints

    @property
    def num_vertices(self) -> int:
        return self.template.shape[0]

    @property
    def num_dof(self) -> int:
        return int(self.dof_mask.sum())

    def _device_tree(self) -> KinematicTree:
        """The kinematic tree with its index tensors on this layer's device."""
        t = self.tree
        if t.inverse_order.device != self._inverse_order.device:
            n = len(t.level_joints) - 1
            t.level_joints = [t.level_joints[0]] + [getattr(self, f"_level{d}") for d in range(n)]
            t.parent_slots = [getattr(self, f"_slots{d}") for d in range(n)]
            t.inverse_order = self._inverse_order
        return t

    def local_poses(self, joint_offsets: torch.Tensor | None = None,
                    dtype: torch.dtype | None = None) -> torch.Tensor:
        """Local bind poses (J, 4, 4), or (B, J, 4, 4) for batched offsets, with translations corrected.

        Args:
            joint_offsets: (J, 3) or (B, J, 3) corrective added to the local bind translations, mm
                (the root's row is ignored: the root keeps its bind pose, as in the official code).
            dtype: of the result (default: the layer's).
        """
        local = self.local_bind.to(dtype or self.local_bind.dtype)
        if joint_offsets is not None:
            joint_offsets = joint_offsets * self._nonroot.to(joint_offsets.dtype)
            trans = local[..., :3, 3] + joint_offsets                   # (J,3) or (B,J,3)
            local = torch.cat([torch.cat([local[..., :3, :3].expand(trans.shape[:-1] + (3, 3)),
                                          trans.unsqueeze(-1)], -1),
                               local[..., 3:, :].expand(trans.shape[:-1] + (1, 4))], -2)
        return local

    def rest_transforms(self, joint_offsets: torch.Tensor | None = None,
                        dtype: torch.dtype | None = None) -> torch.Tensor:
        """(1, J, 4, 4) global joint transforms at zero Euler angles, root at its bind pose.

        With ``joint_offsets`` (J, 3) (mm) this is the original's ``global_pose_refined``;
        without, the global bind poses.
        """
        local = self.local_poses(joint_offsets, dtype)
        if local.dim() != 3:
            raise ValueError(f"joint_offsets: expected shape ({self.num_joints}, 3), got {tuple(joint_offsets.shape)}")
        rot = torch.eye(3, dtype=local.dtype, device=local.device).expand(1, self.num_joints, 3, 3)
        return forward_kinematics(rot, local, self._device_tree())

    def forward(self, euler: torch.Tensor, vertex_offsets: torch.Tensor | None = None,
                joint_offsets: torch.Tensor | None = None,
                root_transform: torch.Tensor | None = None,
                rest_vertices: torch.Tensor | None = None) -> HandPose:
        """Pose the hand.

        Args:
            euler: (B, J, 3) Euler angles, radians; axes a joint does not have are ignored.
            vertex_offsets: (B, V, 3) or (V, 3) corrective added to the template before skinning, mm.
            joint_offsets: (J, 3) or (B, J, 3) corrective added to local bind translations, mm
                (the root's row is ignored).
            root_transform: (B, 4, 4) or (4, 4) placement of the root; None keeps its bind pose.
            rest_vertices: (B, V, 3) or (V, 3) rest shape to skin instead of the template
                (``vertex_offsets`` are added to it).
        Returns:
            HandPose with (B, J, 3) joints and (B, V, 3) vertices in mm.
        """
        if euler.dim() != 3 or euler.shape[1:] != (self.num_joints, 3):
            raise ValueError(f"euler: expected shape (B, {self.num_joints}, 3), got {tuple(euler.shape)}")
        euler = euler * self.dof_mask.to(euler.dtype)
        rot = euler_to_matrix(euler)                                    # (B, J, 3, 3)
        local = self.local_poses(joint_offsets, euler.dtype)
        G = forward_kinematics(rot, local, self._device_tree(), root_transform)   # (B, J, 4, 4)
        A = skinning_transforms(G, self.global_bind_inv.to(euler.dtype))         # (B, J, 3, 4)
        rest = self.template.to(euler.dtype) if rest_vertices is None else rest_vertices
        if vertex_offsets is not None:
            rest = rest + vertex_offsets
        verts = linear_blend_skinning(rest, self.skin_weights.to(euler.dtype), A)
        return HandPose(joints=G[..., :3, 3], vertices=verts, transforms=G, euler=euler)
