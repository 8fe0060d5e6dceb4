"""Photos → fitted hands: the chain behind ``dhm fit --image`` and notebook 05.

:func:`detect_photos` reads and detects each file (a file that is not an image, or shows no hand, becomes
a :class:`PhotoFailure` naming it; the others go on). :func:`fit_detections` groups the detections into
poses — an image of a capture in the official layout joins the other cameras of its frame (their ``KRT_512``
cameras known: one pose, several views); any other photo is a pose of its own in a camera at the origin —
and fits all poses in one batch:

1. start: per pose, the landmarks lifted to 3D (one view: :func:`~dhmlib.photo.fit2d.lift_landmarks`) or
   triangulated (several views: :func:`~dhmlib.photo.fit2d.triangulate`), and
   :func:`~dhmlib.network.fit.fit_pose` of the skeleton to those points (``start_steps``);
2. :func:`~dhmlib.photo.fit2d.fit_pose_2d` on the landmarks of every view (``steps``).

Left hands (by MediaPipe's handedness; the capture's images are right hands) are fitted as the right
hand of the mirrored image and mirrored back in the outputs (:mod:`dhmlib.photo.outputs`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dhmlib.network.fit import fit_pose
from dhmlib.photo.camera import CaptureView, capture_camera, capture_view, photo_camera, photo_focal
from dhmlib.photo.detect import Detection, HandDetector, landmarks_to_joints
from dhmlib.photo.fit2d import Fit2DResult, fit_pose_2d, lift_landmarks, triangulate
from dhmlib.photo.image import Photo, PhotoError, load_photo
from dhmlib.render.cameras import Cameras

#: steps of the 3D start and of the 2D fit. A step costs about 6 ms for one photo on the loaded 2-core CPU
#: (overhead-bound: 64 photos in one batch cost little more), so these set the time per photo; on 16 held-out
#: frames × 4 views (template) 150 + 250, 80 + 150 and 60 + 100 steps gave PA-MPJPE 14.2 / 14.2 / 13.9 mm from
#: one view and 11.2 / 11.3 / 11.1 mm from four: the landmarks' noise, not the steps, sets the error
#: (exact landmarks: 0.1-0.2 mm, tests/test_photo_fit.py)
START_STEPS = 60
FIT_STEPS = 120
#: fit_pose_2d's settings for photos: the natural range as the prior's limits and DIP following PIP (on 16
#: held-out frames × 4 views, template: PA-MPJPE 14.48 → 14.16 mm from one view, 11.34 → 11.18 mm from four);
#: and a Cauchy loss per finger and view (``robust_by="finger"``, σ 0.05 hand sizes): MediaPipe misreads whole
#: fingers (a tenth of the fingers carry half the squared landmark error), so a finger off in one view should
#: count little against the others. σ was chosen on the training takes (136 frames × 4 views, trained snapshot:
#: 4 views 8.24 → 7.71 mm, 1 view 13.20 → 13.09) among 0.01-0.1 per landmark and per finger; on the held-out
#: frames it gives 9.92 → 9.46 mm from four views (paired per frame, 95 % t-interval over blocks of 5 frames:
#: −0.46 [−0.88, −0.03]) and no change from one (+0.03 [−0.15, +0.20]). MediaPipe's landmark error is the
#: limit (README, "Your own hand")
PHOTO_FIT = {"limits": "natural", "prior_weight": 10.0, "coupling_weight": 1.0, "robust": 0.05, "robust_by": "finger"}


@dataclass(frozen=True)
class PhotoFailure:
    """A file that gave no hand: its path and a one-line reason."""

    path: Path
    reason: str


@dataclass(frozen=True)
class PhotoView:
    """One photo with the hand found in it, its camera and where the camera came from."""

    photo: Photo
    detection: Detection
    camera: Cameras              # batch shape (1,), the unmirrored camera
    camera_note: str
    capture: CaptureView | None = None
    others: int = 0              # further hands in the photo, not fitted

    @property
    def is_right(self) -> bool:
        return self.detection.is_right


@dataclass(frozen=True)
class PhotoFit:
    """One fitted pose (one hand, seen in one or more views).

    Attributes:
        views: the photos of this pose (C of them).
        left: the hand is a left hand (fitted mirrored; :attr:`vertices` etc. are the right hand of the
            mirrored views, :mod:`dhmlib.photo.outputs` mirrors them back).
        euler: (J, 3) rad; root: (4, 4) mm; scale: the global scale.
        joints: (J, 3), vertices: (V, 3) world mm (a photo's world = its camera frame).
        pixels: (C, J, 2) reprojected joints in each view's image (unmirrored), px.
        landmarks: (C, J, 2) the detected landmarks in skeleton order, px; valid: (C, J).
        residual_px: (C, J) reprojection distance, px (NaN: no landmark).
        seconds: this pose's share of the fit's time.
    """

    views: tuple[PhotoView, ...]
    left: bool
    euler: np.ndarray
    root: np.ndarray
    scale: float
    joints: np.ndarray
    vertices: np.ndarray
    pixels: np.ndarray
    landmarks: np.ndarray
    valid: np.ndarray
    residual_px: np.ndarray
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A file stem for the outputs: the photo's name, or ``<seq>_<frame>`` for several capture views."""
        v = self.views[0]
        if len(self.views) > 1 and v.capture is not None:
            return f"{v.capture.sequence}_frame{v.capture.frame:04d}"
        return v.photo.path.stem

    def residual_summary(self) -> dict:
        r = self.residual_px[np.isfinite(self.residual_px)]
        sizes = [v.detection.size_px for v in self.views]
        return {"mean_px": float(r.mean()) if r.size else None, "max_px": float(r.max()) if r.size else None,
                "mean_fraction_of_hand_size": float(r.mean() / np.mean(sizes)) if r.size else None}


def detect_photos(paths: Sequence, detector: HandDetector, *, focal_mm: float | None = None,
                  fov_deg: float | None = None, hand: str = "auto", use_capture_cameras: bool = True,
                  on_photo: Callable[[int, int], None] | None = None) -> tuple[list[PhotoView], list[PhotoFailure]]:
    """Read and detect each file; (the views with a hand, the failures), each in the given order.

    ``hand``: "auto" (MediaPipe's handedness; a capture image: right, as its takes are), "right" or "left"
    (only a hand of that side counts).
    """
    if hand not in ("auto", "right", "left"):
        raise ValueError(f"hand: expected auto, right or left, got {hand!r}")
    views, failures = [], []
    for i, p in enumerate(paths):
        try:
            photo = load_photo(p)
        except PhotoError as e:
            failures.append(PhotoFailure(Path(p), str(e)))
            continue
        cap = capture_view(photo.path) if use_capture_cameras else None
        right = None if hand == "auto" and cap is None else hand != "left"
        found = detector.detect(photo, right=right)
        if on_photo is not None:
            on_photo(i + 1, len(paths))
        if not found:
            side = "right" if right else "left"
            why = (f"only a {'left' if right else 'right'} hand found, expected a {side} hand"
                   if detector.rejected else "no hand found")
            failures.append(PhotoFailure(photo.path, f"{photo.path}: {why}" + (f" ({photo.note})" if photo.note else "")))
            continue
        H, W = photo.size
        if cap is not None:
            cam, note = capture_camera(cap, photo.scale), f"KRT_512 camera {cap.camera}"
        else:
            f, note = photo_focal(H, W, photo.focal_35mm, focal_mm, fov_deg)
            cam = photo_camera(H, W, f)
        views.append(PhotoView(photo, found[0], cam, note, cap, len(found) - 1))
    return views, failures


def group_views(views: Sequence[PhotoView]) -> list[tuple[PhotoView, ...]]:
    """Capture images of one frame form one pose (several views); every other photo is a pose of its own."""
    groups: dict = {}
    for i, v in enumerate(views):
        key = ("capture",) + v.capture.pose_key if v.capture is not None else ("photo", i)
        groups.setdefault(key, []).append(v)
    return [tuple(g) for g in groups.values()]


def _view_arrays(v: PhotoView, skeleton, mirror: bool):
    d = v.detection
    px = d.pixels.copy()
    cam = v.camera
    if mirror:                      # the mirrored image: u → W − u; the principal point moves likewise
        W = v.photo.size[1]
        px[:, 0] = W - px[:, 0]
        c = cam.principal.clone()
        c[..., 0] = W - c[..., 0]
        cam = Cameras(cam.R, cam.t, cam.focal, c, cam.names)
    pix, valid = landmarks_to_joints(px, skeleton)
    dep, _ = landmarks_to_joints(d.depth, skeleton)
    return pix, valid, dep, cam


def fit_detections(model, groups: Sequence[tuple[PhotoView, ...]], *, steps: int = FIT_STEPS,
                   start_steps: int = START_STEPS, fit_scale: bool = True, correctives=None,
                   on_step: Callable[[int, int], None] | None = None, **fit_kwargs) -> list[PhotoFit]:
    """Fit every pose of ``groups`` in one batch (views padded to the largest group); see the module doc."""
    import time

    if not groups:
        return []
    hand = model.hand
    sk = hand.skeleton
    dtype, device = hand.template.dtype, hand.template.device
    B, C, J = len(groups), max(len(g) for g in groups), sk.num_joints
    pix = np.zeros((B, C, J, 2))
    valid = np.zeros((B, C, J))
    dep = np.zeros((B, C, J))
    cams: list[Cameras] = []
    left = [not g[0].is_right for g in groups]
    for b, g in enumerate(groups):
        row = []
        for c in range(C):
            v = g[min(c, len(g) - 1)]                      # padding repeats the last view with valid 0
            p, ok, d, cam = _view_arrays(v, sk, left[b])
            if c < len(g):
                pix[b, c], valid[b, c], dep[b, c] = p, ok, d
            row.append(cam)
        cams.append(Cameras.cat(row))
    cameras = Cameras.stack([Cameras(c.R, c.t, c.focal, c.principal) for c in cams]).to(device=device, dtype=dtype)
    t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)   # noqa: E731
    pix_t, valid_t, dep_t = t(pix), t(valid), t(dep)
    total = start_steps + steps
    t0 = time.perf_counter()
    with torch.no_grad():
        rest = model.decode(torch.zeros(1, J, 3, dtype=dtype, device=device), correctives=correctives).joints[0]
        palm = [sk.root] + sk.alignment_joints() + [sk.index("thumb1")]
        start = lift_landmarks(pix_t[:, 0], dep_t[:, 0], valid_t[:, 0],
                               Cameras(cameras.R[:, 0], cameras.t[:, 0], cameras.focal[:, 0], cameras.principal[:, 0]),
                               rest, sorted(set(palm)))
        start_valid = valid_t[:, 0]
        multi = (valid_t.sum(-1) > 0).sum(1) >= 2
        if bool(multi.any()):
            tri, tri_valid = triangulate(pix_t, valid_t, cameras)
            start = torch.where(multi[:, None, None], tri, start)
            start_valid = torch.where(multi[:, None], tri_valid, start_valid)
    first = fit_pose(model, joints=start, joint_valid=start_valid, steps=start_steps, correctives=correctives,
                     on_step=None if on_step is None else (lambda k: on_step(k, total)))
    res: Fit2DResult = fit_pose_2d(
        model, pix_t, valid_t, cameras, rel_depth=dep_t, init=first.euler, root_init=first.root,
        fit_scale=fit_scale, steps=steps, correctives=correctives,
        on_step=None if on_step is None else (lambda k: on_step(start_steps + k, total)), **{**PHOTO_FIT, **fit_kwargs})
    seconds = (time.perf_counter() - t0) / B
    out = []
    for b, g in enumerate(groups):
        n = len(g)
        px = res.pixels[b, :n].cpu().numpy().astype(np.float64)
        lm = pix[b, :n].copy()
        if left[b]:                                       # back to the photo's own pixels
            for c, v in enumerate(g):
                W = v.photo.size[1]
                px[c, :, 0] = W - px[c, :, 0]
                lm[c, :, 0] = W - lm[c, :, 0]
        out.append(PhotoFit(tuple(g), left[b], res.euler[b].cpu().numpy(), res.root[b].cpu().numpy(),
                            float(res.scale[b]), res.joints[b].cpu().numpy(), res.vertices[b].cpu().numpy(),
                            px, lm, valid[b, :n], res.residual_px[b, :n].cpu().numpy(), seconds,
                            {"start_joint_error_mm": float(first.final["joint"][b]),
                             "history_last": {k: v[-1] for k, v in res.history.items() if v}}))
    return out
