"""Matplotlib figures for inspecting a capture (used by ``01_data_inspection``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def _bones(skeleton):
    return [(j, p) for j, p in enumerate(skeleton.parents) if p >= 0]


def plot_camera_dome(cameras, points=None, ax=None, axis_mm: float = 60.0, label_every: int = 1):
    """Camera centres, viewing axes and names around the hand.

    Args:
        cameras: :class:`~dhmlib.render.Cameras` of batch shape (C,).
        points: optional (N, 3) world points (joints or vertices), mm.
    """
    if ax is None:
        fig = plt.figure(figsize=(7, 6))
        ax = fig.add_subplot(projection="3d")
    pos = cameras.position.detach().cpu().numpy()
    fwd = cameras.R[:, 2].detach().cpu().numpy()  # camera z axis in world coordinates
    ax.scatter(*pos.T, c="tab:blue", s=18, label="cameras")
    ax.quiver(*pos.T, *(fwd * axis_mm).T, color="tab:blue", linewidth=0.8)
    for i, name in enumerate(cameras.names or []):
        if i % label_every == 0:
            ax.text(*pos[i], name, fontsize=6)
    if points is not None:
        p = np.asarray(points)
        ax.scatter(*p.T, c="tab:red", s=2, label="hand")
    lim = np.abs(pos).max()
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), zlim=(-lim, lim), xlabel="x (mm)", ylabel="y (mm)", zlabel="z (mm)")
    ax.set_box_aspect((1, 1, 1))
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(f"{len(pos)} cameras")
    return ax.figure


def plot_keypoints_on_image(image, pixels, valid, skeleton, ax=None, title: str = ""):
    """An image (H, W, 3) with projected joints (J, 2) and the skeleton's bones."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.5, 5))
    ax.imshow(image)
    px = np.asarray(pixels) - 0.5  # pixel centres at +0.5 → imshow's integer centres
    ok = np.asarray(valid) > 0
    for j, p in _bones(skeleton):
        if ok[j] and ok[p]:
            ax.plot(px[[j, p], 0], px[[j, p], 1], "-", color="yellow", linewidth=1)
    ax.scatter(px[ok, 0], px[ok, 1], s=8, c="red", zorder=3)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return ax.figure


def plot_depth(depth, ax=None, title: str = "", colorbar: bool = True):
    """A depth map (H, W) in mm with a colour bar; background (0) left white."""
    if ax is None:
        _, ax = plt.subplots(figsize=(3.5, 5))
    d = np.asarray(depth, dtype=float)
    m = np.ma.masked_equal(d, 0)
    im = ax.imshow(m, cmap="viridis")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="depth (mm)")
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return ax.figure


def plot_sample(sample):
    """The input crop and the K depth crops of one dataset item (a :class:`~dhmlib.data.sample.HandSample`);
    the depth crops alone when the dataset has no images."""
    K = sample.num_views
    first = 1 if sample.has_image else 0
    fig, axes = plt.subplots(1, K + first, figsize=(2.4 * (K + first), 2.8), squeeze=False)
    axes = axes[0]
    if sample.has_image:
        axes[0].imshow(sample.image.permute(1, 2, 0).cpu().numpy())
        axes[0].set_title(f"input crop cam{sample.camera}, frame {sample.frame}", fontsize=8)
        axes[0].axis("off")
    for k in range(K):
        title = f"view {sample.view_names[k]}" + ("" if first else f", frame {sample.frame}")
        plot_depth(sample.depth[k].cpu().numpy(), axes[k + first], title=title, colorbar=(k == K - 1))
    fig.tight_layout()
    return fig


def plot_angle_histograms(angles, skeleton, bins: int = 30):
    """Histograms of per-joint bend angles (N, J) in degrees, one panel per finger."""
    fingers = ("thumb", "index", "middle", "ring", "pinky")
    fig, axes = plt.subplots(1, 5, figsize=(15, 2.6), sharey=True)
    for ax, f in zip(axes, fingers):
        for j in range(skeleton.num_joints):
            if skeleton.finger_of(j) == f and not np.all(np.isnan(angles[:, j])):
                ax.hist(angles[:, j][~np.isnan(angles[:, j])], bins=bins, range=(0, 120), alpha=0.5,
                        label=skeleton.short_names[j])
        ax.set_title(f, fontsize=9)
        ax.set_xlabel("bend (deg)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
