"""The DeepHandMesh network and its decoder.

::

    image (B,3,256,256) ─► BackboneNet ─► feat (B,512) ─► PoseNet ─► euler (B,J,3)
    id_code (32) ─► SkeletonRefineNet ─► Δbone (J,3)  ─┐
    euler, id_code ─► SkinRefineNet ─► Δpose (B,V,3), Δid (V,3)
                                                        └► HandLayer (FK + LBS) ─► joints, vertices

The correctives' networks are :mod:`dhmlib.network.correctives`, the FK + LBS layer
:mod:`dhmlib.hand.layer`. Module and parameter names follow the official code, so the state dict maps
one-to-one onto official snapshots (see :mod:`dhmlib.network.snapshot`).  The one
non-official option, ``ModelConfig(pose_corrective_kind="linear_rotmat")`` (a
MANO-style linear pose blend shape instead of the pose MLP), replaces the
``skin_refine_net.fc_pose.*`` tensors by ``skin_refine_net.pose_blend_rotmat.weight``.
"""
from __future__ import annotations

import dataclasses
import math
import weakref
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from dhmlib.configs import ConfigMixin
from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.kinematics import rigid_align, rigid_transform_matrix
from dhmlib.hand.layer import HandLayer, HandPose
from dhmlib.network.correctives import (POSE_CORRECTIVE_KINDS, SkeletonRefineNet, SkinRefineNet, blend_joints,
                                        bone_directions, local_corrective_support, mlp, project_onto)
from dhmlib.mesh.normals import vertex_normals
from dhmlib.network.backbone import ResNet

#: Names of the decoder's correctives, as ``decode(..., correctives=...)`` takes them.
CORRECTIVES = ("pose", "identity", "skeleton")
BACKBONE_DEPTHS = (18, 34, 50)
#: Allowed values of the string options of :class:`ModelConfig` (the first is the original's).
CORRECTIVE_BASES = ("free", "normal")
SKELETON_CORRECTIVE_MODES = ("free", "bone_length")
POSE_CORRECTIVE_GAUGES = ("none", "zero_at_rest")
LINEAR_INITS = ("pytorch", "original")
_CHOICES = {"corrective_basis": CORRECTIVE_BASES, "skeleton_corrective_mode": SKELETON_CORRECTIVE_MODES,
            "pose_corrective_gauge": POSE_CORRECTIVE_GAUGES, "pose_corrective_kind": POSE_CORRECTIVE_KINDS,
            "linear_init": LINEAR_INITS}


@dataclass(frozen=True)
class ModelConfig(ConfigMixin):
    """Everything needed to rebuild a :class:`DeepHandMesh` besides the hand model and the weights.

    Saved in every snapshot (``model_config``, see :mod:`dhmlib.network.snapshot`) as a plain dict.

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
        corrective_basis: ``"free"``: the skin correctives (pose and identity) are the networks'
            V·3 outputs, as in the original; ``"normal"``: each vertex's output ``o_v`` is projected
            onto the template's unit area-weighted vertex normal, ``(o_v · n_v) n_v``, so the
            correctives can only move the surface along its normal (same tensors, same shapes).
        skeleton_corrective_mode: ``"free"``: the J·3 output is added to the local bind
            translations, as in the original; ``"bone_length"``: only its component along each
            bind translation ``t_j / |t_j|`` is, so bones change length but not direction.
        pose_corrective_gauge: ``"none"``: the pose corrective is the network's ``f(θ)``, as in
            the original; ``"zero_at_rest"``: it is ``f(θ) − f(0)``, zero at the rest pose, so a
            constant offset can only live in the identity corrective (with one subject the two
            could otherwise trade it freely).  The last layer's bias then has no effect.
        pose_corrective_kind: ``"mlp"``: the paper's pose corrective, a two-layer MLP of the
            Euler angles (``skin_refine_net.fc_pose.0/.2``, the official tensors); ``"linear_rotmat"``:
            a MANO-style linear pose blend shape, ``Σ_j W_j · vec(R_j − I)`` over the non-root
            joints that have at least one Euler DoF (``R_j`` the joint's local rotation from
            :func:`~dhmlib.hand.kinematics.euler_to_matrix`, the kinematics' convention), one bias-free,
            zero-initialised linear map of the (J_b·9) features to V·3 (tensor
            ``skin_refine_net.pose_blend_rotmat.weight``, no ``fc_pose``; see :class:`SkinRefineNet`).
            It follows ``corrective_basis``; ``pose_corrective_gauge`` is a no-op for it, since
            ``R − I`` is exactly zero at θ = 0, so the corrective is already zero at rest.
            ``"local"``: a local pose corrective (:class:`LocalPoseCorrective`): per blend joint, a linear
            map of ``vec(R_j − I)`` and ``vec(R_parent − I)`` onto the vertices near the joint only (its
            skinning neighbourhood), weighted by a learnable mask initialised from the distance to the
            joint (tensors ``skin_refine_net.pose_local.weight`` / ``.mask_logit``); zero at rest, follows
            ``corrective_basis``.

        linear_init: ``"pytorch"``: PyTorch's default initialisation of the Linear layers, the last
            layers of the correctives zero (the model starts at plain LBS); ``"original"``: every Linear
            layer of the pose net and the correctives N(0, 0.01) with zero biases, as the original code
            (hidden features about 8× smaller; the correctives start near, not at, zero).

    The defaults reproduce the original model; official snapshots (no ``model_config``) decode
    with them.
    """

    backbone: int = 50
    id_dim: int = 32
    pose_corrective: bool = True
    id_corrective: bool = True
    skeleton_corrective: bool = True
    detach_pose_corrective_input: bool = True
    seed: int | None = 0
    corrective_basis: str = "free"
    skeleton_corrective_mode: str = "free"
    pose_corrective_gauge: str = "none"
    pose_corrective_kind: str = "mlp"
    linear_init: str = "pytorch"

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
        for name, allowed in _CHOICES.items():
            if not isinstance(getattr(self, name), str) or getattr(self, name) not in allowed:
                raise ValueError(f"ModelConfig.{name}: expected one of {', '.join(map(repr, allowed))}, "
                                 f"got {getattr(self, name)!r}")
        # plain Python values, so that to_dict() stays JSON-able and weights-only loadable
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, str):
                object.__setattr__(self, f.name, str(v))
            elif v is not None:
                object.__setattr__(self, f.name, bool(v) if isinstance(v, (bool, np.bool_)) else int(v))

    @property
    def correctives(self) -> frozenset[str]:
        """The correctives on by default (names from :data:`CORRECTIVES`)."""
        on = (self.pose_corrective, self.id_corrective, self.skeleton_corrective)
        return frozenset(name for name, flag in zip(CORRECTIVES, on) if flag)


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
        self.fc = mlp(feat_dim, 512, int(dof_mask.sum()))

    def forward(self, feat):
        dof = torch.tanh(self.fc(feat)) * math.pi                        # (B, DoF)
        euler = feat.new_zeros(feat.shape[0], self.num_joints * 3)
        euler = euler.index_copy(1, self.dof_index, dof)
        return euler.view(-1, self.num_joints, 3)


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
        self.skin_refine_net = SkinRefineNet(
            J, V, config.id_dim, pose_kind=config.pose_corrective_kind, blend_joints=blend_joints(hand_model),
            local_support=local_corrective_support(hand_model) if config.pose_corrective_kind == "local" else None)
        if config.linear_init == "original":     # the original's N(0, 0.01) weights, zero biases
            for net in (self.pose_net, self.skeleton_refine_net, self.skin_refine_net):
                for m in net.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.normal_(m.weight, 0.0, 0.01)
                        if m.bias is not None:
                            nn.init.zeros_(m.bias)
        gen = torch.Generator().manual_seed(config.seed) if config.seed is not None else None
        self.register_buffer("id_code", torch.randn(config.id_dim, generator=gen))
        # projection directions of the config's options (non-persistent: official keys only);
        # re-read from float64 on dtype moves, like HandLayer's buffers
        self._directions = {}
        if config.corrective_basis == "normal":
            self._directions["template_normals"] = vertex_normals(np.asarray(hand_model.vertices, np.float64), hand_model.faces)
        if config.skeleton_corrective_mode == "bone_length":
            self._directions["bone_directions"] = bone_directions(hand_model)
        for name in ("template_normals", "bone_directions"):
            value = self._directions.get(name)
            self.register_buffer(name, None if value is None else torch.as_tensor(value, dtype=torch.float32),
                                 persistent=False)
        self._cache: dict = {}
        _LIVE_MODELS.add(self)

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()      # new tensors (device, dtype)
        super()._apply(fn, *args, **kwargs)
        for name, value in self._directions.items():
            b = self._buffers[name]
            if b.is_floating_point() and b.device.type != "meta":
                self._buffers[name] = torch.as_tensor(value, dtype=b.dtype).to(b.device)
        return self

    @property
    def config(self) -> ModelConfig:
        """The :class:`ModelConfig` this model was built with (frozen)."""
        return self._config

    # ------------------------------------------------------------ correctives
    def _cached(self, name, module, fn):
        """``fn()``, kept while the weights cannot have changed, when no gradient is needed.

        The identity-dependent correctives (skeleton and identity) are constant per identity, so
        inference does not pay for them per pose (about 8 ms of a single-pose decode's 45–55 ms on two CPU
        cores with the 8190-vertex default hand: the posing widget's case). The cache is explicit: it is dropped by every operation that changes weights through
        the library or PyTorch — an optimizer step over any of this model's parameters (a global
        post-step hook), :meth:`load_state_dict`, a move to another device or dtype, and a mode switch
        (:meth:`train` / ``eval()``). Weights edited by hand in place: call :meth:`clear_cache`.
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
            return fn()
        if name not in self._cache:
            with torch.no_grad():
                self._cache[name] = fn()
        return self._cache[name]

    def clear_cache(self) -> None:
        """Forget the cached identity-dependent correctives (see :meth:`_cached`)."""
        self._cache.clear()

    def train(self, mode: bool = True):
        """``nn.Module.train``, dropping the inference cache (weights may have changed meanwhile)."""
        self._cache.clear()
        return super().train(mode)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``, dropping the inference cache."""
        self._cache.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def gauge_fixed_parameters(self) -> list[nn.Parameter]:
        """Parameters the configuration makes irrelevant to every output (they must not train).

        With ``pose_corrective_gauge="zero_at_rest"`` the MLP pose corrective is ``f(θ) − f(0)``, in
        which its last bias cancels: that bias is fixed (the identity corrective holds the constant).
        A trainer freezes these, so that every trainable parameter gets a gradient each step (DDP).
        The ``linear_rotmat`` kind has no bias, so nothing is fixed there.
        """
        net = self.skin_refine_net
        if self._config.pose_corrective_gauge == "zero_at_rest" and net.pose_kind == "mlp":
            return [net.fc_pose[2].bias]
        return []

    def skeleton_corrective(self) -> torch.Tensor:
        """(J, 3) corrective of local bone translations, mm (along the bind bones for ``"bone_length"``)."""
        def compute():
            out = self.skeleton_refine_net(self.id_code)
            return out if self.bone_directions is None else project_onto(out, self.bone_directions.to(out.dtype))
        return self._cached("skeleton", self.skeleton_refine_net, compute)

    def identity_corrective(self) -> torch.Tensor:
        """(V, 3) identity-dependent vertex corrective, mm (along the template normals for ``"normal"``)."""
        return self._cached("identity", self.skin_refine_net.fc_id,
                            lambda: self.skin_refine_net.identity(
                                self.id_code, normals=self._normals(self.skin_refine_net.fc_id[2].weight.dtype)))

    def _normals(self, dtype: torch.dtype) -> torch.Tensor | None:
        """(V, 3) template normals in ``dtype`` for ``corrective_basis="normal"``, else None."""
        n = self.template_normals
        return None if n is None else n.to(dtype)

    def _pose_input(self, euler: torch.Tensor) -> torch.Tensor:
        pose_in = euler * self.hand.dof_mask.to(euler.dtype)
        return pose_in.detach() if self._config.detach_pose_corrective_input else pose_in

    def pose_corrective(self, euler: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) Euler angles → (B, V, 3) pose-dependent vertex corrective, mm.

        Follows the config's ``corrective_basis`` and ``pose_corrective_gauge`` (but not
        ``detach_pose_corrective_input``: this is the corrective as a function of the angles).
        """
        net = self.skin_refine_net
        dtype = (net.fc_pose[2] if net.pose_kind == "mlp" else net.pose_module).weight.dtype
        return net.pose(euler * self.hand.dof_mask.to(euler.dtype),
                        zero_at_rest=self._config.pose_corrective_gauge == "zero_at_rest",
                        normals=self._normals(dtype))

    # ----------------------------------------------------------------- decode
    def decode(self, euler: torch.Tensor, root_transform: torch.Tensor | None = None, *,
               correctives: Collection[str] | None = None) -> HandPose:
        """Euler angles (B, J, 3) radians → joints (B, J, 3) and vertices (B, V, 3), mm.

        Args:
            euler: (B, J, 3) radians.
            root_transform: (B, 4, 4) or (4, 4) placement of the root; None keeps its bind pose
                (training places it with :meth:`root_from_joints`).
            correctives: names from :data:`CORRECTIVES` to apply in this call (``()``: plain LBS
                of the template); None: those the config turns on.
        Returns:
            :class:`HandPose`; its ``offsets`` is the skin corrective (B, V, 3) when one was applied.
        """
        on = self._config.correctives if correctives is None else check_correctives(correctives)
        template = self.hand.template.to(euler.dtype)
        rest = template
        if "identity" in on:
            rest = rest + self.identity_corrective()
        if "pose" in on:
            cfg = self._config
            rest = self.skin_refine_net.pose_plus(self._pose_input(euler), rest,
                                                  zero_at_rest=cfg.pose_corrective_gauge == "zero_at_rest",
                                                  normals=self._normals(euler.dtype))
        joint_offsets = self.skeleton_corrective() if "skeleton" in on else None
        out = self.hand(euler, joint_offsets=joint_offsets, root_transform=root_transform, rest_vertices=rest)
        if rest is template:
            return out
        offsets = rest - template
        return HandPose(out.joints, out.vertices, out.transforms, out.euler,
                        offsets if offsets.dim() == 3 else offsets.expand(euler.shape[0], -1, -1))

    def rest_pose(self, correctives: Collection[str] | None = None) -> HandPose:
        """The hand at zero Euler angles with the root at its bind pose, B = 1.

        ``joints`` is the rest-pose refined skeleton (the original's ``global_pose_refined``),
        ``vertices`` the corrected mesh skinned to it (with a skeleton corrective the bones move,
        so this differs from ``template + offsets``, the unskinned corrected mesh), ``offsets``
        the skin corrective at θ = 0 (identity corrective plus ``f(0)``, or zero pose part with
        ``pose_corrective_gauge="zero_at_rest"`` or ``pose_corrective_kind="linear_rotmat"``).  ``correctives`` as in :meth:`decode`.
        """
        euler = self.hand.template.new_zeros(1, self.hand.num_joints, 3)
        return self.decode(euler, correctives=correctives)

    def root_from_joints(self, joints_gt: torch.Tensor, valid: torch.Tensor | None = None,
                         correctives: Collection[str] | None = None) -> torch.Tensor:
        """The root's global transform that places the hand on ground-truth joints, as in training.

        As the original's training forward: the alignment joints (the four finger ``*1``
        joints and the root, :meth:`~dhmlib.hand.skeleton.Skeleton.alignment_joints`) of the
        rest-pose refined skeleton (zero Euler angles, skeleton corrective if on) are aligned
        rigidly (Kabsch, no scale, no reflection) onto the same joints of ``joints_gt``; the
        result composed with the refined root's rest transform is the root's placement.  The
        original aligns all five joints unweighted; here ``valid`` weights them.  Gradient
        flows through the alignment into the skeleton corrective.

        Args:
            joints_gt: (B, J, 3) ground-truth joints, mm.
            valid: (B, J) or (J,) validity (bool or 0/1 weights) of the ground-truth joints;
                None: all valid.  A sample needs at least three valid, non-collinear alignment
                joints, else its fit is ill-posed (and its SVD gradient may not be finite).
            correctives: as in :meth:`decode` (only ``"skeleton"`` matters here).
        Returns:
            (B, 4, 4) root transform to pass as ``decode(..., root_transform=...)``.
        """
        J = self.hand.num_joints
        if joints_gt.dim() != 3 or joints_gt.shape[1:] != (J, 3):
            raise ValueError(f"joints_gt: expected shape (B, {J}, 3), got {tuple(joints_gt.shape)}")
        on = self._config.correctives if correctives is None else check_correctives(correctives)
        offsets = self.skeleton_corrective() if "skeleton" in on else None
        if offsets is not None:
            offsets = offsets.to(joints_gt.dtype)
        G = self.hand.rest_transforms(offsets, joints_gt.dtype)[0]        # (J, 4, 4)
        align = self._alignment_index(joints_gt.device)
        B = joints_gt.shape[0]
        source = G[align, :3, 3].expand(B, -1, -1)
        weights = None
        if valid is not None:
            if valid.shape not in ((B, J), (J,)):
                raise ValueError(f"valid: expected shape ({B}, {J}) or ({J},), got {tuple(valid.shape)}")
            weights = valid[..., align].to(joints_gt.dtype)
        R, t = rigid_align(source, joints_gt[:, align], weights)
        return rigid_transform_matrix(R, t) @ G[self.hand.skeleton.root]

    def _alignment_index(self, device) -> torch.Tensor:
        return torch.tensor(self.hand.skeleton.alignment_joints(), device=device)

    def forward(self, image: torch.Tensor, root_transform: torch.Tensor | None = None, *,
                correctives: Collection[str] | None = None) -> HandPose:
        """Image (B, 3, H, W), normalized to [0, 1] → HandPose (Euler angles, joints, vertices).

        ``correctives`` as in :meth:`decode`.
        """
        euler = self.pose_net(self.backbone_net(image))
        return self.decode(euler, root_transform, correctives=correctives)


#: models whose inference cache an optimizer step may make stale (weak: a model is not kept alive by it)
_LIVE_MODELS: weakref.WeakSet = weakref.WeakSet()


def _drop_stale_caches(optimizer, args, kwargs) -> None:
    """After any optimizer step: drop the cache of every model with a parameter in that optimizer."""
    stepped = None
    for model in list(_LIVE_MODELS):
        if model._cache:
            if stepped is None:
                stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
            if any(id(p) in stepped for p in model.parameters()):
                model._cache.clear()


register_optimizer_step_post_hook(_drop_stale_caches)
