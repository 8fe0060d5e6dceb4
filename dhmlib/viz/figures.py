"""Static matplotlib figures of hand meshes (for papermill outputs and reports)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
import numpy as np

from dhmlib.viz.geometry import SKIN_RGB

#: Default view: fingers (+x) up, looking at the palm (+y) from slightly to the thumb side.
DEFAULT_VIEW = {"elev": 15.0, "azim": -30.0}


def _face_shading(vertices, faces, light=(0.2, 1.0, 0.6)) -> np.ndarray:
    """(F,) Lambert factor in [0.25, 1] per face for a directional light (two-sided)."""
    tri = vertices[faces]                                                  # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    light = np.asarray(light, dtype=np.float64) / np.linalg.norm(light)
    return 0.25 + 0.75 * np.abs(n @ light)


def plot_hand(ax, vertices, faces, *, joints=None, parents=None, colors=None, title=None,
              view=None):
    """Draw a shaded mesh (and optionally the bones) on a 3D matplotlib axis.

    Args:
        ax: an ``Axes3D`` (``fig.add_subplot(projection="3d")``).
        vertices: (V, 3) mm.
        faces: (F, 3) vertex indices.
        joints: (J, 3) mm and ``parents`` (J,) to draw bones over the mesh.
        colors: (V, 3) RGB in [0, 1] per vertex (averaged per face), default skin colour.
        title: axis title.
        view: ``{"elev": deg, "azim": deg}``; the x axis (fingers) points up.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    base = np.asarray(SKIN_RGB) if colors is None else np.asarray(colors, dtype=np.float64)[f].mean(1)
    rgb = np.clip(base * _face_shading(v, f)[:, None], 0, 1)
    # edges in the face colour close the hairline seams antialiasing leaves between faces
    ax.add_collection3d(Poly3DCollection(v[f], facecolors=rgb, edgecolors=rgb, linewidths=0.3))
    if joints is not None and parents is not None:
        jt = np.asarray(joints, dtype=np.float64)
        for c, p in enumerate(parents):  # ≤ a few dozen bones
            if p >= 0:
                ax.plot(*jt[[p, c]].T, color="#c0392b", lw=1.5, zorder=10)
    lo, hi = v.min(0), v.max(0)
    c, r = 0.5 * (lo + hi), 0.5 * float((hi - lo).max())
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(**{**DEFAULT_VIEW, **(view or {})}, vertical_axis="x")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def hand_figure(meshes, faces, *, path=None, size=4.0, dpi=100, **plot_kwargs):
    """A row of hand meshes, one panel each.

    Args:
        meshes: list of ``(title, vertices (V, 3) mm)``.
        faces: (F, 3) shared faces.
        path: optional file to save (PNG/PDF by suffix; folders created).
        size: panel size in inches.
        plot_kwargs: passed to :func:`plot_hand`.
    Returns:
        the matplotlib ``Figure``.
    """
    # panels placed by hand with room above for the titles, wrapped to the panel's width: tight_layout
    # cropped the 3D axes' titles (04_posing_snapshot.png showed "with correcti")
    n = len(meshes)
    fig = plt.figure(figsize=(size * n, size + 0.6), dpi=dpi)
    top = size / (size + 0.6)
    chars = max(12, int(size * 72 / 7.5))           # characters of a 10 pt title that fit a panel
    for i, (title, verts) in enumerate(meshes):
        ax = fig.add_axes((i / n, 0.0, 1.0 / n, top), projection="3d")
        plot_hand(ax, verts, faces, title=textwrap.fill(str(title), chars) if title else None, **plot_kwargs)
        ax.title.set_fontsize(10)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    return fig
