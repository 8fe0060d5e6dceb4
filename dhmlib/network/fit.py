"""Fitting a hand pose to observations with a frozen decoder.

Given 3D joints (B, J, 3) and/or K depth maps per frame, :func:`fit_pose` finds the Euler
angles (B, J, 3) and the root placement (B, 4, 4) whose decoded hand explains them:

    loss = Σ_frames [ w_joint · joint L1  +  w_depth · depth smooth-L1  +  w_prior · limit prior ]

- joint L1 and depth smooth-L1 are :func:`dhmlib.losses.joint_loss` and :func:`~dhmlib.losses.depth_loss`
  (the original's per-frame averaging);
- the prior is ``mean(relu(lo − e)² + relu(e − hi)²)`` over the DoF, radians², with ``[lo, hi]`` the
  range of motion of :func:`dhmlib.hand.anatomy.joint_limits_deg` (zero inside the limits).

All frames are optimized at once; each frame's loss is a sum term of its own and Adam is
element-wise, so a batched fit equals the per-frame fits (to float rounding). The root is
``[exp([ω]×) R₀ | t₀ + 10·τ]``, a rotation about the root joint (axis-angle ω, rad) and a shift
(τ, cm, so that one Adam step moves angles and millimetres alike), on top of ``R₀, t₀``: the Kabsch
alignment of the rest pose's alignment joints (the four ``*1`` joints + root) onto the target joints,
or ``root_init``. The decoder's parameters are frozen during the fit (``requires_grad`` False,
restored afterwards); the fit is deterministic.
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np
import torch

from dhmlib.hand.anatomy import joint_limits_deg
from dhmlib.hand.kinematics import euler_to_matrix, forward_kinematics, rigid_align, rigid_transform_matrix
from dhmlib.hand.layer import HandPose
from dhmlib.losses import depth_loss, joint_loss
from dhmlib.network.model import check_correctives
from dhmlib.render.depth import render_depth
from dhmlib.render.settings import DEFAULT_RASTER_SETTINGS, RasterSettings


@dataclass(frozen=True)
class FitResult:
    """Output of :func:`fit_pose` (detached tensors).

    Attributes:
        euler: (B, J, 3) DoF-masked Euler angles, radians.
        root: (B, 4, 4) root placement (``decode(euler, root)`` reproduces the fit), mm.
        joints: (B, J, 3) fitted joints, mm.
        vertices: (B, V, 3) fitted mesh, mm.
        history: per step, the mean over frames of each loss term (``total``, ``joint``, ``depth``,
            ``prior``; the weighted total); ``history[k][-1]`` is the last step's value before its update.
        final: per frame (B,) unweighted terms after the last step (``joint``, ``depth``, ``prior``).
    """

    euler: torch.Tensor
    root: torch.Tensor
    joints: torch.Tensor
    vertices: torch.Tensor
    history: dict[str, tuple[float, ...]]
    final: dict[str, torch.Tensor]


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (B, 3) axis-angle (radians) → (B, 3, 3) rotations, with finite gradients at 0."""
    z = torch.zeros_like(w[:, 0])
    K = torch.stack([torch.stack([z, -w[:, 2], w[:, 1]], -1),
                     torch.stack([w[:, 2], z, -w[:, 0]], -1),
                     torch.stack([-w[:, 1], w[:, 0], z], -1)], -2)
    th2 = (w * w).sum(-1)
    small = th2 < 1e-8
    th = torch.sqrt(torch.where(small, torch.ones_like(th2), th2))
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)                    # sin θ / θ
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / (th * th))   # (1 − cos θ) / θ²
    eye = torch.eye(3, dtype=w.dtype, device=w.device)
    return eye + a[:, None, None] * K + b[:, None, None] * (K @ K)


def _root_from_joints(model, rest_joints: torch.Tensor, joints: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Root placement (B, 4, 4) aligning the rest pose's alignment joints to target joints (Kabsch).

    ``rest_joints`` (1, J, 3) decoded with the root at its bind pose ``L_root``; the placement is
    ``[R|t] @ L_root`` with ``[R|t]`` the Kabsch fit. Frames with fewer than three valid alignment
    joints use all their valid joints instead.
    """
    sk = model.hand.skeleton
    align = torch.as_tensor(sk.alignment_joints(), device=joints.device)
    B = joints.shape[0]
    w_align = torch.zeros_like(valid)
    w_align[:, align] = valid[:, align]
    w = torch.where((w_align > 0).sum(1, keepdim=True) >= 3, w_align, valid)
    R, t = rigid_align(rest_joints.expand(B, -1, -1), joints, w)
    L_root = model.hand.local_bind[sk.root].to(joints)
    return rigid_transform_matrix(R, t) @ L_root


def joint_limits_rad(model, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi), each (J, 3) radians in ``like``'s dtype and device: the range of motion of ``model``'s skeleton."""
    lim = torch.as_tensor(np.deg2rad(joint_limits_deg(model.hand.skeleton)), dtype=like.dtype, device=like.device)
    return lim[..., 0], lim[..., 1]


def limit_prior(euler: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, dof_mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean over the DoF of ``relu(lo − e)² + relu(e − hi)²``, radians²; zero inside the limits.

    euler: (B, J, 3) radians; lo, hi: (J, 3) radians; dof_mask: (J, 3) bool.
    """
    m = dof_mask.to(euler.dtype)
    out = (torch.relu(lo - euler) ** 2 + torch.relu(euler - hi) ** 2) * m
    return out.flatten(1).sum(1) / m.sum()


def fit_pose(model, joints=None, joint_valid=None, depth=None, cameras=None, crops=None, *,
             steps: int = 600, lr: float = 0.05, lr_end: float = 0.001, init=None, root_init=None,
             correctives: Collection[str] | None = None, joint_weight: float = 1.0, depth_weight: float = 1.0,
             prior_weight: float = 1.0, depth_beta: float = 1.0,
             settings: RasterSettings = DEFAULT_RASTER_SETTINGS,
             on_step: Callable[[int], None] | None = None) -> FitResult:
    """Fit Euler angles and root placement of B frames to joints and/or depth maps (decoder frozen).

    Args:
        model: a :class:`~dhmlib.network.model.DeepHandMesh` (its ``decode`` is used; parameters stay unchanged).
        joints: (B, J, 3) target joints, world mm; ``joint_valid`` (B, J) 0/1 (None: all valid).
        depth: (B, K, H, W) target depth maps, camera z mm, 0 = no surface; with ``cameras`` of batch
            shape (B, K) or (K,) and optional ``crops`` (batch shape as the cameras, ``size`` (H, W)),
            as a :class:`~dhmlib.data.HandBatch`'s ``view_cameras`` / ``view_crops`` / ``depth``.
        steps: Adam steps; the learning rate decays geometrically from ``lr`` to ``lr_end`` (radians, or
            centimetres for the root shift, per step). The defaults bring joints generated by the model
            itself to < 0.1 mm from a zero pose; a depth fit needs a start near the truth (there is no
            silhouette gradient) and fewer, smaller steps (e.g. 25–40 at 0.03).
        init: (B, J, 3) or (J, 3) starting Euler angles, radians (None: zeros).
        root_init: (B, 4, 4) or (4, 4) starting root placement (None: Kabsch onto ``joints``; without
            joints the root's bind pose, which only suits observations in the model's frame).
        correctives: as :meth:`~dhmlib.network.model.DeepHandMesh.decode` (None: the model's defaults).
        joint_weight, depth_weight, prior_weight: weights of the three terms.
        depth_beta: smooth-L1 threshold, mm.
        settings: rasterizer settings for the depth renders.
        on_step: called with the number of steps done after each step (progress bars).
    Returns:
        :class:`FitResult`.
    """
    if joints is None and depth is None:
        raise ValueError("fit_pose: give target joints (B, J, 3) and/or depth maps (B, K, H, W)")
    if not (lr > 0 and lr_end > 0) or int(steps) != steps or steps < 0:
        raise ValueError(f"fit_pose: expected steps >= 0 and learning rates > 0, got steps={steps}, lr={lr}, "
                         f"lr_end={lr_end}")
    hand = model.hand
    dtype, device = hand.template.dtype, hand.template.device
    J = hand.num_joints
    if joints is not None:
        joints = torch.as_tensor(joints, dtype=dtype, device=device)
        if joints.ndim != 3 or joints.shape[1:] != (J, 3):
            raise ValueError(f"fit_pose: joints must be (B, {J}, 3) mm, got {tuple(joints.shape)}")
        B = joints.shape[0]
        valid = torch.ones(B, J, dtype=dtype, device=device) if joint_valid is None else \
            torch.as_tensor(joint_valid, device=device).to(dtype)
        if valid.shape != (B, J):
            raise ValueError(f"fit_pose: joint_valid must be ({B}, {J}), got {tuple(valid.shape)}")
    if depth is not None:
        depth = torch.as_tensor(depth, dtype=dtype, device=device)
        if depth.ndim != 4:
            raise ValueError(f"fit_pose: depth must be (B, K, H, W) mm, got {tuple(depth.shape)}")
        if cameras is None:
            raise ValueError("fit_pose: depth maps need their cameras (batch shape (B, K) or (K,))")
        if joints is not None and depth.shape[0] != B:
            raise ValueError(f"fit_pose: {B} frames of joints but {depth.shape[0]} of depth")
        B = depth.shape[0]
        cameras = cameras.to(device=device, dtype=dtype)
        crops = None if crops is None else crops.to(device=device, dtype=dtype)
    faces = hand.faces

    params = list(model.parameters())
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            zeros = torch.zeros(1, J, 3, dtype=dtype, device=device)
            if root_init is not None:
                root0 = torch.as_tensor(root_init, dtype=dtype, device=device).expand(B, 4, 4).clone()
            elif joints is not None:
                rest = model.decode(zeros, correctives=correctives).joints
                root0 = _root_from_joints(model, rest, joints, valid)
            else:
                root0 = hand.local_bind[hand.skeleton.root].to(dtype).expand(B, 4, 4).clone()
            e0 = zeros.expand(B, J, 3) if init is None else torch.as_tensor(init, dtype=dtype, device=device)
            euler = (e0.expand(B, J, 3) * hand.dof_mask).clone()
        lo, hi = joint_limits_rad(model, euler)
        euler.requires_grad_(True)
        omega = torch.zeros(B, 3, dtype=dtype, device=device, requires_grad=True)
        shift = torch.zeros(B, 3, dtype=dtype, device=device, requires_grad=True)
        R0, t0 = root0[:, :3, :3], root0[:, :3, 3]
        bottom = root0[:, 3:, :]

        def root():
            top = torch.cat([axis_angle_to_matrix(omega) @ R0, (t0 + 10.0 * shift).unsqueeze(-1)], -1)
            return torch.cat([top, bottom], -2)

        on = model.config.correctives if correctives is None else check_correctives(correctives)

        def terms(full=depth is not None):
            # joints do not depend on the vertices: a joints-only fit poses the skeleton alone until the end
            pose = model.decode(euler, root(), correctives=on) if full else \
                _pose_skeleton(model, euler, root(), "skeleton" in on)
            out = {"prior": limit_prior(euler, lo, hi, hand.dof_mask)}
            # dhmlib.losses average over the batch; × B makes each frame's term its own mean (frames independent)
            if joints is not None:
                out["joint"] = joint_loss(pose.joints, joints, valid) * B
            if depth is not None:
                size = tuple(depth.shape[-2:])
                rendered = _render(pose.vertices, faces, cameras, crops, size, settings)
                out["depth"] = depth_loss(rendered, depth, beta=depth_beta) * B
            return pose, out

        weights = {"joint": joint_weight, "depth": depth_weight, "prior": prior_weight}
        history = adam_steps([euler, omega, shift], lambda: terms()[1], weights, steps=steps, lr=lr, lr_end=lr_end,
                             euler=euler, dof_mask=hand.dof_mask, batch=B, on_step=on_step)
        with torch.no_grad():
            pose, _ = terms(True)
            final = _per_frame_terms(pose, euler, joints, valid if joints is not None else None, depth, cameras,
                                     crops, faces, lo, hi, hand.dof_mask, depth_beta, settings)
            R = root()
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    return FitResult(euler=pose.euler.detach(), root=R.detach(), joints=pose.joints.detach(),
                     vertices=pose.vertices.detach(), history={k: tuple(v) for k, v in history.items()},
                     final=final)


def adam_steps(params, loss_terms: Callable[[], dict], weights: dict, *, steps: int, lr: float, lr_end: float,
               euler: torch.Tensor, dof_mask: torch.Tensor, batch: int,
               on_step: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """The fits' optimisation: ``steps`` Adam steps on ``params``, the learning rate decaying geometrically from
    ``lr`` to ``lr_end``, the weighted sum of ``loss_terms()`` (name → per-frame (B,) or scalar term) minimised,
    ``euler``'s gradient masked to its degrees of freedom. Returns the per-step batch means of the total and
    of each term (``history``)."""
    opt = torch.optim.Adam(params, lr=lr)
    gamma = (lr_end / lr) ** (1.0 / max(steps - 1, 1)) if steps > 1 else 1.0
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    history: dict[str, list[float]] = {"total": []}
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        t = loss_terms()
        total = sum(weights[k] * (v.sum() if v.ndim else v) for k, v in t.items())
        total.backward()
        euler.grad.mul_(dof_mask)
        opt.step()
        sched.step()
        history["total"].append(float(total.detach()) / batch)
        for k, v in t.items():
            history.setdefault(k, []).append(float(v.detach().sum()) / batch)
        if on_step is not None:
            on_step(len(history["total"]))
    return history


def _pose_skeleton(model, euler: torch.Tensor, root: torch.Tensor, skeleton_corrective: bool) -> HandPose:
    """The joints of ``model.decode(euler, root)`` without skinning (``vertices`` None), as HandLayer poses them."""
    hand = model.hand
    euler = euler * hand.dof_mask.to(euler.dtype)
    local = hand.local_bind.to(euler.dtype)
    if skeleton_corrective:   # the root keeps its bind pose (HandLayer.forward)
        trans = local[:, :3, 3] + model.skeleton_corrective() * hand._nonroot.to(euler.dtype)
        local = torch.cat([torch.cat([local[:, :3, :3], trans.unsqueeze(-1)], -1), local[:, 3:, :]], -2)
    G = forward_kinematics(euler_to_matrix(euler), local, hand._device_tree(), root)
    return HandPose(joints=G[..., :3, 3], vertices=None, transforms=G, euler=euler)


def _render(vertices, faces, cameras, crops, size, settings):
    return render_depth(vertices, faces, cameras, crops, size, settings=settings)


def _per_frame_terms(pose, euler, joints, valid, depth, cameras, crops, faces, lo, hi, dof_mask, beta,
                     settings) -> dict[str, torch.Tensor]:
    """(B,) unweighted loss terms of each frame (the original's per-frame means)."""
    out = {"prior": limit_prior(euler, lo, hi, dof_mask)}
    if joints is not None:   # joint_loss of each frame alone: Σ|d|·valid / (J·3)
        d = (pose.joints - joints).abs() * valid[..., None]
        out["joint"] = d.flatten(1).sum(1) / (d.shape[1] * 3)
    if depth is not None:    # depth_loss of each frame alone: Σ smooth-L1 where both non-zero / (K·H·W)
        rendered = _render(pose.vertices, faces, cameras, crops, tuple(depth.shape[-2:]), settings)
        m = (rendered != 0) & (depth != 0)
        a = torch.where(m, rendered - depth, torch.zeros_like(depth)).abs()
        px = torch.where(m, torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta), torch.zeros_like(a))
        out["depth"] = px.flatten(1).mean(1)
    return {k: v.detach() for k, v in out.items()}
