"""Figures of an ablation: the same held-out poses for each variant, coloured by per-vertex error.

The meshes are drawn with the library's own rasterizer (:func:`dhmlib.render.render_shaded`: one call
per pose for every variant), from a camera placed on the true mesh's palm axis, so a 3 × 9 grid takes
a second or two instead of minutes of matplotlib 3D.
"""
from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import torch

from dhmlib.render import render_shaded
from dhmlib.viz.geometry import colorbar_extend, error_colors
from dhmlib.viz.geometry import ERROR_CMAP  # the one error colour map of dhmlib's figures
from dhmlib.viz.meshimage import view_camera


def render_error_grid(meshes: Mapping[str, np.ndarray], truth: np.ndarray, faces, *, max_mm: float,
                      size: int = 224) -> tuple[np.ndarray, list[str]]:
    """Images of each variant's meshes coloured by per-vertex error, and the true meshes.

    Args:
        meshes: label → (P, V, 3) predicted meshes, mm, one per pose (the same P poses for all).
        truth: (P, V, 3) ground-truth meshes, mm (same topology).
        faces: (F, 3).
        max_mm: error at the top of the colour map.
        size: pixels of each square image.
    Returns:
        (images (P, N + 1, size, size, 3) in [0, 1], column labels): N variants in ``meshes``' order,
        then ``"ground truth"`` in skin tone. Background white.
    """
    truth = np.asarray(truth, dtype=np.float64)
    labels = list(meshes)
    P, V = truth.shape[:2]
    for k in labels:
        if np.shape(meshes[k]) != truth.shape:
            raise ValueError(f"render_error_grid: meshes[{k!r}] has shape {np.shape(meshes[k])}, expected the "
                             f"truth's {truth.shape}")
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long)
    out = np.ones((P, len(labels) + 1, size, size, 3))
    for p in range(P):
        stack = np.stack([np.asarray(meshes[k][p], dtype=np.float64) for k in labels] + [truth[p]])
        err = np.linalg.norm(stack - truth[p], axis=-1)                    # (N + 1, V), the truth's is 0
        colors = error_colors(err, max_mm, ERROR_CMAP).astype(np.float64)
        colors[-1] = (0.87, 0.72, 0.62)
        cam = view_camera(truth[p], size)
        r = render_shaded(torch.tensor(stack, dtype=torch.float32), f, cam.to(dtype=torch.float32),
                          size=(size, size), colors=torch.tensor(colors, dtype=torch.float32), background=1.0)
        out[p] = r.rgb[:, 0].clamp(0, 1).numpy()
    return out, labels + ["ground truth"]


def error_grid_figure(meshes: Mapping[str, np.ndarray], truth: np.ndarray, faces, *, frames: Sequence[int],
                      max_mm: float | None = None, path=None, size: int = 224, cell_inches: float = 1.7):
    """The paper's "effect of each component" as numbers: rows poses, columns variants, one colour bar.

    Each cell is a variant's mesh for that held-out frame coloured by its per-vertex distance to the
    true mesh (mm; :data:`ERROR_CMAP`, shared scale), titled with its mean error; the last column is
    the ground truth.

    Args:
        meshes, truth, faces, size: as :func:`render_error_grid`.
        frames: the P frame numbers (row titles).
        max_mm: top of the shared colour scale (default: the 99th percentile of all variants' errors).
        path: PNG to write (folders created).
    Returns:
        the matplotlib Figure.
    """
    truth = np.asarray(truth, dtype=np.float64)
    errs = {k: np.linalg.norm(np.asarray(v, dtype=np.float64) - truth, axis=-1) for k, v in meshes.items()}
    if max_mm is None:
        max_mm = float(np.percentile(np.concatenate([e.ravel() for e in errs.values()]), 99)) if errs else 1.0
    images, labels = render_error_grid(meshes, truth, faces, max_mm=max_mm, size=size)
    P, N = images.shape[:2]
    fig, axes = plt.subplots(P, N, figsize=(cell_inches * N + 0.9, cell_inches * P + 0.5), squeeze=False)
    for p in range(P):
        for n in range(N):
            ax = axes[p, n]
            ax.imshow(images[p, n])
            ax.set_xticks([]), ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            if p == 0:
                ax.set_title(textwrap.fill(labels[n], 18), fontsize=8)
            if n < N - 1:
                ax.set_xlabel(f"{errs[labels[n]][p].mean():.2f} mm", fontsize=8)
            if n == 0:
                ax.set_ylabel(f"frame {frames[p]}", fontsize=8)

    sm = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, max_mm), ERROR_CMAP)
    fig.colorbar(sm, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label="per-vertex error, mm",
                 extend=colorbar_extend(np.concatenate([e.ravel() for e in errs.values()]) if errs else [], max_mm))
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
