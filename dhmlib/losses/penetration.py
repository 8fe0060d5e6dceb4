"""Penetration loss: bone spheres must not overlap each other nor sink into the palm skin.

Semantics of the original release (``common/nets/loss.py``, ``PenetLoss``; called from
``main/model.py`` with the rest-pose *refined* skeleton ``global_pose_refined`` and the
rest-pose corrected mesh, both detached, plus the posed joints and the posed mesh):

* **Spheres.**  Every bone (parent joint ``p`` → child joint ``c``) carries ``K = 10`` sphere
  centres at steps ``t = 0, 0.1, …, 0.9`` from ``p`` to ``c`` (``p + t (c − p)``; the child
  itself is the first sphere of the next bone).  Each radius is the distance from the centre,
  on the rest-pose refined skeleton, to the nearest vertex of the rest-pose corrected mesh;
  both rest inputs are detached.  At run time the centres are re-interpolated between the
  posed parent and child with the same steps; the radii stay.
* **Rigid term** (weight 1).  The segments are the bones met along the root → leaf paths (for
  the hand: every bone, 21 of them).  Over all unordered pairs of segments except those sharing
  a joint (the original skips ``start₁ = start₂`` — siblings —, ``start₁ = end₂`` and
  ``end₁ = start₂`` — parent and child), the per-pair loss is
  ``mean over the 10 × 10 sphere grid of relu(r₁ + r₂ − ‖x₁ − x₂‖)``; the term is the mean over
  those pairs (per sample).
* **Non-rigid term** (weight 5).  For each non-rigid joint ``g`` (``thumb1`` and the root
  ``wrist``, found by name) the skin is the set of *posed* vertices whose dominant joint
  (argmax skinning weight) is ``g``.  For each root → leaf path whose distal segment
  (last bone, ``*3 → *_null``) does not belong to the thumb, with ``d_k`` the distance from sphere
  centre ``k`` to the nearest such skin vertex and ``r_k`` its radius: if some sphere penetrates
  (``d_k < r_k``), with ``k₀`` the first one from the parent side, the loss is
  ``| mean_{k ≥ k₀} (d_k − r_k) |``; otherwise 0.  The term is the sum over (joint, finger)
  combinations divided by their number (2 × 4 = 8 for the hand).  The gradient reaches the
  posed joints and, through the nearest skin vertex of each sphere, the posed skin.
* Both terms are per sample; the original returns them as (B,) tensors that the trainer
  averages over the batch, which is what ``reduction="mean"`` does here.

Deliberate differences (none changes a value on the hand skeleton beyond float rounding):

* Steps are ``k / K`` in the input dtype; the original used float32 ``torch.arange(0, 1, 0.1)``
  (relative difference ≤ 1.5e-8).
* The original also makes one zero-length "bone" sphere at each leaf; no term ever reads it, so
  it is not built.
* Segments are the distinct bones; the original lists a bone once per root → leaf path through
  it, which repeats nothing when every branch starts at the root (the hand), but would
  double-count shared bones of a deeper tree.
* A non-rigid joint that dominates no vertex contributes 0 (the original would fail on an
  empty ``min``); it still counts in the denominator.
* Distances go through ``sqrt(max(‖·‖², tiny))`` so that coincident points give a zero, not
  NaN, gradient; values differ by at most ``sqrt(tiny)`` (1e-154 in float64, 1e-19 in float32).
* The rigid grid's squared distances are evaluated as a quadratic form in the steps (a pair's
  3 × 3 Gram matrix times a fixed (9, K²) basis: one matmul) instead of K² vector differences;
  in float32 this rounds differently (≈ 1e-4 mm on hand-sized inputs), in float64 it agrees with
  the direct formula to 1e-10 (tested).
* The nearest skin vertex is chosen without gradient by one batched matmul (``|v|² − 2 q·v``) and a
  two-level search (the minimum of each chunk of 32 skin vertices, the best chunk of the joint's
  skin, the argmin inside it: argmin costs ~10× amin per element on the CPU), then its distance is
  recomputed exactly with gradient: the same value and the same gradient as ``min`` over exact
  distances except at near-ties (≈ 1e-4 mm² apart in float32), where either vertex is a valid
  minimum.  A radius (no gradient) is ``sqrt(|c|² + min_v (|v|² − 2 c·v))`` evaluated in float64
  (≤ 1e-12 mm² from the direct formula on hand-sized inputs).
* Rigid term on the CPU: each pair's 10 × 10 grid is split into 2 × 2 blocks of 5 × 5 spheres; a
  block whose midpoint distance minus the spheres' spread along both bones exceeds the block's
  largest ``r₁ + r₂`` (by more than rounding) is skipped, since relu is exactly 0 there, value and
  gradient (~84 % of the grid is skipped on the bench's poses, half of them fists).  CUDA and
  ``meta`` evaluate every block (no data-dependent shapes); ``PenetrationLoss.prune = False`` does
  so on the CPU (tested equal).
* Forward and backward are one ``torch.autograd.Function`` with a hand-written backward (first
  order only; no double backward), instead of autograd over ~60 small ops.
* Sphere centres, fingertip centres and the rigid pairs' end-point differences are fixed linear
  maps of the joints, applied as one matmul each (float64 buffers, cast once per dtype).

Note: on a real-shaped hand the rest pose itself is not free of overlap: the thumb metacarpal
(``thumb0 → thumb1``) and the palm bones (``wrist → *1``) lie in the same palm, so their spheres
overlap (procedural hand: rigid term 0.053 at rest), and the rigid term has a floor whose
gradient acts on those palm bones only; the fingers are free.  The original has the same floor.
* Radii may be per sample (rest mesh (B, V, 3), as the original with its pose corrective) or
  shared ((V, 3)); :meth:`PenetrationLoss.set_rest` caches shared radii.

Everything is vectorized over batch, pairs, spheres, vertices and non-rigid joints; the Python
loops run once at construction, over the joints of the skeleton.  Device and dtype follow the
inputs (``meta`` included).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from dhmlib.hand.skeleton import Skeleton

#: Default non-rigid joints of the original (``non_rigid_joint_idx = [3, 21]``), by name.
NON_RIGID_JOINTS = ("thumb1", "wrist")
#: Loss weights of the original config (``loss_penet_r_weight``, ``loss_penet_nr_weight``).
RIGID_WEIGHT = 1.0
NONRIGID_WEIGHT = 5.0


class PenetrationTerms(NamedTuple):
    """The two unweighted terms: scalars (``reduction="mean"``) or (B,) (``"none"``)."""

    rigid: torch.Tensor
    nonrigid: torch.Tensor

    def total(self, rigid_weight: float = RIGID_WEIGHT, nonrigid_weight: float = NONRIGID_WEIGHT) -> torch.Tensor:
        """``rigid_weight · rigid + nonrigid_weight · nonrigid`` (the original's 1 and 5)."""
        return rigid_weight * self.rigid + nonrigid_weight * self.nonrigid


def _apply_map(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(R, J) map applied to (..., J, 3) → (..., R, 3), as one 2-D matmul over the joints (the batch
    folded into the columns: no broadcast matmul, whose backward reduces an expanded gradient)."""
    lead, J = x.shape[:-2], x.shape[-2]
    cols = x.movedim(-2, 0).reshape(J, -1)                                   # (J, ·3)
    return (m @ cols).view(m.shape[0], *lead, 3).movedim(0, -2)


def root_to_leaf_paths(skeleton: Skeleton) -> list[list[int]]:
    """Joint indices of every root → leaf path, in depth-first order of the children."""
    children = [skeleton.children(j) for j in range(skeleton.num_joints)]
    paths, stack = [], [[skeleton.root]]
    while stack:
        path = stack.pop()
        kids = children[path[-1]]
        if not kids:
            paths.append(path)
        stack.extend(path + [c] for c in reversed(kids))
    return paths


#: Width of the skin chunks of the two-level nearest-vertex search (min per chunk, then argmin in one chunk).
SKIN_CHUNK = 32


class _PenetrationTerms(torch.autograd.Function):
    """Both terms per sample with a hand-written backward (the autograd graph of the ~60 small ops it
    replaces cost more than the arithmetic).

    Inputs: posed joints (B, J, 3), posed vertices (B, V, 3), radii (B|1, NB, K) (no gradient) and the
    :class:`PenetrationLoss` (index buffers).  Outputs: rigid (B,), non-rigid (B,).  Coordinates are
    laid out xyz-first ((3, B, ·)): on the CPU an op whose innermost axis is 3 long costs ~10× one over
    the same data with a long innermost axis.

    Rigid term: each pair's K × K sphere grid is split into M × M blocks of S × S spheres (K = M·S).  A
    block whose bound ``|mid₁ − mid₂| − h (|A| + |B|) ≥ max r₁ + max r₂`` (block midpoints, half-length h
    of a block in t) holds no overlapping sphere pair: relu gives exactly 0 there, value and gradient, so
    on the CPU only the other blocks are evaluated (~16 % of the grid on the bench's poses).
    Elsewhere (CUDA, meta: no data-dependent shapes) every block is.
    """

    @staticmethod
    def forward(ctx, joints, vertices, radii, loss):
        B, J, _ = joints.shape
        dt, dev = joints.dtype, joints.device
        eps, tiny = torch.finfo(dt).eps, torch.finfo(dt).tiny
        P, K, F, G = loss.pair_a.numel(), loss.num_steps, loss.distal.numel(), len(loss.skin_bounds) - 1
        (M, S), MM = loss._blocks, loss._blocks[0] ** 2
        FK, NB = F * K, loss.num_bones
        zero = torch.zeros((), dtype=dt, device=dev)
        # one matmul of the fixed (3P + FK, J) map: the pairs' end-point differences C, A, B, then the distal
        # bones' sphere centres
        rows = (joints.permute(2, 0, 1).reshape(3 * B, J) @ loss._cast("_joint_map", dt).t()).view(3, B, -1)

        # rigid: |C + t_k A − t_l B|² is a quadratic form in (1, t_k, −t_l) of the 3 × 3 Gram matrix of C, A, B
        E = rows[..., :3 * P].view(3, B, 3, P)                              # (xyz, B, C|A|B, P)
        gram = (E.unsqueeze(3) * E.unsqueeze(2)).sum(0)                     # (B, 3, 3, P)
        blocks = torch.matmul(loss._cast("_block_map", dt), gram.view(B, 9, P))    # (B, 9·M² + M², P)
        rblk = radii.reshape(-1, NB, M, S)
        if M > 1 and dev.type == "cpu" and loss.prune:
            mid = blocks[:, 9 * MM:].clamp_min(0).sqrt_()                  # (B, M², P) block midpoints' distance
            g9 = gram.view(B, 9, P)
            ab = g9[:, 4].sqrt() + g9[:, 8].sqrt()                          # |A| + |B|, (B, P)
            rmax = rblk.amax(-1)                                            # (B|1, NB, M)
            ra, rb = rmax[:, loss.pair_a].transpose(1, 2), rmax[:, loss.pair_b].transpose(1, 2)   # (B|1, M, P)
            tmax = (ra.unsqueeze(2) + rb.unsqueeze(1)).view(-1, MM, P)
            # keep unless the bound clears the thresholds by more than rounding (1024 eps of the pair's size)
            slack = loss._half_block * ab + (1024 * eps) * (g9[:, 0].sqrt() + ab)
            sel = ((mid - slack.unsqueeze(1)) < tmax).view(-1).nonzero().squeeze(1)
        else:
            sel = torch.arange(B * MM * P, device=dev)
        b_idx, rest = sel // (MM * P), sel % (MM * P)
        blk, p_idx = rest // P, rest % P
        # block (i, j): the Gram matrix of (C + T_i A − T_j B, A, B), over t, s ∈ {0 … S − 1} / K
        gs = blocks[:, :9 * MM].view(B, MM, 9, P)[b_idx, blk, :, p_idx]    # (N, 9)
        d2 = gs @ loss._cast("_grid_basis", dt)                             # (N, S²)
        d = d2.clamp_min(tiny).sqrt_()
        r2 = rblk.reshape(-1, S)
        rrow = b_idx * NB if rblk.shape[0] > 1 else torch.zeros_like(b_idx)
        ra = r2[(rrow + loss.pair_a[p_idx]) * M + blk // M]                 # (N, S)
        rb = r2[(rrow + loss.pair_b[p_idx]) * M + blk % M]
        over = (ra.unsqueeze(-1) + rb.unsqueeze(-2)).view(-1, S * S) - d    # r₁ + r₂ − d
        rigid = joints.new_zeros(B).index_add_(0, b_idx, over.clamp_min(0) @ loss._cast("_ones", dt))
        rigid /= P * K * K
        ctx.rigid = (E, d2, d, over, b_idx, blk, p_idx)

        # non-rigid: fingertip spheres against the skin of each non-rigid joint
        if G == 0 or FK == 0:
            ctx.nonrigid = None
            nonrigid = joints.new_zeros(B)
        else:
            qx = rows[..., 3 * P:]                                          # (3, B, FK)
            vx = vertices.permute(2, 0, 1)                                  # (3, B, V)
            sx = vx.index_select(2, loss._skin_pad)                         # (3, B, Mp), groups padded to chunks
            # argmin_v |v|² − 2 q·v (|q|² is constant per row): only the choice is used, the distance is
            # recomputed exactly from the chosen vertex.  Two levels, because argmin costs ~10× amin per
            # element: the minimum of every chunk of W vertices, the best chunk of each group, then the
            # argmin inside that chunk.
            W = SKIN_CHUNK
            score = torch.baddbmm((sx * sx).sum(0).unsqueeze(1), qx.permute(1, 2, 0), sx.transpose(0, 1), alpha=-2)
            score = score.view(-1, W)                                       # (B·FK·C, W)
            C = score.shape[0] // (B * FK)
            best = score.amin(-1).view(B, FK, C)[..., loss._group_chunks].argmin(-1)    # (B, FK, G)
            chunk = loss._group_chunks[loss._group_arange, best]            # (B, FK, G) chunk of the group
            row = torch.arange(0, B * FK * C, C, device=dev).view(B, FK, 1) + chunk
            within = score.index_select(0, row.view(-1)).argmin(-1).view(B, FK, G)
            nearest = loss._skin_pad[chunk * W + within].view(B, FK * G)    # vertex index
            pts = vx.gather(2, nearest.expand(3, -1, -1)).view(3, B, FK, G)
            diff = qx.unsqueeze(-1) - pts                                   # (3, B, FK, G)
            e2 = (diff * diff).sum(0)
            inf = torch.full((), float("inf"), dtype=dt, device=dev)
            dist = torch.where(loss._group_found, e2.clamp_min(tiny).sqrt(), inf).view(B, F, K, G)
            rad = radii[:, loss.distal].unsqueeze(-1)                      # (B|1, F, K, 1)
            active = torch.cumsum(dist < rad, 2) > 0                        # k >= first penetrating sphere
            count = active.sum(2).clamp_min_(1).to(dt)                      # (B, F, G); 1 where none (sum 0)
            mean = torch.where(active, dist - rad, zero).sum(2) / count
            nonrigid = mean.abs().sum((1, 2)) / (G * F)                     # (B,)
            ctx.nonrigid = (diff, e2, dist, active, count, mean, nearest)
        ctx.loss, ctx.shape = loss, (B, J, P, F, K, G)
        return rigid, nonrigid

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rigid, grad_nonrigid):
        B, J, P, F, K, G = ctx.shape
        loss, (E, d2, d, over, b_idx, blk, p_idx) = ctx.loss, ctx.rigid
        dt, dev = E.dtype, E.device
        tiny = torch.finfo(dt).tiny
        MM = loss._blocks[0] ** 2
        zero = torch.zeros((), dtype=dt, device=dev)
        # rigid: d relu(r₁ + r₂ − d) / d d² = −1 / (2d) where the spheres overlap (and d² was not clamped)
        s = (grad_rigid * (-0.5 / (P * K * K)))[b_idx].unsqueeze(1)        # (N, 1)
        w = torch.where((over > 0) & (d2 >= tiny), s / d, zero)            # (N, S²)
        gblocks = E.new_zeros(B, MM, 9, P)
        gblocks[b_idx, blk, :, p_idx] = w @ loss._cast("_grid_basis", dt).t()          # d / d block Gram
        gg = torch.matmul(loss._cast("_block_map", dt)[:9 * MM].t(), gblocks.view(B, 9 * MM, P)).view(B, 3, 3, P)
        dE = ((gg + gg.transpose(1, 2)).unsqueeze(0) * E.unsqueeze(2)).sum(3)       # (3, B, 3, P)
        grows = [dE.view(3, B, 3 * P)]
        grad_vertices = None
        if ctx.nonrigid is not None:
            diff, e2, dist, active, count, mean, nearest = ctx.nonrigid
            # d |mean| / d dist_k = sign(mean) / count for the active spheres
            gm = (grad_nonrigid / (G * F)).view(B, 1, 1) * torch.sign(mean) / count     # (B, F, G)
            gd = torch.where(active & (e2 >= tiny).view(B, F, K, G), gm.unsqueeze(2), zero)
            g = (gd / dist).view(B, F * K, G) * diff                       # (3, B, FK, G): d / d (tip − vertex)
            grows.append(g.sum(-1))                                         # (3, B, FK)
            if ctx.needs_input_grad[1]:
                grad_vertices = g.new_zeros(3, B, loss.num_vertices).scatter_add_(
                    2, nearest.expand(3, -1, -1), g.view(3, B, -1).neg()).permute(1, 2, 0)
        elif F * K:
            grows.append(E.new_zeros(3, B, F * K))
        grad = torch.cat(grows, -1).view(3 * B, -1) @ loss._cast("_joint_map", dt)   # (3B, J)
        return grad.view(3, B, J).permute(1, 2, 0), grad_vertices, None, None


class PenetrationLoss(nn.Module):
    """Rigid and non-rigid penetration terms of DeepHandMesh (see the module docstring).

    Args:
        skeleton: the joint tree (J joints).
        segmentation: (V,) dominant joint per vertex (``HandModel.segmentation``).
        non_rigid_joints: names (short or full) of the joints whose skin the fingertips must not
            enter; default ``("thumb1", "wrist")``.
        excluded_finger: fingers whose distal segment is skipped in the non-rigid term (a name
            fragment; the original: ``"thumb"``).
        num_steps: spheres per bone (K; 10 in the original).

    Buffers (long): ``bone_start``, ``bone_end`` (NB,), ``pair_a``, ``pair_b`` (P,) bone indices of
    the rigid pairs, ``distal`` (F,) bone indices of the non-rigid fingertips and ``skin_index``
    (Vn,) the vertices dominated by a non-rigid joint, grouped by joint (``skin_bounds``: G + 1 offsets).
    """

    def __init__(self, skeleton: Skeleton, segmentation, non_rigid_joints: Sequence[str] = NON_RIGID_JOINTS,
                 excluded_finger: str = "thumb", num_steps: int = 10):
        super().__init__()
        self.skeleton = skeleton
        self.num_steps = K = int(num_steps)
        if self.num_steps < 1:
            raise ValueError(f"PenetrationLoss: num_steps must be >= 1, got {num_steps}")
        seg = np.asarray(segmentation).astype(np.int64).reshape(-1)
        if seg.size and (seg.min() < 0 or seg.max() >= skeleton.num_joints):
            raise ValueError(f"PenetrationLoss: segmentation holds joint indices outside [0, {skeleton.num_joints})")
        self.num_vertices = seg.size

        # segments: distinct bones along the root → leaf paths, in path order
        paths = root_to_leaf_paths(skeleton)
        bones: list[tuple[int, int]] = []
        for path in paths:
            for a, b in zip(path[:-1], path[1:]):
                if (a, b) not in bones:
                    bones.append((a, b))
        if len(bones) < 2:
            raise ValueError("PenetrationLoss: the skeleton needs at least two bones")
        self.bones = bones
        start = torch.tensor([a for a, _ in bones])
        end = torch.tensor([b for _, b in bones])
        ia, ib = torch.triu_indices(len(bones), len(bones), offset=1)
        share = (start[ia] == start[ib]) | (start[ia] == end[ib]) | (end[ia] == start[ib]) | (end[ia] == end[ib])
        self.register_buffer("bone_start", start, persistent=False)
        self.register_buffer("bone_end", end, persistent=False)
        self.register_buffer("pair_a", ia[~share].clone(), persistent=False)
        self.register_buffer("pair_b", ib[~share].clone(), persistent=False)
        # the K × K grid of squared distances of a pair is a quadratic form in w = (1, t_k, −t_l):
        # |C + t_k A − t_l B|² = Σ_ij w_i w_j Gram_ij with C = a0 − b0, A = a1 − a0, B = b1 − b0.  The grid is
        # split into M × M blocks of S × S spheres (M = 2 when K is even): block (i, j) is the same form of
        # the shifted (C + T_i A − T_j B, A, B) with T_i = i S / K (``_block_shift``: (M², 3, 3) maps) over
        # t, s ∈ {0, …, S − 1} / K (``_grid_basis``: (9, S²)); ``_block_basis`` (9, M²) gives the block
        # midpoints' squared distances, ``_half_block`` the half-length in t of a block's spheres
        M = 2 if K % 2 == 0 and K >= 4 else 1
        S = K // M
        self._blocks = (M, S)
        #: skip sphere blocks that cannot overlap (CPU only; exact, see _PenetrationTerms); False evaluates all
        self.prune = True

        def basis(t, u):
            w = torch.stack([torch.ones(len(t), len(u), dtype=torch.float64),
                             t[:, None].expand(-1, len(u)), -u[None, :].expand(len(t), -1)])
            return (w[:, None] * w[None, :]).reshape(9, -1)

        t = torch.arange(S, dtype=torch.float64) / K
        T = torch.arange(M, dtype=torch.float64) * S / K
        self._half_block = (S - 1) / (2 * K)
        self.register_buffer("_grid_basis", basis(t, t), persistent=False)              # (9, S²), cast at use
        shift = torch.eye(3, dtype=torch.float64).repeat(M * M, 1, 1)                 # (M², 3, 3): C + T_i A − T_j B
        shift[:, 0, 1] = T.repeat_interleave(M)
        shift[:, 0, 2] = -T.repeat(M)
        # block Gram matrices L G Lᵀ (9 rows per block, one (9, 9) Kronecker map each), then the M² block
        # midpoints' squared distances: one (9·M² + M², 9) map applied to the pairs' Gram matrices
        kron = torch.einsum("nac,nbd->nabcd", shift, shift).reshape(M * M * 9, 9)
        self.register_buffer("_block_map", torch.cat([kron, basis(T + self._half_block, T + self._half_block).t()]),
                             persistent=False)
        self.register_buffer("_ones", torch.ones(S * S, dtype=torch.float64), persistent=False)
        t = torch.arange(K, dtype=torch.float64) / K

        names = skeleton.short_names
        distal = [bones.index((p[-2], p[-1])) for p in paths if len(p) >= 2
                  and excluded_finger not in names[p[-2]] and excluded_finger not in names[p[-1]]]
        self.register_buffer("distal", torch.tensor(distal, dtype=torch.long), persistent=False)
        # linear maps from the joints (J, 3): sphere centres of every bone (NB·K rows: a + t (b − a)), and the
        # forward's map: the pairs' (C, A, B) = (a0 − b0, a1 − a0, b1 − b0) (3·P rows, ±1, ordered (C|A|B, pair))
        # followed by the distal bones' sphere centres (F·K rows): one matmul instead of gathers and differences
        J = skeleton.num_joints
        interp = torch.zeros(len(bones), K, J, dtype=torch.float64)
        for n, (a, b) in enumerate(bones):
            interp[n, :, a] += 1 - t
            interp[n, :, b] += t
        self.register_buffer("_centre_map", interp.reshape(-1, J), persistent=False)             # (NB·K, J)
        pa, pb = self.pair_a, self.pair_b
        ends = torch.stack([start[pa], end[pa], start[pb], end[pb]], -1)                          # a0, a1, b0, b1
        diff = torch.zeros(3, pa.numel(), J, dtype=torch.float64)
        rows = torch.arange(pa.numel())
        for i, (plus, minus) in enumerate(((0, 2), (1, 0), (3, 2))):
            diff[i, rows, ends[:, plus]] += 1
            diff[i, rows, ends[:, minus]] -= 1
        self.register_buffer("_joint_map", torch.cat([diff.reshape(-1, J), interp[self.distal].reshape(-1, J)]),
                             persistent=False)                                                    # (3P + F·K, J)

        self.non_rigid_joints = [skeleton.index(n) for n in non_rigid_joints]
        groups = [np.flatnonzero(seg == g) for g in self.non_rigid_joints]
        keep = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        # skin vertices sorted by non-rigid joint: group g is skin_index[skin_bounds[g]:skin_bounds[g + 1]]
        self.skin_bounds = [0] + np.cumsum([len(g) for g in groups]).tolist()
        self.register_buffer("skin_index", torch.as_tensor(keep, dtype=torch.long), persistent=False)
        # the same groups padded to whole chunks of SKIN_CHUNK vertices by repeating their first vertex (a
        # repeat maps back to the same vertex, so the choice is the group's first minimum, as argmin's); the
        # chunks of group g are _group_chunks[g], padded by repeating its first chunk; an empty group is one
        # chunk of vertex 0 and _group_found[g] False
        W, pad, chunks = SKIN_CHUNK, [], []
        for g in groups:
            members = g if len(g) else np.zeros(1, np.int64)
            n = -(-len(members) // W) * W
            chunks.append(list(range(len(pad) // W, (len(pad) + n) // W)))
            pad.extend(members.tolist() + [int(members[0])] * (n - len(members)))
        cmax = max((len(c) for c in chunks), default=0)
        self.register_buffer("_skin_pad", torch.tensor(pad, dtype=torch.long), persistent=False)
        self.register_buffer("_group_chunks", torch.tensor([c + c[:1] * (cmax - len(c)) for c in chunks],
                                                           dtype=torch.long).view(len(groups), cmax), persistent=False)
        self.register_buffer("_group_arange", torch.arange(len(groups)), persistent=False)
        self.register_buffer("_group_found", torch.tensor([len(g) > 0 for g in groups], dtype=torch.bool),
                             persistent=False)
        self._radii: torch.Tensor | None = None
        self._casts: dict = {}

    @classmethod
    def from_hand(cls, hand_model, **kwargs) -> "PenetrationLoss":
        """Build from a :class:`~dhmlib.hand.handmodel.HandModel` (its skeleton and segmentation)."""
        return cls(hand_model.skeleton, hand_model.segmentation, **kwargs)

    # ---------------------------------------------------------------- spheres
    @property
    def num_bones(self) -> int:
        return len(self.bones)

    def _cast(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """Float64 buffer ``name`` in ``dtype``, cast once per buffer object (``.to(device)`` makes new ones)."""
        buf = getattr(self, name)
        if buf.dtype == dtype:
            return buf
        hit = self._casts.get((name, dtype))
        if hit is None or hit[0] is not buf:
            hit = self._casts[name, dtype] = (buf, buf.to(dtype))
        return hit[1]

    def centres(self, joints: torch.Tensor) -> torch.Tensor:
        """(..., J, 3) joints → (..., NB, K, 3) sphere centres, mm."""
        return _apply_map(self._cast("_centre_map", joints.dtype), joints).unflatten(-2, (self.num_bones, self.num_steps))

    def radii(self, rest_joints: torch.Tensor, rest_vertices: torch.Tensor) -> torch.Tensor:
        """Detached rest skeleton (J, 3) or (B, J, 3) and rest mesh (V, 3) or (B, V, 3) → radii (B|1, NB, K), mm."""
        rest_joints, rest_vertices = rest_joints.detach(), rest_vertices.detach()
        if rest_joints.dim() == 2:
            rest_joints = rest_joints[None]
        if rest_vertices.dim() == 2:
            rest_vertices = rest_vertices[None]
        dt = rest_joints.dtype
        n = max(rest_joints.shape[0], rest_vertices.shape[0])
        # r² = |c|² + min_v (|v|² − 2 c·v), in float64 (no gradient: the rest inputs are detached); one
        # matmul and a min-reduction instead of argmin + gather + exact recompute (same values to ~1e-12 mm²)
        c64 = torch.matmul(self._centre_map, rest_joints.to(torch.float64))  # (b, NB·K, 3)
        vt = rest_vertices.transpose(1, 2).to(torch.float64)               # (b, 3, V)
        m = torch.baddbmm((vt * vt).sum(1).unsqueeze(1), c64, vt, alpha=-2).amin(-1)
        r2 = (c64 * c64).sum(-1) + m                                       # (n, NB·K)
        return r2.clamp_min(0).sqrt().to(dt).view(n, self.num_bones, self.num_steps)

    def set_rest(self, rest_joints: torch.Tensor, rest_vertices: torch.Tensor) -> "PenetrationLoss":
        """Cache the radii of a fixed rest pose (used when ``forward`` gets no rest inputs)."""
        self._radii = self.radii(rest_joints, rest_vertices)
        return self

    # ---------------------------------------------------------------- loss
    def forward(self, posed_joints: torch.Tensor, posed_vertices: torch.Tensor,
                rest_joints: torch.Tensor | None = None, rest_vertices: torch.Tensor | None = None,
                reduction: str = "mean") -> PenetrationTerms:
        """Posed joints (B, J, 3) and vertices (B, V, 3), mm → :class:`PenetrationTerms` (unweighted).

        ``rest_joints`` (J, 3) | (B, J, 3) and ``rest_vertices`` (V, 3) | (B, V, 3): the rest-pose
        refined skeleton and corrected mesh (detached here); None uses :meth:`set_rest`'s radii.
        ``reduction``: ``"mean"`` over the batch (scalars) or ``"none"`` ((B,) each).  The gradient
        (hand-written, first order only) reaches ``posed_joints`` and ``posed_vertices``.
        """
        if posed_joints.dim() != 3 or posed_joints.shape[1:] != (self.skeleton.num_joints, 3):
            raise ValueError(f"posed_joints: expected (B, {self.skeleton.num_joints}, 3), got {tuple(posed_joints.shape)}")
        if posed_vertices.dim() != 3 or posed_vertices.shape[1:] != (self.num_vertices, 3):
            raise ValueError(f"posed_vertices: expected (B, {self.num_vertices}, 3), got {tuple(posed_vertices.shape)}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction: expected 'mean' or 'none', got {reduction!r}")
        if (rest_joints is None) != (rest_vertices is None):
            raise ValueError("PenetrationLoss: give both rest_joints and rest_vertices, or neither")
        if rest_joints is not None:
            r = self.radii(rest_joints, rest_vertices)
        elif self._radii is not None:
            r = self._radii
        else:
            raise ValueError("PenetrationLoss: no rest pose; pass rest_joints and rest_vertices or call set_rest()")
        r = r.to(device=posed_joints.device, dtype=posed_joints.dtype)       # (B|1, NB, K)
        if posed_vertices.dtype != posed_joints.dtype:
            posed_vertices = posed_vertices.to(posed_joints.dtype)
        rigid, nonrigid = _PenetrationTerms.apply(posed_joints, posed_vertices, r, self)
        if reduction == "mean":
            return PenetrationTerms(rigid.mean(), nonrigid.mean())
        return PenetrationTerms(rigid, nonrigid)


def penetration_loss(skeleton: Skeleton, segmentation, posed_joints: torch.Tensor, posed_vertices: torch.Tensor,
                     rest_joints: torch.Tensor, rest_vertices: torch.Tensor, reduction: str = "mean",
                     **kwargs) -> PenetrationTerms:
    """Functional form of :class:`PenetrationLoss` (builds the index tensors on each call).

    ``kwargs`` go to :class:`PenetrationLoss` (``non_rigid_joints``, ``excluded_finger``,
    ``num_steps``).  Returns the unweighted :class:`PenetrationTerms`; ``.total()`` weighs them 1 and 5.
    """
    module = PenetrationLoss(skeleton, segmentation, **kwargs).to(posed_joints.device)
    return module(posed_joints, posed_vertices, rest_joints, rest_vertices, reduction=reduction)


__all__ = ["NON_RIGID_JOINTS", "NONRIGID_WEIGHT", "PenetrationLoss", "PenetrationTerms", "RIGID_WEIGHT",
           "penetration_loss", "root_to_leaf_paths"]
