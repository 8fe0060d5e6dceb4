"""The virtual capture's truth: its true meshes, faces and poses (``annotations/synthetic/subject_N``).

Written by ``dhm synth`` (:mod:`dhmlib.synth.capture`); the real DeepHandMesh release has none of it, so
each reader says so when it is absent. The folder is :attr:`dhmlib.data.layout.Layout.synthetic_dir`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dhmlib.data.layout import Layout


@dataclass(frozen=True)
class Poses:
    """Euler (B, J, 3) rad and root (B, 4, 4) mm of B frames, with how they were obtained (``source``: "true",
    "fit", "encoder"; ``notes``: the details)."""

    euler: torch.Tensor
    root: torch.Tensor
    source: str
    notes: dict


def true_poses(data_root, subject: int, frames, device) -> Poses | None:
    """The virtual capture's true angles and root (``annotations/synthetic/subject_N/poses.npz``), or None."""
    p = Layout(data_root, int(subject)).synthetic_dir / "poses.npz"
    if not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as z:
        index = {int(f): i for i, f in enumerate(z["frame"])}
        missing = [f for f in frames if f not in index]
        if missing:
            raise KeyError(f"{p}: no pose for frames {missing[:10]}")
        rows = [index[f] for f in frames]
        euler, root = z["euler"][rows], z["root"][rows]
    return Poses(torch.as_tensor(euler, dtype=torch.float32, device=device),
                 torch.as_tensor(root, dtype=torch.float32, device=device), "true", {"file": str(p)})


def ground_truth_meshes(root, subject: int, frames) -> np.ndarray:
    """The virtual capture's true meshes: (F, V, 3) float32 world mm for ``frames``.

    Reads ``root/annotations/synthetic/subject_N/meshes/<frame:06d>.npy`` (written by ``dhm synth``;
    the real DeepHandMesh release has no such folder). Faces: :func:`ground_truth_faces`.
    """
    folder = Layout(root, int(subject)).synthetic_dir / "meshes"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no ground-truth meshes (only the virtual capture, dhm synth, writes "
                                "them; the real data has none)")
    out = []
    for f in np.asarray(frames).reshape(-1):
        p = folder / f"{int(f):06d}.npy"
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no ground-truth mesh for frame {int(f)}")
        out.append(np.load(p, allow_pickle=False))
    return np.stack(out).astype(np.float32) if out else np.zeros((0, 0, 3), np.float32)


def ground_truth_faces(root, subject: int) -> np.ndarray:
    """(F, 3) int64 faces of the virtual capture's true meshes (``subject_N/faces.npy``, the hand model's)."""
    p = Layout(root, int(subject)).synthetic_dir / "faces.npy"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no ground-truth faces (only the virtual capture, dhm synth, writes them)")
    return np.load(p, allow_pickle=False).astype(np.int64)
