"""Where a detector puts each joint: per-joint landmark offsets fitted on a capture whose truth is known.

A detector's "index PIP" is where its annotators saw the joint on the skin (and where the detector reads it on
our renders), not the rotation centre our skeleton uses. :func:`calibrate_landmark_offsets` fits, for each joint
``j``, one offset ``o_j`` (mm, in the joint's own frame: the rotation of its global transform, so it turns with
the bone) such that the true keypoint moved by it, ``x_j + R_j·o_j``, projects onto the detector's landmarks in
the images of frames whose pose is known (the virtual capture's ``annotations/synthetic/.../poses.npz``)::

    min_o  mean over views and valid joints of ‖π(x_j + R_j o_j) − u_j‖ / size  +  ridge · Σ‖o_j‖²

(a distance, not its square: misread fingers count less; ``size`` is the hand's size in that view, px).
:func:`~dhmlib.photo.fit2d.fit_pose_2d` then takes them as ``landmark_offsets``.

They are fitted on training frames and judged on held-out ones (``bench/photo_fit.py --calibrate``). They
describe the detector *on these images and this hand model's joint frames*: a hand model with other bind
frames needs its own, and whether offsets fitted on renders carry over to real photos is not known (there is
no real photo with a known pose here). They are therefore never applied unless asked for.

Files: :func:`write_offsets` / :func:`read_offsets`, JSON ``{"offsets_mm": {joint short name: [x, y, z]},
...}`` (joints by name, so a file cannot be applied to a skeleton it was not made for without an error).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dhmlib.data.ground_truth import true_poses
from dhmlib.network.fit import _pose_skeleton
from dhmlib.photo.camera import capture_camera
from dhmlib.photo.detect import landmarks_to_joints
from dhmlib.photo.evaluate import CaptureDetections, true_keypoints
from dhmlib.photo.fit2d import hand_size, landmark_points
from dhmlib.render.cameras import Cameras


@dataclass(frozen=True)
class LandmarkOffsets:
    """Fitted offsets and how well they explain the landmarks they were fitted on.

    Attributes:
        offsets: (J, 3) mm in each joint's frame (zero for joints without a landmark).
        error_before / error_after: mean landmark distance to the projected points (fraction of the hand's size)
            with zero offsets / with these.
        views: images used; frames: their frames.
    """

    offsets: np.ndarray
    error_before: float
    error_after: float
    views: int
    frames: tuple[int, ...]


def _view_tensors(model, data_root, detections: CaptureDetections, subject: int):
    sk = model.hand.skeleton
    found = [v for v in detections.found if v.capture is not None]
    if not found:
        raise ValueError("calibrate_landmark_offsets: no detected capture image (the offsets need images whose "
                         "frame, camera and truth are known)")
    frames = sorted({v.capture.frame for v in found})
    poses = true_poses(data_root, subject, frames, "cpu")
    if poses is None:
        raise FileNotFoundError(f"{data_root}: no true poses (annotations/synthetic/subject_{subject}/poses.npz, "
                                "written by dhm synth): landmark offsets are fitted on the virtual capture only")
    joints, jvalid = true_keypoints(data_root, subject, frames, sk)
    index = {f: i for i, f in enumerate(frames)}
    rows = [index[v.capture.frame] for v in found]
    with torch.no_grad():
        on = model.config.correctives
        dev = model.hand.template.device
        G = _pose_skeleton(model, poses.euler.to(dev), poses.root.to(dev), "skeleton" in on).transforms.cpu().double()
    px, ok = zip(*(landmarks_to_joints(v.detection.pixels, sk) for v in found))
    cams = Cameras.cat([capture_camera(v.capture, v.photo.scale, dtype=torch.float64) for v in found])
    x = torch.as_tensor(joints[rows], dtype=torch.float64)                       # (N, J, 3)
    valid = torch.as_tensor(np.stack(ok) * jvalid[rows], dtype=torch.float64)    # (N, J)
    u = torch.as_tensor(np.stack(px), dtype=torch.float64)                        # (N, J, 2)
    size = hand_size(cams.project(x), valid).clamp_min(1.0)                       # (N,) px, of the truth
    return x, G[rows], cams, u, valid, size, tuple(frames)


def _error(x, G, cams, u, valid, size, offsets):
    d = torch.linalg.norm(cams.project(landmark_points(x, G, offsets)) - u, dim=-1)
    return (d / size[:, None] * valid).sum() / valid.sum().clamp_min(1)


def landmark_error(model, data_root, detections: CaptureDetections, offsets=None, *, subject: int = 1) -> float:
    """Mean distance of the detected landmarks to the true keypoints moved by ``offsets`` ((J, 3) mm or None),
    projected, as a fraction of the hand's size in each view (:mod:`dhmlib.photo.evaluate`'s measure)."""
    x, G, cams, u, valid, size, _ = _view_tensors(model, data_root, detections, subject)
    off = None if offsets is None else torch.as_tensor(offsets, dtype=torch.float64)
    with torch.no_grad():
        return float(_error(x, G, cams, u, valid, size, off))


def calibrate_landmark_offsets(model, data_root, detections: CaptureDetections, *, subject: int = 1,
                               steps: int = 400, lr: float = 0.5, ridge: float = 1e-5,
                               log: Callable[[str], None] = print) -> LandmarkOffsets:
    """Fit :attr:`LandmarkOffsets.offsets` to ``detections`` of capture images with known poses (module doc).

    Args:
        model: the :class:`~dhmlib.network.model.DeepHandMesh` whose joint frames the offsets live in.
        detections: from :func:`dhmlib.photo.evaluate.detect_capture` (training frames, to judge on others).
        steps, lr: Adam on the offsets (mm); ridge: weight of Σ‖o‖² (mm⁻², keeps unseen directions at 0).
    """
    x, G, cams, u, valid, size, frames = _view_tensors(model, data_root, detections, subject)
    o = torch.zeros(x.shape[1], 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([o], lr=lr)
    with torch.no_grad():
        before = float(_error(x, G, cams, u, valid, size, None))
    for _ in range(steps):
        loss = _error(x, G, cams, u, valid, size, o) + ridge * (o * o).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        off = o.detach() * (valid.sum(0) > 0).to(o.dtype)[:, None]       # joints never seen keep 0
        after = float(_error(x, G, cams, u, valid, size, off))
    log(f"landmark offsets on {len(u)} view(s) of {len(frames)} frame(s): landmark error {before:.4f} → "
        f"{after:.4f} of the hand's size; offsets {float(off.norm(dim=-1).max()):.1f} mm at most")
    return LandmarkOffsets(off.numpy(), before, after, len(u), frames)


def write_offsets(path, offsets: LandmarkOffsets, skeleton, note: str = "") -> Path:
    """Write ``offsets`` as JSON (module doc); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = {name: [round(float(v), 4) for v in offsets.offsets[j]] for j, name in enumerate(skeleton.short_names)}
    doc = {"offsets_mm": rows, "frame": "each joint's global transform (rotation), mm",
           "error_before": offsets.error_before, "error_after": offsets.error_after, "views": offsets.views,
           "frames": list(offsets.frames), "note": note}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def read_offsets(path, skeleton) -> np.ndarray:
    """(J, 3) mm in ``skeleton``'s order from a file of :func:`write_offsets`; errors name the file and the key."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a landmark-offsets JSON file ({e})") from None
    rows = doc.get("offsets_mm") if isinstance(doc, dict) else None
    if not isinstance(rows, dict):
        raise ValueError(f"{path}: expected a key 'offsets_mm' mapping joint names to [x, y, z] mm")
    unknown = sorted(set(rows) - set(skeleton.short_names))
    if unknown:
        raise ValueError(f"{path}: 'offsets_mm' names joints this skeleton lacks: {unknown[:5]}")
    out = np.zeros((skeleton.num_joints, 3))
    for name, v in rows.items():
        try:
            a = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            a = np.full(0, np.nan)
        if a.shape != (3,) or not np.isfinite(a).all():
            raise ValueError(f"{path}: 'offsets_mm' → {name!r}: expected three finite numbers, got {v!r}")
        out[skeleton.index(name)] = a
    return out
