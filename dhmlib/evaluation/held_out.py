"""Testing a training snapshot on the held-out frames (``dhm test --test_epoch N``).

:func:`evaluate_snapshot`::

    output/model_dump/snapshot_<epoch>.pth.tar ─► model (+ train_config, model_config)
    split_frames(data_root, held_out=train_config.held_out) ─► held-out frames
    DeepHandMeshDataset(frames=held out, every colour camera as a view) ─► joints, depth, cameras
    poses:  image source      the encoder on the input crop; root by Kabsch on the joints (as training)
            embedding source  no pose for unseen frames: fit_pose with the decoder frozen,
                              (1) joints only, ``fit_steps`` Adam steps from the zero pose (lr 0.05 → 0.001),
                              (2) joints + depth, ``2 × fit_steps // 5`` steps (lr 0.03 → 0.001) from (1)
    decode ─► render every view ─► dhmlib.evaluation.result.evaluate(...)
    output/result/metrics.json, output/result/meshes/<frame:06d>.obj, output/result/poses.npz,
    output/vis/test_<frame:06d>.png

:func:`lbs_baseline`: the same metrics for the template with linear blend skinning alone (no
correctives), posed (a) with the virtual capture's true angles and root
(``annotations/synthetic/subject_N/poses.npz``) and (b) with angles fitted as above: the reference
the correctives must beat.

Mesh metrics (:mod:`dhmlib.metrics.mesh`, in the summary of the model and of the baselines): the
per-vertex error near joints flexed > 30° in the true angles, the penetration of non-adjacent parts, the
Laplacian smoothness and its ratio to the true mesh's. Fast mode (``baseline=False, num_views=4,
render_figures=False``): 4 cameras per frame spread over the rig instead of every one, the fit of all
frames in one batch, no figures.

``metrics.json`` = :meth:`~dhmlib.evaluation.result.EvalResult.to_dict` (``summary`` means, ``per_frame``,
``info`` = the run's identity: snapshot, epoch, step, split, pose source, fit settings, configs)
plus ``scans`` (surface distances to ``annotations/3D_scans_decimated`` when present) and
``baseline`` (the :func:`lbs_baseline` summaries, when computed). All distances mm.
``poses.npz``: ``frame`` (B,), ``euler`` (B, J, 3) rad, ``root`` (B, 4, 4) mm, ``source`` ("fit" | "encoder"):
``decode(euler, root)`` of the snapshot's model reproduces ``meshes/``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dhmlib.data.dataset import DeepHandMeshDataset, capture_image_size
from dhmlib.data.ground_truth import Poses, ground_truth_faces, ground_truth_meshes, true_poses
from dhmlib.data.layout import Layout
from dhmlib.data.sample import collate_samples
from dhmlib.data.scans import read_scan
from dhmlib.data.split import split_frames
from dhmlib.evaluation.baseline_cache import baseline_key, cached_baseline
from dhmlib.evaluation.result import EvalResult, evaluate, write_results
from dhmlib.hand.handmodel import HandModel
from dhmlib.metrics import mesh as mm
from dhmlib.metrics.errors import vertex_error_maps
from dhmlib.network.fit import fit_pose
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.provenance import CODE_KEY, HAND_KEY, code_version, hand_model_record, pick_hand_model
from dhmlib.network.snapshot import SnapshotError, load_network_state, read_snapshot, snapshot_config
from dhmlib.memory import keep_freed_memory
from dhmlib.paths import data_dir, output_dir
from dhmlib.progress import Stages
from dhmlib.render import render_depth
from dhmlib.render.cameras import Cameras
from dhmlib.render.crop import Crop
from dhmlib.train.checkpoint import MODEL_DUMP, find_resumable, list_snapshots, parse_snapshot_name, snapshot_path
from dhmlib.train.config import TrainConfig, preset
from dhmlib.viz.result_figures import test_frame_figure

#: fit settings of the embedding source (and of the baseline's fitted angles)
JOINT_FIT_LR = (0.05, 0.001)
#: the depth stage as issue 14 measured it converging (README, "The held-out pose fit"): on notebook 03's
#: models, 60 / 120 / 240 depth steps gave 0.601 / 0.577 / 0.565 mm for variant (e) (true angles 0.540) and
#: 1.671 / 1.675 / 1.675 mm for LBS alone (true angles 1.561): LBS has nothing left to gain, the better decoder does
DEPTH_FIT_LR = (0.03, 0.001)
DEPTH_FIT_SHARE = (2, 5)        # depth steps = fit_steps × 2 // 5 (120 for the default 300)
#: views per frame in the depth stage of the fit (spread over the rig; the metrics use every view loaded): on
#: the default capture the fit with 4 views and with all 24 gave the same held-out error (0.696 / 0.695 mm),
#: and a step of 64 frames × 24 views cost 4.4 s on the 2-core CPU
DEPTH_FIT_VIEWS = 8
BATCH = 16                      # frames decoded / rendered at once (and encoded)
FIT_BATCH = 64                  # frames fitted at once: per-step overhead once for all held-out frames
PLAIN_LBS = ()                  # decode(correctives=()) = template + LBS


@dataclass(frozen=True)
class HeldOut:
    """The held-out frames' observations (one batch, on the evaluation device).

    Attributes:
        frames: (B,) frame numbers.  joints (B, J, 3) mm, valid (B, J).
        depth: (B, K, h, w) target depth crops, mm (0 = no surface); cameras, crops: batch shape (B, K).
        image: (B, 3, H, W) input crops or None.  views: the K camera names of each frame.
    """

    frames: tuple[int, ...]
    joints: torch.Tensor
    valid: torch.Tensor
    depth: torch.Tensor
    cameras: Cameras
    crops: Crop
    image: torch.Tensor | None
    views: tuple[tuple[str, ...], ...]

    def some_views(self, n: int) -> "HeldOut":
        """The same frames with ``n`` of each frame's views, spread over the rig (:func:`spread_views` of
        the camera names in order); all of them when a frame has at most ``n``."""
        K = self.depth.shape[1]
        if n >= K:
            return self
        pick = [[v.index(name) for name in spread_views(sorted(v), n)] for v in self.views]
        idx = torch.as_tensor(pick, device=self.depth.device)                     # (B, n)
        rows = torch.arange(len(pick), device=idx.device)[:, None]
        c = self.cameras
        return HeldOut(self.frames, self.joints, self.valid, self.depth[rows, idx],
                       Cameras(c.R[rows, idx], c.t[rows, idx], c.focal[rows, idx], c.principal[rows, idx]),
                       Crop(self.crops.matrix[rows, idx], self.crops.size), self.image,
                       tuple(tuple(v[i] for i in p) for v, p in zip(self.views, pick)))

    def part(self, sl: slice) -> "HeldOut":
        """Frames ``sl`` of the batch."""
        c = self.cameras
        return HeldOut(self.frames[sl], self.joints[sl], self.valid[sl], self.depth[sl],
                       Cameras(c.R[sl], c.t[sl], c.focal[sl], c.principal[sl], c.names),
                       Crop(self.crops.matrix[sl], self.crops.size),
                       None if self.image is None else self.image[sl], self.views[sl])


# --------------------------------------------------------------------------- snapshot
def resolve_snapshot(snapshot=None, output_root=None, epoch: int | None = None,
                     log: Callable[[str], None] = print) -> tuple[Path, dict]:
    """(path, loaded snapshot) of ``snapshot`` (a file), or ``epoch`` / the newest in ``output_root/model_dump``.

    Raises:
        SnapshotError: the file does not exist or does not load; the message names it and lists the
            epochs that exist.
    """
    if snapshot not in (None, "latest"):
        path = Path(snapshot)
        if not path.is_file():
            raise SnapshotError(f"{path}: snapshot not found")
        return path, read_snapshot(path)
    dump = output_dir(MODEL_DUMP, output_root)
    found = list_snapshots(dump)
    if epoch is not None:
        path = snapshot_path(dump.parent, epoch)
        if not path.is_file():
            have = sorted({parse_snapshot_name(p.name)[0] for p in found})
            raise SnapshotError(f"{path}: no snapshot of epoch {epoch} (epochs in {dump}: "
                                f"{', '.join(map(str, have)) if have else 'none'})")
        return path, read_snapshot(path)
    got = find_resumable(dump, log=log)
    if got is None:
        raise SnapshotError(f"{dump}: no snapshot (expected snapshot_<epoch>.pth.tar; train first with dhm train)")
    return got


def model_and_config(ckpt: dict, path, hand: HandModel) -> tuple[DeepHandMesh, TrainConfig | None]:
    """The snapshot's network (weights loaded) and its TrainConfig (None for a snapshot without one)."""
    model = DeepHandMesh(hand, snapshot_config(ckpt, path))
    load_network_state(model, ckpt, path)
    tc = ckpt.get("train_config")
    if tc is None:
        return model, None
    try:
        return model, TrainConfig.from_dict(tc)
    except ValueError as e:
        raise SnapshotError(f"{path}: train_config: {e}") from None


# --------------------------------------------------------------------------- data
def spread_views(cameras, n: int | None) -> list:
    """``n`` of ``cameras`` spread evenly over the list (first and last included); all for None or n ≥ len."""
    cameras = list(cameras)
    if n is None or n >= len(cameras):
        return cameras
    if n < 1:
        raise ValueError(f"num_views must be >= 1, got {n}")
    if n == 1:
        return cameras[:1]
    return [cameras[i] for i in np.round(np.linspace(0, len(cameras) - 1, n)).astype(int)]


def load_held_out(data_root, frames, config: TrainConfig, skeleton, device, images: bool,
                  num_views: int | None = None) -> HeldOut:
    """Every colour camera of each held-out frame as a view (depth crops at ``config.render_size``).

    ``ROM`` takes count (training leaves them out when it reads images; a held-out frame is tested
    whatever its take). ``num_views``: only that many cameras per frame, spread evenly over the frame's
    sorted depth cameras (:func:`spread_views`; the same cameras for every frame of a rig), in that order.
    """
    layout = Layout(data_root, config.subject)
    ds = DeepHandMeshDataset(data_root, subject=config.subject, skeleton=skeleton, num_views=1,
                             input_size=config.input_size, render_size=config.render_size, seed=config.seed,
                             image_size=capture_image_size(layout, frames[0]), crop_mode=config.crop_mode,
                             images=images, frames=frames, include_rom=True)
    ds.num_views = max(len(layout.depth_cameras(f)) for f in ds.frames)
    if num_views is not None:
        every = ds.choose_views        # with num_views = every camera: a permutation of the frame's cameras

        def choose_views(index: int, frame: int) -> list[str]:
            return spread_views(sorted(set(every(index, frame))), num_views)

        ds.choose_views = choose_views
    # one sample per frame (with images the first camera's crop is the input, as any camera would do)
    first = {}
    for i, s in enumerate(ds.samples):
        first.setdefault(s.frame, i)
    samples = [ds[first[f]] for f in sorted(first)]
    b = collate_samples(samples).to(device)
    return HeldOut(frames=tuple(int(f) for f in b.frame.tolist()), joints=b.joints.float(),
                   valid=b.joint_valid.float(), depth=b.depth.float(), cameras=b.view_cameras.to(dtype=torch.float32),
                   crops=b.view_crops.to(dtype=torch.float32), image=b.image,
                   views=tuple(tuple(s.view_names) for s in samples))


def _chunks(n: int, size: int = BATCH):
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))


# --------------------------------------------------------------------------- poses
def fit_held_out(model: DeepHandMesh, data: HeldOut, steps: int, correctives=None,
                 log: Callable[[str], None] = print, stages: Stages | None = None, what: str = "model") -> Poses:
    """Euler + root of the held-out frames by :func:`~dhmlib.network.fit.fit_pose` with the decoder frozen.

    Stage 1: joints only, ``steps`` Adam steps from the zero pose (root by Kabsch), lr 0.05 → 0.001.
    Stage 2: joints + depth of up to :data:`DEPTH_FIT_VIEWS` views per frame (spread over the rig),
    ``steps × 2 // 5`` steps from stage 1, lr 0.03 → 0.001 (the
    depth term has no silhouette gradient, so it only refines a pose that is already close).
    """
    depth_steps = steps * DEPTH_FIT_SHARE[0] // DEPTH_FIT_SHARE[1]
    chunks = list(_chunks(len(data.frames), FIT_BATCH))
    stages = stages or Stages("evaluation", enabled=False)
    views = min(DEPTH_FIT_VIEWS, len(data.views[0]) if data.views else 0)
    # one progress stage per fit stage: a joint step costs a few ms, a joint+depth step a render of every view,
    # so a single bar over both would promise the end far too early
    title = f"{what}: pose fit of {len(data.frames)} frame(s)"
    bar = stages.stage(f"{title}, joints", len(chunks) * steps, "steps")
    first = []
    for sl in chunks:
        d = data.part(sl)
        first.append(fit_pose(model, joints=d.joints, joint_valid=d.valid, steps=steps, lr=JOINT_FIT_LR[0],
                              lr_end=JOINT_FIT_LR[1], correctives=correctives, on_step=lambda k: bar.update()))
    bar.close()
    last = first
    if depth_steps > 0:
        bar = stages.stage(f"{title}, joints + depth of {views} views", len(chunks) * depth_steps, "steps")
        last = []
        for sl, r1 in zip(chunks, first):
            d = data.part(sl)
            v = d.some_views(DEPTH_FIT_VIEWS)
            last.append(fit_pose(model, joints=d.joints, joint_valid=d.valid, depth=v.depth, cameras=v.cameras,
                                 crops=v.crops, steps=depth_steps, lr=DEPTH_FIT_LR[0], lr_end=DEPTH_FIT_LR[1],
                                 init=r1.euler, root_init=r1.root, correctives=correctives,
                                 on_step=lambda k: bar.update()))
        bar.close()
    j1 = [r.final["joint"] for r in first]
    j2 = [r.final["joint"] for r in last]
    d2 = [r.final["depth"] for r in last] if depth_steps > 0 else []
    euler, root = [r.euler for r in last], [r.root for r in last]
    notes = {"joint_steps": int(steps), "joint_lr": list(JOINT_FIT_LR), "depth_steps": int(depth_steps),
             "depth_lr": list(DEPTH_FIT_LR), "depth_views": min(DEPTH_FIT_VIEWS, int(data.depth.shape[1])),
             "joint_loss_after_joints": float(torch.cat(j1).mean()),
             "joint_loss_after_depth": float(torch.cat(j2).mean())}
    if d2:
        notes["depth_loss_after_depth"] = float(torch.cat(d2).mean())
    log(f"fitted {len(data.frames)} held-out frame(s): {steps} joint steps + {depth_steps} joint+depth steps")
    return Poses(torch.cat(euler), torch.cat(root), "fit", notes)


def encoder_poses(model: DeepHandMesh, data: HeldOut) -> Poses:
    """Image source: Euler angles from the encoder, root by Kabsch on the joints (as in training)."""
    if data.image is None:
        raise ValueError("the image pose source needs the held-out frames' images (images/ folder)")
    with torch.no_grad():
        euler = torch.cat([model.pose_net(model.backbone_net(data.image[sl])) for sl in _chunks(len(data.frames))])
        root = model.root_from_joints(data.joints, data.valid)
    return Poses(euler, root, "encoder", {"root": "Kabsch of the alignment joints onto the ground-truth joints"})


# --------------------------------------------------------------------------- measuring
@dataclass(frozen=True)
class Measured:
    """One evaluated pose set: metrics, decoded vertices (B, V, 3) mm, joints, rendered depth (B, K, h, w)."""

    result: EvalResult
    vertices: np.ndarray
    joints: np.ndarray
    rendered: np.ndarray
    vertex_error: np.ndarray | None
    scans: EvalResult | None


def _ground_truth(data_root, subject, frames):
    if not (Layout(data_root, int(subject)).synthetic_dir / "meshes").is_dir():
        return None, None
    return ground_truth_meshes(data_root, subject, frames), ground_truth_faces(data_root, subject)


def _scans(data_root, subject, frames, every: int = 1):
    """(indices into ``frames``, scans) of the frames that have a scan (every ``every``-th frame only)."""
    lay = Layout(data_root, subject)
    have = set(lay.scan_frames())
    keep = [i for i, f in enumerate(frames) if f in have and i % every == 0]
    return keep, [read_scan(lay.scan_path(frames[i])) for i in keep]


def mesh_metric_inputs(hand: HandModel, data_root, subject: int, frames, device=None) -> dict:
    """The extra inputs of the mesh metrics: ``parts`` (penetration, :func:`dhmlib.metrics.mesh.hand_parts`)
    and, with the virtual capture's true angles, ``near_flexed`` ((B, V) bool,
    :func:`dhmlib.metrics.mesh.near_flexed_mask` of the true angles)."""
    out = {"parts": mm.hand_parts(hand)}
    true = true_poses(data_root, subject, frames, device or "cpu")
    if true is not None:
        out["near_flexed"] = mm.near_flexed_mask(true.euler.cpu(), mm.near_joint_regions(hand))
    return out


def measure(model: DeepHandMesh, data: HeldOut, poses: Poses, data_root, subject: int, *, correctives=None,
            info: dict | None = None, mesh_inputs: dict | None = None, stages: Stages | None = None,
            what: str = "model", surface_every: int = 1) -> Measured:
    """Decode ``poses``, render every view and compute every metric the data allows.

    ``mesh_inputs``: :func:`mesh_metric_inputs` (None: computed here from ``model.hand``'s hand model).
    ``stages``: progress (:class:`dhmlib.progress.Stages`; None: silent).
    ``surface_every``: the surface distances (the slowest metric; to the true meshes and to the scans) on every
    N-th frame only (NaN elsewhere; frames without a scan are left out of the scan distances).
    """
    faces = model.hand.faces
    verts, joints, rendered = [], [], []
    stages = stages or Stages("evaluation", enabled=False)
    bar = stages.stage(f"{what}: decode and render {len(data.frames)} frame(s) × "
                       f"{len(data.views[0]) if data.views else 0} views", len(data.frames), "frames")
    with torch.no_grad():
        for sl in _chunks(len(data.frames)):
            d = data.part(sl)
            pose = model.decode(poses.euler[sl], poses.root[sl], correctives=correctives)
            verts.append(pose.vertices)
            joints.append(pose.joints)
            rendered.append(render_depth(pose.vertices, faces, d.cameras, d.crops, tuple(d.depth.shape[-2:])))
            bar.update(len(d.frames))
    bar.close()
    bar = stages.stage(f"{what}: metrics")
    V, Jt, D = torch.cat(verts).double().cpu(), torch.cat(joints).double().cpu(), torch.cat(rendered).cpu()
    gt, gt_faces = _ground_truth(data_root, subject, data.frames)
    f_np = faces.cpu().numpy()
    info = dict(info or {})
    if gt is not None:
        info["surface_reference"] = "virtual capture's true meshes"
    if mesh_inputs is None:
        mesh_inputs = mesh_metric_inputs(model.hand.hand_model, data_root, subject, data.frames)
    info["mesh_metrics"] = {"near_flexed": f"vertices within {mm.NEAR_JOINT_MM:g} mm of a joint flexed more than "
                            f"{mm.FLEXED_DEG:g} deg from the bind pose (true angles), skinning weight > "
                            f"{mm.NEAR_WEIGHT:g} to it or its parent",
                            "penetration": "vertices behind the surface of the parts (dominant skinning joint) not "
                            "adjacent to theirs; depth = distance to that surface (dhmlib.metrics.mesh)",
                            "smoothness": "mean |uniform Laplacian| of the posed mesh, mm; ratio to the true mesh's"}
    result = evaluate(data.frames, pred_joints=Jt, gt_joints=data.joints.cpu(), joint_valid=data.valid.cpu(),
                      rendered_depth=D, target_depth=data.depth.cpu(), pred_vertices=V,
                      gt_vertices=gt, faces=f_np, gt_faces=None if gt_faces is None or
                      np.array_equal(gt_faces, f_np) else gt_faces, near_flexed=mesh_inputs.get("near_flexed"),
                      parts=mesh_inputs.get("parts"), info=info, surface_every=surface_every)
    verr = None
    if gt is not None and gt.shape == tuple(V.shape):
        verr = vertex_error_maps(V, gt, faces=f_np)["total"].numpy()
    keep, scans = _scans(data_root, subject, data.frames, every=surface_every)
    scan_result = None
    if scans:
        scan_result = evaluate([data.frames[i] for i in keep], pred_vertices=V[keep], faces=f_np, scans=scans)
    bar.close()
    return Measured(result, V.numpy(), Jt.numpy(), D.numpy(), verr, scan_result)


def _scan_dict(r: EvalResult | None) -> dict | None:
    if r is None:
        return None
    d = r.to_dict()
    return {"summary": {k.replace("surface_", "scan_"): v for k, v in d["summary"].items()},
            "per_frame": {k.replace("surface_", "scan_"): v for k, v in d["per_frame"].items()}}


def summary(m: Measured) -> dict:
    """The means (mm) of one measurement, scans included (``scan_*`` keys)."""
    s = m.result.summary()
    if m.scans is not None:
        s.update(_scan_dict(m.scans)["summary"])
    return s


# --------------------------------------------------------------------------- baseline
def lbs_baseline(data_root=None, *, subject: int = 1, split: str | None = None, frames=None,
                 fit_steps: int = 300, device=None, hand_model: HandModel | None = None,
                 config: TrainConfig | None = None, data: HeldOut | None = None, fit: bool = True,
                 num_views: int | None = None, mesh_inputs: dict | None = None,
                 log: Callable[[str], None] = print, stages: Stages | None = None) -> dict[str, Measured]:
    """The metrics of the template + LBS alone (no correctives) on the held-out frames.

    Args:
        data_root: dataset root (default: :func:`dhmlib.paths.data_dir`).
        subject, split: the subject and the ``held_out`` rule (None: the split's default); or ``frames``.
        fit_steps: joint-fit steps of the fitted angles (:func:`fit_held_out`).
        config: render size, views, crops (default: the ``cpu-small`` preset's TrainConfig).
        data: already loaded held-out observations (skips loading; ``frames`` ignored).
        fit: also measure the fitted angles.
        num_views: cameras per frame when loading (:func:`load_held_out`; None: every camera).
        mesh_inputs: :func:`mesh_metric_inputs` (None: computed).
        stages: progress (:class:`dhmlib.progress.Stages`; None: silent).
    Returns:
        ``{"true_angles": …}`` (only with the virtual capture's ``poses.npz``: true angles and root) and
        ``{"fitted_angles": …}`` (with ``fit``), each a :class:`Measured` (``.result`` an EvalResult).
    """
    data_root = data_dir(data_root)
    dev = torch.device(device or "cpu")
    hand = hand_model or HandModel.read(Layout(data_root, subject).hand_model_dir)
    cfg = (config or preset("cpu-small")[0]).replace(subject=subject)
    if data is None:
        if frames is None:
            frames = split_frames(data_root, subject, split).test
        data = load_held_out(data_root, list(frames), cfg, hand.skeleton, dev, images=False, num_views=num_views)
    if mesh_inputs is None:
        mesh_inputs = mesh_metric_inputs(hand, data_root, subject, data.frames)
    model = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                           skeleton_corrective=False)).to(dev).eval()
    out = {}
    true = true_poses(data_root, subject, data.frames, dev)
    if true is not None:
        out["true_angles"] = measure(model, data, true, data_root, subject, correctives=PLAIN_LBS,
                                     info={"model": "template + LBS", "pose_source": "true angles and root",
                                           "poses": true.notes["file"]}, mesh_inputs=mesh_inputs, stages=stages,
                                     what="LBS baseline, true angles")
    if not fit:
        return out
    fitted = fit_held_out(model, data, fit_steps, correctives=PLAIN_LBS, log=log, stages=stages, what="LBS baseline")
    out["fitted_angles"] = measure(model, data, fitted, data_root, subject, correctives=PLAIN_LBS,
                                   info={"model": "template + LBS", "pose_source": "fit", "fit": fitted.notes},
                                   mesh_inputs=mesh_inputs, stages=stages, what="LBS baseline, fitted angles")
    return out


# --------------------------------------------------------------------------- test
_MESH_RE = re.compile(r"^\d{6}\.obj$")


def evaluate_snapshot(snapshot=None, data_root=None, output_root=None, *, epoch: int | None = None,
                  split: str | None = None, fit_steps: int = 300, device=None, render: bool | None = None,
                  baseline: bool = True, num_views: int | None = None, render_figures: bool = True,
                  baseline_fit: bool = True, hand_model: HandModel | None = None, surface_every: int = 1,
                  log: Callable[[str], None] = print, progress: bool = True,
                  num_frames: int | None = None, baseline_cache="default",
                  refresh_baseline: bool = False) -> EvalResult:
    """Evaluate a training snapshot on the held-out frames and write the results.

    Args:
        snapshot: a snapshot file, or None / ``"latest"``: ``output_root/model_dump``'s snapshot of
            ``epoch``, or its newest loadable one.
        data_root: dataset root (default: :func:`dhmlib.paths.data_dir`).
        output_root: where ``model_dump/`` is read and ``result/``, ``vis/`` written (default
            :func:`dhmlib.paths.output_dir`).
        epoch: the snapshot ``snapshot_<epoch>.pth.tar`` (0-based, as the file names); None: the newest.
        split: ``held_out`` rule (None: the one stored in the snapshot's train_config).
        fit_steps: joint-fit steps for the embedding source (and the baseline's fitted angles).
        device: ``"cpu"``, ``"cuda"`` … (default: CUDA when available).
        render_figures: write the per-frame figures to ``output_root/vis/`` (``render``: its former name,
            wins when given).
        baseline: also compute :func:`lbs_baseline` (stored under ``baseline`` in metrics.json and in
            the result's ``info["baseline"]``); ``baseline_fit`` False keeps only its true-angle part.
        num_views: cameras per held-out frame for the depth fit and the depth error, spread evenly over
            the rig (:func:`spread_views`; None: every camera). The fast mode ``baseline=False, num_views=4,
            render_figures=False`` renders 4 instead of 24 maps per frame in the 60 joint+depth fit steps
            and the measurement, which is where a full evaluation spends its time; with the same views the
            numbers equal the full evaluation's.
        surface_every: the surface distances (exact point-to-triangle, both ways; the slowest metric) on
            every N-th held-out frame only (NaN in ``per_frame`` for the others; the mean over those
            measured; ``info["surface_every"]`` says so). 1: every frame.
        num_frames: evaluate only this many of the held-out frames, spread evenly over them (quick runs:
            notebook 02's smoke settings); None: all.
        baseline_cache: folder of the baseline's cached summaries (:mod:`dhmlib.evaluation.baseline_cache`;
            ``"default"``: ``output_root/cache``; None: computed every time, nothing kept).
        refresh_baseline: compute the baseline even when the cache holds it, and replace the cached file.
        progress: a progress bar per stage (loading, pose fit, decode and render, metrics, baseline, files,
            figures) with an ETA in a terminal, a line per stage (and every 15 s inside one) elsewhere
            (:mod:`dhmlib.progress`; the lines go to ``log``).
    Returns:
        the :class:`~dhmlib.evaluation.result.EvalResult`; ``info`` holds the run's identity, the paths written
        (``metrics``, ``meshes``, ``poses``, ``figures``), the scan distances and the baseline summaries.
    Raises:
        SnapshotError: no such snapshot (message: the file and the epochs that exist).
    """
    data_root = data_dir(data_root)
    out_root = output_dir(None, output_root)
    keep_freed_memory()
    if baseline_cache == "default":
        baseline_cache = out_root / "cache"
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path, ckpt = resolve_snapshot(snapshot, out_root, epoch, log)
    stored = ckpt.get("train_config")
    subject = int((stored or {}).get("subject", 1))
    if hand_model is None:    # the data's hand model, or the one the snapshot was trained on (said so)

        hand_model = pick_hand_model(ckpt, path, None, default_dir=Layout(data_root, subject).hand_model_dir,
                                     log=log, warn=log)
    hand = hand_model
    model, tc = model_and_config(ckpt, path, hand)
    if tc is None:    # an official snapshot: the paper's recipe (image source)
        tc = TrainConfig()
    model = model.to(dev).eval()
    held_out = split if split is not None else tc.held_out
    sp = split_frames(data_root, subject, held_out)
    log(f"testing {path} (epoch {ckpt.get('epoch')}) on {sp.rule}")
    image = tc.pose_source == "image"
    frames = spread_views(list(sp.test), num_frames)
    stages = Stages("evaluation", enabled=progress, log=log)
    with stages.stage(f"loading {len(frames)} held-out frame(s)"):
        data = load_held_out(data_root, frames, tc, hand.skeleton, dev, images=image, num_views=num_views)
    poses = encoder_poses(model, data) if image else fit_held_out(model, data, fit_steps, log=log, stages=stages)
    identity = {
        "snapshot": str(path), "epoch": int(ckpt.get("epoch", -1)), "step": int(ckpt.get("step", 0)),
        "split": {"spec": sp.spec, "rule": sp.rule, "test": list(sp.test), "from": "argument" if split is not None
                  else "snapshot's train_config"},
        "frame_selection": "every held-out frame" if len(frames) == len(sp.test)
                           else f"{len(frames)} of {len(sp.test)} spread over them",
        "pose_source": {"image": "encoder", "embedding": "fit"}[tc.pose_source],
        "fit": poses.notes, "data_root": str(data_root), "subject": subject, "device": str(dev),
        "views": len(data.views[0]) if data.views else 0, "render_size": list(tc.render_size),
        "view_selection": "every camera" if num_views is None else f"{num_views} spread over the rig",
        "train_config": tc.to_dict(), "model_config": model.config.to_dict(),
        "hand_model": hand_model_record(hand), "code_version": dict(code_version()),
        "snapshot_provenance": {k: ckpt.get(k) for k in (HAND_KEY, CODE_KEY)},
    }
    mesh_inputs = mesh_metric_inputs(hand, data_root, subject, data.frames)
    if surface_every > 1:
        identity["surface_every"] = int(surface_every)
    m = measure(model, data, poses, data_root, subject, info=identity, mesh_inputs=mesh_inputs, stages=stages,
                surface_every=surface_every)
    base, reused = None, None
    if baseline:    # snapshot-independent: computed once per capture, hand model, settings and code
        def compute():
            got = lbs_baseline(data_root, subject=subject, fit_steps=fit_steps, device=dev, hand_model=hand,
                               config=tc, data=data, fit=baseline_fit, mesh_inputs=mesh_inputs, log=log,
                               stages=stages)
            return {k: {"summary": summary(v), "info": v.result.info} for k, v in got.items()}

        key = baseline_key(data_root, subject, data.frames, data.views, hand_sha256=identity["hand_model"]["sha256"],
                           render_size=tc.render_size, crop_mode=tc.crop_mode, fit_steps=fit_steps,
                           fit=baseline_fit, device_type=dev.type, depth_share=DEPTH_FIT_SHARE)
        base, reused = cached_baseline(None if baseline_cache is None else Path(baseline_cache), key, compute,
                                       log=log, refresh=refresh_baseline)
    files = stages.stage(f"writing metrics.json and {len(data.frames)} mesh(es)")
    result_dir = out_root / "result"
    mesh_dir = result_dir / "meshes"
    if mesh_dir.is_dir():       # meshes of an earlier test (other frames) would mix with these
        for p in mesh_dir.iterdir():
            if _MESH_RE.match(p.name):
                p.unlink()
    uvs = hand.uvs if len(hand.uvs) else None
    metrics_path = write_results(m.result, result_dir, m.vertices, hand.faces, uvs=uvs,
                                 uv_faces=hand.uv_faces if uvs is not None else None)
    poses_path = result_dir / "poses.npz"
    np.savez(poses_path, frame=np.asarray(data.frames), euler=poses.euler.detach().cpu().numpy(),
             root=poses.root.detach().cpu().numpy(), source=np.array(poses.source))
    doc = m.result.to_dict()
    doc["scans"] = _scan_dict(m.scans)
    doc["baseline"] = None if base is None else {k: {**v["summary"], "info": v["info"]} for k, v in base.items()}
    doc["baseline_from_cache"] = reused
    tmp = metrics_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(metrics_path)
    files.close()
    figures = []
    if render if render is not None else render_figures:
        vmax = float(np.percentile(m.vertex_error, 99)) if m.vertex_error is not None else None
        with stages.stage(f"figures in {out_root / 'vis'}", len(data.frames), "frames") as bar:
            for i, f in enumerate(data.frames):
                p = out_root / "vis" / f"test_{f:06d}.png"
                test_frame_figure(f, data.depth[i].cpu().numpy(), m.rendered[i], m.vertices[i], hand.faces,
                                  vertex_error=None if m.vertex_error is None else m.vertex_error[i], vmax=vmax,
                                  views=data.views[i], root=poses.root[i].detach().cpu().numpy(), path=p)
                figures.append(str(p))
                bar.update()
    info = {**m.result.info, "metrics": str(metrics_path), "meshes": str(mesh_dir), "poses": str(poses_path),
            "figures": figures,
            "scans": doc["scans"]["summary"] if doc["scans"] else None,
            "baseline": {k: v["summary"] for k, v in base.items()} if base else None,
            "baseline_from_cache": reused}
    return EvalResult(frames=m.result.frames, joint_error=m.result.joint_error, depth_error=m.result.depth_error,
                      vertex=m.result.vertex, vertex_per_frame=m.result.vertex_per_frame, surface=m.result.surface,
                      mesh=m.result.mesh, mesh_per_frame=m.result.mesh_per_frame, info=info)
