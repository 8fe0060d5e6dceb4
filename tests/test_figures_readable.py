"""Figures a researcher reads without help (issue 15, item 9): colour bars on every map, saturation marked on
clipped scales, titles inside the figure, the loss legend off the curves, equal panels, one error colour map,
the widget's error-map colour bar and layout, ``dhm demo --png``. Checked on the drawn figures (pixel boxes,
colour-bar extends and colour maps), not on the code that draws them."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import dhmlib.viz.geometry as geometry  # noqa: E402
from toyhand import toy_hand  # noqa: E402


def colorbars(fig):
    return [ax._colorbar for ax in fig.axes if getattr(ax, "_colorbar", None) is not None]


def boxes(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def inside(bb, outer, tol=1.0):
    return bb.x0 >= outer.x0 - tol and bb.y0 >= outer.y0 - tol and bb.x1 <= outer.x1 + tol and bb.y1 <= outer.y1 + tol


@pytest.fixture(scope="module")
def depth_pair():
    """(2, 40, 40) target and rendered depth, mm: a disc, the prediction 1 mm off and 9 mm off in one corner."""
    yy, xx = np.mgrid[:40, :40]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2)
    target = np.where(disc, 600.0 + 0.5 * xx, 0.0)[None].repeat(2, 0)
    rendered = np.where(disc, target + 1.0, 0.0)
    rendered[:, 10:12, 10:12] += 8.0 * disc[10:12, 10:12]          # 4 of ~700 pixels
    return target, rendered


def test_test_frame_figure_has_a_colour_bar_per_map_and_marks_the_clipped_diff_scale(depth_pair):
    from dhmlib.viz.result_figures import DIFF_MAX_MM, test_frame_figure

    hand = toy_hand(300)
    target, rendered = depth_pair
    err = np.linspace(0, 3, hand.num_vertices)
    fig = test_frame_figure(7, target, rendered, hand.vertices, hand.faces, vertex_error=err, vmax=2.0,
                            views=["400001", "400002"])
    bars = colorbars(fig)
    labels = [b.ax.get_ylabel() for b in bars]
    assert labels == ["depth, mm", "|diff|, mm"] * 2 + ["vertex error, mm"]       # true/predicted share one
    diff_bars = [b for b in bars if b.ax.get_ylabel() == "|diff|, mm"]
    assert all(b.extend == "max" and b.norm.vmax == DIFF_MAX_MM for b in diff_bars)   # 9 mm > the 5 mm top
    mesh_bar = bars[-1]
    assert mesh_bar.extend == "max" and mesh_bar.cmap.name == geometry.ERROR_CMAP and mesh_bar.norm.vmax == 2.0
    assert all(b.cmap.name == geometry.ERROR_CMAP for b in diff_bars)
    images = [ax for ax in fig.axes if ax.images and getattr(ax, "_colorbar", None) is None]
    # the mesh panel: the rasterized mesh, its pixels coloured (not the white background) over a part of it
    mesh = [ax for ax in images if ax.get_title().startswith("frame 7")]
    assert len(mesh) == 1
    rgb = np.asarray(mesh[0].images[0].get_array())
    assert 0.05 < (rgb < 0.98).any(-1).mean() < 0.9
    images = [ax for ax in images if ax is not mesh[0]]
    renderer = boxes(fig)
    widths = {round(ax.get_window_extent(renderer).width) for ax in images}
    assert len(images) == 6 and max(widths) - min(widths) <= 2                     # equal panels
    plt.close(fig)
    unclipped = test_frame_figure(7, target, np.where(target > 0, target + 1.0, 0.0), hand.vertices, hand.faces)
    assert [b.extend for b in colorbars(unclipped) if b.ax.get_ylabel() == "|diff|, mm"] == ["neither"] * 2
    plt.close(unclipped)


def test_depth_comparison_panels_are_equal_and_every_row_has_its_bar(depth_pair):
    from dhmlib.viz.training import depth_comparison_figure

    target, rendered = depth_pair
    fig = depth_comparison_figure(np.concatenate([rendered] * 2), np.concatenate([target] * 2),
                                  titles=["a", "b", "c", "d"])
    bars = colorbars(fig)
    assert [b.ax.get_ylabel() for b in bars] == ["depth, mm", "depth, mm", "|difference|, mm"]
    assert bars[2].extend == "max" and bars[2].cmap.name == geometry.ERROR_CMAP    # the 99th percentile clips the 9 mm
    renderer = boxes(fig)
    images = [ax for ax in fig.axes if ax.images and getattr(ax, "_colorbar", None) is None]
    widths = [ax.get_window_extent(renderer).width for ax in images]
    assert len(images) == 12 and max(widths) - min(widths) <= 1.0, widths   # the last column as wide as the rest
    plt.close(fig)


def test_loss_legend_lies_off_the_curves_and_inside_the_figure():
    from dhmlib.viz.training import loss_figure

    records = [{"kind": "step", "step": s, "epoch": 0, "total": 10.0 / s, "joint": 5.0 / s, "depth": 2.0,
                "laplacian": 0.01, "time_s": s} for s in range(1, 30)]
    fig = loss_figure(records, title="run")
    renderer = boxes(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    plot = ax.get_window_extent(renderer)
    assert legend.x0 >= plot.x1 and not legend.overlaps(plot)
    assert inside(legend, fig.bbox)
    plt.close(fig)


def test_hand_figure_titles_are_whole_and_inside_the_figure():
    from dhmlib.viz.figures import hand_figure

    hand = toy_hand(300)
    long = "with correctives (pose, identity and skeleton) at the fist preset"
    fig = hand_figure([(long, hand.vertices), ("without correctives", hand.vertices),
                       ("ground truth", hand.vertices)], hand.faces, size=4.0)
    renderer = boxes(fig)
    texts = [ax.title for ax in fig.axes]
    assert [t.get_text().replace("\n", " ") for t in texts] == [long, "without correctives", "ground truth"]
    assert "\n" in texts[0].get_text()                                     # wrapped to the panel's width
    extents = [t.get_window_extent(renderer) for t in texts]
    assert all(inside(bb, fig.bbox) for bb in extents)
    assert not any(a.overlaps(b) for i, a in enumerate(extents) for b in extents[i + 1:])
    plt.close(fig)


def test_one_error_colour_map_throughout():
    import dhmlib.viz.ablation as ablation
    from dhmlib.viz.result_figures import error_colors as result_colors
    from dhmlib.viz.training import error_figure

    err = np.linspace(0, 4, 50)
    expected = matplotlib.colormaps[geometry.ERROR_CMAP](np.clip(err / 4, 0, 1))[:, :3]
    np.testing.assert_allclose(geometry.error_colors(err, 4.0), expected, atol=1e-6)
    np.testing.assert_allclose(result_colors(err, 4.0), expected, atol=1e-6)
    assert ablation.ERROR_CMAP == geometry.ERROR_CMAP
    hand = toy_hand(300)
    fig = error_figure(hand.vertices + 0.5, hand.vertices, hand.faces, max_mm=0.4)
    (bar,) = colorbars(fig)
    assert bar.cmap.name == geometry.ERROR_CMAP and bar.extend == "max"           # 0.5 mm everywhere, scale to 0.4
    plt.close(fig)


def test_posing_widget_error_map_has_a_colour_bar_and_keeps_its_controls_whole():
    import torch

    from dhmlib.network.model import DeepHandMesh, ModelConfig
    from dhmlib.viz import PosingWidget

    model = DeepHandMesh(toy_hand(300), ModelConfig(backbone=18)).eval()

    def truth(euler):
        with torch.no_grad():
            v = model.decode(torch.as_tensor(euler, dtype=torch.float32)[None]).vertices[0].numpy()
        return v + np.array([0.0, 3.0, 4.0])                                 # 5 mm everywhere

    w = PosingWidget.from_model(model, ground_truth=truth, compare=True, width=720, output_dir=None)
    assert w.error_legend.layout.display == "none"
    w.error_max.value = 10.0
    w.error_toggle.value = True
    html = w.error_legend.value
    assert w.error_legend.layout.display is None and "per-vertex error, mm" in html
    top = matplotlib.colormaps[geometry.ERROR_CMAP](1.0)
    assert f"rgb({top[0] * 255:.0f},{top[1] * 255:.0f},{top[2] * 255:.0f}) 100%" in html   # its colours
    assert ">10<" in html and ">0<" in html and "dhm-error-saturated" not in html
    w.error_max.value = 2.0                                                    # 5 mm errors saturate
    assert "dhm-error-saturated" in w.error_legend.value and "100.0 % of vertices above 2 mm" in w.error_legend.value
    w.error_toggle.value = False
    assert w.error_legend.layout.display == "none"
    # the controls keep their width and wrap below the views in a narrow output area
    controls = w.ui.children[1]
    assert w.ui.layout.flex_flow == "row wrap" and controls.layout.min_width == "360px"
    assert controls.layout.flex == "0 0 auto"


@pytest.mark.slow   # ~5 s: matplotlib 3D of a 400-vertex hand
def test_dhm_demo_png_writes_a_picture_of_the_mesh(tmp_path):
    from dhmlib.cli import main

    hand_dir = tmp_path / "hand_model"
    toy_hand(400).write(hand_dir)
    out = tmp_path / "fist.obj"
    assert main(["demo", "--hand-model", str(hand_dir), "--preset", "fist", "--out", str(out), "--png"]) == 0
    png = tmp_path / "fist.png"
    img = plt.imread(png)
    assert out.is_file() and img.ndim == 3 and img.shape[0] > 300
    not_white = (img[..., :3] < 0.9).any(-1)
    assert 0.01 < not_white.mean() < 0.6                 # a hand, not an empty or a filled picture
    named = tmp_path / "pics" / "hand.png"
    assert main(["demo", "--hand-model", str(hand_dir), "--out", str(tmp_path / "h.ply"), "--png", str(named)]) == 0
    assert plt.imread(named).shape == img.shape
    assert main(["demo", "--hand-model", str(hand_dir), "--out", str(out), "--png", str(tmp_path / "x.jpg")]) == 2


def test_test_frame_figures_after_the_first_reuse_its_figure_and_show_only_their_own_frame(depth_pair, tmp_path):
    """A test run's figures after the first reuse the first one's figure and solved layout: the same axes boxes,
    every title and colour-bar label inside the figure, equal panels, the clipped scale still marked; and a
    frame drawn again after another one gives the same PNG pixel for pixel (nothing of the other frame stays)."""
    from dhmlib.viz import result_figures as rf

    hand = toy_hand(300)
    target, rendered = depth_pair
    err = np.linspace(0, 3, hand.num_vertices)
    rf._REUSED.clear()
    frame_a = dict(frame=7, target=target, rendered=rendered, vertices=hand.vertices, faces=hand.faces,
                   vertex_error=err, vmax=2.0, views=["400001", "400002"])
    frame_b = dict(frame=8, target=target * 1.7, rendered=rendered * 1.7, vertices=hand.vertices * 1.1,
                   faces=hand.faces, vertex_error=2 * err, vmax=4.0, views=["400003", "400004"])
    fig = rf.test_frame_figure(**frame_a, path=tmp_path / "a.png")
    first = [ax.get_position(original=True).bounds for ax in fig.axes]
    assert len(rf._REUSED) == 1
    assert rf.test_frame_figure(**frame_b, path=tmp_path / "b.png") is fig        # reused, not made again
    assert fig.get_layout_engine() is None                                      # not solved again
    assert np.allclose([ax.get_position(original=True).bounds for ax in fig.axes], first)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("cam 400003" in t for t in titles) and not any("400001" in t for t in titles)
    assert any(t.startswith("frame 8:") and "0–4.0 mm" in t for t in titles)
    renderer = boxes(fig)
    outer = fig.bbox
    for ax in fig.axes:
        lo, hi = sorted(ax.get_ylim())    # ticks outside the bar are not drawn; image axes are off
        ticks = [t for t, y in zip(ax.get_yticklabels(), ax.get_yticks()) if lo <= y <= hi] \
            if getattr(ax, "_colorbar", None) is not None else []
        for text in [ax.title, ax.yaxis.label] + ticks:
            if text.get_text() and text.get_visible():
                assert inside(text.get_window_extent(renderer), outer), text.get_text()
    images = [ax for ax in fig.axes if ax.images and getattr(ax, "_colorbar", None) is None
              and not ax.get_title().startswith("frame")]
    widths = {round(ax.get_window_extent(renderer).width) for ax in images}
    assert len(images) == 6 and max(widths) - min(widths) <= 2
    bars = colorbars(fig)
    assert [b.extend for b in bars if b.ax.get_ylabel() == "|diff|, mm"] == ["max"] * 2
    depth_bar = next(b for b in bars if b.ax.get_ylabel() == "depth, mm")
    assert depth_bar.norm.vmin == pytest.approx(float(target[0][target[0] > 0].min()) * 1.7)   # frame b's scale
    assert bars[-1].norm.vmax == 4.0
    a, b = plt.imread(tmp_path / "a.png"), plt.imread(tmp_path / "b.png")
    assert a.shape == b.shape and not np.array_equal(a, b)
    rf.test_frame_figure(**frame_a, path=tmp_path / "a_again.png")
    assert np.array_equal(plt.imread(tmp_path / "a_again.png"), a)
    # another shape (an unclipped |diff| scale) gets a figure of its own
    rf.test_frame_figure(**{**frame_a, "rendered": np.where(target > 0, target + 1.0, 0.0)}, path=tmp_path / "c.png")
    assert len(rf._REUSED) == 2
    rf._REUSED.clear()
