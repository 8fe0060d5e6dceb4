"""Diagnostics of the ablation: why a variant generalises or not, measured on the virtual capture.

:func:`score_model` scores one trained model several ways, each per frame (mm, mean per-vertex
distance to the true mesh):

- ``true_held_out``: held-out frames posed with the TRUE angles (root by Kabsch on the joints): the
  decoder alone, no pose-fitting error;
- ``true_train``: the same on training frames (the gap to ``true_held_out`` is overfitting);
- ``shared_fit``: held-out frames posed with ONE set of angles fitted with plain LBS (the same
  poses for every model: only the decoder differs);
- ``protocol``: the evaluation of notebooks 02/03 (``fit_held_out``: joint fit, then a short
  joint + depth fit, the pose corrective's input detached as in training);
- ``full_fit``: a fit through the pose corrective (not detached) with ``depth_steps`` depth steps.

:func:`~dhmlib.experiments.ablation.paired_interval` gives the mean paired per-frame difference of two runs
with a 95 % interval over blocks of consecutive frames (frames of one take are correlated; a block is the unit).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dhmlib.data.ground_truth import ground_truth_meshes, true_poses
from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints
from dhmlib.data.layout import Layout
from dhmlib.data.split import split_frames
from dhmlib.evaluation.held_out import DEPTH_FIT_LR, JOINT_FIT_LR, encoder_poses, fit_held_out, load_held_out
from dhmlib.experiments.ablation import (TRAINING_NOTEBOOK, TRAINING_RECORD, ablation_parameters, paired_interval,
                                         penetration_at_training_poses)
from dhmlib.experiments.variants import PENETRATION_WEIGHTS
from dhmlib.hand.handmodel import read_hand_model
from dhmlib.lab.batch import run_batch
from dhmlib.metrics.mesh import hand_parts, penetration
from dhmlib.network.fit import fit_pose
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.snapshot import model_from_snapshot, read_snapshot
from dhmlib.paths import notebooks_dir
from dhmlib.train.config import TrainConfig


def per_frame_vertex_error(model: DeepHandMesh, euler, root, true_vertices, correctives=None) -> np.ndarray:
    """(B,) mean per-vertex distance (mm) of ``model.decode(euler, root)`` to ``true_vertices`` (B, V, 3)."""
    model.eval()
    with torch.no_grad():
        v = torch.cat([model.decode(euler[s:s + 16], root[s:s + 16], correctives=correctives).vertices
                       for s in range(0, len(euler), 16)])
    return (v.double().cpu() - torch.as_tensor(true_vertices, dtype=torch.float64)).norm(dim=-1).mean(1).numpy()


@dataclass
class FrameSet:
    """Frames with their true angles, Kabsch-ready joints and true meshes (virtual capture)."""

    frames: tuple[int, ...]
    euler: torch.Tensor
    joints: torch.Tensor
    valid: torch.Tensor
    true_vertices: np.ndarray

    @classmethod
    def load(cls, data_root, subject: int, frames, skeleton) -> "FrameSet":
        frames = tuple(int(f) for f in frames)
        true = true_poses(data_root, subject, frames, "cpu")
        lay = Layout(data_root, subject)
        j, v = zip(*(keypoints_to_joints(read_keypoints(lay.keypoints_path(f)), skeleton) for f in frames))
        return cls(frames, true.euler, torch.as_tensor(np.stack(j), dtype=torch.float32),
                   torch.as_tensor(np.stack(v), dtype=torch.float32), ground_truth_meshes(data_root, subject, frames))

    def true_error(self, model: DeepHandMesh) -> np.ndarray:
        with torch.no_grad():
            root = model.root_from_joints(self.joints, self.valid)
        return per_frame_vertex_error(model, self.euler, root, self.true_vertices)


def fit_through_pose_corrective(model: DeepHandMesh, held, joint_steps: int = 300, depth_steps: int = 120):
    """Held-out poses fitted with the pose corrective's input NOT detached (its dependence on the angles is
    part of the fit), ``depth_steps`` joint + depth steps after the joint fit. Returns (euler, root)."""
    config = model.config
    model._config = config.replace(detach_pose_corrective_input=False)
    try:
        r1 = fit_pose(model, joints=held.joints, joint_valid=held.valid, steps=joint_steps, lr=JOINT_FIT_LR[0],
                      lr_end=JOINT_FIT_LR[1])
        r = fit_pose(model, joints=held.joints, joint_valid=held.valid, depth=held.depth, cameras=held.cameras,
                     crops=held.crops, steps=depth_steps, lr=DEPTH_FIT_LR[0], lr_end=DEPTH_FIT_LR[1],
                     init=r1.euler, root_init=r1.root) if depth_steps else r1
    finally:
        model._config = config
    return r.euler, r.root


def score_snapshot(snapshot, data_root, *, held_out=None, train_every: int = 4, shared_poses=None,
                   full_fit_depth_steps: int = 0, num_views: int = 4, fit_steps: int = 300,
                   hand_model=None, protocol_poses=None) -> dict:
    """Score one snapshot every way of the module docstring; per-frame lists (mm) and their means.

    Args:
        snapshot: a training snapshot (with its ``train_config``; embedding source).
        data_root: the virtual capture.
        held_out: the held-out frames (None: the snapshot's split rule).
        train_every: score every N-th training frame with the true angles.
        shared_poses: ``(euler, root)`` of the held-out frames to decode with (``shared_fit``), e.g.
            :func:`shared_lbs_poses`; None: not scored.
        full_fit_depth_steps: > 0 also scores ``full_fit`` with that many depth steps.
        protocol_poses: the run's own held-out poses (``result/poses.npz`` of ``dhm test`` / notebook 02) for
            ``protocol``; None (or missing): fitted here the same way (``fit_held_out``).
    Returns:
        ``{"frames", "true_held_out", "true_train", "protocol", "shared_fit", "full_fit"}`` per-frame lists,
        ``"mean"`` of each, and ``train_pose_error_deg`` (the embedding's distance to the true angles).
    """
    ckpt = read_snapshot(snapshot)
    tc = TrainConfig.from_dict(ckpt["train_config"])
    hand = hand_model or read_hand_model(f"{data_root}/hand_model")
    model = model_from_snapshot(snapshot, hand).eval()
    if held_out is None:
        held_out = split_frames(data_root, tc.subject, tc.held_out).test
    emb = ckpt.get("pose_embedding") or {}
    train_frames = [int(f) for f in emb["frames"].tolist()] if "frames" in emb else []
    out: dict = {"frames": [int(f) for f in held_out]}
    fs = FrameSet.load(data_root, tc.subject, held_out, hand.skeleton)
    out["true_held_out"] = fs.true_error(model).tolist()
    if train_frames:
        sub = train_frames[::train_every]
        out["true_train"] = FrameSet.load(data_root, tc.subject, sub, hand.skeleton).true_error(model).tolist()
        mask = model.hand.dof_mask
        true = true_poses(data_root, tc.subject, train_frames, "cpu").euler
        out["train_pose_error_deg"] = float(np.rad2deg((emb["euler"].float() - true.float()).abs()[:, mask].mean()))
    data = None
    if protocol_poses is not None and Path(protocol_poses).is_file():     # the run's own evaluation (notebook 02)
        with np.load(protocol_poses, allow_pickle=False) as z:
            row = {int(f): i for i, f in enumerate(z["frame"])}
            idx = [row[int(f)] for f in held_out]
            euler, root = torch.as_tensor(z["euler"][idx]).float(), torch.as_tensor(z["root"][idx]).float()
    else:
        data = load_held_out(data_root, list(held_out), tc, hand.skeleton, "cpu", images=False, num_views=num_views)
        p = fit_held_out(model, data, fit_steps, log=lambda m: None)
        euler, root = p.euler, p.root
    out["protocol"] = per_frame_vertex_error(model, euler, root, fs.true_vertices).tolist()
    if shared_poses is not None:
        out["shared_fit"] = per_frame_vertex_error(model, shared_poses[0], shared_poses[1], fs.true_vertices).tolist()
    if full_fit_depth_steps > 0:
        if data is None:
            data = load_held_out(data_root, list(held_out), tc, hand.skeleton, "cpu", images=False,
                                 num_views=num_views)
        e, r = fit_through_pose_corrective(model, data, fit_steps, full_fit_depth_steps)
        out["full_fit"] = per_frame_vertex_error(model, e, r, fs.true_vertices).tolist()
    out["mean"] = {k: float(np.mean(v)) for k, v in out.items() if isinstance(v, list) and k != "frames"}
    return out


def shared_lbs_poses(data_root, held_out, train_config, hand_model, *, num_views: int = 4, fit_steps: int = 300):
    """One set of held-out poses for every model: fitted (notebook 02's protocol) with plain LBS of the template."""
    lbs = DeepHandMesh(hand_model, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                               skeleton_corrective=False))
    data = load_held_out(data_root, list(held_out), train_config, hand_model.skeleton, "cpu", images=False,
                         num_views=num_views)
    p = fit_held_out(lbs, data, fit_steps, log=lambda m: None)
    return p.euler, p.root


# --------------------------------------------------------------------------- the diagnostic runs
#: overrides that undo issue 14's recipe on top of the cpu-small preset: the recipe notebook 03 had before
OLD_RECIPE = ("embedding_init=zero, pose_prior_weight=0, lr_schedule=multistep, warmup_steps=0, "
              "embedding_lr=1e-2, tangential_weight=0")
#: the poses are the virtual capture's true angles, frozen: only the correctives learn
ORACLE = "embedding_init=true_angles, train_embedding=false"

#: the pose source of the paper (encoder on the input crop) on top of the cpu-small preset
IMAGE_SOURCE = "pose_source=image"



def penetration_weights(factor: float) -> str:
    """Notebook-02 overrides: the penetration loss at ``factor`` × the paper's weights (rigid 1, non-rigid 5)."""
    rigid, nonrigid = PENETRATION_WEIGHTS
    return f"penetration_rigid_weight={factor * rigid:g}, penetration_nonrigid_weight={factor * nonrigid:g}"


#: name → (variant key, notebook-02 overrides, what the run separates)
DIAGNOSTIC_RUNS: dict[str, tuple[str, str, str]] = {
    "old_c": ("c", OLD_RECIPE, "the recipe before issue 14 (rest-pose embedding, no prior, no decay, no tangential "
                               "penalty), + identity: the control"),
    "old_d": ("d", OLD_RECIPE, "the same for the full model: does (d) lose to (c) with the old recipe?"),
    "oracle_c": ("c", ORACLE, "true poses, frozen, + identity: the correctives alone (cause 1 removed)"),
    "oracle_d": ("d", ORACLE, "true poses, frozen, full model: does the pose corrective help when poses are right?"),
    "oracle_h": ("h", ORACLE, "true poses, frozen, normal-direction correctives: the sideways slides removed (cause 3)"),
    "notan_d": ("d", "tangential_weight=0", "the new recipe without the tangential penalty on free correctives "
                                           "(cause 3 with fitted poses)"),
    "image_d": ("d", IMAGE_SOURCE, "the image encoder as the pose source, full model: poses come from the images, "
                                   "so the penetration loss cannot simply move free per-frame poses (cause 6)"),
    "image_e": ("e", IMAGE_SOURCE, "the same without the penetration loss: the control of image_d"),
    "pen4_d": ("d", penetration_weights(4), "the full model with the penetration loss 4× the paper's weights: how "
                                            "far can the loss lower interpenetration, at what cost in error?"),
    "pen16_d": ("d", penetration_weights(16), "the same at 16× the paper's weights"),
}


def run_diagnostics(names, *, batch: str = "ablation_diagnostics", output_root=None, rerun: bool = False,
                    on_progress=print, **parameters):
    """Notebook 02 once per diagnostic run (``names`` from :data:`DIAGNOSTIC_RUNS`) as a batch with the
    ablation's shared parameters (:func:`dhmlib.experiments.ablation.ablation_parameters`); returns the
    :class:`~dhmlib.lab.results.BatchResult` (its runs named after the diagnostic runs)."""
    unknown = [n for n in names if n not in DIAGNOSTIC_RUNS]
    if unknown:
        raise ValueError(f"diagnostic runs: unknown {unknown}; choices: {', '.join(DIAGNOSTIC_RUNS)}")
    runs = {n: {"variant": DIAGNOSTIC_RUNS[n][0], "overrides": DIAGNOSTIC_RUNS[n][1]} for n in names}
    return run_batch(notebooks_dir() / TRAINING_NOTEBOOK, runs=runs, common=ablation_parameters(**parameters),
                     batch=batch, output_root=output_root, on_progress=on_progress, record=TRAINING_RECORD,
                     rerun=rerun)


def diagnostics_table(scores: dict[str, dict]) -> str:
    """Markdown: one row per scored run, the means (mm) of every way of scoring and the training pose error."""
    cols = [("true_train", "true angles, training frames"), ("true_held_out", "true angles, held out"),
            ("protocol", "held out, notebook-03 fit"), ("full_fit", "held out, fit through the pose corrective"),
            ("shared_fit", "held out, shared LBS-fitted angles")]
    cols = [c for c in cols if any(c[0] in s["mean"] for s in scores.values())]
    rows = ["| run | " + " | ".join(c[1] for c in cols) + " | training poses vs truth, ° |",
            "| --- |" + " --: |" * (len(cols) + 1)]
    for name, s in scores.items():
        cells = [f"{s['mean'][k]:.3f}" if k in s["mean"] else "—" for k, _ in cols]
        pe = s.get("train_pose_error_deg")
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {'—' if pe is None else f'{pe:.1f}'} |")
    return "\n".join(rows)


def penetration_at_encoder_poses(snapshot, data_root, frames, hand_model=None) -> dict:
    """Interpenetration of an image-source snapshot's decoder at the poses its encoder predicts for ``frames``.

    The encoder reads each frame's input crop (the first camera, as training's first view); the mesh is
    decoded in the model frame (penetration does not depend on the root). Returns
    :func:`dhmlib.metrics.mesh.penetration`'s ``penetration_fraction`` and ``penetration_depth_mean`` (mm) and
    ``frames``; raises ``ValueError`` for an embedding-source snapshot (its poses are the embedding's).
    """
    tc = TrainConfig.from_dict(read_snapshot(snapshot)["train_config"])
    if tc.pose_source != "image":
        raise ValueError(f"{snapshot}: pose_source is {tc.pose_source!r}, expected 'image' (an encoder to ask)")
    hand = hand_model or read_hand_model(Path(data_root) / "hand_model")
    model = model_from_snapshot(snapshot, hand).eval()
    verts = []
    for s in range(0, len(frames), 32):                  # images of 32 frames at a time
        data = load_held_out(data_root, list(frames[s:s + 32]), tc, hand.skeleton, "cpu", images=True, num_views=1)
        with torch.no_grad():
            verts.append(model.decode(encoder_poses(model, data).euler).vertices)
    pen = penetration(torch.cat(verts).numpy(), hand_parts(hand))
    return {"penetration_fraction": pen["penetration_fraction"], "penetration_depth_mean": pen["penetration_depth_mean"],
            "frames": len(frames)}


#: the penetration-weight sweep of notebook 03b: run name → factor on the paper's weights (notebook 03's (e)
#: and (d) are the sweep's 0× and 1×)
PENETRATION_SWEEP = {"new_e": 0.0, "new_d": 1.0, "pen4_d": 4.0, "pen16_d": 16.0}


def penetration_tradeoff(snapshots: dict, scores: dict, data_root, hand, *, sweep=PENETRATION_SWEEP,
                         every: int = 3) -> dict:
    """The penetration loss's trade-off: interpenetration at each run's own training poses against its
    held-out error, for the runs of ``sweep`` found in ``snapshots`` (name → snapshot path).

    Each row: ``factor`` (× the paper's weights), ``training_poses`` (:func:`~dhmlib.metrics.mesh.penetration`'s
    fraction and mean depth at every ``every``-th training frame, decoded from the snapshot's pose
    embedding), ``held_out_mm`` (mean of ``scores[name]["protocol"]``); against the run with the smallest
    factor (the reference): ``penetration_change`` (relative) and ``error_change`` (the paired per-frame
    interval of the held-out errors, :func:`~dhmlib.experiments.ablation.paired_interval`). ``"truth"``: the true
    meshes' penetration at the reference's training frames (``"frames"``). Returns ``{"rows": {name: row},
    "truth": …, "reference": name, "frames": […]}`` (empty rows when no sweep run is there).
    """
    parts = hand_parts(hand)
    names = sorted((n for n in sweep if n in snapshots and n in scores), key=lambda n: sweep[n])
    rows, frames = {}, None
    for n in names:
        fr, pen = penetration_at_training_poses(snapshots[n], hand, parts, every)
        frames = frames or fr
        rows[n] = {"factor": sweep[n], "training_poses": {k: pen[k] for k in ("penetration_fraction",
                                                                               "penetration_depth_mean")},
                   "held_out_mm": float(np.mean(scores[n]["protocol"]))}
    out = {"rows": rows, "reference": names[0] if names else None, "truth": None, "frames": frames}
    if not names:
        return out
    ref = rows[names[0]]
    for n in names[1:]:
        f0 = ref["training_poses"]["penetration_fraction"]
        rows[n]["penetration_change"] = (rows[n]["training_poses"]["penetration_fraction"] / f0 - 1) if f0 else None
        rows[n]["error_change"] = paired_interval(scores[names[0]]["protocol"], scores[n]["protocol"])
    tc = TrainConfig.from_dict(read_snapshot(snapshots[names[0]])["train_config"])
    truth = penetration(ground_truth_meshes(data_root, tc.subject, frames), parts)
    out["truth"] = {k: truth[k] for k in ("penetration_fraction", "penetration_depth_mean")}
    out["frames"] = frames
    return out


def tradeoff_table(tradeoff: dict) -> str:
    """:func:`penetration_tradeoff` as markdown: one row per weight, the truth last."""
    rows = ["| run | × paper's weights | training poses: penetrating | mean depth, mm | vs reference | "
            "held-out error, mm | Δ error vs reference (95 % interval) |", "| --- | --: | --: | --: | --: | --: | --- |"]
    for n, r in tradeoff["rows"].items():
        t = r["training_poses"]
        pc = r.get("penetration_change")
        ec = r.get("error_change")
        rows.append(f"| {n} | {r['factor']:g} | {100 * t['penetration_fraction']:.2f} % | "
                    f"{t['penetration_depth_mean']:.2f} | {'—' if pc is None else f'{100 * pc:+.0f} %'} | "
                    f"{r['held_out_mm']:.3f} | " + ("reference" if ec is None else
                    f"{ec['mean']:+.3f} [{ec['low']:+.3f}, {ec['high']:+.3f}] ({100 * ec['relative']:+.1f} %)") + " |")
    if tradeoff.get("truth"):
        t = tradeoff["truth"]
        rows.append(f"| ground truth (same frames) | | {100 * t['penetration_fraction']:.2f} % | "
                    f"{t['penetration_depth_mean']:.2f} | | | |")
    return "\n".join(rows)
