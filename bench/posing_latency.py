"""Posing-widget latency: from a slider value change to the new arrays assigned to pythreejs.

    python bench/posing_latency.py [--vertices 8000] [--repeats 60] [--out bench/results/posing_latency.json]

Runs the real :class:`dhmlib.viz.PosingWidget` around ``DeepHandMesh.decode`` (procedural hand,
correctives on) outside a browser: a slider's ``value`` is set as the front-end would, and the
time until the handler returns is measured (decode, vertex normals, float32 conversion, trait
assignment and widget-state serialisation; the comm itself is a no-op outside a kernel).
Budget: 30 ms.  The breakdown compares our sparse-matrix vertex normals with two peers
(``np.add.at`` scatter and ``trimesh``'s ``vertex_normals``).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhmlib.network.model import DeepHandMesh, ModelConfig  # noqa: E402
from dhmlib.synth import build_procedural_hand  # noqa: E402
from dhmlib.viz import PosingWidget  # noqa: E402
from dhmlib.viz.geometry import NormalSolver  # noqa: E402

BUDGET_MS = 30.0


def timed(fn, repeats: int, warmup: int = 5) -> list[float]:
    """Wall times of ``fn(i)`` in milliseconds."""
    for i in range(warmup):
        fn(i)
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def summary(times):
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)),
            "max_ms": max(times)}


def normals_add_at(v, f):
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vertices", type=int, default=8000)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "posing_latency.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    hand = build_procedural_hand(target_vertices=args.vertices)
    model = DeepHandMesh(hand, ModelConfig(backbone=18)).eval()
    with torch.no_grad():   # non-zero correctives, as after training (the cost is the same)
        for lin in (model.skin_refine_net.fc_pose[-1], model.skin_refine_net.fc_id[-1]):
            lin.weight.normal_(0, 0.01)
    w = PosingWidget.from_model(model, preset="fist")
    slider = w.sliders[("index1", "z")]
    angles = np.linspace(-20.0, 85.0, 7)

    def slider_change(i):
        slider.value = float(angles[i % len(angles)])
        assert w.last_error is None, w.last_error

    euler = torch.as_tensor(w.pose, dtype=torch.float32)[None]

    def decode_only(_i):
        with torch.no_grad():
            model.decode(euler)

    v, f = w.vertices, w.faces
    solver = NormalSolver(f, len(v))
    rows = {
        "slider change -> arrays assigned (full update)": summary(timed(slider_change, args.repeats)),
        "  decode alone, torch default threads (widget: 1)": summary(timed(decode_only, args.repeats)),
        "  vertex normals, ours (sparse incidence)": summary(timed(lambda _i: solver(v), args.repeats)),
        "  vertex normals, peer: np.add.at": summary(timed(lambda _i: normals_add_at(v, f), args.repeats)),
    }
    try:
        import trimesh

        rows["  vertex normals, peer: trimesh"] = summary(timed(
            lambda _i: trimesh.Trimesh(v, f, process=False).vertex_normals, args.repeats))
    except ImportError:
        pass
    full = rows["slider change -> arrays assigned (full update)"]["median_ms"]
    ours = rows["  vertex normals, ours (sparse incidence)"]["median_ms"]
    print(f"posing widget latency, V={len(v)}, F={len(f)}, torch threads={torch.get_num_threads()}, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'step':52s} {'median ms':>10s} {'p90 ms':>8s} {'max ms':>8s} {'ratio':>8s}")
    for name, r in rows.items():
        ratio = r["median_ms"] / (ours if "normals" in name else BUDGET_MS)
        print(f"{name:52s} {r['median_ms']:10.2f} {r['p90_ms']:8.2f} {r['max_ms']:8.2f} {ratio:8.2f}")
    print(f"(ratio: normals rows vs ours; other rows vs the {BUDGET_MS:.0f} ms budget)")
    verdict = "within" if full <= BUDGET_MS else "OVER"
    print(f"full update median {full:.1f} ms: {verdict} the {BUDGET_MS:.0f} ms budget")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"vertices": len(v), "faces": len(f), "budget_ms": BUDGET_MS,
                               "torch_threads": torch.get_num_threads(), "rows": rows,
                               "within_budget": full <= BUDGET_MS}, indent=2))
    print(f"wrote {out}")
    return 0 if full <= BUDGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
