"""The DeepHandMesh network and its decoder.

::

    image (B,3,256,256) ─► BackboneNet ─► feat (B,512) ─► PoseNet ─► euler (B,J,3)
    id_code (32) ─► SkeletonRefineNet ─► Δbone (J,3)  ─┐
    euler, id_code ─► SkinRefineNet ─► Δpose (B,V,3), Δid (V,3)
                                                        └► HandLayer (FK + LBS) ─► joints, vertices

Module and parameter names follow the official code, so the state dict maps
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
from dhmlib.hand.kinematics import euler_to_matrix, rigid_align, rigid_transform_matrix
from dhmlib.hand.layer import HandLayer, HandPose
from dhmlib.mesh.normals import vertex_normals
from dhmlib.network.backbone import ResNet

#: Names of the decoder's correctives, as ``decode(..., correctives=...)`` takes them.
CORRECTIVES = ("pose", "identity", "skeleton")
BACKBONE_DEPTHS = (18, 34, 50)
#: Allowed values of the string options of :class:`ModelConfig` (the first is the original's).
CORRECTIVE_BASES = ("free", "normal")
SKELETON_CORRECTIVE_MODES = ("free", "bone_length")
POSE_CORRECTIVE_GAUGES = ("none", "zero_at_rest")
POSE_CORRECTIVE_KINDS = ("mlp", "linear_rotmat", "local")
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

    That is the layout :func:`~dhmlib.hand.kinematics.linear_blend_skinning` reads
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

    Args:
        num_joints, num_vertices: J and V.
        id_dim: length of the identity code.
        hidden: width of the MLPs' hidden layer.
        pose_kind: ``"mlp"`` (the paper's ``fc_pose``, official tensors) or ``"linear_rotmat"``
            (``pose_blend_rotmat``: a bias-free ``nn.Linear(J_b·9, V·3)``, zero-initialised, of the
            features ``vec(R_j − I)`` of the ``blend_joints``; there is no ``fc_pose`` then).
        blend_joints: the J_b joint indices whose rotations drive ``"linear_rotmat"``
            (:class:`DeepHandMesh` passes the non-root joints with at least one Euler DoF).
        local_support: for ``"local"``: ``(joints, parents, index, mask_init)`` of
            :func:`local_corrective_support`.

    :attr:`pose_module` is the module holding the pose corrective's parameters for either kind.
    """

    def __init__(self, num_joints: int, num_vertices: int, id_dim: int = 32, hidden: int = 256,
                 pose_kind: str = "mlp", blend_joints: Collection[int] | None = None,
                 local_support: tuple | None = None):
        super().__init__()
        if pose_kind not in POSE_CORRECTIVE_KINDS:
            raise ValueError(f"SkinRefineNet: pose_kind: expected one of {POSE_CORRECTIVE_KINDS}, got {pose_kind!r}")
        self.num_vertices = num_vertices
        self.pose_kind = pose_kind
        if pose_kind == "mlp":
            self.fc_pose = _mlp(num_joints * 3, hidden, num_vertices * 3)
            self.register_buffer("blend_joints", None, persistent=False)
        else:
            joints = list(range(num_joints)) if blend_joints is None else [int(j) for j in blend_joints]
            if not joints or any(not 0 <= j < num_joints for j in joints):
                raise ValueError(f"SkinRefineNet: blend_joints: expected joint indices in [0, {num_joints}), "
                                 f"got {joints}")
            self.register_buffer("blend_joints", torch.tensor(joints, dtype=torch.long), persistent=False)
            # draw (and drop) the MLP's initial weights anyway, so that every other module starts from
            # the same weights as the mlp kind under the same seed (the ablation compares the two kinds)
            _mlp(num_joints * 3, hidden, num_vertices * 3)
        self.fc_id = _mlp(id_dim, hidden, num_vertices * 3)
        for fc in (self.fc_pose, self.fc_id) if pose_kind == "mlp" else (self.fc_id,):  # start at plain LBS
            nn.init.zeros_(fc[-1].weight)
            nn.init.zeros_(fc[-1].bias)
        if pose_kind == "linear_rotmat":
            # zero-initialised without drawing from the random generator
            self.pose_blend_rotmat = torch.nn.utils.skip_init(nn.Linear, len(joints) * 9, num_vertices * 3,
                                                              bias=False)
            nn.init.zeros_(self.pose_blend_rotmat.weight)
        if pose_kind == "local":
            if local_support is None:
                raise ValueError("SkinRefineNet: pose_kind 'local' needs local_support "
                                 "(dhmlib.network.model.local_corrective_support of the hand model)")
            self.pose_local = LocalPoseCorrective(num_vertices, *local_support)

    @property
    def pose_module(self) -> nn.Module:
        """The module whose parameters are the pose corrective's: ``fc_pose``, ``pose_blend_rotmat`` or ``pose_local``."""
        if self.pose_kind == "mlp":
            return self.fc_pose
        return self.pose_blend_rotmat if self.pose_kind == "linear_rotmat" else self.pose_local

    def rotmat_features(self, euler: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) radians → (B, J_b·9) features ``vec(R_j − I)`` of the blend joints.

        ``R_j = euler_to_matrix(θ_j)`` (``Rz·Ry·Rx``, as the kinematics); ``vec`` is row-major, so
        feature ``9·i + 3·r + c`` is ``(R − I)[r, c]`` of ``blend_joints[i]``.  Exactly zero at θ = 0.
        """
        R = euler_to_matrix(euler.index_select(1, self.blend_joints))            # (B, J_b, 3, 3)
        eye = torch.eye(3, dtype=R.dtype, device=R.device)
        return (R - eye).reshape(euler.shape[0], -1)

    def pose(self, euler, *, zero_at_rest: bool = False, normals: torch.Tensor | None = None):
        """(B, J, 3) radians → (B, V, 3) mm; options as in :meth:`pose_plus`."""
        if self.pose_kind == "mlp" and not zero_at_rest and normals is None:
            return self.fc_pose(euler.reshape(euler.shape[0], -1)).view(-1, self.num_vertices, 3)
        weight = self.fc_pose[2].weight if self.pose_kind == "mlp" else self.pose_module.weight
        base = weight.new_zeros(self.num_vertices, 3)
        return self.pose_plus(euler, base, zero_at_rest=zero_at_rest, normals=normals)

    def pose_plus(self, euler, base, *, zero_at_rest: bool = False, normals: torch.Tensor | None = None):
        """``base + pose(euler)`` in one GEMM (``base`` folded into the last layer's bias).

        Args:
            euler: (B, J, 3) radians.  base: (V, 3) mm.
            zero_at_rest: return ``base + f(θ) − f(0)``: the hidden layer's rest value
                ``relu(b₁)`` is subtracted and the last bias dropped, so the result is exactly
                ``base`` at θ = 0 (same GEMM).  No effect for ``"linear_rotmat"``, which is
                zero at rest by construction.
            normals: (V, 3) unit vectors; if given, each vertex's network output is projected
                onto its normal, ``(o_v · n_v) n_v``, before ``base`` is added.
        Returns:
            (B, V, 3) mm (a permuted view of a (V, 3, B) buffer).
        """
        if self.pose_kind == "local":
            raw = self.pose_local(euler)                                               # (B, V, 3)
            if normals is not None:
                raw = project_onto(raw, normals)
            return base + raw
        if self.pose_kind == "mlp":
            first, relu, last = self.fc_pose
            hidden = relu(first(euler.reshape(euler.shape[0], -1)))                    # (B, 256)
            if zero_at_rest:
                hidden = hidden - torch.relu(first.bias)
                bias = None
            else:
                bias = last.bias
            weight = last.weight
        else:
            hidden = self.rotmat_features(euler)                                       # (B, J_b·9)
            weight, bias = self.pose_blend_rotmat.weight, None
        if normals is None:
            b = base.reshape(-1) if bias is None else bias + base.reshape(-1)
            out = _BatchLastLinear.apply(hidden, weight, b).view(self.num_vertices, 3, -1)   # (V, 3, B)
        else:
            b = weight.new_zeros(weight.shape[0]) if bias is None else bias
            raw = _BatchLastLinear.apply(hidden, weight, b).view(self.num_vertices, 3, -1)
            n = normals.unsqueeze(-1)                                                  # (V, 3, 1)
            out = torch.addcmul(base.unsqueeze(-1), n, (raw * n).sum(1, keepdim=True))
        return out.permute(2, 0, 1)

    def identity(self, id_code, *, normals: torch.Tensor | None = None):
        """id_code (id_dim,) → (V, 3) mm; with ``normals`` (V, 3) projected as in :meth:`pose_plus`."""
        hidden = self.fc_id[1](self.fc_id[0](id_code))                   # (256,)
        last = self.fc_id[2]
        # matrix-vector product: its weight gradient is an outer product, not a K=1 GEMM
        out = torch.addmv(last.bias, last.weight, hidden).view(self.num_vertices, 3)
        return out if normals is None else project_onto(out, normals)


class LocalPoseCorrective(nn.Module):
    """A pose corrective that is local by construction (cf. STAR's per-joint blend shapes, UHM's per-joint
    correctives): each blend joint ``j`` moves only the vertices of its support ``S_j``,

        Δ_v = Σ_j  sigmoid(a_jv) · W_jv · [vec(R_j − I), vec(R_parent(j) − I)]        (mm)

    with ``W_jv`` (3 × 18) zero-initialised (the model starts at LBS) and the mask logits ``a_jv``
    initialised from the distance of vertex ``v`` to joint ``j`` (:func:`local_corrective_support`).
    A joint's parent that is not a blend joint (the root) contributes zeros. Exactly zero at θ = 0.
    Supports are padded to one length M with the dummy vertex index V (dropped after the scatter).

    Args:
        num_vertices: V.
        joints: (J_b,) blend joint indices; parents: (J_b,) their parents' slots in ``joints`` or −1.
        index: (J_b, M) vertex indices of each support (V = padding).
        mask_init: (J_b, M) initial mask values in (0, 1) (0 for padding).
    """

    FEATURES = 18

    def __init__(self, num_vertices: int, joints, parents, index, mask_init):
        super().__init__()
        self.num_vertices = int(num_vertices)
        self.register_buffer("joints", torch.as_tensor(joints, dtype=torch.long), persistent=False)
        self.register_buffer("parents", torch.as_tensor(parents, dtype=torch.long), persistent=False)
        self.register_buffer("index", torch.as_tensor(index, dtype=torch.long), persistent=False)
        m = torch.as_tensor(mask_init, dtype=torch.float32).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("valid", torch.as_tensor(index) < num_vertices, persistent=False)
        Jb, M = self.index.shape
        self.weight = nn.Parameter(torch.zeros(Jb, M, 3, self.FEATURES))
        self.mask_logit = nn.Parameter(torch.log(m) - torch.log1p(-m))

    def features(self, euler: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) radians → (B, J_b, 18): ``vec(R_j − I)`` then the parent's (zeros for the root)."""
        R = euler_to_matrix(euler.index_select(1, self.joints))                   # (B, J_b, 3, 3)
        own = (R - torch.eye(3, dtype=R.dtype, device=R.device)).flatten(2)        # (B, J_b, 9)
        padded = torch.cat([own, own.new_zeros(own.shape[0], 1, 9)], 1)           # slot J_b = zeros
        parent = padded.index_select(1, torch.where(self.parents < 0, len(self.joints), self.parents))
        return torch.cat([own, parent], -1)

    def forward(self, euler: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) radians → (B, V, 3) mm."""
        f = self.features(euler).to(self.weight.dtype)                            # (B, J_b, 18)
        mask = torch.sigmoid(self.mask_logit) * self.valid.to(self.weight.dtype)   # (J_b, M)
        local = torch.einsum("jmcf,bjf->bjmc", self.weight, f) * mask[None, :, :, None]
        B = euler.shape[0]
        out = local.new_zeros(B, self.num_vertices + 1, 3)
        out.index_add_(1, self.index.reshape(-1), local.reshape(B, -1, 3))
        return out[:, :self.num_vertices]


def local_corrective_support(hand_model: HandModel, radius_mm: float = 30.0, sigma_mm: float = 15.0,
                             min_weight: float = 0.05) -> tuple:
    """The supports of :class:`LocalPoseCorrective` for the :func:`blend_joints` of ``hand_model``.

    A vertex belongs to joint ``j``'s support when its skinning weight to ``j``, to ``j``'s parent or
    to one of ``j``'s children exceeds ``min_weight`` (the segments the joint bends), and it lies
    within ``radius_mm`` of the joint's bind position; its initial mask is
    ``exp(−d²/(2σ²))`` of that distance ``d``.
    Returns ``(joints (J_b,), parents (J_b,) slots or −1, index (J_b, M), mask_init (J_b, M))``.
    """
    joints = blend_joints(hand_model)
    slot = {j: i for i, j in enumerate(joints)}
    parents_all = np.asarray(hand_model.parents)
    v = np.asarray(hand_model.vertices, dtype=np.float64)
    W = np.asarray(hand_model.skinning_weights, dtype=np.float64)            # (V, J)
    pos = np.asarray(hand_model.global_pose, dtype=np.float64)[:, :3, 3]     # (J, 3) bind positions
    supports, masks = [], []
    for j in joints:
        near = [j] + [int(c) for c in np.nonzero(parents_all == j)[0]]
        if parents_all[j] >= 0:
            near.append(int(parents_all[j]))
        d = np.linalg.norm(v - pos[j], axis=1)
        keep = np.nonzero((W[:, near].max(1) > min_weight) & (d < radius_mm))[0]
        supports.append(keep)
        masks.append(np.exp(-0.5 * (d[keep] / sigma_mm) ** 2))
    M = max(1, max(len(s) for s in supports))
    V = len(v)
    index = np.full((len(joints), M), V, dtype=np.int64)
    mask = np.zeros((len(joints), M))
    for i, (s, m) in enumerate(zip(supports, masks)):
        index[i, :len(s)] = s
        mask[i, :len(s)] = m
    parents = np.array([slot.get(int(parents_all[j]), -1) for j in joints], dtype=np.int64)
    return np.asarray(joints), parents, index, mask


def project_onto(vectors: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """``(x · d) d`` row by row: (..., N, 3) vectors onto (N, 3) unit (or zero) directions."""
    return (vectors * directions).sum(-1, keepdim=True) * directions


def blend_joints(hand_model: HandModel) -> list[int]:
    """Joints driving the ``"linear_rotmat"`` pose corrective: every non-root joint with at least one
    Euler DoF (the root's rotation is the global orientation, as in MANO; a joint whose three axes are
    all fixed, e.g. a ``_null`` fingertip end, has ``R − I = 0`` always).  22 official joints → 16."""
    mask = np.asarray(hand_model.dof_mask, dtype=bool)
    root = hand_model.skeleton.root
    return [j for j in range(len(mask)) if j != root and mask[j].any()]


def bone_directions(hand_model: HandModel) -> np.ndarray:
    """(J, 3) float64 unit local bind translations ``t_j / |t_j|`` (zero for zero-length ones)."""
    t = np.asarray(hand_model.local_pose, dtype=np.float64)[:, :3, 3]
    length = np.linalg.norm(t, axis=1, keepdims=True)
    return np.divide(t, length, out=np.zeros_like(t), where=length > 0)


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
