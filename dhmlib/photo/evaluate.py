"""The photo fit measured on the virtual capture's held-out images, where the truth is known.

:func:`evaluate_photo_fit`: for each held-out frame, ``views`` of its cameras spread over the rig (rotated by
frame, so that every camera is used); each image detected alone; then

- single view: every detected image fitted alone (its ``KRT_512`` camera known: intrinsics as a real camera's);
- multi-view: the frame's detected images fitted jointly (one pose);

detection rate, 2D landmark error (px and fraction of the hand's size: the longest side of the true
keypoints' bounding box in that image) and, after fitting, PA-MPJPE, PA-MPVPE, F@5 mm and F@15 mm
(:mod:`dhmlib.photo.metrics`) against the true keypoints (``.pts``) and true meshes
(``annotations/synthetic``). :func:`encoder_metrics`: the same PA metrics for a snapshot's image encoder
(the paper's way, trained on the capture's renders) on the same frames.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dhmlib.data.ground_truth import ground_truth_meshes
from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints
from dhmlib.data.layout import Layout
from dhmlib.data.split import split_frames
from dhmlib.evaluation.held_out import encoder_poses, load_held_out, spread_views
from dhmlib.photo.detect import HandDetector, landmarks_to_joints
from dhmlib.photo.camera import capture_camera
from dhmlib.photo.metrics import pose_metrics
from dhmlib.photo.pipeline import FIT_STEPS, START_STEPS, PhotoFit, detect_photos, fit_detections, group_views


@dataclass(frozen=True)
class PhotoEvaluation:
    """Per-image and per-fit rows and their summary (:meth:`summary`)."""

    images: int
    detected: int
    landmark_px: np.ndarray          # (N,) mean landmark error per detected image, px
    landmark_frac: np.ndarray        # (N,) the same ÷ the hand's size in that image
    fits: dict                       # "1 view" / "4 views" → list of per-fit metric dicts
    seconds: dict                    # "detect" per image, "<mode>" fit per pose

    def summary(self) -> dict:
        out = {"images": self.images, "detected": self.detected,
               "detection_rate": self.detected / max(self.images, 1),
               "landmark_error_px": float(np.mean(self.landmark_px)) if len(self.landmark_px) else None,
               "landmark_error_frac": float(np.mean(self.landmark_frac)) if len(self.landmark_frac) else None,
               "seconds": dict(self.seconds)}
        for mode, rows in self.fits.items():
            keys = [k for k in rows[0] if k not in ("frame", "views")] if rows else []
            out[mode] = {"poses": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in keys}}
        return out


def held_out_frames(data_root, subject: int = 1, held_out: str | None = None) -> list[int]:
    """The held-out frames of the default split (``0005_RT_free`` of the default capture)."""
    return list(split_frames(data_root, subject, held_out).test)


def frame_images(data_root, frames: Sequence[int], views: int, subject: int = 1) -> dict[int, list]:
    """frame → image paths of ``views`` cameras spread over the rig, the rig rotated by the frame's index."""
    lay = Layout(data_root, subject)
    seqs = lay.sequences(all_sequences=True)
    where = {}
    for s in seqs:
        cams = lay.cameras_of(s)
        if not cams:
            continue
        for f in lay.image_frames(s, cams[0]):
            where[f] = (s, cams)
    out = {}
    for i, f in enumerate(frames):
        s, cams = where[f]
        rot = cams[i % len(cams):] + cams[:i % len(cams)]
        out[f] = [lay.image_path(s, c, f) for c in spread_views(rot, views)]
    return out


def true_keypoints(data_root, subject, frames, skeleton) -> tuple[np.ndarray, np.ndarray]:
    """The frames' keypoints (``.pts``) in ``skeleton``'s order: (F, J, 3) world mm and their valid (F, J)."""
    lay = Layout(data_root, subject)
    joints, valid = zip(*(keypoints_to_joints(read_keypoints(lay.keypoints_path(f)), skeleton) for f in frames))
    return np.stack(joints), np.stack(valid)


def _truth(data_root, subject, frames, skeleton):
    return (*true_keypoints(data_root, subject, frames, skeleton), ground_truth_meshes(data_root, subject, frames))


def _fit_rows(fits: Sequence[PhotoFit], frames, truth) -> list[dict]:
    joints, valid, meshes = truth
    index = {f: i for i, f in enumerate(frames)}
    rows = []
    for fit in fits:
        i = index[fit.views[0].capture.frame]
        ok = valid[i] > 0
        m = pose_metrics(fit.joints[ok], joints[i][ok], fit.vertices, meshes[i])
        r = fit.residual_px[np.isfinite(fit.residual_px)]
        rows.append({"frame": int(fit.views[0].capture.frame), "views": len(fit.views), **m,
                     "residual_px": float(r.mean()), "scale": fit.scale})
    return rows


@dataclass(frozen=True)
class CaptureDetections:
    """The detections of :func:`detect_capture`: image paths, views with a hand, seconds per image."""

    frames: tuple[int, ...]
    paths: tuple
    found: tuple
    seconds_per_image: float


def detect_capture(data_root, frames: Sequence[int], views: int = 4, subject: int = 1,
                   detector: HandDetector | None = None, log: Callable[[str], None] = print) -> CaptureDetections:
    """Detect the hand in ``views`` images of each frame (:func:`frame_images`); right hands only (the capture's)."""
    imgs = frame_images(data_root, frames, views, subject)
    paths = [p for f in frames for p in imgs[f]]
    own = detector is None
    det = HandDetector() if own else detector
    try:
        t0 = time.perf_counter()
        found, _ = detect_photos(paths, det)
        t_det = (time.perf_counter() - t0) / max(len(paths), 1)
    finally:
        if own:
            det.close()
    log(f"detected a right hand in {len(found)}/{len(paths)} images ({t_det * 1000:.0f} ms per image)")
    return CaptureDetections(tuple(frames), tuple(paths), tuple(found), t_det)


def evaluate_photo_fit(model, data_root, frames: Sequence[int], *, views: int = 4, subject: int = 1,
                       detections: CaptureDetections | None = None, steps: int = FIT_STEPS,
                       start_steps: int = START_STEPS, modes=("1 view", "multi-view"),
                       log: Callable[[str], None] = print, **fit_kwargs) -> PhotoEvaluation:
    """Detection, landmark error and fitted-pose errors on ``frames`` × ``views`` capture images (module doc).

    ``detections``: from :func:`detect_capture` for the same frames and views (None: detected here);
    ``fit_kwargs`` go to :func:`~dhmlib.photo.fit2d.fit_pose_2d`."""
    if detections is None:
        detections = detect_capture(data_root, frames, views, subject, log=log)
    found, paths, t_det = detections.found, detections.paths, detections.seconds_per_image
    sk = model.hand.skeleton
    truth = _truth(data_root, subject, frames, sk)
    index = {f: i for i, f in enumerate(frames)}
    lm_px, lm_frac = [], []
    for v in found:
        i = index[v.capture.frame]
        cam = capture_camera(v.capture, v.photo.scale)
        ok = truth[1][i] > 0
        true_px = cam.project(torch.as_tensor(truth[0][i], dtype=torch.float32)[None])[0].numpy()
        px, lv = landmarks_to_joints(v.detection.pixels, sk)
        m = ok & (lv > 0)
        e = np.linalg.norm(px[m] - true_px[m], axis=-1).mean()
        size = float(np.max(true_px[ok].max(0) - true_px[ok].min(0)))
        lm_px.append(e), lm_frac.append(e / size)
    fits, seconds = {}, {"detect_per_image": t_det}
    for mode in modes:
        groups = [(v,) for v in found] if mode == "1 view" else group_views(found)
        name = "1 view" if mode == "1 view" else f"{views} views"
        t0 = time.perf_counter()
        fitted = fit_detections(model, groups, steps=steps, start_steps=start_steps, **fit_kwargs)
        seconds[f"fit_per_pose[{name}]"] = (time.perf_counter() - t0) / max(len(groups), 1)
        fits[name] = _fit_rows(fitted, frames, truth)
        log(f"{name}: fitted {len(groups)} pose(s)")
    return PhotoEvaluation(len(paths), len(found), np.array(lm_px), np.array(lm_frac), fits, seconds)


def encoder_metrics(model, data_root, frames: Sequence[int], config, subject: int = 1) -> dict:
    """PA metrics of an image-source snapshot's encoder poses (its input crop of each frame's first camera)
    on ``frames``: the paper's way, trained on the capture's renders."""
    dev = model.hand.template.device
    data = load_held_out(data_root, list(frames), config, model.hand.skeleton, dev, images=True, num_views=1)
    poses = encoder_poses(model, data)
    with torch.no_grad():
        out = model.decode(poses.euler, poses.root)
    joints, valid, meshes = _truth(data_root, subject, list(data.frames), model.hand.skeleton)
    rows = [pose_metrics(j[v > 0], tj[v > 0], vv, m) for j, tj, v, vv, m in
            zip(out.joints.cpu().numpy(), joints, valid, out.vertices.cpu().numpy(), meshes)]
    return {"poses": len(rows), **{k: float(np.mean([r[k] for r in rows])) for k in rows[0]}}
