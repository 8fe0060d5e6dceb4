"""What plain LBS misses in the virtual capture, effect by effect.

The ground truth (:mod:`.deform`) is the hand model's template plus static per-identity
effects (surface shape, bone lengths), plus pose-dependent rest-frame offsets
(:data:`~.deform.POSE_EFFECTS`), posed by dual-quaternion skinning. Switching the effects on
one at a time gives a chain of surfaces, all posed with the same Euler angles and root:

====================  ========================================================================
``identity_shape``    LBS(template + identity shape, template bones) vs LBS(template)
``bone_lengths``      … with the identity's bone lengths (= the *perfect static model*:
                      LBS with the true bones and shape) vs the previous
``pose:<effect>``     … plus the offsets of one more pose effect, LBS, vs the previous (LBS is
                      linear in the rest surface, so each increment is independent of the order)
``dqs_vs_lbs``        the ground truth (DQS of everything) vs LBS of everything
====================  ========================================================================

and two totals: ``static_gap`` (ground truth vs the perfect static model: what only a pose
corrective can learn) and ``plain_lbs`` (ground truth vs LBS of the template: what the hand
model misses before any corrective). Distances are per vertex, in mm, pooled over vertices and
frames (mean, 95th percentile, max).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from dhmlib.data.layout import Layout
from dhmlib.data.split import split_frames
from dhmlib.hand.handmodel import HandModel
from dhmlib.synth.capture import CaptureConfig, subject_identity_seed
from dhmlib.synth.deform import DeformParams, GroundTruthDeformer
from dhmlib.synth.identity import HandIdentity
from dhmlib.synth.poses import subject_sequences
from dhmlib.synth.procedural_hand import build_procedural_hand

__all__ = ["ResidualTerm", "LBSResidualDecomposition", "decompose_lbs_residual", "capture_case",
           "decompose_capture"]


@dataclass(frozen=True)
class ResidualTerm:
    """Per-vertex distance between two surfaces of the chain, mm, over all vertices and frames."""

    name: str
    description: str
    mean_mm: float
    p95_mm: float
    max_mm: float

    @classmethod
    def of(cls, name: str, description: str, dist: np.ndarray) -> "ResidualTerm":
        d = np.asarray(dist, dtype=np.float64).ravel()
        return cls(name, description, float(d.mean()), float(np.percentile(d, 95)), float(d.max()))


@dataclass(frozen=True)
class LBSResidualDecomposition:
    """Result of :func:`decompose_lbs_residual`.

    Attributes:
        frames, vertices: T and V measured.
        terms: the chain's increments in order, then ``static_gap`` and ``plain_lbs``.
        params: the deformation parameters measured (:meth:`DeformParams.to_dict`).
    """

    frames: int
    vertices: int
    terms: tuple[ResidualTerm, ...]
    params: dict

    def __getitem__(self, name: str) -> ResidualTerm:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no term {name!r}; terms: {[t.name for t in self.terms]}")

    def to_dict(self) -> dict:
        """JSON-ready ``{"frames", "vertices", "params", "terms": {name: {mean_mm, p95_mm, max_mm, description}}}``."""
        return {"frames": self.frames, "vertices": self.vertices, "params": self.params,
                "terms": {t.name: {"mean_mm": t.mean_mm, "p95_mm": t.p95_mm, "max_mm": t.max_mm,
                                   "description": t.description} for t in self.terms}}

    def table(self) -> str:
        """A Markdown table of the terms (mm)."""
        rows = ["| term | mean mm | p95 mm | max mm |", "| --- | ---: | ---: | ---: |"]
        rows += [f"| {t.name} | {t.mean_mm:.3f} | {t.p95_mm:.3f} | {t.max_mm:.2f} |" for t in self.terms]
        return "\n".join(rows)


def decompose_lbs_residual(hand: HandModel, identity_seed: int, euler: np.ndarray, root: np.ndarray | None = None,
                           params: DeformParams | None = None, chunk: int = 16) -> LBSResidualDecomposition:
    """Decompose the ground truth's distance from plain LBS into its effects (see the module docstring).

    Args:
        hand: the subject's hand model (template, skeleton, weights).
        identity_seed: the subject's identity seed (:func:`~.capture.subject_identity_seed`).
        euler: (T, J, 3) radians.  root: (T, 4, 4) model → world (default identity; distances
            do not depend on it).
        params: the ground truth's strengths (default :class:`DeformParams`).
    Returns:
        :class:`LBSResidualDecomposition`.
    """
    params = params or DeformParams()
    deformer = GroundTruthDeformer(hand, identity_seed, params)
    euler = np.asarray(euler, dtype=np.float64)
    root = np.tile(np.eye(4), (len(euler), 1, 1)) if root is None else root
    euler, root = deformer.check_inputs(euler, root)
    template = torch.as_tensor(hand.vertices, dtype=torch.float64)
    shaped = template + torch.as_tensor(deformer.identity_offset)
    names: list[str] = []
    dist: dict[str, list[np.ndarray]] = {}

    def add(name, a, b):
        if name not in dist:
            names.append(name)
            dist[name] = []
        dist[name].append((a - b).norm(dim=-1).numpy())

    with torch.no_grad():
        for s in range(0, len(euler), chunk):
            e, r = euler[s:s + chunk], root[s:s + chunk]
            _, A_tmpl = deformer.pose(e, r, bones=False)
            pose, A = deformer.pose(e, r)
            plain = deformer.skin(template, A_tmpl, dual_quaternion=False)
            with_shape = deformer.skin(shaped, A_tmpl, dual_quaternion=False)
            static = deformer.skin(shaped, A, dual_quaternion=False)
            add("identity_shape", with_shape, plain)
            add("bone_lengths", static, with_shape)
            rest, prev = shaped, static
            for effect, off in deformer.pose_offsets(pose.euler).items():
                rest = rest + off
                cur = deformer.skin(rest, A, dual_quaternion=False)
                add(f"pose:{effect}", cur, prev)
                prev = cur
            truth = deformer.skin(rest, A)
            add("dqs_vs_lbs", truth, prev)
            add("static_gap", truth, static)
            add("plain_lbs", truth, plain)
    about = {
        "identity_shape": "identity surface shape (LBS, template bones)",
        "bone_lengths": "identity bone lengths (LBS)",
        "dqs_vs_lbs": "dual-quaternion vs linear blend skinning",
        "static_gap": "ground truth vs LBS with the true bones and shape (only a pose corrective can learn it)",
        "plain_lbs": "ground truth vs LBS of the template",
    }
    terms = tuple(ResidualTerm.of(n, about.get(n, f"pose effect {n[5:]} (LBS)"), np.concatenate(dist[n]))
                  for n in names)
    return LBSResidualDecomposition(len(euler), hand.num_vertices, terms, params.to_dict())


def capture_case(config=None, subject: int = 1, takes: tuple[str, ...] | None = ("free",)):
    """The inputs of :func:`decompose_lbs_residual` for a capture's subject, without rendering anything.

    Args:
        config: :class:`~.capture.CaptureConfig` (default: the default capture, ``dhm synth``).
        subject: 1-based.
        takes: sequence kinds to keep (default the held-out free-motion take); None: all frames.
    Returns:
        ``(hand, identity_seed, euler (T, J, 3), root (T, 4, 4), params)``.
    """
    config = config or CaptureConfig()
    seed = subject_identity_seed(config.seed, subject)
    hand = build_procedural_hand(config.vertices, seed=seed, identity=HandIdentity.sample(seed))
    seqs = [s for s in subject_sequences(hand.skeleton, config.frames, config.seed, subject)
            if takes is None or s.name in takes]
    if not seqs:
        raise ValueError(f"takes {takes}: no such take in the capture; expected some of "
                         f"{[s.name for s in subject_sequences(hand.skeleton, config.frames, config.seed, subject)]}")
    return (hand, seed, np.concatenate([s.euler for s in seqs]), np.concatenate([s.root for s in seqs]),
            config.deform)


def decompose_capture(data_root, subject: int = 1, frames: str | None = "test",
                      params: DeformParams | None = None) -> LBSResidualDecomposition:
    """:func:`decompose_lbs_residual` of a written virtual capture (``annotations/synthetic``).

    Args:
        data_root: the capture's root.
        frames: ``"test"`` / ``"train"`` (the default split, :func:`dhmlib.data.split.split_frames`)
            or None (all frames).
        params: override the strengths recorded in ``params.json``.
    """
    syn = Layout(data_root, subject).synthetic_dir
    meta_path = syn / "params.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; expected a virtual capture (dhm synth)")
    meta = json.loads(meta_path.read_text())
    hand = HandModel.read(syn / "hand_model")
    poses = np.load(syn / "poses.npz")
    keep = np.arange(len(poses["frame"]))
    if frames is not None:
        part = set(split_frames(data_root, subject=subject).part(frames))
        keep = np.array([i for i, f in enumerate(poses["frame"]) if int(f) in part])
    return decompose_lbs_residual(hand, int(meta["identity_seed"]), poses["euler"][keep], poses["root"][keep],
                                  params or DeformParams.from_dict(meta["deform"]))
