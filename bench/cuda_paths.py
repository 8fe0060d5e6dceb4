"""CUDA paths: the PyTorch rasterizer on the GPU against the CPU, and training through torchrun/nccl.

    python bench/cuda_paths.py [--repeat 10] [--work DIR] [--train-steps 20] [--out bench/results/cuda_paths.json]

Needs a CUDA device (exits 2 without one). Two parts, measured in one run:

1. **Rasterizer**: ``render_depth`` (backend ``"torch"``) of ``bench/render.py``'s scene (procedural
   hand ≈ 8k vertices, 8 poses × 6 views, 256² crops: one training batch of 48 maps) on the CPU
   (all of its cores) and on CUDA; forward and forward+backward, median of ``--repeat`` calls
   (``cuda.synchronize`` inside the timed call); the peer is the CPU in the same process. Agreement:
   coverage mismatch and mean |Δz| (mm) where both maps have the hand.
2. **Training on CUDA**: a small virtual capture (24 frames × 6 cameras, images included) is written
   to ``--work``; then the ``paper`` preset (ResNet-50, image source, 6 views, 256²) trains
   ``--train-steps`` steps twice with the same seed: in this process on ``cuda`` (no process group)
   and as ``dhm train --gpu 0`` (torchrun, one process, nccl, DDP). Reported: steps/s of each, and
   the largest parameter difference between the two snapshots. cuDNN and atomics make CUDA runs
   non-deterministic, so the difference is a sanity bound (same recipe and data order), not a bit
   test; the bit-exact DDP checks are the CPU/gloo tests in ``tests/test_train_infra.py``.
   Then ``--continue`` resumes the nccl run for a few more steps and ``dhm test`` evaluates it.

Steps/s and memory of one training step per part are ``bench/train_step.py``'s job (it runs
on CUDA too when a GPU is present).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import TORCH, make_scene  # noqa: E402
from timing import timed, write_json  # noqa: E402

from dhmlib.render import render_depth  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def rasterizer(repeat: int) -> dict:
    V, faces, cams, crop = make_scene(256)
    res = {"maps": int(crop.batch_shape[0] * crop.batch_shape[1]), "cpu_threads": torch.get_num_threads()}
    depth = {}
    for dev in ("cpu", "cuda"):
        Vd, Fd, Cd, Kd = V.to(dev), faces.to(dev), cams.to(device=dev), crop.to(dev)
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

        def fwd():
            render_depth(Vd, Fd, Cd, Kd, settings=TORCH)
            sync()

        def fwdbwd():
            v = Vd.detach().requires_grad_()
            render_depth(v, Fd, Cd, Kd, settings=TORCH).sum().backward()
            sync()
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        res[f"{dev}_fwd_ms"] = timed(fwd, repeat)
        res[f"{dev}_fwdbwd_ms"] = timed(fwdbwd, repeat)
        if dev == "cuda":
            res["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        depth[dev] = render_depth(Vd, Fd, Cd, Kd, settings=TORCH).cpu()
    a, b = depth["cpu"], depth["cuda"]
    both = (a > 0) & (b > 0)
    res["coverage_mismatch"] = float(((a > 0) != (b > 0)).double().mean())
    res["mean_abs_dz_mm"] = float((a - b)[both].abs().mean())
    res["max_abs_dz_mm"] = float((a - b)[both].abs().max())
    res["speedup_fwd"] = res["cpu_fwd_ms"] / res["cuda_fwd_ms"]
    res["speedup_fwdbwd"] = res["cpu_fwdbwd_ms"] / res["cuda_fwdbwd_ms"]
    return res


def dhm(*args: str, env=None) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "dhmlib.cli", *args], cwd=ROOT, env=env, text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if p.returncode:
        raise SystemExit(f"dhm {' '.join(args)} failed ({p.returncode}):\n{p.stdout[-4000:]}")
    return time.perf_counter() - t, p.stdout


def _trainable_diff(a_path, b_path, model_keys) -> dict:
    """Largest |a − b| / (|b|max + 1e-12) over the trainable tensors (BN running statistics excluded)."""
    from dhmlib.network.snapshot import network_state, read_snapshot

    a, b = network_state(read_snapshot(a_path)), network_state(read_snapshot(b_path))
    rel = {k: float((a[k] - b[k]).abs().max() / (b[k].abs().max() + 1e-12)) for k in model_keys}
    worst = max(rel, key=rel.get)
    return {"key": worst, "relative": rel[worst], "tensors": len(rel)}


def _first_last(metrics_path: Path) -> tuple[float, float]:
    import json
    recs = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    totals = [r["total"] for r in recs if "total" in r]
    return totals[0], totals[-1]


def training(work: Path, steps: int) -> dict:
    from dhmlib.network.snapshot import network_state, read_snapshot
    from dhmlib.synth.capture import CaptureConfig, write_capture
    from dhmlib.train import preset, train

    data = work / "data"
    if not (data / "KRT_512").exists():
        write_capture(data, CaptureConfig(frames=24, cameras=6))
    base, mc = preset("paper", max_frames=24, log_every=5, deterministic=True)
    epochs = max(1, -(-steps * base.batch_size // 22))   # ≈ steps (22 training frames after the split)
    base = base.replace(epochs=epochs)
    res = {"epochs": epochs, "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG")}
    workers = min(8, (os.cpu_count() or 2) // 2)
    for name, tc in (("inprocess", base), (f"inprocess_{workers}_workers", base.replace(num_workers=workers))):
        torch.cuda.reset_peak_memory_stats()
        r = train(tc, mc, data, work / name, device="cuda", echo=False, progress=False)
        res[name] = {"steps": r.steps, "wall_s": r.wall_s, "steps_per_s": r.steps / r.wall_s,
                     "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20, "snapshot": str(r.snapshot)}
    sets = ["max_frames=24", "log_every=5", "keep_snapshots=2", "deterministic=true"]
    out = work / "nccl"
    wall, log = dhm("train", "--preset", "paper", "--gpu", "0", "--data", str(data), "--output", str(out),
                    "--epochs", str(epochs), "--no-progress", "--set", *sets)
    res["nccl"] = {"wall_s_with_start": wall, "command": next((ln for ln in log.splitlines() if "nccl" in ln), None)}
    snaps = sorted((out / "model_dump").glob("snapshot_*.pth.tar"), key=lambda p: p.stat().st_mtime)
    state = network_state(read_snapshot(snaps[-1]))
    trainable = [k for k, v in state.items() if v.is_floating_point() and "running_" not in k]
    res["nccl_vs_inprocess"] = _trainable_diff(snaps[-1], res["inprocess"]["snapshot"], trainable)
    res["loss_first_last"] = {"inprocess": _first_last(work / "inprocess" / "log" / "metrics.jsonl"),
                              "nccl": _first_last(out / "log" / "metrics.jsonl")}
    wall, log = dhm("train", "--preset", "paper", "--gpu", "0", "--data", str(data), "--output", str(out),
                    "--epochs", str(epochs + 1), "--continue", "--no-progress", "--set", *sets)
    res["nccl_continue"] = {"seconds": wall, "resumed_line": next((ln for ln in log.splitlines() if "resum" in ln.lower()), None)}
    snaps = sorted((out / "model_dump").glob("snapshot_*.pth.tar"), key=lambda p: p.stat().st_mtime)
    wall, log = dhm("test", "--data", str(data), "--output", str(out),
                    "--test_epoch", snaps[-1].name.split("_")[1].split(".")[0])
    res["test"] = {"seconds": wall, "tail": log.splitlines()[-12:]}
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--work", default=None, help="folder for the capture and the runs (default: a temporary one)")
    ap.add_argument("--skip-training", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cuda_paths.json"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/cuda_paths.py: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    r = rasterizer(args.repeat)
    result["rasterizer"] = r
    print(f"{result['device']}, torch {torch.__version__}; rasterizer, {r['maps']} maps of 256²:")
    print(f"  forward          cpu {r['cpu_fwd_ms']:8.1f} ms   cuda {r['cuda_fwd_ms']:7.2f} ms   {r['speedup_fwd']:6.1f}x")
    print(f"  forward+backward cpu {r['cpu_fwdbwd_ms']:8.1f} ms   cuda {r['cuda_fwdbwd_ms']:7.2f} ms   "
          f"{r['speedup_fwdbwd']:6.1f}x")
    print(f"  agreement: coverage mismatch {r['coverage_mismatch']:.2e}, mean |dz| {r['mean_abs_dz_mm']:.2e} mm, "
          f"max {r['max_abs_dz_mm']:.2e} mm; peak {r['cuda_peak_allocated_mb']:.0f} MB")
    if not args.skip_training:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dhm_cuda_"))
        t = training(work, args.train_steps)
        result["training"] = t
        for name, r in t.items():
            if name.startswith("inprocess"):
                print(f"paper preset on cuda, {name}: {r['steps']} steps, {r['steps_per_s']:.2f} steps/s, "
                      f"peak {r['peak_allocated_mb']:.0f} MB")
        print(f"torchrun --gpu 0 (nccl): {t['nccl']['wall_s_with_start']:.1f} s wall; {t['nccl']['command']}")
        d = t["nccl_vs_inprocess"]
        print(f"  nccl vs in-process (deterministic, same seed): max relative parameter difference {d['relative']:.3g} "
              f"({d['key']}, over {d['tensors']} trainable tensors); total loss first/last {t['loss_first_last']}")
        print(f"--continue: {t['nccl_continue']['resumed_line']}; dhm test: {t['test']['seconds']:.1f} s")
        print("\n".join("  " + ln for ln in t["test"]["tail"]))
    print(f"wrote {write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
