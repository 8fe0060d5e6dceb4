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
* The nearest skin vertex is chosen without gradient by one batched matmul (``argmin |v|² − 2 q·v``),
  then its distance is recomputed exactly with gradient: the same value and the same gradient as
  ``min`` over exact distances except at near-ties (≈ 1e-4 mm² apart in float32), where either
  vertex is a valid minimum.  A radius (no gradient) is ``sqrt(|c|² + min_v (|v|² − 2 c·v))``
  evaluated in float64 (≤ 1e-12 mm² from the direct formula on hand-sized inputs).
* Sphere centres, fingertip centres and the rigid pairs' end-point differences are fixed linear
  maps of the joints, applied as one matmul each (float64 buffers, cast once per dtype).

Note: on a real-shaped hand the rest pose itself is not free of overlap: the thumb metacarpal
(``thumb0 → thumb1``) and the palm bones (``wrist → *1``) lie in the same palm, so their spheres
overlap (procedural hand: rigid term 0.053 at rest), and the rigid term has a floor whose
gradient acts on those palm bones only; the fingers are free.  The original has the same floor.
* Radii may be per sample (rest mesh (B, V, 3), as the original with its pose corrective) or
  shared ((V, 3)); :meth:`PenetrationLoss.set_rest` caches shared radii.

Everything is vectorized over batch, pairs, spheres and vertices; the Python loops run once at
construction, over the joints of the skeleton, and per call over the ≤ 2 non-rigid joints.  Device and dtype follow the inputs (``meta``
included).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from dhmlib.skeleton import Skeleton

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


def _safe_sqrt(d2: torch.Tensor) -> torch.Tensor:
    """Distance from a squared distance; ``tiny`` floor: finite gradient at 0 and for rounding below 0."""
    return torch.sqrt(d2.clamp_min(torch.finfo(d2.dtype).tiny))


@torch.no_grad()
def _nearest(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of ``v`` (B, M, 3) for each of ``q`` (B, N, 3) → (B, N).

    One batched matmul: argmin of ``|v|² − 2 q·v`` (``|q|²`` is constant per row).  Only the choice
    comes from here; callers recompute the distance to the chosen point exactly.
    """
    return torch.baddbmm((v * v).sum(-1).unsqueeze(1), q, v.transpose(1, 2), alpha=-2).argmin(-1)


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
        self.num_steps = int(num_steps)
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
        # |C + t_k A − t_l B|² = Σ_ij w_i w_j Gram_ij with C = a0 − b0, A = a1 − a0, B = b1 − b0
        self.register_buffer("_pair_joints", torch.stack([start[self.pair_a], end[self.pair_a],
                                                          start[self.pair_b], end[self.pair_b]], -1),
                             persistent=False)                                  # (P, 4): a0, a1, b0, b1
        t = torch.arange(self.num_steps, dtype=torch.float64) / self.num_steps
        w = torch.stack([torch.ones(self.num_steps, self.num_steps, dtype=torch.float64),
                         t[:, None].expand(-1, self.num_steps), -t[None, :].expand(self.num_steps, -1)])
        self.register_buffer("_grid_basis", (w[:, None] * w[None, :]).reshape(9, -1),
                             persistent=False)                                  # (9, K·K), cast at use

        names = skeleton.short_names
        distal = [bones.index((p[-2], p[-1])) for p in paths if len(p) >= 2
                  and excluded_finger not in names[p[-2]] and excluded_finger not in names[p[-1]]]
        self.register_buffer("distal", torch.tensor(distal, dtype=torch.long), persistent=False)
        # linear maps from the joints (J, 3): sphere centres of every bone (NB·K rows: a + t (b − a)), of the
        # distal bones (F·K rows), and the pairs' (C, A, B) = (a0 − b0, a1 − a0, b1 − b0) (3·P rows, ±1):
        # one matmul each instead of gathers and differences (and their index_put backward)
        J = skeleton.num_joints
        interp = torch.zeros(len(bones), self.num_steps, J, dtype=torch.float64)
        for n, (a, b) in enumerate(bones):
            interp[n, :, a] += 1 - t
            interp[n, :, b] += t
        self.register_buffer("_centre_map", interp.reshape(-1, J), persistent=False)             # (NB·K, J)
        self.register_buffer("_tip_map", interp[self.distal].reshape(-1, J), persistent=False)   # (F·K, J)
        diff = torch.zeros(self.pair_a.numel(), 3, J, dtype=torch.float64)
        pj = self._pair_joints
        for row, (plus, minus) in enumerate(((0, 2), (1, 0), (3, 2))):
            diff[torch.arange(pj.shape[0]), row, pj[:, plus]] += 1
            diff[torch.arange(pj.shape[0]), row, pj[:, minus]] -= 1
        self.register_buffer("_pair_diff", diff.reshape(-1, J), persistent=False)                # (3·P, J)
        self.non_rigid_joints = [skeleton.index(n) for n in non_rigid_joints]
        in_group = np.stack([seg == g for g in self.non_rigid_joints]) if self.non_rigid_joints \
            else np.zeros((0, seg.size), bool)
        # skin vertices sorted by non-rigid joint: group g is skin_index[bounds[g]:bounds[g + 1]]
        groups = [np.flatnonzero(row) for row in in_group]
        keep = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        self.skin_bounds = [0] + np.cumsum([len(g) for g in groups]).tolist()
        self.register_buffer("skin_index", torch.as_tensor(keep, dtype=torch.long), persistent=False)
        self._radii: torch.Tensor | None = None
        self._casts: dict = {}

    @classmethod
    def from_hand(cls, hand_model, **kwargs) -> "PenetrationLoss":
        """Build from a :class:`~dhmlib.handmodel.HandModel` (its skeleton and segmentation)."""
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
        c = self.centres(rest_joints)                                       # (b, NB, K, 3)
        n = max(c.shape[0], rest_vertices.shape[0])
        # r² = |c|² + min_v (|v|² − 2 c·v), in float64 (no gradient: the rest inputs are detached); one
        # matmul and a min-reduction instead of argmin + gather + exact recompute (same values to ~1e-12 mm²)
        c64 = c.reshape(c.shape[0], -1, 3).to(torch.float64)
        v64 = rest_vertices.to(torch.float64)
        m = torch.baddbmm((v64 * v64).sum(-1).unsqueeze(1), c64, v64.transpose(1, 2), alpha=-2).amin(-1)
        r2 = (c64 * c64).sum(-1) + m                                       # (n, NB·K)
        return r2.clamp_min(0).sqrt().to(c.dtype).view(n, self.num_bones, self.num_steps)

    def _tips(self, joints: torch.Tensor) -> torch.Tensor:
        """(B, J, 3) → (B, F, K, 3) sphere centres of the non-rigid term's distal bones."""
        return _apply_map(self._cast("_tip_map", joints.dtype), joints).unflatten(-2, (self.distal.numel(), self.num_steps))

    @torch.no_grad()
    def _nearest_skin(self, tips: torch.Tensor, vertices: torch.Tensor):
        """Index (into V) of the nearest skin vertex of each non-rigid joint per sphere, (B, G, F, K), and
        whether that joint has any skin (G, 1, 1) bool.  Without gradient: the distance is recomputed
        from the chosen vertex, which is where ``min`` would send the gradient."""
        B, F, K, _ = tips.shape
        skin = vertices[:, self.skin_index]                                 # (B, Vn, 3)
        q = tips.reshape(B, F * K, 3)
        # argmin of |v|² − 2 q·v (|q|² is constant per row); only the choice is used
        score = torch.baddbmm((skin * skin).sum(-1).unsqueeze(1), q, skin.transpose(1, 2), alpha=-2)
        out, found = [], []
        for g in range(len(self.skin_bounds) - 1):                          # ≤ 2 non-rigid joints
            lo, hi = self.skin_bounds[g], self.skin_bounds[g + 1]
            if hi == lo:
                out.append(torch.zeros(B, F * K, dtype=torch.long, device=tips.device))
                found.append(False)
            else:
                out.append(self.skin_index[lo + score[..., lo:hi].argmin(-1)])
                found.append(True)
        idx = torch.stack(out, 1).view(B, -1, F, K)
        return idx, torch.tensor(found, device=tips.device).view(-1, 1, 1)

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
        ``reduction``: ``"mean"`` over the batch (scalars) or ``"none"`` ((B,) each).
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

        # rigid: every kept pair of bones, the K × K grid of sphere pairs, as one matmul
        pj = posed_joints
        B, P, K = pj.shape[0], self.pair_a.numel(), self.num_steps
        E = _apply_map(self._cast("_pair_diff", pj.dtype), pj).view(B, P, 3, 3)   # (B, P, 3, 3): C, A, B
        gram = (E @ E.transpose(-1, -2)).reshape(B, P, 9)
        d = _safe_sqrt(gram @ self._cast("_grid_basis", pj.dtype)).view(B, P, K, K)
        thr = r[:, self.pair_a].unsqueeze(-1) + r[:, self.pair_b].unsqueeze(-2)
        rigid = torch.relu(thr - d).mean((-2, -1)).mean(-1)                 # (B,)

        # non-rigid: fingertip spheres against the skin of each non-rigid joint
        G, F = len(self.skin_bounds) - 1, self.distal.numel()
        if G == 0 or F == 0:
            nonrigid = pj.new_zeros(B)
        else:
            tips = self._tips(pj)                                           # (B, F, K, 3)
            nearest, found = self._nearest_skin(tips.detach(), posed_vertices.detach())    # (B, G, F, K)
            skin = posed_vertices.gather(1, nearest.reshape(B, -1, 1).expand(-1, -1, 3)).view(B, G, F, K, 3)
            dist = _safe_sqrt(((tips.unsqueeze(1) - skin) ** 2).sum(-1))               # (B, G, F, K)
            inf = torch.full((), float("inf"), dtype=dist.dtype, device=dist.device)
            dist = torch.where(found, dist, inf)
            rad = r[:, self.distal].unsqueeze(1)                            # (B|1, 1, F, K)
            active = torch.cumsum((dist < rad).to(torch.int32), -1) > 0    # k >= first penetrating sphere
            count = active.sum(-1)
            s = torch.where(active, dist - rad, torch.zeros((), dtype=dist.dtype, device=dist.device)).sum(-1)
            per = torch.where(count > 0, (s / count.clamp_min(1).to(s.dtype)).abs(), torch.zeros_like(s))
            nonrigid = per.sum((-2, -1)) / (G * F)                          # (B,)
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
