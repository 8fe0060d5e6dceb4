"""Fitting a hand pose to 2D landmarks by perspective reprojection, with the decoder frozen.

:func:`fit_pose_2d` is the 2D sibling of :func:`dhmlib.network.fit.fit_pose` (same root parametrisation,
joint-limit prior, learning-rate decay, frozen decoder, frames independent in one batch), for B hands each
seen in C views with known cameras::

    loss = Σ_frames [ w_2d · reprojection + w_depth · relative depth + w_prior · limit prior + w_scale · log(s)² ]

- reprojection: per view, joint and axis, ``smooth-L1((π(s·x) − u) / size, β)`` over the valid landmarks,
  in units of the hand's size in that view (``size``, px), so that photos of any resolution weigh alike;
- relative depth: MediaPipe's ``z`` (pixels, wrist 0) against the joints' camera depth relative to the wrist,
  converted to pixels at the wrist's depth (``(z_j − z_wrist) · f / z_wrist``), same loss; a weak term: it
  only breaks the front/back ambiguity of one view;
- limit prior: :func:`dhmlib.network.fit.limit_prior`;
- one global scale ``s = exp(σ)`` about the root joint, for hands larger or smaller than the model; from one
  view it trades off against depth, so ``log(s)²`` keeps it near 1 unless several views say otherwise.

The reprojection needs only the joints, so the fit poses the skeleton alone (:func:`dhmlib.network.fit.
_pose_skeleton`) and skins the mesh once at the end: a step costs the same with or without a trained
decoder's pose corrective.

:func:`lift_landmarks` and :func:`triangulate` give the 3D start that :func:`fit_pose` refines into the
angles and root this fit starts from (``dhmlib.photo.pipeline``).
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from dhmlib.hand.anatomy import natural_range
from dhmlib.hand.kinematics import rigid_align
from dhmlib.hand.skeleton import FINGERS
from dhmlib.network.fit import _pose_skeleton, adam_steps, axis_angle_to_matrix, joint_limits_rad, limit_prior
from dhmlib.network.model import check_correctives
from dhmlib.render.cameras import Cameras


#: DIP flexion ≈ this × PIP flexion in real fingers (the coupling term)
DIP_FOLLOWS_PIP = 0.65


@dataclass(frozen=True)
class Fit2DResult:
    """Output of :func:`fit_pose_2d` (detached tensors).

    Attributes:
        euler: (B, J, 3) radians; root: (B, 4, 4) mm; scale: (B,) the global scale about the root joint.
        joints: (B, J, 3) fitted joints, world mm (scale applied); vertices: (B, V, 3) world mm (scale applied).
        pixels: (B, C, J, 2) the fitted joints reprojected (with ``landmark_offsets``: the landmark points), px.
        residual_px: (B, C, J) reprojection distance to the landmarks, px (NaN where not valid).
        history: per step the batch mean of each term (``total``, ``reprojection``, ``depth``, ``prior``, ``scale``).
    """

    euler: torch.Tensor
    root: torch.Tensor
    scale: torch.Tensor
    joints: torch.Tensor
    vertices: torch.Tensor
    pixels: torch.Tensor
    residual_px: torch.Tensor
    history: dict[str, tuple[float, ...]]


def scaled(points: torch.Tensor, root: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Points (B, N, 3) scaled by ``scale`` (B,) about the root joint's position ``root[:, :3, 3]``."""
    c = root[:, None, :3, 3]
    return c + scale[:, None, None] * (points - c)


def _smooth_l1(x: torch.Tensor, beta: float) -> torch.Tensor:
    a = x.abs()
    return torch.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta)


def fit_pose_2d(model, pixels, valid, cameras: Cameras, *, size=None, rel_depth=None, init=None, root_init=None,
                scale_init=None, fit_scale: bool = True, steps: int = 300, lr: float = 0.03, lr_end: float = 0.001,
                correctives: Collection[str] | None = None, reprojection_weight: float = 1.0,
                depth_weight: float = 0.1, prior_weight: float = 1.0, scale_weight: float = 0.1,
                beta: float = 0.01, robust: float | None = None, robust_by: str = "landmark", limits: str = "motion",
                coupling_weight: float = 0.0, landmark_offsets=None,
                on_step: Callable[[int], None] | None = None) -> Fit2DResult:
    """Fit Euler angles, root and a global scale of B hands to 2D landmarks in C views (decoder frozen).

    Args:
        model: a :class:`~dhmlib.network.model.DeepHandMesh` (parameters stay unchanged).
        pixels: (B, C, J, 2) landmarks in the skeleton's joint order, px; ``valid`` (B, C, J) 0/1 (a view
            without a detection: all 0).
        cameras: batch shape (B, C) (world → pixels; a photo's own camera sits at the origin).
        size: (B, C) hand size per view, px (the normaliser; None: the landmarks' bounding box).
        rel_depth: (B, C, J) MediaPipe's relative depth, px (wrist 0), or None (no depth term).
        init: (B, J, 3) starting angles (None: zeros); root_init: (B, 4, 4) starting root placement (needed: a
            2D fit does not find the hand from nowhere; :func:`lift_landmarks` / :func:`triangulate` +
            :func:`~dhmlib.network.fit.fit_pose` give one); scale_init: (B,) (None: 1).
        fit_scale: optimise the scale (else it stays at ``scale_init``).
        steps, lr, lr_end: Adam steps and the geometric learning-rate decay (radians; cm for the root shift).
        correctives: as :meth:`~dhmlib.network.model.DeepHandMesh.decode`.
        beta: smooth-L1 threshold, in hand sizes.
        robust: None, or the scale (hand sizes) of a Cauchy loss ``σ·log(1 + d²/σ²)`` instead of smooth-L1 for
            the reprojection: landmarks far off (a detector's mistakes in one view) weigh little when other
            views disagree with them.
        robust_by: what the Cauchy loss weighs down: "landmark" (each landmark alone) or "finger" (a finger's
            landmarks in one view together: ``n·σ·log(1 + mean d²/σ²)`` over its valid landmarks; the wrist is
            a group of its own): a detector misreads whole fingers, so a finger off in one view counts little.
        limits: the prior's range: "motion" (the range of motion, as :func:`~dhmlib.network.fit.fit_pose`) or
            "natural" (the natural range inside it, :func:`dhmlib.hand.anatomy.natural_range`: relaxed poses).
        landmark_offsets: None, or (J, 3) mm: where the detector's landmark of each joint sits in that joint's
            frame (:func:`landmark_points`; :mod:`dhmlib.photo.calibrate` fits them on a capture): the
            reprojection compares ``joint + R·offset`` with the landmark; the returned joints stay the joints.
        coupling_weight: weight of ``(DIP − 0.65·PIP)²`` (radians², mean over the four fingers): a finger's
            distal joint follows its middle one (:func:`dhmlib.hand.anatomy.random_plausible_pose`).
        on_step: called with the number of steps done.
    Returns:
        :class:`Fit2DResult`.
    """
    if root_init is None:
        raise ValueError("fit_pose_2d: give root_init (B, 4, 4): a 2D fit needs a start (see lift_landmarks)")
    hand = model.hand
    dtype, device = hand.template.dtype, hand.template.device
    J = hand.num_joints
    pixels = torch.as_tensor(pixels, dtype=dtype, device=device)
    if pixels.ndim != 4 or pixels.shape[2:] != (J, 2):
        raise ValueError(f"fit_pose_2d: pixels must be (B, C, {J}, 2), got {tuple(pixels.shape)}")
    B, C = pixels.shape[:2]
    valid = torch.as_tensor(valid, device=device).to(dtype)
    if valid.shape != (B, C, J):
        raise ValueError(f"fit_pose_2d: valid must be ({B}, {C}, {J}), got {tuple(valid.shape)}")
    cams = cameras.to(device=device, dtype=dtype)
    if cams.batch_shape != (B, C):
        raise ValueError(f"fit_pose_2d: cameras must have batch shape ({B}, {C}), got {cams.batch_shape}")
    if size is None:
        size = hand_size(pixels, valid)
    size = torch.as_tensor(size, dtype=dtype, device=device).clamp_min(1.0)
    if rel_depth is not None:
        rel_depth = torch.as_tensor(rel_depth, dtype=dtype, device=device)
    wrist = hand.skeleton.root
    on = model.config.correctives if correctives is None else check_correctives(correctives)
    skel = "skeleton" in on

    params = list(model.parameters())
    was = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.no_grad():
            e0 = torch.zeros(B, J, 3, dtype=dtype, device=device) if init is None else \
                torch.as_tensor(init, dtype=dtype, device=device).expand(B, J, 3)
            euler = (e0 * hand.dof_mask).clone()
            root0 = torch.as_tensor(root_init, dtype=dtype, device=device).expand(B, 4, 4).clone()
            s0 = torch.ones(B, dtype=dtype, device=device) if scale_init is None else \
                torch.as_tensor(scale_init, dtype=dtype, device=device).expand(B).clone()
        if limits == "motion":
            lo, hi = joint_limits_rad(model, euler)
        elif limits == "natural":
            lo, hi = (torch.as_tensor(x, dtype=dtype, device=device) for x in natural_range(hand.skeleton))
        else:
            raise ValueError(f"fit_pose_2d: limits must be 'motion' or 'natural', got {limits!r}")
        sk = hand.skeleton
        if robust_by not in ("landmark", "finger"):
            raise ValueError(f"fit_pose_2d: robust_by must be 'landmark' or 'finger', got {robust_by!r}")
        groups = finger_groups(sk).to(dtype=dtype, device=device)
        offsets = None if landmark_offsets is None else torch.as_tensor(landmark_offsets, dtype=dtype, device=device)
        if offsets is not None and offsets.shape != (J, 3):
            raise ValueError(f"fit_pose_2d: landmark_offsets must be ({J}, 3), got {tuple(offsets.shape)}")
        pip = [sk.index(f + "2") for f in FINGERS[1:]]
        dip = [sk.index(f + "3") for f in FINGERS[1:]]
        euler.requires_grad_(True)
        omega = torch.zeros(B, 3, dtype=dtype, device=device, requires_grad=True)
        shift = torch.zeros(B, 3, dtype=dtype, device=device, requires_grad=True)
        log_s = torch.log(s0).clone().requires_grad_(fit_scale)
        R0, t0, bottom = root0[:, :3, :3], root0[:, :3, 3], root0[:, 3:, :]

        def root():
            top = torch.cat([axis_angle_to_matrix(omega) @ R0, (t0 + 10.0 * shift).unsqueeze(-1)], -1)
            return torch.cat([top, bottom], -2)

        n_valid = valid.flatten(1).sum(1).clamp_min(1)                            # (B,)

        def terms():
            r = root()
            p = _pose_skeleton(model, euler, r, skel)
            joints = scaled(landmark_points(p.joints, p.transforms, offsets), r, torch.exp(log_s))   # (B, J, 3)
            cam_pts = cams.world_to_camera(joints[:, None])                      # (B, C, J, 3)
            z = cam_pts[..., 2:3].clamp_min(1.0)
            proj = cam_pts[..., :2] / z * cams.focal[:, :, None] + cams.principal[:, :, None]
            d = (proj - pixels) / size[..., None, None]
            if robust is None:
                rep = (_smooth_l1(d, beta).sum(-1) * valid).flatten(1).sum(1)
            elif robust_by == "landmark":           # Cauchy: landmarks off by ≫ robust hand sizes count little
                rep = (robust * torch.log1p((d * d).sum(-1) / (robust * robust)) * valid).flatten(1).sum(1)
            else:                                   # Cauchy of each finger's mean squared distance, per view
                sq = ((d * d).sum(-1) * valid) @ groups                                  # (B, C, G)
                n = valid @ groups
                rep = (n * robust * torch.log1p(sq / n.clamp_min(1) / (robust * robust))).flatten(1).sum(1)
            out = {"reprojection": rep / n_valid}
            if rel_depth is not None:
                zc = cam_pts[..., 2]
                zw = zc[..., wrist:wrist + 1].clamp_min(1.0)
                rel = (zc - zc[..., wrist:wrist + 1]) * cams.focal[..., :1] / zw      # (B, C, J) px
                dz = (rel - rel_depth) / size[..., None]
                out["depth"] = (_smooth_l1(dz, beta) * valid).flatten(1).sum(1) / n_valid
            out["prior"] = limit_prior(euler, lo, hi, hand.dof_mask)
            out["scale"] = log_s ** 2
            if coupling_weight:
                out["coupling"] = ((euler[:, dip, 2] - DIP_FOLLOWS_PIP * euler[:, pip, 2]) ** 2).mean(1)
            return out, proj

        weights = {"reprojection": reprojection_weight, "depth": depth_weight, "prior": prior_weight,
                   "scale": scale_weight, "coupling": coupling_weight}
        history = adam_steps([euler, omega, shift] + ([log_s] if fit_scale else []), lambda: terms()[0], weights,
                             steps=steps, lr=lr, lr_end=lr_end, euler=euler, dof_mask=hand.dof_mask, batch=B,
                             on_step=on_step)
        with torch.no_grad():
            r = root()
            s = torch.exp(log_s)
            pose = model.decode(euler, r, correctives=on)
            joints, verts = scaled(pose.joints, r, s), scaled(pose.vertices, r, s)
            proj = cams.project(scaled(landmark_points(pose.joints, pose.transforms, offsets), r, s)[:, None])
            res = torch.linalg.norm(proj - pixels, dim=-1)
            res = torch.where(valid > 0, res, torch.full_like(res, float("nan")))
    finally:
        for p, w in zip(params, was):
            p.requires_grad_(w)
    return Fit2DResult(euler=pose.euler.detach(), root=r.detach(), scale=s.detach(), joints=joints.detach(),
                       vertices=verts.detach(), pixels=proj.detach(), residual_px=res.detach(),
                       history={k: tuple(v) for k, v in history.items()})


def hand_size(pixels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The hand's size in each image: the longest side of the valid points' bounding box, px (1 where none is
    valid). pixels (..., J, 2), valid (..., J) → (...)."""
    big = torch.finfo(pixels.dtype).max
    lo = torch.where(valid[..., None] > 0, pixels, torch.full_like(pixels, big)).amin(-2)
    hi = torch.where(valid[..., None] > 0, pixels, torch.full_like(pixels, -big)).amax(-2)
    return torch.where(valid.sum(-1) > 0, (hi - lo).amax(-1), torch.ones_like(valid[..., 0]))


def landmark_points(joints: torch.Tensor, transforms: torch.Tensor, offsets: torch.Tensor | None) -> torch.Tensor:
    """Where a detector's landmarks sit: joints (B, J, 3) mm moved by ``offsets`` (J, 3) mm, each in its joint's
    frame (the rotation of ``transforms`` (B, J, 4, 4), the joint's global transform); None: the joints."""
    if offsets is None:
        return joints
    return joints + (transforms[..., :3, :3] @ offsets[..., None])[..., 0]


def finger_groups(skeleton) -> torch.Tensor:
    """(J, 6) 0/1 membership: each joint in its finger (thumb … pinky, tip included) or in the sixth group (the
    wrist and the joints of no finger)."""
    J = skeleton.num_joints
    g = torch.zeros(J, len(FINGERS) + 1)
    for j, name in enumerate(skeleton.short_names):
        f = next((k for k, f in enumerate(FINGERS) if name.startswith(f)), len(FINGERS))
        g[j, f] = 1.0
    return g


def similarity_align(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None):
    """Umeyama: (R (B, 3, 3), s (B,), t (B, 3)) minimising Σ w‖s·R·x + t − y‖² for (B, N, 3) point sets."""
    B, N, _ = source.shape
    w = torch.ones(B, N, dtype=source.dtype, device=source.device) if weights is None else weights.to(source)
    R, _ = rigid_align(source, target, w)                          # rotation of the centred sets (scale-free)
    wn = w / w.sum(1, keepdim=True)
    mx = (wn[..., None] * source).sum(1)
    my = (wn[..., None] * target).sum(1)
    xs, ys = source - mx[:, None], target - my[:, None]
    rx = (xs @ R.transpose(-1, -2))
    s = (wn * (rx * ys).sum(-1)).sum(1) / (wn * (xs * xs).sum(-1)).sum(1).clamp_min(1e-12)
    t = my - s[:, None] * (mx @ R.transpose(-1, -2))
    return R, s, t


def lift_landmarks(pixels: torch.Tensor, rel_depth: torch.Tensor, valid: torch.Tensor, cameras: Cameras,
                   rest_joints: torch.Tensor, palm: list[int]) -> torch.Tensor:
    """A 3D start from one view: (B, J, 3) world mm, the landmarks placed at the depth the model's size implies.

    The landmarks with MediaPipe's depth, ``(u, v, z)`` px, are a hand up to scale; a similarity fit of the
    rest pose's palm joints (rigid whatever the fingers do) onto them gives ``k`` px per mm, so the wrist is
    ``f / k`` mm away; each landmark is then back-projected at ``Z + z / k``.

    Args:
        pixels: (B, J, 2) px; rel_depth: (B, J) px; valid: (B, J); cameras: batch shape (B,).
        rest_joints: (J, 3) the model's rest-pose joints, mm; palm: indices of the palm joints.
    """
    B = pixels.shape[0]
    P = torch.cat([pixels, rel_depth[..., None]], -1)                      # (B, J, 3) px
    w = torch.zeros_like(valid)
    w[:, palm] = valid[:, palm]
    _, k, _ = similarity_align(rest_joints.expand(B, -1, -1), P, w)
    f = cameras.focal.mean(-1)                                             # (B,)
    Z = f / k.clamp_min(1e-6)                                               # wrist depth, mm
    c = cameras.principal
    wrist_z = P[:, :, 2:3] / k[:, None, None]                              # relative depth, mm
    depth = Z[:, None, None] + wrist_z - (w[..., None] * wrist_z).sum(1, keepdim=True) / w.sum(1).clamp_min(1)[:, None, None]
    xy = (pixels - c[:, None]) / cameras.focal[:, None] * depth
    cam_pts = torch.cat([xy, depth], -1)
    # camera → world: x_w = Rᵀ (x_c − t)
    return (cam_pts - cameras.t[:, None]) @ cameras.R


def triangulate(pixels: torch.Tensor, valid: torch.Tensor, cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear (DLT) triangulation of J points seen in C views: pixels (B, C, J, 2), valid (B, C, J), cameras
    (B, C) → points (B, J, 3) world mm and their valid (B, J) (seen in at least two views)."""
    P = torch.cat([cameras.K @ torch.cat([cameras.R, cameras.t[..., None]], -1)], -1)     # (B, C, 3, 4)
    u, v = pixels[..., 0:1], pixels[..., 1:2]                                            # (B, C, J, 1)
    rows = torch.stack([u * P[:, :, None, 2] - P[:, :, None, 0], v * P[:, :, None, 2] - P[:, :, None, 1]], 2)
    rows = rows * valid[:, :, None, :, None]                                             # (B, C, 2, J, 4)
    A = rows.permute(0, 3, 1, 2, 4).reshape(pixels.shape[0], pixels.shape[2], -1, 4)     # (B, J, 2C, 4)
    _, _, Vh = torch.linalg.svd(A)
    X = Vh[..., -1, :]
    pts = X[..., :3] / X[..., 3:].where(X[..., 3:].abs() > 1e-12, torch.full_like(X[..., 3:], 1e-12))
    return pts, ((valid > 0).sum(1) >= 2).to(pixels.dtype)
