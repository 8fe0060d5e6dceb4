"""Notebook views of training: live loss curves, held-out probe curves, config and metrics tables,
evaluation figures.

:class:`LivePlot` is the ``on_record`` hook of :func:`dhmlib.train.train`: it keeps every metrics
record and, in an interactive Jupyter front end, redraws one matplotlib figure in place through an
IPython display handle (at most every ``every_s`` seconds). Headless (``dhm notebooks`` sets
``DHM_NOTEBOOK_HEADLESS=1``; no IPython kernel) it only collects, and :meth:`LivePlot.finish`
shows the final figure once. Tables are Markdown strings (no pandas needed).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from matplotlib import cm, colors
import matplotlib.pyplot as plt
import numpy as np
import torch

from dhmlib import progress as prog
from dhmlib.data.dataset import DeepHandMeshDataset, capture_image_size
from dhmlib.data.ground_truth import ground_truth_meshes
from dhmlib.data.layout import Layout
from dhmlib.data.sample import collate_samples
from dhmlib.lab.record import HEADLESS_ENV
from dhmlib.mesh.io import read_obj
from dhmlib.progress import format_seconds
from dhmlib.render import render_depth
from dhmlib.viz.figures import plot_hand
from dhmlib.viz.geometry import ERROR_CMAP, colorbar_extend, error_colors

#: the loss terms drawn, in this order (the keys of ``metrics.jsonl`` step records)
CURVE_TERMS = ("total", "joint", "depth", "laplacian", "penetration_rigid", "penetration_nonrigid")


def _in_kernel() -> bool:
    try:
        from IPython import get_ipython  # IPython: the lab extra, present only in a kernel
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def interactive() -> bool:
    """True in a Jupyter kernel that a person watches (not under ``dhm notebooks``)."""
    return _in_kernel() and not os.environ.get(HEADLESS_ENV)


def loss_figure(records: list[dict], terms=CURVE_TERMS, fig=None, title: str = ""):
    """Loss curves of metrics records: each term of the ``kind: "step"`` records against the step
    (log scale, unweighted values as logged), the epoch means of ``total`` as dots.

    Args:
        records: dicts as written to ``metrics.jsonl`` (``kind``, ``step``, term values).
        fig: a figure to redraw into (cleared), else a new one.
    Returns:
        the matplotlib ``Figure``.
    """
    if fig is None:
        fig = plt.figure(figsize=(8.6, 3.6), layout="constrained")
    fig.clf()
    ax = fig.add_subplot(1, 1, 1)
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    for name in terms:
        pts = [(r["step"], r[name]) for r in steps if isinstance(r.get(name), (int, float)) and r[name] > 0]
        if pts:
            x, y = np.asarray(pts).T
            ax.plot(x, y, lw=2.0 if name == "total" else 1.2, label=name)
    pts = [(r["step"], r["total"]) for r in epochs if isinstance(r.get("total"), (int, float)) and r["total"] > 0]
    if pts:
        x, y = np.asarray(pts).T
        ax.plot(x, y, "o", color="k", ms=4, label="epoch mean (total)")
    if any(ln.get_xydata().size for ln in ax.lines):
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # off the curves
    last = steps[-1] if steps else (epochs[-1] if epochs else None)
    status = "" if last is None else (f"step {last['step']}, epoch {last['epoch'] + 1}, "
                                      f"{last.get('time_s', 0.0):.0f} s")
    ax.set_title(" · ".join(t for t in (title, status) if t) or "training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (mm-based terms)")
    ax.grid(alpha=0.3, which="both")
    if fig.get_layout_engine() is None:        # a figure given without a layout engine
        fig.tight_layout()
    return fig


class LivePlot:
    """Collects metrics records and keeps a loss figure up to date (see the module docstring).

    Use as ``train(..., on_record=plot)`` then ``plot.finish()``.

    Args:
        live: redraw while training (None: :func:`interactive`).
        every_s: at most one redraw per this many seconds (a redraw costs ~0.1 s).
        title: figure title prefix.
        total_steps, time_limit_s, epochs: the run's limits, for the ETA of the progress lines.
        progress: when not live (papermill, ``dhm batch``), a line every :data:`dhmlib.progress.EVERY_S`
            seconds (and at the first record): step, epoch, training time, loss and ETA, as
            :mod:`dhmlib.progress` lines (passed on by ``dhm batch`` and ``dhm notebooks``).
    """

    def __init__(self, live: bool | None = None, every_s: float = 3.0, title: str = "", *,
                 total_steps: int | None = None, time_limit_s: float | None = None, epochs: int | None = None,
                 progress: bool = True, log=None):
        self.live = interactive() if live is None else bool(live)
        self.every_s, self.title = float(every_s), title
        self.total_steps, self.time_limit_s, self.epochs = total_steps, time_limit_s, epochs
        self.progress = progress and not self.live
        self.log = log or (lambda line: print(line, flush=True))
        self.records: list[dict] = []
        self._fig = None
        self._handle = None
        self._last = 0.0
        self._said = None

    def __call__(self, record: dict) -> None:
        self.records.append(dict(record))
        if self.live and time.monotonic() - self._last >= self.every_s:
            self._draw()
        if self.progress and record.get("kind") == "step":
            now = time.monotonic()
            if self._said is None or now - self._said >= prog.EVERY_S:
                self._said = now
                self.log(prog.PREFIX + self.progress_line(record))

    def progress_line(self, record: dict) -> str:
        """``training: step 120/400, epoch 3/60, 31 s, total 2.15, ETA 1 min 12 s`` for a step record: the ETA
        from the steps per second so far toward ``total_steps``, or the time limit, whichever comes first."""
        step, t = int(record["step"]), float(record.get("time_s", 0.0))
        lefts = []
        if self.total_steps and step > 0 and t > 0:
            lefts.append(t * max(self.total_steps - step, 0) / step)
        if self.time_limit_s:
            lefts.append(max(self.time_limit_s - t, 0.0))
        parts = [f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "")]
        if "epoch" in record:
            parts.append(f"epoch {int(record['epoch']) + 1}" + (f"/{self.epochs}" if self.epochs else ""))
        parts.append(format_seconds(t))
        if isinstance(record.get("total"), (int, float)):
            parts.append(f"loss {record['total']:.4g}")
        if lefts:
            parts.append(f"ETA {format_seconds(min(lefts))}")
        return f"training{f' ({self.title})' if self.title else ''}: " + ", ".join(parts)

    def _draw(self):
        from IPython.display import display  # IPython: the lab extra, present only in a kernel

        self._fig = loss_figure(self.records, fig=self._fig, title=self.title)
        plt.close(self._fig)      # shown through the handle only (no second copy at the cell's end)
        if self._handle is None:
            self._handle = display(self._fig, display_id=True)
        else:
            self._handle.update(self._fig)
        self._last = time.monotonic()

    def steps(self) -> list[dict]:
        """The ``kind: "step"`` records so far."""
        return [r for r in self.records if r.get("kind") == "step"]

    def finish(self, path=None):
        """Draw the final figure (in place of the live one, or once when headless); save it to
        ``path`` (PNG) when given. Returns the ``Figure``."""
        if self.live:
            self._draw()
        else:
            self._fig = loss_figure(self.records, fig=self._fig, title=self.title)
            if _in_kernel():
                from IPython.display import display  # IPython: the lab extra, present only in a kernel
                plt.close(self._fig)
                display(self._fig)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fig.savefig(path, dpi=100)
        return self._fig


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return "None" if v is None else str(v)


def config_markdown(train_config, model_config, base=None) -> str:
    """A Markdown table of both configs, fields that differ from ``base`` ((TrainConfig, ModelConfig),
    e.g. the preset before the notebook's overrides) in bold."""
    rows = ["| config | field | value |", "| --- | --- | --- |"]
    for tag, cfg, ref in (("train", train_config, base[0] if base else None),
                          ("model", model_config, base[1] if base else None)):
        ref_d = ref.to_dict() if ref is not None else {}
        for k, v in cfg.to_dict().items():
            changed = ref is not None and ref_d.get(k) != v
            val = f"**{_fmt(v)}**" if changed else _fmt(v)
            rows.append(f"| {tag} | `{k}` | {val} |")
    return "\n".join(rows)


def metrics_markdown(rows: dict[str, dict], keys=None) -> str:
    """A Markdown table, one column per named summary (e.g. ``{"trained": {...}, "LBS only": {...}}``,
    :meth:`dhmlib.evaluation.result.EvalResult.summary` dicts); ``keys`` (default: all, in first-seen order)."""
    names = list(rows)
    if keys is None:
        keys = []
        for s in rows.values():
            keys += [k for k in s if k not in keys]
    out = ["| metric | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for k in keys:
        out.append(f"| {k} | " + " | ".join(_fmt(rows[n].get(k)) for n in names) + " |")
    return "\n".join(out)


def error_figure(pred_vertices, true_vertices, faces, *, max_mm: float | None = None, titles=("prediction",
                 "ground truth", "per-vertex error"), path=None, size: float = 3.6, align: bool = True):
    """Prediction, ground truth and the prediction coloured by its per-vertex error, one frame.

    Args:
        pred_vertices, true_vertices: (V, 3) mm, the same topology.
        faces: (F, 3).
        max_mm: error mapped to the top colour (default: the 99th percentile).
        path: optional PNG to save.
        align: turn both meshes (rigidly, the same way) into the true mesh's principal axes, so that a
            world-frame capture mesh shows as the model-frame view does (fingers up).
    Returns:
        the matplotlib ``Figure`` (with a colour bar in mm).
    """
    p = np.asarray(pred_vertices, dtype=np.float64)
    t = np.asarray(true_vertices, dtype=np.float64)
    err = np.linalg.norm(p - t, axis=1)
    if align:   # world frame → the true mesh's principal axes (longest along x: plot_hand draws x up)
        c = t.mean(0)
        _, _, vt = np.linalg.svd(t - c, full_matrices=False)
        vt[2] *= np.sign(np.linalg.det(vt))          # a rotation, not a reflection
        p, t = (p - c) @ vt.T, (t - c) @ vt.T
    top = float(np.percentile(err, 99)) if max_mm is None else float(max_mm)
    fig = plt.figure(figsize=(size * 3 + 0.6, size))
    for i, (verts, col) in enumerate(((p, None), (t, None), (p, error_colors(err, top, ERROR_CMAP)))):
        plot_hand(fig.add_subplot(1, 3, i + 1, projection="3d"), verts, faces, colors=col, title=titles[i])
    sm = cm.ScalarMappable(norm=colors.Normalize(0, top), cmap=ERROR_CMAP)
    fig.colorbar(sm, ax=fig.axes[-1], shrink=0.7, label="error (mm)", extend=colorbar_extend(err, top))
    fig.subplots_adjust(left=0.0, right=0.95, bottom=0.0, top=0.9, wspace=0.0)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig


def depth_comparison_figure(rendered, target, *, titles=None, path=None, size: float = 2.4):
    """Rendered vs target depth of K views and their difference, mm (0 = no surface).

    Args:
        rendered, target: (K, H, W) mm.
    Returns:
        the matplotlib ``Figure`` (3 rows: prediction, target, |difference| where both have a surface).
    """
    r = np.asarray(rendered, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    k = r.shape[0]
    both = (r > 0) & (t > 0)
    vals = np.concatenate([r[r > 0], t[t > 0]]) if (r > 0).any() or (t > 0).any() else np.zeros(1)
    lo, hi = np.percentile(vals, [1, 99])
    diff = np.where(both, np.abs(r - t), np.nan)
    dmax = max(float(np.nanpercentile(diff, 99)), 1e-6) if both.any() else 1.0
    # constrained layout: each row's colour bar takes its room from the whole row, so the panels stay equal
    fig, axes = plt.subplots(3, k, figsize=(size * k + 1.0, size * 3), squeeze=False, layout="constrained")
    for row, (imgs, kw, label) in enumerate(((np.where(r > 0, r, np.nan), dict(vmin=lo, vmax=hi), "depth, mm"),
                                             (np.where(t > 0, t, np.nan), dict(vmin=lo, vmax=hi), "depth, mm"),
                                             (diff, dict(vmin=0, vmax=dmax, cmap=ERROR_CMAP), "|difference|, mm"))):
        for j in range(k):
            im = axes[row, j].imshow(imgs[j], **kw)
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
        seen = imgs[np.isfinite(imgs)]
        below, above = bool(seen.size and seen.min() < lo), bool(seen.size and seen.max() > (dmax if row == 2 else hi))
        extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
            (below and row < 2, above)]                          # saturated ends of the scale get an arrow
        fig.colorbar(im, ax=axes[row, :].tolist(), shrink=0.9, label=label, extend=extend)
    for j in range(k):
        axes[0, j].set_title(titles[j] if titles else f"view {j}")
    for row, name in enumerate(("rendered", "target", "|difference|")):
        axes[row, 0].set_ylabel(name)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches="tight")   # the row names at the left edge
    return fig


def frame_comparison(data_root, meshes_dir, frame: int, *, subject: int = 1, num_views: int = 4,
                     render_size=(128, 128), seed: int = 0) -> dict:
    """One held-out frame's predicted mesh (an OBJ written by :func:`dhmlib.evaluation.result.write_results`),
    its true mesh (virtual capture only) and depth renders of the prediction in K capture views.

    Args:
        data_root: the dataset (official layout).
        meshes_dir: the folder of ``<frame:06d>.obj`` (world mm), e.g. ``output/result/meshes``.
        frame: the frame number.
        num_views, render_size, seed: the K views and their crops, as the dataset draws them.
    Returns:
        ``{"pred": (V, 3), "true": (V, 3) or None, "faces": (F, 3), "rendered": (K, h, w),
        "target": (K, h, w), "views": names}``, mm.
    """
    path = Path(meshes_dir) / f"{int(frame):06d}.obj"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predicted mesh for frame {frame} (written by the evaluation)")
    pred, faces = read_obj(path)
    try:
        true = ground_truth_meshes(data_root, subject, [frame])[0]
    except FileNotFoundError:      # real data: no true meshes
        true = None
    ds = DeepHandMeshDataset(data_root, subject=subject, frames=[int(frame)], num_views=num_views,
                             render_size=tuple(render_size), seed=seed, images=False,
                             image_size=capture_image_size(Layout(data_root, subject), int(frame)))
    sample = ds[0]
    batch = collate_samples([sample])                 # cameras and crops of batch shape (1, K)
    with torch.no_grad():
        rendered = render_depth(torch.as_tensor(pred, dtype=torch.float32)[None], torch.as_tensor(faces),
                                batch.view_cameras, batch.view_crops, tuple(render_size))
    return {"pred": pred, "true": true, "faces": faces, "rendered": rendered.reshape(-1, *render_size).numpy(),
            "target": sample.depth.numpy(), "views": sample.view_names}


def _probe_points(curve) -> np.ndarray:
    """(N, 3) step, seconds, vertex_mean_mm of a probe curve: ``[step, seconds, mm]`` rows (as notebook 02
    records them, :attr:`dhmlib.train.TrainResult.probe_curve`) or metrics records (``kind: "probe"`` kept)."""
    rows = []
    for r in curve:
        if isinstance(r, dict):
            if r.get("kind", "probe") == "probe":
                rows.append((r["step"], r["seconds"], r["vertex_mean_mm"]))
        else:
            rows.append(tuple(r[:3]))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def probe_figure(curves: dict, *, x: str = "step", reference: dict | None = None, ax=None, title: str = "",
                 path=None):
    """Held-out per-vertex error (mm, true angles; :mod:`dhmlib.train.probe`) against training step or
    time, one labelled line per run on one axes.

    Args:
        curves: label → probe curve: ``[step, seconds, vertex_mean_mm]`` rows (notebook 02's recorded
            ``probe_curve``) or metrics records (``kind: "probe"`` dicts of ``metrics.jsonl``).
        x: ``"step"`` or ``"seconds"`` (training time, probing left out).
        reference: label → mm drawn as horizontal dashed lines (e.g. ``{"LBS, true angles": 1.29}``).
        ax: an axes to draw into (else a new figure).
        path: optional PNG to save.
    Returns:
        the matplotlib ``Figure``.
    """
    if x not in ("step", "seconds"):
        raise ValueError(f"probe_figure: x must be 'step' or 'seconds', got {x!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.0, 3.6))
    else:
        fig = ax.figure
    col = 0 if x == "step" else 1
    for label, curve in curves.items():
        pts = _probe_points(curve)
        if len(pts):
            ax.plot(pts[:, col], pts[:, 2], "-o" if len(pts) < 30 else "-", ms=3, lw=1.5, label=str(label))
    for i, (label, mm) in enumerate((reference or {}).items()):
        if mm is not None:
            ax.axhline(float(mm), ls="--", lw=1.0, color=f"C{(len(curves) + i) % 10}", label=str(label))
    ax.set_xlabel("training step" if x == "step" else "training time (s)")
    ax.set_ylabel("held-out vertex error (mm)")
    ax.set_title(title or "held-out per-vertex error, true angles")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
