"""Kinematics as pure functions over explicit tensors.

Conventions (official DeepHandMesh): Euler angles in radians per joint
``(x, y, z)``; ``R = Rz @ Ry @ Rx``; applied in the joint's local frame:
``G[child] = G[parent] @ L[child] @ R[child]``.  All functions follow the
device and dtype of their inputs.
"""
from __future__ import annotations

from typing import Sequence

import torch

from dhmlib.hand.skeleton import tree_levels


def euler_to_matrix(euler: torch.Tensor) -> torch.Tensor:
    """Euler angles → rotation matrices, ``R = Rz(z) @ Ry(y) @ Rx(x)``.

    Args:
        euler: (..., 3) radians, (x, y, z).
    Returns:
        (..., 3, 3)
    """
    c, s = torch.cos(euler), torch.sin(euler)
    cx, cy, cz = c.unbind(-1)
    sx, sy, sz = s.unbind(-1)
    # closed form of Rz @ Ry @ Rx
    r = torch.stack([
        cz * cy, cz * sy * sx - sz * cx, cz * sy * cx + sz * sx,
        sz * cy, sz * sy * sx + cz * cx, sz * sy * cx - cz * sx,
        -sy, cy * sx, cy * cx,
    ], dim=-1)
    return r.reshape(euler.shape[:-1] + (3, 3))


def matrix_to_euler(R: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`euler_to_matrix` for |y| < π/2.  (..., 3, 3) → (..., 3)."""
    y = torch.asin((-R[..., 2, 0]).clamp(-1.0, 1.0))
    x = torch.atan2(R[..., 2, 1], R[..., 2, 2])
    z = torch.atan2(R[..., 1, 0], R[..., 0, 0])
    return torch.stack([x, y, z], dim=-1)


class KinematicTree:
    """Precomputed index tensors for level-by-level forward kinematics.

    Joints are processed one tree depth at a time across all fingers, so a
    call makes ``depth`` batched matmuls instead of J.
    """

    def __init__(self, parents: Sequence[int]):
        self.parents = list(parents)
        self.levels = tree_levels(self.parents)
        order = [j for level in self.levels for j in level]
        self.order = torch.tensor(order)
        self.inverse_order = torch.argsort(self.order)
        # for each level ≥ 1: joints, and their parents' positions within the previous level
        self.level_joints = [torch.tensor(level) for level in self.levels]
        self.parent_slots = []
        for d in range(1, len(self.levels)):
            prev = self.levels[d - 1]
            self.parent_slots.append(torch.tensor([prev.index(self.parents[j]) for j in self.levels[d]]))
        self.root = self.parents.index(-1)
        if len(self.levels[0]) != 1:
            raise ValueError(f"expected one root joint, got {self.levels[0]}")


def forward_kinematics(rotations: torch.Tensor, local_bind: torch.Tensor, tree: KinematicTree,
                       root_transform: torch.Tensor | None = None) -> torch.Tensor:
    """Global joint transforms of a posed skeleton.

    ``G[j] = G[parent] @ L[j] @ R[j]``; the root's ``G = root_transform @ R[root]``
    (``root_transform`` defaults to the root's bind pose ``L[root]``).

    Args:
        rotations: (B, J, 3, 3) local rotations.
        local_bind: (J, 4, 4) or (B, J, 4, 4) local bind poses (translations in mm).
        tree: the joint tree.
        root_transform: (B, 4, 4) or (4, 4) placement of the root, or None.
    Returns:
        (B, J, 4, 4) global transforms.
    """
    B, J = rotations.shape[:2]
    if local_bind.dim() == 3:
        local_bind = local_bind.unsqueeze(0).expand(B, J, 4, 4)
    # local transform with rotation: L @ [R 0; 0 1] = [L_R @ R, L_t]
    lr = local_bind[..., :3, :3] @ rotations                         # (B, J, 3, 3)
    top = torch.cat([lr, local_bind[..., :3, 3:]], dim=-1)           # (B, J, 3, 4)
    bottom = local_bind[..., 3:, :].expand(B, J, 1, 4)
    local = torch.cat([top, bottom], dim=-2)                          # (B, J, 4, 4)
    dev = rotations.device
    root = tree.root
    if root_transform is None:
        g = local[:, [root]]                                         # (B, 1, 4, 4)
    else:
        rt = root_transform.expand(B, 4, 4) if root_transform.dim() == 2 else root_transform
        rot = torch.zeros_like(local[:, root])
        rot[:, :3, :3] = rotations[:, root]
        rot[:, 3, 3] = 1
        g = (rt @ rot).unsqueeze(1)
    out = [g]
    for joints, slots in zip(tree.level_joints[1:], tree.parent_slots):
        g = g[:, slots.to(dev)] @ local[:, joints.to(dev)]         # (B, n_level, 4, 4)
        out.append(g)
    return torch.cat(out, dim=1)[:, tree.inverse_order.to(dev)]


def skinning_transforms(global_transforms: torch.Tensor, global_bind_inv: torch.Tensor) -> torch.Tensor:
    """Bind-relative joint transforms ``A = G @ G_bind⁻¹`` as (B, J, 3, 4).

    Args:
        global_transforms: (B, J, 4, 4).
        global_bind_inv: (J, 4, 4).
    """
    return global_transforms[..., :3, :] @ global_bind_inv


def linear_blend_skinning(vertices: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning ``v' = Σ_j w_vj (A_j [v; 1])``.

    The J transforms of all B samples are blended in one GEMM,
    ``W (V, J) @ A (J, 12·B)``, and applied once with fused multiply-adds, so
    no (B, V, 4, 4) tensor is formed.  The work is laid out batch-last
    ((V, 3, B)); rest vertices that are a ``permute`` of a (V, 3, B) buffer
    (as :meth:`~dhmlib.network.model.SkinRefineNet.pose_plus` returns) are read without a copy.

    Args:
        vertices: (B, V, 3) or (V, 3) rest-pose vertices (mm).
        weights: (V, J) skinning weights.
        transforms: (B, J, 3, 4) bind-relative transforms from :func:`skinning_transforms`.
    Returns:
        (B, V, 3) posed vertices (a permuted view of a (V, 3, B) buffer).
    """
    B, J = transforms.shape[:2]
    # (B, J, 3, 4) → (J, 4, 3, B) → (J, 12·B): for each joint, [R|t] column k, row c, sample b
    a = transforms.permute(1, 3, 2, 0).reshape(J, 12 * B)
    r = vertices.unsqueeze(-1) if vertices.dim() == 2 else vertices.permute(1, 2, 0)   # (V, 3, B or 1)
    return _BlendAndApply.apply(weights, a, r).permute(2, 0, 1)


class _BlendAndApply(torch.autograd.Function):
    """``M = W @ a`` viewed (V, 4, 3, B); ``out = M[:, 3] + Σ_k M[:, k] · r[:, k]`` → (V, 3, B).

    Written out because autograd's own backward materializes the (V, 4, 3, B)
    gradient of M (zero-filled once per slice); here the gradient of ``a`` is
    four small GEMMs ``Wᵀ @ (g · r_k)`` and that of ``r`` is read off M.
    Skinning weights ``W`` (V, J) get no gradient.
    """

    @staticmethod
    def forward(ctx, W, a, r):
        V, B = W.shape[0], a.shape[1] // 12
        M = (W @ a).view(V, 4, 3, B)
        out = torch.addcmul(M[:, 3], M[:, 0], r[:, 0:1])
        out.addcmul_(M[:, 1], r[:, 1:2])
        out.addcmul_(M[:, 2], r[:, 2:3])
        ctx.save_for_backward(W, M, r)
        return out

    @staticmethod
    def backward(ctx, g):
        W, M, r = ctx.saved_tensors
        g = g.contiguous()  # usually a permuted view of a (B, V, 3) loss gradient: copy once, not per use
        if ctx.needs_input_grad[0]:
            raise RuntimeError("linear_blend_skinning: gradients to the skinning weights are not supported")
        V, _, _, B = M.shape
        grad_a = grad_r = None
        if ctx.needs_input_grad[1]:
            Wt = W.t()
            parts = [Wt @ (g * r[:, k:k + 1]).reshape(V, 3 * B) for k in range(3)] + [Wt @ g.reshape(V, 3 * B)]
            grad_a = torch.stack(parts, 1).reshape(W.shape[1], 12 * B)
        if ctx.needs_input_grad[2]:
            grad_r = torch.stack([(M[:, k] * g).sum(1) for k in range(3)], 1)        # ∂out_c/∂r_k = M[:, k, c]
            if r.shape[-1] == 1 and B != 1:
                grad_r = grad_r.sum(-1, keepdim=True)
        return None, grad_a, grad_r


def rigid_align(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None):
    """Batched Kabsch: the rotation and translation that best map ``source`` onto ``target``.

    Reflections are excluded (``det(R) = +1``).

    Args:
        source: (B, N, 3) points.
        target: (B, N, 3) points.
        weights: optional (B, N) or (N,) non-negative weights.
    Returns:
        R: (B, 3, 3), t: (B, 3) with ``target ≈ source @ R.T + t``.
    """
    if weights is None:
        weights = torch.ones(source.shape[:2], dtype=source.dtype, device=source.device)
    elif weights.dim() == 1:
        weights = weights.unsqueeze(0).expand(source.shape[:2])
    w = weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)
    mu_s = (w.unsqueeze(-1) * source).sum(1)
    mu_t = (w.unsqueeze(-1) * target).sum(1)
    s = source - mu_s.unsqueeze(1)
    t = target - mu_t.unsqueeze(1)
    cov = (w.unsqueeze(-1) * t).transpose(1, 2) @ s                    # (B, 3, 3) Σ w t sᵀ
    U, _, Vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], -1))
    R = U @ D @ Vh
    trans = mu_t - (R @ mu_s.unsqueeze(-1)).squeeze(-1)
    return R, trans


def rigid_transform_matrix(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3), (B, 3) → (B, 4, 4) homogeneous."""
    B = R.shape[0]
    m = torch.zeros(B, 4, 4, dtype=R.dtype, device=R.device)
    m[:, :3, :3] = R
    m[:, :3, 3] = t
    m[:, 3, 3] = 1
    return m
