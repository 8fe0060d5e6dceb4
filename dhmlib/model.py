"""The DeepHandMesh network and its decoder.

::

    image (B,3,256,256) ─► BackboneNet ─► feat (B,512) ─► PoseNet ─► euler (B,J,3)
    id_code (32) ─► SkeletonRefineNet ─► Δbone (J,3)  ─┐
    euler, id_code ─► SkinRefineNet ─► Δpose (B,V,3), Δid (V,3)
                                                        └► HandLayer (FK + LBS) ─► joints, vertices

Module and parameter names follow the official code, so the state dict maps
one-to-one onto official snapshots (see :mod:`dhmlib.snapshot`).
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .backbone import ResNet
from .handmodel import HandModel
from .kinematics import (KinematicTree, euler_to_matrix, forward_kinematics, linear_blend_skinning,
                         skinning_transforms)

#: Names of the decoder's correctives, as ``decode(..., correctives=...)`` takes them.
CORRECTIVES = ("pose", "identity", "skeleton")
BACKBONE_DEPTHS = (18, 34, 50)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a :class:`DeepHandMesh` besides the hand model and the weights.

    Saved in every snapshot (``model_config``, see :mod:`dhmlib.snapshot`) as a plain dict.

    Attributes:
        backbone: ResNet depth, 18, 34 or 50 (the paper uses 50).
        id_dim: length of the identity code.
        pose_corrective: apply the pose-dependent vertex corrective by default.
        id_corrective: apply the identity-dependent vertex corrective by default.
        skeleton_corrective: apply the identity-dependent bone-length corrective by default.
        detach_pose_corrective_input: the pose corrective sees the Euler angles without
            gradient back to them, as in the official code (``joint_euler.detach()``), so only
            FK and skinning steer the pose estimate.
        seed: seed of the random ``id_code`` buffer (None: torch's global generator); a
            snapshot's ``id_code`` replaces it.
    """

    backbone: int = 50
    id_dim: int = 32
    pose_corrective: bool = True
    id_corrective: bool = True
    skeleton_corrective: bool = True
    detach_pose_corrective_input: bool = True
    seed: int | None = 0

    def __post_init__(self):
        def is_int(x):
            return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))

        if not is_int(self.backbone) or int(self.backbone) not in BACKBONE_DEPTHS:
            raise ValueError(f"ModelConfig.backbone: expected a ResNet depth in {BACKBONE_DEPTHS}, "
                             f"got {self.backbone!r}")
        if not is_int(self.id_dim) or self.id_dim < 1:
            raise ValueError(f"ModelConfig.id_dim: expected a positive int, got {self.id_dim!r}")
        for name in ("pose_corrective", "id_corrective", "skeleton_corrective", "detach_pose_corrective_input"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"ModelConfig.{name}: expected True or False, got {getattr(self, name)!r}")
        if self.seed is not None and not is_int(self.seed):
            raise ValueError(f"ModelConfig.seed: expected an int or None, got {self.seed!r}")
        # plain Python values, so that to_dict() stays JSON-able and weights-only loadable
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None:
                object.__setattr__(self, f.name, bool(v) if isinstance(v, (bool, np.bool_)) else int(v))

    @property
    def correctives(self) -> frozenset[str]:
        """The correctives on by default (names from :data:`CORRECTIVES`)."""
        on = (self.pose_corrective, self.id_corrective, self.skeleton_corrective)
        return frozenset(name for name, flag in zip(CORRECTIVES, on) if flag)

    def to_dict(self) -> dict:
        """A plain dict of str/int/bool/None (JSON-able; loadable with ``torch.load(weights_only=True)``)."""
        return dataclasses.asdict(self)

    @classmethod
    def _check_keys(cls, keys, what: str) -> None:
        known = [f.name for f in dataclasses.fields(cls)]
        for k in keys:
            if k not in known:
                raise ValueError(f"{what}: unknown key {k!r}; known keys: {', '.join(known)}")

    @classmethod
    def from_dict(cls, d: Mapping) -> "ModelConfig":
        """The inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys raise."""
        if not isinstance(d, Mapping):
            raise ValueError(f"ModelConfig.from_dict: expected a mapping, got {type(d).__name__}")
        cls._check_keys(d, "ModelConfig.from_dict")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        """A copy with ``changes`` applied (validated; unknown keys raise)."""
        self._check_keys(changes, "ModelConfig.replace")
        return dataclasses.replace(self, **changes)


def check_correctives(correctives: Collection[str]) -> frozenset[str]:
    """``correctives`` as a frozenset, every name one of :data:`CORRECTIVES` (ValueError otherwise)."""
    if isinstance(correctives, (str, bytes)):
        raise ValueError(f"correctives: expected a collection of names from {CORRECTIVES}, got the string "
                         f"{correctives!r} (write ({correctives!r},))")
    chosen = frozenset(correctives)
    unknown = sorted(str(c) for c in chosen if c not in CORRECTIVES)
    if unknown:
        raise ValueError(f"correctives: unknown name {unknown[0]!r}; expected names from {CORRECTIVES}")
    return chosen


@dataclass(frozen=True)
class HandPose:
    """Output of the decoder.

    Attributes:
        joints: (B, J, 3) joint positions, mm.
        vertices: (B, V, 3) mesh vertices, mm.
        transforms: (B, J, 4, 4) global joint transforms.
        euler: (B, J, 3) the DoF-masked Euler angles that were applied, radians.
    """

    joints: torch.Tensor
    vertices: torch.Tensor
    transforms: torch.Tensor
    euler: torch.Tensor


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
        local = self.local_bind.to(euler.dtype)
        if joint_offsets is not None:
            # the root keeps its bind pose: a corrective of its translation is ignored, as in the official code
            joint_offsets = joint_offsets * self._nonroot.to(joint_offsets.dtype)
            trans = local[..., :3, 3] + joint_offsets                   # (J,3) or (B,J,3)
            local = torch.cat([torch.cat([local[..., :3, :3].expand(trans.shape[:-1] + (3, 3)),
                                          trans.unsqueeze(-1)], -1),
                               local[..., 3:, :].expand(trans.shape[:-1] + (1, 4))], -2)
        G = forward_kinematics(rot, local, self._device_tree(), root_transform)   # (B, J, 4, 4)
        A = skinning_transforms(G, self.global_bind_inv.to(euler.dtype))         # (B, J, 3, 4)
        rest = self.template.to(euler.dtype) if rest_vertices is None else rest_vertices
        if vertex_offsets is not None:
            rest = rest + vertex_offsets
        verts = linear_blend_skinning(rest, self.skin_weights.to(euler.dtype), A)
        return HandPose(joints=G[..., :3, 3], vertices=verts, transforms=G, euler=euler)


def _mlp(*sizes: int) -> nn.Sequential:
    """Linear–ReLU–…–Linear; indices 0, 2, … are the Linear layers (official names)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BackboneNet(nn.Module):
    """ResNet trunk, global average pool, fc to 512 (+ReLU). (B,3,H,W) → (B,512)."""

    def __init__(self, depth: int = 50, feat_dim: int = 512):
        super().__init__()
        self.resnet = ResNet(depth)
        self.fc = nn.Sequential(nn.Linear(self.resnet.out_channels, feat_dim), nn.ReLU(inplace=True))

    def forward(self, image):
        return self.fc(self.resnet(image).mean(dim=(2, 3)))


class PoseNet(nn.Module):
    """(B, 512) features → (B, J, 3) Euler angles; ``π·tanh`` on the DoF the skeleton has, 0 elsewhere."""

    def __init__(self, dof_mask: torch.Tensor, feat_dim: int = 512):
        super().__init__()
        self.register_buffer("dof_index", torch.nonzero(dof_mask.reshape(-1)).squeeze(1), persistent=False)
        self.num_joints = dof_mask.shape[0]
        self.fc = _mlp(feat_dim, 512, int(dof_mask.sum()))

    def forward(self, feat):
        dof = torch.tanh(self.fc(feat)) * math.pi                        # (B, DoF)
        euler = feat.new_zeros(feat.shape[0], self.num_joints * 3)
        euler = euler.index_copy(1, self.dof_index, dof)
        return euler.view(-1, self.num_joints, 3)


class SkeletonRefineNet(nn.Module):
    """Identity code (32) → (J, 3) corrective of local bone translations, mm."""

    def __init__(self, num_joints: int, id_dim: int = 32):
        super().__init__()
        self.num_joints = num_joints
        self.fc_skeleton = _mlp(id_dim, 64, num_joints * 3)
        nn.init.zeros_(self.fc_skeleton[-1].weight)
        nn.init.zeros_(self.fc_skeleton[-1].bias)

    def forward(self, id_code):
        return self.fc_skeleton(id_code).view(self.num_joints, 3)


class _BatchLastLinear(torch.autograd.Function):
    """``W @ xᵀ + b[:, None]``: a Linear layer whose output is batch-last, (out, B).

    That is the layout :func:`~dhmlib.kinematics.linear_blend_skinning` reads
    without a copy.  The weight gradient ``g @ x`` is an outer product at B = 1,
    written as one (PyTorch's K = 1 GEMM for it is twice as slow here).
    """

    @staticmethod
    def forward(ctx, x, W, b):
        ctx.save_for_backward(x, W)
        return torch.addmm(b.unsqueeze(1), W, x.t())

    @staticmethod
    def backward(ctx, g):
        x, W = ctx.saved_tensors
        grad_x = g.t() @ W if ctx.needs_input_grad[0] else None
        grad_W = None
        if ctx.needs_input_grad[1]:
            grad_W = torch.outer(g[:, 0], x[0]) if g.shape[1] == 1 else g @ x
        grad_b = g.sum(1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_W, grad_b


class SkinRefineNet(nn.Module):
    """Pose- and identity-dependent vertex correctives, mm.

    ``pose(euler (B,J,3)) → (B,V,3)``; ``identity(id_code (32,)) → (V,3)``.
    """

    def __init__(self, num_joints: int, num_vertices: int, id_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.num_vertices = num_vertices
        self.fc_pose = _mlp(num_joints * 3, hidden, num_vertices * 3)
        self.fc_id = _mlp(id_dim, hidden, num_vertices * 3)
        for fc in (self.fc_pose, self.fc_id):  # start at plain LBS
            nn.init.zeros_(fc[-1].weight)
            nn.init.zeros_(fc[-1].bias)

    def pose(self, euler):
        return self.fc_pose(euler.reshape(euler.shape[0], -1)).view(-1, self.num_vertices, 3)

    def pose_plus(self, euler, base):
        """``base + pose(euler)`` in one GEMM (``base`` folded into the last layer's bias).

        Args:
            euler: (B, J, 3) radians.  base: (V, 3) mm.
        Returns:
            (B, V, 3) mm (a permuted view of a (V, 3, B) buffer).
        """
        hidden = self.fc_pose[1](self.fc_pose[0](euler.reshape(euler.shape[0], -1)))   # (B, 256)
        last = self.fc_pose[2]
        out = _BatchLastLinear.apply(hidden, last.weight, last.bias + base.reshape(-1))   # (V·3, B)
        return out.view(self.num_vertices, 3, -1).permute(2, 0, 1)

    def identity(self, id_code):
        hidden = self.fc_id[1](self.fc_id[0](id_code))                   # (256,)
        last = self.fc_id[2]
        # matrix-vector product: its weight gradient is an outer product, not a K=1 GEMM
        return torch.addmv(last.bias, last.weight, hidden).view(self.num_vertices, 3)


class DeepHandMesh(nn.Module):
    """The DeepHandMesh encoder–decoder.

    Args:
        hand_model: template, skeleton and skinning.
        config: architecture and default correctives (:class:`ModelConfig`; None: the defaults,
            ResNet-50 as in the paper).  Read-only afterwards as ``model.config``; choose the
            correctives of one call with ``decode(..., correctives=...)``.
    """

    def __init__(self, hand_model: HandModel, config: ModelConfig | None = None):
        super().__init__()
        if config is None:
            config = ModelConfig()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"DeepHandMesh: config must be a ModelConfig, got {type(config).__name__} "
                            f"(e.g. DeepHandMesh(hand, ModelConfig(backbone=18)))")
        self._config = config
        self.hand = HandLayer(hand_model)
        J, V = self.hand.num_joints, self.hand.num_vertices
        self.backbone_net = BackboneNet(config.backbone)
        self.pose_net = PoseNet(self.hand.dof_mask)
        self.skeleton_refine_net = SkeletonRefineNet(J, config.id_dim)
        self.skin_refine_net = SkinRefineNet(J, V, config.id_dim)
        gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        self.register_buffer("id_code", torch.randn(config.id_dim, generator=gen))
        self._cache: dict = {}

    @property
    def config(self) -> ModelConfig:
        """The :class:`ModelConfig` this model was built with (frozen)."""
        return self._config

    # ------------------------------------------------------------ correctives
    def _cached(self, name, module, fn):
        """``fn()`` cached while neither its weights nor ``id_code`` change and no grad is needed.

        The identity-dependent terms are constant per identity, so inference
        does not pay for them per pose.
        """
        params = list(module.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            return fn()
        key = (tuple(p._version for p in params), tuple(p.data_ptr() for p in params),
               self.id_code._version, self.id_code.data_ptr())
        hit = self._cache.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            value = fn()
        self._cache[name] = (key, value)
        return value

    def skeleton_corrective(self) -> torch.Tensor:
        """(J, 3) corrective of local bone translations, mm."""
        return self._cached("skeleton", self.skeleton_refine_net, lambda: self.skeleton_refine_net(self.id_code))

    def identity_corrective(self) -> torch.Tensor:
        """(V, 3) identity-dependent vertex corrective, mm."""
        return self._cached("identity", self.skin_refine_net.fc_id,
                            lambda: self.skin_refine_net.identity(self.id_code))

    def pose_corrective(self, euler: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) Euler angles → (B, V, 3) pose-dependent vertex corrective, mm."""
        return self.skin_refine_net.pose(euler * self.hand.dof_mask.to(euler.dtype))

    # ----------------------------------------------------------------- decode
    def decode(self, euler: torch.Tensor, root_transform: torch.Tensor | None = None, *,
               correctives: Collection[str] | None = None) -> HandPose:
        """Euler angles (B, J, 3) radians → joints (B, J, 3) and vertices (B, V, 3), mm.

        Args:
            euler: (B, J, 3) radians.
            root_transform: (B, 4, 4) or (4, 4) placement of the root; None keeps its bind pose.
            correctives: names from :data:`CORRECTIVES` to apply in this call (``()``: plain LBS
                of the template); None: those the config turns on.
        """
        on = self._config.correctives if correctives is None else check_correctives(correctives)
        rest = self.hand.template.to(euler.dtype)
        if "identity" in on:
            rest = rest + self.identity_corrective()
        if "pose" in on:
            pose_in = euler * self.hand.dof_mask.to(euler.dtype)
            if self._config.detach_pose_corrective_input:
                pose_in = pose_in.detach()
            rest = self.skin_refine_net.pose_plus(pose_in, rest)
        joint_offsets = self.skeleton_corrective() if "skeleton" in on else None
        return self.hand(euler, joint_offsets=joint_offsets, root_transform=root_transform, rest_vertices=rest)

    def forward(self, image: torch.Tensor, root_transform: torch.Tensor | None = None, *,
                correctives: Collection[str] | None = None) -> HandPose:
        """Image (B, 3, H, W), normalized to [0, 1] → HandPose (Euler angles, joints, vertices).

        ``correctives`` as in :meth:`decode`.
        """
        euler = self.pose_net(self.backbone_net(image))
        return self.decode(euler, root_transform, correctives=correctives)
