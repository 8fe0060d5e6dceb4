"""The ablation as numbers: notebook 02 run once per variant as a papermill batch, then collected.

:func:`run_ablation` executes ``notebooks/02_training.ipynb`` once per variant of
:mod:`dhmlib.experiments.variants` (:func:`dhmlib.lab.batch.run_batch`: resumable, a failing run reported and
skipped, each executed notebook kept as ``<output>/notebooks/<batch>/variant-<k>.ipynb``), every run
with the same data, preset, seed, step budget and held-out frames. :class:`AblationResult` reads the
runs back: the table of held-out metrics (and each one's ratio to (a) LBS only), the probe curves
(held-out error against training step), the time each variant took, the meshes of chosen held-out
frames for the figure, the interpenetration of each model at fist-like poses, and one JSON file
(``output/result/ablation.json``).
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import t as student
import torch

from dhmlib.data.ground_truth import ground_truth_faces, ground_truth_meshes
from dhmlib.experiments.variants import VARIANTS, Variant, get_variant
from dhmlib.hand.handmodel import read_hand_model
from dhmlib.lab.batch import run_batch
from dhmlib.mesh.io import read_obj
from dhmlib.metrics.mesh import fist_like_poses, hand_parts, penetration, penetration_at_poses
from dhmlib.network.snapshot import model_from_snapshot, read_snapshot
from dhmlib.paths import data_dir, notebooks_dir

#: The notebook each variant runs and the name of its record (:func:`dhmlib.lab.record.record`).
TRAINING_NOTEBOOK = "02_training.ipynb"
TRAINING_RECORD = "02_training"

#: Held-out metrics of the table: summary key → column label (mm unless the label says otherwise).
TABLE_METRICS = {
    "vertex_mean_mm": "vertex mean",
    "vertex_p95_mm": "vertex p95",
    "vertex_normal_mean_mm": "along normal",
    "vertex_sideways_mean_mm": "sideways",
    "vertex_near_flexed_mean_mm": "near flexed joints",
    "surface_symmetric_mm": "surface dist.",
    "joint_error_mm": "joint",
    "depth_error_mm": "depth",
    "penetration_depth_mean_mm": "penetration depth",
    "penetration_fraction": "penetrating fraction",
    "smoothness_ratio": "Laplacian ÷ truth",
}
#: The ablation's runs measure the surface distances (the slowest metric) on every N-th held-out frame.
SURFACE_EVERY = 4
#: Metrics also given as a ratio to variant (a), LBS only.
RATIO_METRICS = ("vertex_mean_mm", "vertex_p95_mm", "vertex_near_flexed_mean_mm")


def penetration_at_training_poses(snapshot, hand, parts=None, every: int = 3) -> tuple[list[int], dict]:
    """Interpenetration of an embedding-source snapshot's decoder at its own training poses.

    The poses are the snapshot's pose embedding (every ``every``-th training frame), decoded in the model
    frame (penetration does not depend on the root). Returns (frames, :func:`dhmlib.metrics.mesh.penetration`
    of those meshes); raises ``ValueError`` when the snapshot has no pose embedding.
    """
    emb = read_snapshot(snapshot).get("pose_embedding") or {}
    if "euler" not in emb:
        raise ValueError(f"{snapshot}: no pose embedding (pose_source 'image'?): no training poses to decode")
    model = model_from_snapshot(snapshot, hand).eval()
    frames = [int(f) for f in emb["frames"].tolist()[::every]]
    euler = emb["euler"][::every].to(model.hand.template.dtype) * model.hand.dof_mask
    with torch.no_grad():
        v = model.decode(euler).vertices
    return frames, penetration(v, parts if parts is not None else hand_parts(hand))


#: frames per block of the paired interval (the free take has a new pose every 5 frames)
BLOCK = 5


def paired_interval(a: Sequence[float], b: Sequence[float], block: int = BLOCK) -> dict:
    """Mean of ``b − a`` per frame with a 95 % t-interval over blocks of ``block`` consecutive frames.

    Returns ``{"mean", "low", "high", "blocks", "relative"}`` (``relative``: mean ÷ mean of ``a``).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = b - a
    n = max(1, len(d) // block)
    means = np.array([c.mean() for c in np.array_split(d, n)])
    m = float(d.mean())
    if n < 2:
        return {"mean": m, "low": float("nan"), "high": float("nan"), "blocks": n, "relative": m / a.mean()}
    half = float(student.ppf(0.975, n - 1) * means.std(ddof=1) / math.sqrt(n))
    return {"mean": m, "low": m - half, "high": m + half, "blocks": n, "relative": m / float(a.mean())}


def variant_keys(variants: str | Sequence[str]) -> list[str]:
    """``"abcd"``, ``"a,d,f"``, ``"a d"`` or ``["a", "full"]`` → the variants' keys in that order (each once)."""
    if isinstance(variants, str):
        variants = variants.replace(",", " ").split() if ("," in variants or " " in variants) else list(variants)
    keys = [get_variant(v).key for v in variants]
    if len(set(keys)) != len(keys):
        raise ValueError(f"variants: each at most once, got {keys}")
    return keys


def ablation_parameters(*, data_root: str = "", preset: str = "cpu-small", max_steps: int | None = 400,
                        time_limit_s: float | None = None, probe_every: int | None = 50,
                        eval_views: int | None = 4, fit_steps: int = 300, held_out: str = "",
                        smoke: bool = False, gpus: str = "", extra: dict | None = None) -> dict:
    """The notebook-02 parameters every variant shares (the same budget, data, split and evaluation).

    ``max_steps`` is the budget (the same number of optimizer steps for every variant, so that the
    comparison does not depend on how fast each one steps); ``time_limit_s`` an optional safety stop.
    The evaluation is the fast one: no LBS baseline inside each run (variant (a) is that baseline),
    ``eval_views`` depth views, no per-frame figures, the surface distances on every
    :data:`SURFACE_EVERY`-th held-out frame (16 of the default 64; the per-vertex errors on all).
    """
    common = {"data_root": str(data_root), "preset": preset, "max_steps": max_steps, "time_limit_s": time_limit_s,
              "probe_every": probe_every, "eval_views": eval_views, "fit_steps": fit_steps, "held_out": held_out,
              "baseline": False, "eval_figures": False, "eval_surface_every": SURFACE_EVERY, "smoke": bool(smoke),
              "gpus": gpus}
    common.update(extra or {})
    return common


def run_ablation(variants: str | Sequence[str] = "abcdefghi", *, batch: str = "ablation", output_root=None,
                 on_progress: Callable[[str], None] | None = print, notebook=None, rerun: bool = False,
                 **parameters) -> "AblationResult":
    """Train and evaluate each variant with notebook 02 (one papermill run each), then collect.

    Args:
        variants: keys or names of :data:`dhmlib.experiments.variants.VARIANTS` (``"abcd"``, ``["a", "full"]``).
        batch: the batch name (its files: ``<output>/notebooks/<batch>/``, runs' outputs
            ``<output>/batch/<batch>/variant-<k>/``). A finished run with the same parameters is not
            run again (``rerun`` forces it).
        output_root: default :func:`dhmlib.paths.output_dir`.
        parameters: :func:`ablation_parameters`' keywords.
    Returns:
        :class:`AblationResult`, also when some runs failed (see ``failed``).
    """
    keys = variant_keys(variants)
    common = ablation_parameters(**parameters)
    result = run_batch(notebook or notebooks_dir() / TRAINING_NOTEBOOK, runs=[{"variant": k} for k in keys],
                       common=common, batch=batch, output_root=output_root, on_progress=on_progress,
                       record=TRAINING_RECORD, rerun=rerun)
    return AblationResult.from_batch(result, data_root=common["data_root"])


@dataclass
class VariantRun:
    """One variant's run: its state, wall time (s) and the notebook's record (``metrics``)."""

    variant: Variant
    state: str
    seconds: float | None
    metrics: dict
    notebook: Path
    error: str | None = None

    @property
    def held_out(self) -> dict:
        return self.metrics.get("held_out") or {}

    @property
    def probe_curve(self) -> list[list[float]]:
        """[[step, seconds, held-out vertex mean mm], …] logged while training."""
        return self.metrics.get("probe_curve") or []

    @property
    def snapshot(self) -> Path | None:
        s = self.metrics.get("snapshot")
        return Path(s) if s else None

    @property
    def meshes(self) -> Path | None:
        s = self.metrics.get("meshes")
        return Path(s) if s else None


@dataclass
class AblationResult:
    """All variants' runs, in the order asked for, plus what was measured after them."""

    runs: list[VariantRun]
    folder: Path
    data_root: str = ""
    fist: dict = field(default_factory=dict)   # variant key → penetration at fist-like poses
    acts: dict = field(default_factory=dict)   # penetration where the loss acts (measure_penetration_where_it_acts)

    @classmethod
    def from_batch(cls, batch, data_root: str = "") -> "AblationResult":
        runs = []
        for r in batch.runs:
            v = get_variant(r.params["variant"])
            runs.append(VariantRun(v, r.state, r.seconds, r.metrics or {}, r.notebook,
                                   None if r.error is None else str(r.error)))
        return cls(runs, batch.folder, data_root)

    # ------------------------------------------------------------------ access
    def __getitem__(self, key: str) -> VariantRun:
        k = get_variant(key).key
        for r in self.runs:
            if r.variant.key == k:
                return r
        raise KeyError(f"variant {key!r} was not run (runs: {', '.join(r.variant.key for r in self.runs)})")

    @property
    def done(self) -> list[VariantRun]:
        return [r for r in self.runs if r.state == "done"]

    @property
    def failed(self) -> list[VariantRun]:
        return [r for r in self.runs if r.state != "done"]

    def _baseline(self) -> VariantRun | None:
        return next((r for r in self.done if r.variant.key == "a"), None)

    # ------------------------------------------------------------------ numbers
    def table(self) -> list[dict]:
        """One row per finished variant: label, steps, seconds, :data:`TABLE_METRICS`, ratios to (a)."""
        base = self._baseline()
        rows = []
        for r in self.done:
            h = r.held_out
            row = {"variant": r.variant.key, "name": r.variant.name, "label": r.variant.label,
                   "steps": (r.metrics.get("training") or {}).get("steps"),
                   "train_s": (r.metrics.get("training") or {}).get("seconds"),
                   "eval_s": r.metrics.get("eval_seconds"), "run_s": r.seconds}
            row.update({k: h.get(k) for k in TABLE_METRICS})
            for k in RATIO_METRICS:
                b = base.held_out.get(k) if base else None
                row[f"{k}_vs_a"] = (h[k] / b) if (b and h.get(k) is not None) else None
            if r.variant.key in self.fist:
                f = self.fist[r.variant.key]
                row["fist_penetration_depth_mean_mm"] = f.get("penetration_depth_mean")
                row["fist_penetration_fraction"] = f.get("penetration_fraction")
            rows.append(row)
        return rows

    def markdown(self) -> str:
        """The table as markdown (mm; ratios to (a) as ×)."""
        rows = self.table()
        if not rows:
            return "_no finished variant_"
        cols = [("label", "variant"), ("steps", "steps")] + [(k, v) for k, v in TABLE_METRICS.items()
                                                             if any(r.get(k) is not None for r in rows)]
        cols += [(f"{k}_vs_a", f"{TABLE_METRICS[k]} ÷ (a)") for k in RATIO_METRICS
                 if any(r.get(f"{k}_vs_a") is not None for r in rows)]
        if any("fist_penetration_depth_mean_mm" in r for r in rows):
            cols += [("fist_penetration_depth_mean_mm", "fist: penetration depth"),
                     ("fist_penetration_fraction", "fist: penetrating fraction")]

        def cell(k, v):
            if v is None:
                return "—"
            if isinstance(v, float):
                if k.endswith("_vs_a"):
                    return f"{v:.2f}×"
                if "fraction" in k:
                    return f"{100 * v:.2f} %"
                return f"{v:.3f}"
            return str(v)
        lines = ["| " + " | ".join(c[1] for c in cols) + " |", "| --- |" + " --: |" * (len(cols) - 1)]
        lines += ["| " + " | ".join(cell(k, r.get(k)) for k, _ in cols) + " |" for r in rows]
        return "\n".join(lines)

    def time_shares(self) -> dict[str, dict]:
        """Variant key → run seconds (the whole notebook) and share of the batch's total."""
        total = sum(r.seconds or 0.0 for r in self.runs)
        return {r.variant.key: {"seconds": r.seconds, "share": (r.seconds or 0.0) / total if total else None}
                for r in self.runs}

    def probe_curves(self) -> dict[str, list]:
        """Label → probe curve of each finished variant (for :func:`dhmlib.viz.training.probe_figure`)."""
        return {r.variant.label: r.probe_curve for r in self.done if r.probe_curve}

    def claims(self) -> dict[str, dict]:
        """The issue's claims as numbers (only those whose variants finished; mm unless named).

        - ``full_vs_lbs``: (d) vertex mean ÷ (a)'s (goal ≤ 0.50), also for (h) normal-direction correctives;
        - ``best_vs_lbs``: the best variant's vertex mean ÷ (a)'s (goal ≤ 0.35);
        - ``pose_corrective_near_flexed``: what adding the pose corrective ((c) → (d)) gains on vertices
          near flexed joints and on the others (mm and relative);
        - ``penetration_loss``: (d) against (e) at fist-like poses and on the held-out frames;
        - ``mano``: (f) against (a) and (d).
        """
        t = {r["variant"]: r for r in self.table()}
        out: dict[str, dict] = {}

        def ratio(x, y):
            return (x / y) if (x is not None and y) else None
        if "a" in t:
            for k, name, goal in (("d", "full_vs_lbs", 0.50), ("h", "normal_basis_vs_lbs", None)):
                if k in t:
                    out[name] = {"vertex_mean_mm": t[k]["vertex_mean_mm"], "lbs_vertex_mean_mm": t["a"]["vertex_mean_mm"],
                                 "ratio": ratio(t[k]["vertex_mean_mm"], t["a"]["vertex_mean_mm"]), "goal": goal}
            scored = [k for k in t if k != "a" and t[k].get("vertex_mean_mm") is not None]
            if scored and t["a"].get("vertex_mean_mm"):
                best = min(scored, key=lambda k: t[k]["vertex_mean_mm"])
                out["best_vs_lbs"] = {"variant": best, "vertex_mean_mm": t[best]["vertex_mean_mm"],
                                      "ratio": ratio(t[best]["vertex_mean_mm"], t["a"]["vertex_mean_mm"]), "goal": 0.35}
        if "c" in t and "d" in t:
            c, d = self["c"].held_out, self["d"].held_out
            near = (c.get("vertex_near_flexed_mean_mm"), d.get("vertex_near_flexed_mean_mm"))
            far = (c.get("vertex_not_near_flexed_mean_mm"), d.get("vertex_not_near_flexed_mean_mm"))
            out["pose_corrective_near_flexed"] = {
                "near_flexed_without_mm": near[0], "near_flexed_with_mm": near[1],
                "near_flexed_gain_mm": None if None in near else near[0] - near[1],
                "near_flexed_gain_rel": None if None in near else 1 - ratio(near[1], near[0]),
                "elsewhere_without_mm": far[0], "elsewhere_with_mm": far[1],
                "elsewhere_gain_mm": None if None in far else far[0] - far[1],
                "elsewhere_gain_rel": None if None in far else 1 - ratio(far[1], far[0])}
        if "d" in t and "e" in t:
            out["penetration_loss"] = {
                "fist_depth_mean_mm": (self.fist.get("d", {}).get("penetration_depth_mean"),
                                       self.fist.get("e", {}).get("penetration_depth_mean")),
                "fist_fraction": (self.fist.get("d", {}).get("penetration_fraction"),
                                  self.fist.get("e", {}).get("penetration_fraction")),
                "held_out_fraction": (t["d"]["penetration_fraction"], t["e"]["penetration_fraction"]),
                "order": "(with the loss (d), without (e))"}
            if "d" in self.acts and "e" in self.acts:
                d_, e_ = self.acts["d"], self.acts["e"]
                pl = out["penetration_loss"]
                for where in ("training_poses", "held_out_predicted"):
                    pl[f"{where}_fraction"] = (d_[where]["penetration_fraction"], e_[where]["penetration_fraction"])
                    pl[f"{where}_depth_mean_mm"] = (d_[where]["penetration_depth_mean"],
                                                    e_[where]["penetration_depth_mean"])
                    if "truth" in self.acts:
                        pl[f"{where}_truth_fraction"] = self.acts["truth"][where]["penetration_fraction"]
                    dd, ee = pl[f"{where}_fraction"]
                    pl[f"{where}_reduction_rel"] = (1 - dd / ee) if ee else None
                pl["held_out_error_change_rel"] = ratio(t["d"]["vertex_mean_mm"], t["e"]["vertex_mean_mm"]) - 1 \
                    if t["e"].get("vertex_mean_mm") else None
        ivs = self.intervals()
        if ivs:
            out["intervals"] = ivs
        if all(k in t for k in "abcd"):
            v = [t[k]["vertex_mean_mm"] for k in "abcd"]
            steps = [1 - v[i + 1] / v[i] for i in range(3)]
            cd = ivs.get("c→d")
            best = min(self.done, key=lambda r: r.held_out.get("vertex_mean_mm") or math.inf)
            out["ladder"] = {"vertex_mean_mm": dict(zip("abcd", v)), "step_gain_rel": dict(zip(("a→b", "b→c", "c→d"),
                                                                                                steps)),
                             "each_step_at_least_3_percent": all(g >= 0.03 for g in steps),
                             "c_to_d_interval_excludes_zero": bool(cd and cd["high"] < 0),
                             "d_vs_a": v[3] / v[0], "best": best.variant.key,
                             "best_vs_a": best.held_out["vertex_mean_mm"] / v[0]}
        if "f" in t:
            out["mano"] = {"vertex_mean_mm": t["f"]["vertex_mean_mm"],
                           "near_flexed_mm": t["f"]["vertex_near_flexed_mean_mm"],
                           "vs_lbs": ratio(t["f"]["vertex_mean_mm"], t.get("a", {}).get("vertex_mean_mm")),
                           "vs_full": ratio(t["f"]["vertex_mean_mm"], t.get("d", {}).get("vertex_mean_mm"))}
        return out

    # ------------------------------------------------------------------ per frame and intervals
    def per_frame(self, key: str, metric: str = "vertex_total_mm") -> dict[int, float]:
        """Frame → ``metric`` of variant ``key`` on the held-out frames (its ``result/metrics.json``)."""
        run = self[key]
        path = run.meshes.parent / "metrics.json" if run.meshes else None
        if path is None or not path.is_file():
            return {}
        pf = json.loads(path.read_text())["per_frame"]
        if metric not in pf:
            return {}
        return {int(f): v for f, v in zip(pf["frame"], pf[metric]) if v is not None}

    def interval(self, before: str, after: str, metric: str = "vertex_total_mm") -> dict | None:
        """``after − before`` of ``metric`` per held-out frame: mean and 95 % interval over blocks of
        consecutive frames (:func:`paired_interval`; NaN bounds with fewer than two
        blocks), or None without per-frame values."""
        a, b = self.per_frame(before, metric), self.per_frame(after, metric)
        frames = sorted(set(a) & set(b))
        if not frames:
            return None
        out = paired_interval([a[f] for f in frames], [b[f] for f in frames])
        out.update({"before": get_variant(before).key, "after": get_variant(after).key, "frames": len(frames),
                    "metric": metric})
        return out

    #: the comparisons of the claims: each step of the ladder, then the alternatives to (d)
    COMPARISONS = (("a", "b"), ("b", "c"), ("c", "d"), ("a", "d"), ("d", "e"), ("d", "f"), ("d", "g"), ("d", "h"), ("d", "i"),
                   ("c", "f"), ("c", "i"))

    def intervals(self, metric: str = "vertex_total_mm") -> dict[str, dict]:
        """``"c→d"`` → :meth:`interval` for each of :attr:`COMPARISONS` whose variants both finished."""
        keys = {r.variant.key for r in self.done}
        out = {}
        for x, y in self.COMPARISONS:
            if x in keys and y in keys:
                iv = self.interval(x, y, metric)
                if iv is not None:
                    out[f"{x}→{y}"] = iv
        return out

    def intervals_markdown(self) -> str:
        """:meth:`intervals` as a markdown table (mm; negative = the second variant is better)."""
        rows = ["| comparison | Δ vertex mean, mm | 95 % interval | relative | blocks of 5 frames |",
                "| --- | --: | --: | --: | --: |"]
        for name, iv in self.intervals().items():
            rows.append(f"| {get_variant(iv['before']).label} → {get_variant(iv['after']).label} | {iv['mean']:+.3f} | "
                        f"[{iv['low']:+.3f}, {iv['high']:+.3f}] | {100 * iv['relative']:+.1f} % | {iv['blocks']} |")
        return "\n".join(rows)

    def measure_penetration_where_it_acts(self, keys: Sequence[str] = ("d", "e"), every: int = 3,
                                          hand_model=None) -> dict[str, dict]:
        """Interpenetration where the penetration loss acts, beside the truth's own at the same frames.

        For each variant in ``keys``: its decoder at its own TRAINING poses (the snapshot's pose embedding;
        every ``every``-th training frame) and its held-out meshes (the predicted poses); ``"truth"``: the
        virtual capture's true meshes of the same frames (skipped on data without them). Stored in ``acts``
        and in the claims (``penetration_loss.training_poses_fraction`` …).
        """
        root = data_dir(self.data_root)
        hand = hand_model or read_hand_model(root / "hand_model")
        parts = hand_parts(hand)
        done = {r.variant.key for r in self.done}
        train_frames = held = None
        for k in [get_variant(k).key for k in keys]:
            if k not in done:
                continue
            run = self[k]
            try:
                frames, train = penetration_at_training_poses(run.snapshot, hand, parts, every)
            except ValueError:          # image source: no training poses of its own
                continue
            held = sorted(int(p.stem) for p in run.meshes.glob("*.obj"))
            hv = np.stack([read_obj(run.meshes / f"{f:06d}.obj")[0] for f in held])
            test = penetration(hv, parts)
            self.acts[k] = {"training_poses": {**{x: train[x] for x in ("penetration_fraction", "penetration_depth_mean")},
                                               "frames": len(frames)},
                            "held_out_predicted": {**{x: test[x] for x in ("penetration_fraction",
                                                                           "penetration_depth_mean")},
                                                   "frames": len(held)}}
            train_frames = frames
        truth = self.true_meshes(train_frames) if train_frames else None
        if truth is not None and held:
            tt = penetration(truth[0], parts)
            th = penetration(self.true_meshes(held)[0], parts)
            self.acts["truth"] = {"training_poses": {x: tt[x] for x in ("penetration_fraction", "penetration_depth_mean")},
                                  "held_out_predicted": {x: th[x] for x in ("penetration_fraction",
                                                                            "penetration_depth_mean")}}
        return self.acts

    def acts_markdown(self) -> str:
        """:meth:`measure_penetration_where_it_acts` as a markdown table."""
        rows = ["| model | training poses: penetrating | mean depth, mm | held-out predicted: penetrating | mean depth, mm |",
                "| --- | --: | --: | --: | --: |"]
        for k, v in self.acts.items():
            label = "ground truth (same frames)" if k == "truth" else get_variant(k).label
            t, h = v["training_poses"], v["held_out_predicted"]
            rows.append(f"| {label} | {100 * t['penetration_fraction']:.2f} % | {t['penetration_depth_mean']:.2f} | "
                        f"{100 * h['penetration_fraction']:.2f} % | {h['penetration_depth_mean']:.2f} |")
        return "\n".join(rows)

    # ------------------------------------------------------------------ meshes and fists
    def held_out_frames(self) -> list[int]:
        """Frames whose meshes every finished variant wrote (``meshes/<frame:06d>.obj``), sorted."""
        sets = [{int(p.stem) for p in r.meshes.glob("*.obj")} for r in self.done if r.meshes and r.meshes.is_dir()]
        return sorted(set.intersection(*sets)) if sets else []

    def frame_meshes(self, frames: Sequence[int]) -> dict[str, np.ndarray]:
        """Label → (P, V, 3) world mm meshes of ``frames`` as each finished variant predicted them."""
        out = {}
        for r in self.done:
            out[r.variant.label] = np.stack([read_obj(r.meshes / f"{int(f):06d}.obj")[0] for f in frames])
        return out

    def true_meshes(self, frames: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """((P, V, 3) world mm, faces (F, 3)) of the virtual capture's true meshes of ``frames``, or None
        on data without them (the real release: the error figure is skipped there)."""
        root = data_dir(self.data_root)
        try:
            return ground_truth_meshes(root, 1, frames), ground_truth_faces(root, 1)
        except FileNotFoundError:
            return None

    def measure_fist_penetration(self, num_poses: int = 16, seed: int = 0, hand_model=None) -> dict[str, dict]:
        """Interpenetration of each finished variant's decoder at the same fist-like poses.

        Decodes :func:`dhmlib.metrics.mesh.fist_like_poses` with each snapshot (its own correctives) and
        measures :func:`dhmlib.metrics.mesh.penetration_at_poses`; stored in ``fist`` (and the table).
        """
        hand = hand_model or read_hand_model(data_dir(self.data_root) / "hand_model")
        poses = fist_like_poses(num_poses, seed)
        for r in self.done:
            model = model_from_snapshot(r.snapshot, hand).eval()
            s = penetration_at_poses(model, poses)
            self.fist[r.variant.key] = {k: v for k, v in s.items() if k != "per_frame"}
        return self.fist

    def fist_markdown(self) -> str:
        """:meth:`measure_fist_penetration`'s numbers as a markdown table (one row per variant)."""
        rows = ["| variant | poses | penetrating fraction | mean depth, mm | max depth, mm |",
                "| --- | --: | --: | --: | --: |"]
        for k, v in self.fist.items():
            mean, top = v.get("penetration_depth_mean"), v.get("penetration_depth_max")
            rows.append(f"| {get_variant(k).label} | {v.get('poses')} | {100 * v['penetration_fraction']:.2f} % | "
                        f"{'—' if mean is None else f'{mean:.2f}'} | {'—' if top is None else f'{top:.2f}'} |")
        return "\n".join(rows)

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        return {"batch_folder": str(self.folder), "data_root": self.data_root,
                "variants": [{"key": r.variant.key, "name": r.variant.name, "label": r.variant.label,
                              "description": r.variant.description, "state": r.state, "error": r.error,
                              "run_seconds": r.seconds, "notebook": str(r.notebook),
                              "meshes": None if r.meshes is None else str(r.meshes),
                              "training": r.metrics.get("training"), "held_out": r.held_out,
                              "probe_curve": r.probe_curve, "fist_like_poses": self.fist.get(r.variant.key),
                              "penetration_where_it_acts": self.acts.get(r.variant.key),
                              "train_config": r.metrics.get("train_config"),
                              "model_config": r.metrics.get("model_config")} for r in self.runs],
                "penetration_truth_same_frames": self.acts.get("truth"),
                "table": self.table(), "claims": self.claims(), "time_shares": self.time_shares()}

    def write_json(self, path) -> Path:
        """Write :meth:`to_dict` (NaN → null) to ``path`` (folders created); returns it."""
        def clean(x):
            if isinstance(x, float) and not math.isfinite(x):
                return None
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            return x
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(clean(self.to_dict()), indent=1) + "\n")
        tmp.replace(path)
        return path


__all__ = ["TABLE_METRICS", "variant_keys", "RATIO_METRICS", "VARIANTS", "ablation_parameters", "run_ablation", "AblationResult",
           "VariantRun"]
