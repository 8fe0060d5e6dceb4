"""Figures of a test run: predicted vs ground-truth depth and the per-vertex error on the mesh."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from dhmlib.viz.geometry import ERROR_CMAP, colorbar_extend, error_colors as colors
from dhmlib.viz.meshimage import mesh_image


#: the top of the |difference| scale of the depth panels, mm (larger differences saturate: an arrow on its bar)
DIFF_MAX_MM = 5.0

#: axes positions (figure fractions, creation order) that constrained layout gave the first saved figure of each
#: (views shown, mesh panel, dpi): later figures of a test run take them instead of solving the layout again,
#: which was most of a figure's time (the panels are the same, only numbers and titles change)
_SAVED_LAYOUTS: dict[tuple, list] = {}


def error_colors(error, vmax: float | None = None, cmap: str | None = None) -> np.ndarray:
    """(V,) errors, mm → (V, 3) RGB in [0, 1] (0 dark … ``vmax`` bright; default ``vmax``: the maximum;
    ``cmap`` default :data:`dhmlib.viz.geometry.ERROR_CMAP`)."""
    e = np.asarray(error, dtype=np.float64)
    return colors(e, float(vmax) if vmax else max(float(e.max()), 1e-9), cmap or ERROR_CMAP).astype(np.float64)


def test_frame_figure(frame: int, target, rendered, vertices, faces, *, vertex_error=None, vmax=None, views=None,
                      root=None, num_views: int = 2, path=None, dpi: int = 80):
    """One held-out frame: per view ground-truth depth, predicted depth and |difference|; the mesh
    coloured by its per-vertex error to the true mesh (when known).

    Args:
        frame: frame number (titles).
        target, rendered: (K, h, w) depth crops, mm (0 = no surface).
        vertices: (V, 3) predicted mesh, mm; faces (F, 3).
        vertex_error: (V,) mm or None; ``vmax`` the top of its colour scale (mm).
        views: the K camera names; ``num_views`` how many views to show (the first ones).
        root: (4, 4) the root's placement (model → world, mm): the mesh is drawn in the model frame
            (fingers up, palm facing), else as given.
        path: PNG to write (folders created).
    Returns:
        the matplotlib Figure (closed after saving when ``path`` is given).
    """
    target, rendered = np.asarray(target), np.asarray(rendered)
    k = min(num_views, len(target))
    mesh = vertex_error is not None
    cols = 3 + mesh
    # equal image panels; constrained layout takes each colour bar's room from its own panels
    layout_key = (k, mesh, dpi)
    reuse = _SAVED_LAYOUTS.get(layout_key) if path is not None else None
    fig = plt.figure(figsize=(3.2 * 3 + (4.6 if mesh else 0), 2.9 * k), dpi=dpi,
                     layout=None if reuse else "constrained")
    grid = fig.add_gridspec(k, cols, width_ratios=[1, 1, 1] + ([1.6] if mesh else []))
    for i in range(k):
        t, r = target[i], rendered[i]
        both = (t != 0) & (r != 0)
        on = np.concatenate([t[t != 0], r[r != 0]])
        lo, hi = (float(on.min()), float(on.max())) if on.size else (0.0, 1.0)
        diff = np.where(both, np.abs(r - t), np.nan)
        name = f" cam {views[i]}" if views is not None else f" view {i}"
        axes = [fig.add_subplot(grid[i, j]) for j in range(3)]
        shown = []
        for ax, img, title, kw in (
                (axes[0], np.where(t != 0, t, np.nan), f"true depth{name}", {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
                (axes[1], np.where(r != 0, r, np.nan), "predicted depth", {"vmin": lo, "vmax": hi, "cmap": "viridis"}),
                (axes[2], diff, f"|diff| mean {np.nanmean(diff) if both.any() else float('nan'):.2f} mm",
                 {"vmin": 0, "vmax": DIFF_MAX_MM, "cmap": ERROR_CMAP})):
            shown.append(ax.imshow(img, **kw))
            ax.set_title(title, fontsize=8)
            ax.set_axis_off()
        fig.colorbar(shown[0], ax=axes[:2], fraction=0.05, pad=0.02, label="depth, mm")   # one scale for both
        fig.colorbar(shown[2], ax=axes[2], fraction=0.05, pad=0.02, label="|diff|, mm",
                     extend=colorbar_extend(diff, DIFF_MAX_MM))
    if mesh:
        v = np.asarray(vertices, dtype=np.float64)
        if root is not None:   # world → model frame: (v − t) R
            r = np.asarray(root, dtype=np.float64)
            v = (v - r[:3, 3]) @ r[:3, :3]
        top = float(vmax) if vmax else max(float(np.max(vertex_error)), 1e-9)
        ax = fig.add_subplot(grid[:, cols - 1])
        ax.imshow(mesh_image(v, faces, error_colors(vertex_error, top), size=320))
        ax.set_axis_off()
        ax.set_title(f"frame {frame}: vertex error\nmean {np.mean(vertex_error):.2f} mm (scale 0–{top:.1f} mm)",
                     fontsize=8)
        sm = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, top), ERROR_CMAP)
        fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02, label="vertex error, mm",
                     extend=colorbar_extend(vertex_error, top))
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if reuse and len(reuse) == len(fig.axes):
            for ax, pos in zip(fig.axes, reuse):
                ax.set_position(pos)
        fig.savefig(path, dpi=dpi)
        if not reuse:
            _SAVED_LAYOUTS[layout_key] = [ax.get_position(original=True) for ax in fig.axes]
        plt.close(fig)
    return fig
