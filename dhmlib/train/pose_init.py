"""Starting poses of the per-frame embedding: a fit of each training frame to its 3D joints.

With ``TrainConfig.embedding_init="joint_fit"`` the embedding does not start at the rest pose
(where a fist is 85–100° away and the correctives would first learn the residuals of mis-posed
frames) but at the angles that :func:`dhmlib.network.fit.fit_pose` finds for the frame's keypoints with the
untrained decoder: the template skinned by LBS, root by Kabsch, joint L1 + the joint-limit prior.
All frames are fitted in one batch (seconds for the default capture). The result is cached as
``<cache_dir>/embedding_init_<key>.npz``, keyed by the frames, the keypoint files (size and mtime),
the hand model's arrays and the fit settings, so a changed capture is fitted again.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from dhmlib.data.ground_truth import true_poses
from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints
from dhmlib.data.layout import Layout
from dhmlib.hand.handmodel import HandModel
from dhmlib.network.fit import fit_pose
from dhmlib.network.model import DeepHandMesh, ModelConfig

#: fit settings (joints only, from the zero pose): the defaults of ``fit_pose``
INIT_FIT_STEPS = 600
INIT_FIT_LR = (0.05, 0.001)


def _cache_key(layout: Layout, frames: Sequence[int], hand: HandModel, steps: int) -> str:
    h = hashlib.sha1()
    h.update(np.asarray(frames, dtype=np.int64).tobytes())
    for f in frames:
        st = os.stat(layout.keypoints_path(f))
        h.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
    for arr in (hand.vertices, hand.local_pose, hand.skinning_weights):
        h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    h.update(f"{steps}:{INIT_FIT_LR}".encode())
    return h.hexdigest()[:16]


def joint_fit_init(data_root, subject: int, frames: Sequence[int], hand: HandModel, *,
                   cache_dir=None, steps: int = INIT_FIT_STEPS,
                   log: Callable[[str], None] | None = None) -> tuple[torch.Tensor, dict]:
    """(N, J, 3) radians: each frame's pose fitted to its keypoints with the template + LBS.

    Args:
        data_root, subject: the capture (official layout); ``frames``: the N frame numbers.
        hand: the hand model the decoder is built from.
        cache_dir: where the fitted angles are cached (None: not cached).
        steps: Adam steps of the joint fit.
    Returns:
        ``(euler, info)``: float32 angles (DoF-masked) and ``{"joint_error_mm": mean L1 per frame after
        the fit, "cached": bool, "seconds": float}``.
    """
    layout = Layout(data_root, subject)
    frames = [int(f) for f in frames]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"embedding_init_{_cache_key(layout, frames, hand, steps)}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                if list(z["frame"]) == frames:
                    if log:
                        log(f"embedding init: {len(frames)} poses fitted to the joints, from the cache {path}")
                    return torch.as_tensor(z["euler"]), {"joint_error_mm": float(z["joint_error_mm"]),
                                                         "cached": True, "seconds": 0.0}
    t0 = time.perf_counter()
    joints, valid = zip(*(keypoints_to_joints(read_keypoints(layout.keypoints_path(f)), hand.skeleton)
                          for f in frames))
    # float64, so that the angles (cast to float32) do not depend on the thread count (torchrun's workers run
    # with one thread, a single process with several; DDP runs must start from the same poses)
    joints = torch.as_tensor(np.stack(joints), dtype=torch.float64)
    valid = torch.as_tensor(np.stack(valid), dtype=torch.float64)
    model = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                           skeleton_corrective=False)).double()
    r = fit_pose(model, joints=joints, joint_valid=valid, steps=steps, lr=INIT_FIT_LR[0], lr_end=INIT_FIT_LR[1],
                 correctives=())
    euler = r.euler.float()
    err = float(r.final["joint"].mean())
    dt = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}.npz")
        np.savez(tmp, frame=np.asarray(frames, dtype=np.int64), euler=euler.numpy(), joint_error_mm=err)
        os.replace(tmp, path)
    if log:
        log(f"embedding init: {len(frames)} poses fitted to the joints with the template + LBS in {dt:.1f} s "
            f"(joint L1 {err:.3f} mm)")
    return euler, {"joint_error_mm": err, "cached": False, "seconds": dt}


def initial_poses(kind: str, data_root, subject: int, frames: Sequence[int], hand: HandModel, *,
                  cache_dir=None, log: Callable[[str], None] | None = None) -> torch.Tensor:
    """(N, J, 3) starting angles of ``TrainConfig.embedding_init`` ``kind``: ``"joint_fit"``
    (:func:`joint_fit_init`) or ``"true_angles"`` (the virtual capture's true angles; ValueError elsewhere)."""
    if kind == "joint_fit":
        return joint_fit_init(data_root, subject, frames, hand, cache_dir=cache_dir, log=log)[0]
    if kind == "true_angles":
        true = true_poses(data_root, subject, [int(f) for f in frames], "cpu")
        if true is None:
            raise ValueError(f"embedding_init='true_angles': {data_root} has no true angles "
                             f"(annotations/synthetic/subject_{subject}/poses.npz: virtual capture only)")
        if log:
            log(f"embedding init: the true angles of {len(frames)} frames ({true.notes['file']})")
        return true.euler.float()
    raise ValueError(f"embedding_init: expected 'joint_fit' or 'true_angles', got {kind!r}")
