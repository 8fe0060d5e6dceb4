"""How accurate must the landmarks be? The photo fit fed exact landmarks, noisy ones, and MediaPipe's.

On the virtual capture the true keypoints are known, so the fit can be run on the *same* detected images with
the landmarks replaced by

- the true keypoints projected into each image (``error 0``): the fit's own floor;
- the same plus independent Gaussian noise whose mean 2D distance is a given fraction of the hand's size
  (the longest side of the true keypoints' bounding box in that image, as :mod:`dhmlib.photo.evaluate`
  measures MediaPipe), drawn per image, joint and axis; MediaPipe's relative depth is replaced by the true
  one (``(z_j − z_wrist)·f / z_wrist`` px) with noise of the same σ;
- optionally MediaPipe's own error vectors with their per-joint mean over the images removed (``debiased``):
  what is left when a fixed landmark convention offset is taken out.

:func:`landmark_error_sweep` gives PA-MPJPE against landmark error for one view and all views of a frame;
where the curve crosses a PA-MPJPE goal says what landmark error that goal needs, and where MediaPipe's
own landmarks sit on it says whether the fit or the landmarks are the limit. Independent noise averages out
over views; MediaPipe's errors on one pose seen from several cameras need not (compare the 1-view /
4-view ratios).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from dhmlib.photo.camera import capture_camera
from dhmlib.photo.detect import MEDIAPIPE_NAMES
from dhmlib.photo.evaluate import CaptureDetections, evaluate_photo_fit, true_keypoints

#: mean of ‖n‖ for n ~ N(0, σ² I₂) is σ·√(π/2)
_RAYLEIGH_MEAN = math.sqrt(math.pi / 2.0)


def true_landmarks(view, true_joints: np.ndarray, skeleton) -> tuple[np.ndarray, np.ndarray, float]:
    """The true keypoints as MediaPipe would report them in ``view``'s image.

    Args:
        view: a :class:`~dhmlib.photo.pipeline.PhotoView` of a capture image.
        true_joints: (J, 3) world mm in the skeleton's order.
    Returns:
        pixels (21, 2) px and relative depth (21,) px (wrist 0, negative towards the camera) in MediaPipe's
        order, and the hand's size in that image (px).
    """
    cam = capture_camera(view.capture, view.photo.scale, dtype=torch.float64)
    idx = [skeleton.index(n) for n in MEDIAPIPE_NAMES]
    pts = torch.as_tensor(true_joints[idx], dtype=torch.float64)[None]
    px = cam.project(pts)[0].numpy()
    zc = cam.world_to_camera(pts)[0, :, 2].numpy()
    zw = zc[MEDIAPIPE_NAMES.index("wrist")]
    depth = (zc - zw) * float(cam.focal[0, 0]) / zw
    size = float(np.max(px.max(0) - px.min(0)))
    return px, depth, size


def replaced_detections(model, data_root, detections: CaptureDetections, error_frac: float | None, *,
                        seed: int = 0, subject: int = 1, debiased: bool = False) -> CaptureDetections:
    """``detections`` with each view's landmarks replaced (module doc).

    ``error_frac``: the mean 2D error of the noise, a fraction of the hand's size (0: exact landmarks); None
    with ``debiased=True``: MediaPipe's landmarks minus their mean per-joint error (in hand sizes, each image's
    error expressed in its own pixels; the mean taken over these views).
    """
    sk = model.hand.skeleton
    frames = list(detections.frames)
    joints, _ = true_keypoints(data_root, subject, frames, sk)
    index = {f: i for i, f in enumerate(frames)}
    truth = [true_landmarks(v, joints[index[v.capture.frame]], sk) for v in detections.found]
    rng = np.random.default_rng(seed)
    out = []
    if debiased:
        err = np.stack([(v.detection.pixels - px) / size for v, (px, _, size) in zip(detections.found, truth)])
        bias = err.mean(0)                                         # (21, 2) hand sizes
        for v, (_, _, size) in zip(detections.found, truth):
            out.append(replace(v, detection=replace(v.detection, pixels=v.detection.pixels - bias * size)))
    else:
        if error_frac is None or error_frac < 0:
            raise ValueError(f"replaced_detections: error_frac must be ≥ 0 (or debiased=True), got {error_frac}")
        for v, (px, depth, size) in zip(detections.found, truth):
            sigma = error_frac * size / _RAYLEIGH_MEAN
            noisy = px + rng.normal(0.0, sigma, px.shape) if sigma > 0 else px
            dz = depth + rng.normal(0.0, sigma, depth.shape) if sigma > 0 else depth
            out.append(replace(v, detection=replace(v.detection, pixels=noisy, depth=dz)))
    return replace(detections, found=tuple(out))


def landmark_error_sweep(model, data_root, detections: CaptureDetections, fractions: Sequence[float] = (
        0.0, 0.02, 0.04, 0.06, 0.08, 0.10), *, seeds: Sequence[int] = (0, 1), views: int = 4, subject: int = 1,
        mediapipe: dict | None = None, log: Callable[[str], None] = print) -> dict:
    """PA-MPJPE (and the rest of :meth:`~dhmlib.photo.evaluate.PhotoEvaluation.summary`) of the fit on the
    detected images of ``detections`` with exact, noisy (each fraction × seeds), debiased-MediaPipe and
    MediaPipe's own landmarks (``mediapipe``: that summary when the caller has already evaluated
    ``detections`` with this model and these views; None: evaluated here).

    Returns:
        ``{"mediapipe": summary, "mediapipe debiased": summary, "noise": [{"error_frac", "seed", ...summary}]}``;
        each summary has ``landmark_error_frac`` (measured, against the true keypoints) and ``"1 view"`` /
        ``"<views> views"`` with ``pa_mpjpe_mm`` etc.
    """
    frames = list(detections.frames)

    def run(d):
        return evaluate_photo_fit(model, data_root, frames, views=views, subject=subject, detections=d,
                                  log=lambda m: None).summary()

    out = {"mediapipe": run(detections) if mediapipe is None else mediapipe,
           "mediapipe debiased": run(replaced_detections(model, data_root, detections, None, subject=subject,
                                                         debiased=True)),
           "noise": []}
    for frac in fractions:
        for seed in (seeds if frac > 0 else seeds[:1]):
            s = run(replaced_detections(model, data_root, detections, frac, seed=seed, subject=subject))
            out["noise"].append({"error_frac": float(frac), "seed": int(seed), **s})
            log(f"landmark error {frac:.2f} (seed {seed}): PA-MPJPE {s['1 view']['pa_mpjpe_mm']:.2f} mm (1 view), "
                f"{s[f'{views} views']['pa_mpjpe_mm']:.2f} mm ({views} views)")
    return out


def needed_error(rows: Sequence[dict], mode: str, goal_mm: float) -> float | None:
    """The landmark error (fraction of hand size) at which the sweep's mean PA-MPJPE of ``mode`` crosses
    ``goal_mm`` (linear between the swept points, seeds averaged); None if it never does within the sweep."""
    by = {}
    for r in rows:
        by.setdefault(r["error_frac"], []).append(r[mode]["pa_mpjpe_mm"])
    xs = sorted(by)
    ys = [float(np.mean(by[x])) for x in xs]
    if not ys or ys[0] > goal_mm:
        return None
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y0 <= goal_mm < y1:
            return x0 + (goal_mm - y0) / (y1 - y0) * (x1 - x0)
    return xs[-1] if ys[-1] <= goal_mm else None
