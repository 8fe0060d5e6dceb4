"""The correctives of DeepHandMesh: the networks that turn the identity code and the pose into offsets.

::

    id_code (32) ─► SkeletonRefineNet ─► Δbone (J,3)             (along the bind bones: bone_directions)
    id_code      ─► SkinRefineNet.fc_id ─► Δid (V,3)              (along the template normals: project_onto)
    euler (B,J,3) ─► SkinRefineNet pose module ─► Δpose (B,V,3)   mlp | linear_rotmat (R − I) | local (per joint)

:class:`~dhmlib.network.model.DeepHandMesh` holds them under the official module names.
"""
from __future__ import annotations

from collections.abc import Collection

import numpy as np
import torch
from torch import nn

from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.kinematics import euler_to_matrix

#: the pose corrective's kinds (``ModelConfig.pose_corrective_kind``; the first is the original's MLP)
POSE_CORRECTIVE_KINDS = ("mlp", "linear_rotmat", "local")


def mlp(*sizes: int) -> nn.Sequential:
    """Linear–ReLU–…–Linear; indices 0, 2, … are the Linear layers (official names)."""
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class SkeletonRefineNet(nn.Module):
    """Identity code (32) → (J, 3) corrective of local bone translations, mm."""

    def __init__(self, num_joints: int, id_dim: int = 32):
        super().__init__()
        self.num_joints = num_joints
        self.fc_skeleton = mlp(id_dim, 64, num_joints * 3)
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
            self.fc_pose = mlp(num_joints * 3, hidden, num_vertices * 3)
            self.register_buffer("blend_joints", None, persistent=False)
        else:
            joints = list(range(num_joints)) if blend_joints is None else [int(j) for j in blend_joints]
            if not joints or any(not 0 <= j < num_joints for j in joints):
                raise ValueError(f"SkinRefineNet: blend_joints: expected joint indices in [0, {num_joints}), "
                                 f"got {joints}")
            self.register_buffer("blend_joints", torch.tensor(joints, dtype=torch.long), persistent=False)
            # draw (and drop) the MLP's initial weights anyway, so that every other module starts from
            # the same weights as the mlp kind under the same seed (the ablation compares the two kinds)
            mlp(num_joints * 3, hidden, num_vertices * 3)
        self.fc_id = mlp(id_dim, hidden, num_vertices * 3)
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
