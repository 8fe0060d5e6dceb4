"""Figures of a test run: predicted vs ground-truth depth and the per-vertex error on the mesh."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dhmlib.viz.geometry import ERROR_CMAP, colorbar_extend, error_colors as colors
from dhmlib.viz.meshimage import mesh_image


#: the top of the |difference| scale of the depth panels, mm (larger differences saturate: an arrow on its bar)
DIFF_MAX_MM = 5.0

#: the figures of a test run, one per shape (views shown, mesh panel, dpi, map size, clipped scales): each is drawn
#: once with constrained layout, and later frames of that shape replace its images, titles and colour scales and
#: keep its layout (creating the axes and solving the layout was most of a figure's time). Plain ``Figure``
#: objects, not pyplot's, so that a notebook does not show them.
_REUSED: dict[tuple, "_FramePanels"] = {}


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
        path: PNG to write (folders created). Then the figure of the last frame of the same shape is
            reused (:data:`_REUSED`): the same panels and layout, this frame's contents.
    Returns:
        the matplotlib Figure; with ``path``, the reused figure (it shows this frame until the next call).
    """
    content = _frame_content(frame, np.asarray(target), np.asarray(rendered), vertices, faces, vertex_error, vmax,
                             views, root, num_views)
    if path is None:   # a figure of its own for the caller (pyplot's, so that a notebook shows it)
        fig = plt.figure(figsize=content.figsize, dpi=dpi, layout="constrained")
        return _FramePanels(fig, content).fig
    key = content.shape_key + (dpi,)
    panels = _REUSED.get(key)
    if panels is None:
        fig = Figure(figsize=content.figsize, dpi=dpi, layout="constrained")
        FigureCanvasAgg(fig)
        panels = _REUSED[key] = _FramePanels(fig, content)
    else:
        panels.show(content)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    panels.fig.savefig(path, dpi=dpi)
    if panels.fig.get_layout_engine() is not None:   # solved by this first save: keep it from now on
        panels.fig.set_layout_engine(None)
    return panels.fig


@dataclass(frozen=True)
class _Row:
    true: np.ndarray          # (h, w) depth, NaN off the surface
    predicted: np.ndarray
    diff: np.ndarray          # |predicted − true| where both have a surface, else NaN
    lo: float                 # the depth scale shared by true and predicted, mm
    hi: float
    titles: tuple[str, str, str]
    diff_extend: str


@dataclass(frozen=True)
class _Content:
    rows: tuple[_Row, ...]
    mesh_rgb: np.ndarray | None    # (s, s, 3) the mesh coloured by its error
    mesh_title: str
    mesh_top: float
    mesh_extend: str

    @property
    def figsize(self) -> tuple[float, float]:
        return 3.2 * 3 + (4.6 if self.mesh_rgb is not None else 0), 2.9 * len(self.rows)

    @property
    def shape_key(self) -> tuple:
        return (len(self.rows), self.rows[0].true.shape if self.rows else None, self.mesh_rgb is not None,
                tuple(r.diff_extend for r in self.rows), self.mesh_extend)


def _frame_content(frame, target, rendered, vertices, faces, vertex_error, vmax, views, root, num_views) -> _Content:
    rows = []
    for i in range(min(num_views, len(target))):
        t, r = target[i], rendered[i]
        both = (t != 0) & (r != 0)
        on = np.concatenate([t[t != 0], r[r != 0]])
        lo, hi = (float(on.min()), float(on.max())) if on.size else (0.0, 1.0)
        diff = np.where(both, np.abs(r - t), np.nan)
        name = f" cam {views[i]}" if views is not None else f" view {i}"
        rows.append(_Row(np.where(t != 0, t, np.nan), np.where(r != 0, r, np.nan), diff, lo, hi,
                         (f"true depth{name}", "predicted depth",
                          f"|diff| mean {np.nanmean(diff) if both.any() else float('nan'):.2f} mm"),
                         colorbar_extend(diff, DIFF_MAX_MM)))
    if vertex_error is None:
        return _Content(tuple(rows), None, "", 0.0, "neither")
    v = np.asarray(vertices, dtype=np.float64)
    if root is not None:   # world → model frame: (v − t) R
        r = np.asarray(root, dtype=np.float64)
        v = (v - r[:3, 3]) @ r[:3, :3]
    top = float(vmax) if vmax else max(float(np.max(vertex_error)), 1e-9)
    return _Content(tuple(rows), mesh_image(v, faces, error_colors(vertex_error, top), size=320),
                    f"frame {frame}: vertex error\nmean {np.mean(vertex_error):.2f} mm (scale 0–{top:.1f} mm)",
                    top, colorbar_extend(vertex_error, top))


class _FramePanels:
    """A test figure's artists: per row true, predicted and |diff| images with their colour bars, and the mesh
    panel; :meth:`show` puts another frame of the same shape into them."""

    def __init__(self, fig, c: _Content):
        self.fig = fig
        mesh = c.mesh_rgb is not None
        cols = 3 + mesh
        # equal image panels; constrained layout takes each colour bar's room from its own panels
        grid = fig.add_gridspec(len(c.rows), cols, width_ratios=[1, 1, 1] + ([1.6] if mesh else []))
        self.rows = []
        for i, row in enumerate(c.rows):
            axes = [fig.add_subplot(grid[i, j]) for j in range(3)]
            shown = [axes[0].imshow(row.true, vmin=row.lo, vmax=row.hi, cmap="viridis"),
                     axes[1].imshow(row.predicted, vmin=row.lo, vmax=row.hi, cmap="viridis"),
                     axes[2].imshow(row.diff, vmin=0, vmax=DIFF_MAX_MM, cmap=ERROR_CMAP)]
            # titles at the axes' top: the axes are off, so there is nothing to place them above
            titles = [ax.set_title(t, fontsize=8, y=1.0) for ax, t in zip(axes, row.titles)]
            for ax in axes:
                ax.set_axis_off()
            fig.colorbar(shown[0], ax=axes[:2], fraction=0.05, pad=0.02, label="depth, mm")   # one scale for both
            fig.colorbar(shown[2], ax=axes[2], fraction=0.05, pad=0.02, label="|diff|, mm", extend=row.diff_extend)
            self.rows.append((shown, titles))
        self.mesh = None
        if mesh:
            ax = fig.add_subplot(grid[:, cols - 1])
            image = ax.imshow(c.mesh_rgb)
            ax.set_axis_off()
            title = ax.set_title(c.mesh_title, fontsize=8)
            sm = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, c.mesh_top), ERROR_CMAP)
            fig.colorbar(sm, ax=ax, fraction=0.04, pad=0.02, label="vertex error, mm", extend=c.mesh_extend)
            self.mesh = (image, title, sm)

    def show(self, c: _Content):
        for (shown, titles), row in zip(self.rows, c.rows):
            for image, data in zip(shown, (row.true, row.predicted, row.diff)):
                image.set_data(data)
            shown[0].set_clim(row.lo, row.hi)     # the colour bar follows its image
            shown[1].set_clim(row.lo, row.hi)
            for title, text in zip(titles, row.titles):
                title.set_text(text)
        if self.mesh is not None:
            image, title, sm = self.mesh
            image.set_data(c.mesh_rgb)
            title.set_text(c.mesh_title)
            sm.set_clim(0, c.mesh_top)
