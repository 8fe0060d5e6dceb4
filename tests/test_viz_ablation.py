"""dhmlib.viz.ablation: per-variant error renders with one shared colour scale."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from dhmlib.hand.anatomy import random_plausible_pose
from dhmlib.hand.layer import HandLayer
from dhmlib.synth import build_procedural_hand
from dhmlib.viz.ablation import ERROR_CMAP, error_grid_figure, render_error_grid

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def posed():
    layer = HandLayer(build_procedural_hand(1500, seed=0))
    euler = random_plausible_pose(layer.skeleton, np.random.default_rng(0), batch=2)
    with torch.no_grad():
        v = layer(torch.as_tensor(euler, dtype=torch.float32)).vertices.double().numpy()
    return v, layer.faces.numpy()


def _chroma(rgb):
    return rgb / rgb.sum(-1, keepdims=True)


def test_colours_follow_the_error_on_one_scale(posed):
    truth, faces = posed
    far = truth + 3.0                                    # every vertex 3√3 mm off: above the 2 mm top
    images, labels = render_error_grid({"exact": truth, "off": far}, truth, faces, max_mm=2.0, size=96)
    assert images.shape == (2, 3, 96, 96, 3) and labels == ["exact", "off", "ground truth"]
    cmap = matplotlib.colormaps[ERROR_CMAP]
    for p in range(2):
        for col, value in ((0, 0.0), (1, 1.0)):
            img = images[p, col]
            hand = (img < 0.999).any(-1) & (img.sum(-1) > 0.05)
            assert hand.mean() > 0.05                    # the hand fills part of the frame
            want = _chroma(np.asarray(cmap(value)[:3]))
            # Lambert shading scales a pixel's colour: its chromaticity is the vertex colour's
            np.testing.assert_allclose(_chroma(img[hand]).mean(0), want, atol=0.02)
        corners = images[p, :, :3, :3].reshape(-1, 3)
        assert (corners == 1.0).all()                    # white background


def test_figure_has_a_cell_per_pose_and_variant_and_one_colour_bar(posed, tmp_path):
    truth, faces = posed
    fig = error_grid_figure({"a": truth + 0.5, "b": truth}, truth, faces, frames=[7, 9], size=64,
                            path=tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert len(fig.axes) == 2 * 3 + 1
    assert fig.axes[0].get_xlabel() == "0.87 mm"         # |(0.5, 0.5, 0.5)|
    assert fig.axes[1].get_xlabel() == "0.00 mm" and fig.axes[0].get_ylabel() == "frame 7"
