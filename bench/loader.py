"""Data-loader throughput: samples/s and peak memory, 2 workers against 0 (in-process) in one run.

    python bench/loader.py [--root data] [--batch 8] [--views 6] [--batches 12]

Uses ``--root`` when it holds a capture, else writes a small virtual capture
(40 frames × 12 cameras) to a temporary folder first.  Each configuration runs
in a fresh process so that peak memory (``ru_maxrss`` of the process and of its
worker children) belongs to it alone.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(root: str, workers: int, batch: int, views: int, batches: int) -> dict:
    import resource

    import torch

    from dhmlib.data.dataset import DeepHandMeshDataset, collate_samples

    torch.set_num_threads(1)  # as in DataLoader workers: compare processes, not intra-op threading
    ds = DeepHandMeshDataset(root, num_views=views)
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, shuffle=True,
                                     collate_fn=collate_samples, generator=torch.Generator().manual_seed(0),
                                     persistent_workers=False, prefetch_factor=2 if workers else None)
    it = iter(dl)
    next(it)  # start-up (worker spawn, first files) is not throughput
    n, t = 0, time.perf_counter()
    for _ in range(batches):
        try:
            b = next(it)
        except StopIteration:
            it = iter(dl)
            b = next(it)
        n += b.batch_size
    dt = time.perf_counter() - t
    del it
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"workers": workers, "samples_per_s": n / dt, "ms_per_sample": dt / n * 1e3,
            "peak_rss_main_mb": self_mb, "peak_rss_worker_mb": child_mb, "samples": n}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default="data")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--views", type=int, default=6)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "loader.json"))
    ap.add_argument("--_child", nargs=1, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        print(json.dumps(measure(args.root, args._child[0], args.batch, args.views, args.batches)))
        return
    root = Path(args.root)
    tmp = None
    if not (root / "annotations" / "KRT_512").is_file():
        from dhmlib.synth.capture import CaptureConfig, write_capture

        tmp = tempfile.TemporaryDirectory()
        root = Path(tmp.name)
        print(f"no capture under {args.root}: writing 40 frames × 12 cameras to {root}")
        write_capture(root, CaptureConfig(frames=40, cameras=12), progress=False)
    rows = []
    for workers in (0, 2):
        cmd = [sys.executable, __file__, "--root", str(root), "--batch", str(args.batch), "--views", str(args.views),
               "--batches", str(args.batches), "--_child", str(workers)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        r = rows[-1]
        print(f"workers={workers}: {r['samples_per_s']:.1f} samples/s ({r['ms_per_sample']:.0f} ms/sample), "
              f"peak RSS main {r['peak_rss_main_mb']:.0f} MB, per worker {r['peak_rss_worker_mb']:.0f} MB")
    ratio = rows[1]["samples_per_s"] / rows[0]["samples_per_s"]
    print(f"2 workers vs in-process: {ratio:.2f}x (batch {args.batch}, K={args.views} depth views of 256², "
          f"input 256²)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "ratio_2_workers_vs_0": ratio, "batch": args.batch,
                               "views": args.views}, indent=2))
    print(f"wrote {out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
