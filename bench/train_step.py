"""Training step: steps/s, peak memory and where the time goes, plus the penetration and Laplacian losses.

    python bench/train_step.py [--root data] [--steps 8] [--paper-steps 2] [--threads 2] [--quick]
                               [--max-step-s 300] [--out bench/results/train_step.json]
                               [--peer NAME=CHECKOUT ...] [--probe-steps N]

Side by side (``--peer``): the same measurement of another checkout (e.g. today's main in a
``git worktree``), in the same run, on the same capture and seed: each preset's child process
imports ``dhmlib`` from that checkout instead of this one, and the table prints every part for
both with the ratio this / peer. ``--probe-steps N`` also trains ``cpu-small`` for N steps with
each tree's own ``dhm train`` (same data, seed, probe at the end) and reports the held-out probe
(true angles, mm) and the wall time of each: the check that a faster step learns the same thing.

Four parts, measured in one run:

1. **Steps** of ``dhmlib.train.step.TrainStep`` + backward + Adam (fused, as ``dhmlib.train.train``
   builds it) on batches of ``DeepHandMeshDataset`` from a virtual capture (``--root`` when it holds
   one, else 12 frames × 8 cameras written to a temporary folder by ``write_capture``), for the
   ``cpu-small`` preset and the ``paper`` preset (ResNet-50, image source, 256² input and renders,
   6 views, batch 8, penetration on). Each preset runs in a fresh process, so its peak RSS
   (``ru_maxrss``, the high-water mark, as ``bench/loader.py`` reads it) is its own; CUDA: also
   ``torch.cuda.max_memory_allocated``. The first step is a warm-up and not timed; ``paper`` on
   CPU times ``--paper-steps`` steps and is skipped (with the reason) under ``--quick`` or when its
   warm-up step took longer than ``--max-step-s``.
   **Breakdown method**: manual wall-clock timing (``time.perf_counter``; ``cuda.synchronize`` first
   on CUDA) of wrappers put around the pieces the step calls — data (``next(loader)``, in-process),
   pose source (encoder: backbone + pose net; or the embedding), root (Kabsch), decode, render,
   rest pose (penetration radii), each loss (joint, depth, penetration, Laplacian) — and around
   ``backward()`` and ``optimizer.step()``. Forward pieces are forward only; backward is one number
   (autograd runs the pieces' backward interleaved). The wrappers also open
   ``torch.autograd.profiler.record_function`` ranges, so ``--profile`` prints a torch.profiler
   table with the same names.
2. **Penetration loss** vectorized vs the straightforward loop of the same semantics:
   ``bench/penetration.py`` (its loop and its set-up, imported), forward + backward, B = 8.
3. **Laplacian**: forward + backward of ``laplacian_loss`` at V ≈ 8000, B = 8, with the operator
   ``TrainStep`` uses (``MeshLaplacian``, index_add), the sparse CSR matrix (``uniform_laplacian``)
   and a dense V × V matrix (``L @ x``), with the operator's memory.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if "--_code" in sys.argv:  # a peer's child process: import dhmlib from that checkout
    ROOT = Path(sys.argv[sys.argv.index("--_code") + 1]).resolve()
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from timing import timed, write_json  # noqa: E402

#: breakdown rows in print order (forward pieces, then backward and optimizer)
PARTS = ("data", "encoder", "embedding", "root", "decode", "render", "joint", "depth", "rest_pose",
         "penetration", "laplacian", "backward", "optimizer")


class Clock:
    """Accumulates wall time per label; ``wrap(label, fn)`` times every call of ``fn``.

    Only the outermost timed call counts (``rest_pose`` calls ``decode``: its decode is rest_pose's),
    so the parts add up to the step.
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.ms: dict[str, float] = {}
        self.on = True
        self.depth = 0

    def sync(self):
        if self.cuda:
            import torch
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def __call__(self, label: str):
        import torch
        outer = self.depth == 0
        if outer:
            self.sync()
        t = time.perf_counter()
        self.depth += 1
        try:
            with torch.autograd.profiler.record_function(f"bench::{label}"):
                yield
        finally:
            self.depth -= 1
        if outer:
            self.sync()
            if self.on:
                self.ms[label] = self.ms.get(label, 0.0) + (time.perf_counter() - t) * 1e3

    def wrap(self, label: str, fn):
        def timed(*a, **k):
            with self(label):
                return fn(*a, **k)
        return timed


def instrument(step_module, clock: Clock) -> None:
    """Put timing wrappers around what ``TrainStep.forward`` calls (module globals and instance methods)."""
    import dhmlib.train.step as step_py

    for name, label in (("render_depth", "render"), ("joint_loss", "joint"), ("depth_loss", "depth"),
                        ("laplacian_loss", "laplacian")):
        setattr(step_py, name, clock.wrap(label, getattr(step_py, name)))
    m = step_module.model
    m.decode = clock.wrap("decode", m.decode)
    m.root_from_joints = clock.wrap("root", m.root_from_joints)
    m.rest_pose = clock.wrap("rest_pose", m.rest_pose)
    step_module.euler = clock.wrap("encoder" if step_module.config.pose_source == "image" else "embedding",
                                   step_module.euler)
    if step_module.penetration is not None:
        step_module.penetration.forward = clock.wrap("penetration", step_module.penetration.forward)


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peer_import(name: str, *modules: str):
    """``name`` from the first of ``modules`` that holds it: a peer checkout may predate the package layout."""
    import importlib

    for mod in modules:
        try:
            module = importlib.import_module(mod)
        except ImportError:
            continue
        # an editable install of this tree resolves submodules the peer lacks to this tree: not the peer's
        if Path(module.__file__).resolve().is_relative_to(ROOT) and hasattr(module, name):
            return getattr(module, name)
    raise ImportError(f"bench/train_step.py: {name} is in none of {', '.join(modules)} of {ROOT}")


def measure_steps(root: str, preset_name: str, device: str, steps: int, threads: int, max_step_s: float,
                  profile: bool) -> dict:
    """Time ``steps`` training steps of a preset (after one warm-up step) in this process."""
    import torch

    from dhmlib.data.layout import Layout
    from dhmlib.data.sample import collate_samples
    from dhmlib.memory import keep_freed_memory
    from dhmlib.train.config import preset
    from dhmlib.train.embedding import PoseEmbedding
    from dhmlib.train.loop import seed_everything
    from dhmlib.train.step import TrainStep

    # a peer checkout from before the package layout (issue 16) keeps these in flat modules
    HandModel = peer_import("HandModel", "dhmlib.hand.handmodel", "dhmlib.handmodel")
    DeepHandMesh = peer_import("DeepHandMesh", "dhmlib.network.model", "dhmlib.model")
    parameter_groups = peer_import("parameter_groups", "dhmlib.train.optim", "dhmlib.train.loop")
    make_dataset = peer_import("make_dataset", "dhmlib.train.inputs", "dhmlib.train.loop")
    split_training_frames = peer_import("split_training_frames", "dhmlib.train.inputs", "dhmlib.train.loop")

    torch.set_num_threads(threads)
    kept = keep_freed_memory()            # as dhm train and train() do
    dev = torch.device(device)
    cfg, mcfg = preset(preset_name)
    seed_everything(cfg.seed)
    train_frames, _, _ = split_training_frames(root, cfg, log=lambda m: None)
    hand = HandModel.read(Layout(root, cfg.subject).hand_model_dir)
    ds = make_dataset(root, cfg, train_frames, hand.skeleton)
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=collate_samples, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    model = DeepHandMesh(hand, mcfg)
    embedding = PoseEmbedding(train_frames, model.hand.dof_mask) if cfg.pose_source == "embedding" else None
    penetration = None
    if cfg.uses_penetration:
        from dhmlib.losses import PenetrationLoss
        penetration = PenetrationLoss.from_hand(hand)
    step_module = TrainStep(model, cfg, embedding, penetration).to(dev)
    groups = parameter_groups(model, cfg, embedding)
    try:
        optimizer = torch.optim.Adam(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        optimizer = torch.optim.Adam(groups)
    step_module.train()
    clock = Clock(dev.type == "cuda")
    instrument(step_module, clock)
    rss_setup = peak_rss_mb()

    def batches():
        while True:
            yield from loader

    it = batches()

    def one_step():
        with clock("data"):
            batch = next(it).to(dev)
        out = step_module(batch)
        optimizer.zero_grad(set_to_none=True)
        with clock("backward"):
            out.total.backward()
        with clock("optimizer"):
            optimizer.step()
        return {k: float(v.detach()) for k, v in out.terms.items()}

    clock.on = False
    t = time.perf_counter()
    terms = one_step()
    warm_s = time.perf_counter() - t
    clock.on = True
    import dhmlib
    res = {"preset": preset_name, "device": device, "threads": threads, "dhmlib": str(Path(dhmlib.__file__).parent), "batch": cfg.batch_size,
           "views": cfg.num_views, "render_size": list(cfg.render_size), "input_size": list(cfg.input_size),
           "pose_source": cfg.pose_source, "backbone": mcfg.backbone, "penetration": penetration is not None,
           "vertices": hand.num_vertices, "keep_freed_memory": kept,
           "parameters_trained": sum(p.numel() for g in groups for p in g["params"]),
           "warmup_step_s": warm_s, "peak_rss_setup_mb": rss_setup, "terms_first_step": terms}
    if warm_s > max_step_s:
        res.update(skipped=f"warm-up step took {warm_s:.0f} s > --max-step-s {max_step_s:g}",
                   peak_rss_mb=peak_rss_mb())
        return res
    prof = None
    if profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
        prof.__enter__()
    times = []
    for _ in range(steps):
        clock.sync()
        t = time.perf_counter()
        one_step()
        clock.sync()
        times.append((time.perf_counter() - t) * 1e3)
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40), file=sys.stderr)
    total = sum(times)
    parts = {k: v / steps for k, v in clock.ms.items()}
    parts["other"] = total / steps - sum(parts.values())
    res.update(steps=steps, step_ms=times, step_ms_mean=total / steps, step_ms_median=statistics.median(times),
               steps_per_s=steps / total * 1e3, parts_ms=parts, peak_rss_mb=peak_rss_mb())
    if dev.type == "cuda":
        res["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["cuda_device"] = torch.cuda.get_device_name()
    return res


def run_child(args, root: Path, preset_name: str, device: str, steps: int, code: Path = ROOT) -> dict:
    cmd = [sys.executable, __file__, "--root", str(root), "--threads", str(args.threads),
           "--max-step-s", str(args.max_step_s), "--_child", preset_name, device, str(steps),
           "--_code", str(code)]
    if args.profile:
        cmd.append("--profile")
    env = dict(os.environ, PYTHONPATH=str(code) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if args.profile:
        print(p.stderr, file=sys.stderr)
    if p.returncode:
        return {"preset": preset_name, "device": device, "error": p.stderr.strip().splitlines()[-1:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_penetration(repeats: int, threads: int) -> dict:
    """bench/penetration.py's comparison (vectorized vs its loop), its JSON left in bench/results/."""
    spec = importlib.util.spec_from_file_location("bench_penetration", ROOT / "bench" / "penetration.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        return mod.main(["--repeats", str(repeats), "--threads", str(threads)])


def bench_laplacian(vertices: int, batch: int, repeats: int) -> dict:
    """Forward + backward of laplacian_loss with three forms of the same operator."""
    import torch

    from dhmlib.losses import MeshLaplacian, laplacian_loss, uniform_laplacian
    from dhmlib.synth import build_procedural_hand

    hand = build_procedural_hand(target_vertices=vertices, seed=0)
    faces, V = torch.as_tensor(hand.faces), hand.vertices.shape[0]
    x0 = torch.randn(batch, V, 3, generator=torch.Generator().manual_seed(0))
    mesh = MeshLaplacian(faces, V)
    csr = uniform_laplacian(faces, V)
    rss0 = peak_rss_mb()
    dense = csr.to_dense()                      # the original's form: a V×V matrix
    rss_dense = peak_rss_mb() - rss0

    def fb(op):
        x = x0.clone().requires_grad_(True)
        laplacian_loss(x, op).backward()
        return x.grad

    def dense_fb():
        x = x0.clone().requires_grad_(True)
        laplacian_loss(x, dense).backward()     # L @ x as one (V,V) @ (V, B·3) GEMM
        return x.grad

    ref = fb(mesh)
    agree = {"csr": float((fb(csr) - ref).abs().max()), "dense": float((dense_fb() - ref).abs().max())}

    ms = {"index_add (MeshLaplacian, used by TrainStep)": timed(lambda: fb(mesh), repeats),
          "sparse CSR (uniform_laplacian)": timed(lambda: fb(csr), repeats),
          "dense V×V matmul": timed(dense_fb, repeats)}
    nbytes = {"index_add (MeshLaplacian, used by TrainStep)":
              sum(b.numel() * b.element_size() for b in mesh.buffers()),
              "sparse CSR (uniform_laplacian)": sum(t.numel() * t.element_size() for t in
                                                    (csr.crow_indices(), csr.col_indices(), csr.values())),
              "dense V×V matmul": dense.numel() * dense.element_size()}
    return {"vertices": V, "batch": batch, "ms": ms, "operator_mb": {k: v / 2**20 for k, v in nbytes.items()},
            "dense_rss_increase_mb": rss_dense, "max_abs_grad_diff_vs_index_add": agree}


def fmt_parts(rows: list[dict]) -> list[str]:
    lines = ["| part (ms per step) | " + " | ".join(f"{r['preset']} {r['device']} {r.get('tree', '')}".rstrip()
                                                 for r in rows) + " |",
             "| --- | " + " | ".join("--:" for _ in rows) + " |"]
    for p in (*PARTS, "other"):
        if not any(p in r.get("parts_ms", {}) for r in rows):
            continue
        cells = []
        for r in rows:
            v = r.get("parts_ms", {}).get(p)
            cells.append("—" if v is None else f"{v:.1f} ({100 * v / r['step_ms_mean']:.0f} %)")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


def parse_peer(text: str) -> tuple[str, Path]:
    """``NAME=CHECKOUT`` → (name, checkout path holding a dhmlib/ package)."""
    name, sep, path = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--peer {text!r}: expected NAME=CHECKOUT (e.g. main=/tmp/main)")
    code = Path(path).expanduser().resolve()
    if not (code / "dhmlib" / "__init__.py").is_file():
        raise SystemExit(f"--peer {text!r}: {code} has no dhmlib/ package (a checkout of this repository?)")
    return name, code


def side_by_side(rows: list[dict], peers: list[str]) -> dict:
    """Ratios this tree / each peer per preset and device: steps/s, and the 96² vs 256² render per map."""
    out: dict = {"lines": []}
    by = {(r["preset"], r["device"], r.get("tree", "this")): r for r in rows}
    for (preset_name, device, tree), r in sorted(by.items()):
        if tree != "this":
            continue
        for peer in peers:
            q = by.get((preset_name, device, peer))
            if q is None:
                continue
            ratio = r["steps_per_s"] / q["steps_per_s"]
            out[f"{preset_name} {device} this/{peer} steps_per_s"] = ratio
            out["lines"].append(f"{preset_name} {device}: this {r['steps_per_s']:.2f} vs {peer} {q['steps_per_s']:.2f} "
                                f"steps/s = {ratio:.2f}x; data {100 * r['parts_ms'].get('data', 0) / r['step_ms_mean']:.1f} % "
                                f"vs {100 * q['parts_ms'].get('data', 0) / q['step_ms_mean']:.1f} % of the step")
    for tree in ["this", *peers]:
        small, paper = by.get(("cpu-small", "cpu", tree)), by.get(("paper", "cpu", tree))
        if small and paper and "render" in small["parts_ms"] and "render" in paper["parts_ms"]:
            ms_small = small["parts_ms"]["render"] / (small["batch"] * small["views"])
            ms_paper = paper["parts_ms"]["render"] / (paper["batch"] * paper["views"])
            out[f"{tree} render_ms_per_map"] = {"cpu-small": ms_small, "paper": ms_paper, "ratio": ms_small / ms_paper}
            out["lines"].append(f"render per map ({tree}, forward): {small['render_size'][0]}² {ms_small:.2f} ms, "
                                f"{paper['render_size'][0]}² {ms_paper:.2f} ms: {ms_small / ms_paper:.2f}x")
    return out


def probe_run(root: Path, tree: str, code: Path, steps: int, threads: int) -> dict:
    """Train cpu-small ``steps`` steps with ``code``'s own ``dhm train``; its last probe record."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "dhmlib.cli", "train", "--preset", "cpu-small", "--data", str(root),
               "--output", out, "--max-steps", str(steps), "--probe-every", str(steps)]
        env = dict(os.environ, PYTHONPATH=str(code), OMP_NUM_THREADS=str(threads))
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(code))
        wall = time.perf_counter() - t
        if p.returncode:
            return {"tree": tree, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        probes = [json.loads(line) for line in (Path(out) / "log" / "metrics.jsonl").read_text().splitlines()
                  if '"probe"' in line]
        last = [r for r in probes if r.get("kind") == "probe"][-1]
        return {"tree": tree, "steps": steps, "wall_s": wall, **{k: v for k, v in last.items() if k != "kind"}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data")
    ap.add_argument("--steps", type=int, default=8, help="timed steps of cpu-small (after one warm-up step)")
    ap.add_argument("--paper-steps", type=int, default=2, help="timed steps of the paper preset on CPU")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-step-s", type=float, default=300.0, help="skip a preset whose warm-up step took longer")
    ap.add_argument("--quick", action="store_true", help="skip the paper preset on CPU, fewer repeats")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table per preset")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_step.json"))
    ap.add_argument("--peer", action="append", default=[], metavar="NAME=CHECKOUT",
                    help="also measure another checkout (e.g. main=/tmp/main, a git worktree), same run")
    ap.add_argument("--probe-steps", type=int, default=0,
                    help="also train cpu-small N steps in this tree and each peer and compare the probe")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_code", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        name, device, steps = args._child
        print(json.dumps(measure_steps(args.root, name, device, int(steps), args.threads, args.max_step_s,
                                       args.profile)))
        return None

    import torch
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    root, tmp = Path(args.root).resolve(), None
    if not (root / "annotations" / "KRT_512").is_file():
        from dhmlib.synth.capture import CaptureConfig, write_capture

        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        print(f"no capture under {args.root}: writing 12 frames × 8 cameras to {root}")
        write_capture(root, CaptureConfig(frames=12, cameras=8), progress=False, log=None)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    trees = [("this", ROOT)] + [parse_peer(p) for p in args.peer]
    rows = []
    for device in devices:
        for name in ("cpu-small", "paper"):
            for tree, code in trees:
                if name == "paper" and device == "cpu" and args.quick:
                    rows.append({"preset": name, "device": device, "tree": tree, "skipped": "--quick"})
                    continue
                steps = args.paper_steps if (name == "paper" and device == "cpu") else args.steps
                if args.quick:
                    steps = min(steps, 3)
                r = run_child(args, root, name, device, steps, code)
                r["tree"], r["code"] = tree, str(code)
                rows.append(r)
                label = f"{name:9s} {device} {tree}"
                if "steps_per_s" in r:
                    print(f"{label}: {r['steps_per_s']:.2f} steps/s ({r['step_ms_median']:.0f} ms median of "
                          f"{r['steps']}), peak RSS {r['peak_rss_mb']:.0f} MB")
                else:
                    print(f"{label}: skipped/failed: {r.get('skipped') or r.get('error')}")
    ok = [r for r in rows if "parts_ms" in r]
    if ok:
        print("\n".join(fmt_parts(ok)))
    ratios = side_by_side(ok, [t for t, _ in trees[1:]])
    for line in ratios.pop("lines"):
        print(line)
    probe = [probe_run(root, tree, code, args.probe_steps, args.threads) for tree, code in trees] \
        if args.probe_steps else []
    for p in probe:
        print(f"probe after {args.probe_steps} cpu-small steps, {p['tree']}: "
              + (f"{p['vertex_mean_mm']:.4f} mm held-out (true angles), training {p['wall_s']:.0f} s"
                 if "vertex_mean_mm" in p else f"failed: {p.get('error')}"))
    if len(probe) > 1 and all("vertex_mean_mm" in p for p in probe):
        for p in probe[1:]:
            print(f"  this − {p['tree']}: {probe[0]['vertex_mean_mm'] - p['vertex_mean_mm']:+.4f} mm")

    pen = bench_penetration(3 if args.quick else 10, args.threads)
    print(f"penetration B={pen['batch']} V={pen['vertices']}: vectorized {pen['ours_ms']:.2f} ms, "
          f"loop {pen['loop_ms']:.1f} ms: {pen['speedup']:.1f}x (goal >= 20x)")
    lap = bench_laplacian(8000, 8, 5 if args.quick else 20)
    base = lap["ms"]["dense V×V matmul"]
    print(f"Laplacian loss forward+backward, V={lap['vertices']}, B={lap['batch']}:")
    for k, v in lap["ms"].items():
        print(f"  {k:46s} {v:8.2f} ms  {base / v:6.1f}x dense   operator {lap['operator_mb'][k]:8.2f} MB")
    if tmp is not None:
        tmp.cleanup()
    result = {"steps": rows, "side_by_side": ratios, "probe": probe, "penetration": pen, "laplacian": lap,
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "torch": torch.__version__, "platform": platform.platform(), "cpu_count": os.cpu_count()}
    print(f"load average before {load_before[0]:.2f}, after {result['load_average_after'][0]:.2f}")
    print(f"wrote {write_json(args.out, result)}")
    return result


if __name__ == "__main__":
    main()
