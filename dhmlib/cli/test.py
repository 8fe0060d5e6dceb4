"""``dhm test``: evaluate a training snapshot on the held-out frames (the original's ``--test_epoch N``).

Reads ``OUTPUT/model_dump/snapshot_<N>.pth.tar`` (default: the newest) or ``--snapshot``; writes
``OUTPUT/result/metrics.json``, ``OUTPUT/result/meshes/<frame:06d>.obj`` and ``OUTPUT/vis/test_<frame>.png``
(:func:`dhmlib.evaluation.held_out.evaluate_snapshot`), and prints a table of the means next to the
template + LBS baseline.
"""
from __future__ import annotations

from dhmlib.cli._common import CLIError, device, int_at_least, writable_folder

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = "test a snapshot on the held-out frames: metrics.json, meshes and figures (--test_epoch N)"

ROWS = (("joint_error_mm", "joint error"), ("depth_error_mm", "depth error"), ("vertex_mean_mm", "vertex mean"),
        ("vertex_p95_mm", "vertex p95"), ("vertex_normal_mean_mm", "  along normal"),
        ("vertex_sideways_mean_mm", "  sideways"), ("surface_symmetric_mm", "surface dist."),
        ("scan_symmetric_mm", "scan dist."), ("vertex_near_flexed_mean_mm", "near flexed"),
        ("vertex_near_flexed_p95_mm", "  p95"), ("penetration_depth_mean_mm", "penetr. depth"),
        ("penetration_depth_max_mm", "  max"), ("penetration_fraction", "  fraction"),
        ("smoothness_laplacian_mm", "|Laplacian|"), ("smoothness_ratio", "  / truth's"))


def add(p):
    p.add_argument("--test_epoch", "--test-epoch", dest="epoch", type=int_at_least(0), default=None, metavar="N",
                   help="test OUTPUT/model_dump/snapshot_N.pth.tar (default: the newest snapshot)")
    p.add_argument("--snapshot", help="a snapshot file instead (overrides --test_epoch)")
    p.add_argument("--data", help="dataset root (default: $DHM_DATA or the project's data/)")
    p.add_argument("--output", help="output root: model_dump/ read, result/ and vis/ written "
                                    "(default: $DHM_OUTPUT or the project's output/)")
    p.add_argument("--held-out", dest="held_out", metavar="RULE",
                   help="held-out rule (seq:NAME, frames:A-B, last:P%%, last:N; default: the snapshot's)")
    p.add_argument("--fit-steps", type=int_at_least(0), default=300,
                   help="joint-fit steps for embedding models (+ 2/5 as many with depth)")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda, cuda:N or mps (default: automatic)")
    p.add_argument("--no-render", action="store_true", help="no figures in OUTPUT/vis/")
    p.add_argument("--no-baseline", action="store_true", help="skip the template + LBS baseline")
    p.add_argument("--recompute-baseline", action="store_true",
                   help="compute the baseline even when OUTPUT/cache holds it for the same capture, hand model, "
                        "settings and code, and replace the cached file")
    p.add_argument("--views", type=int_at_least(1), default=None, metavar="N",
                   help="N cameras per held-out frame (spread over the rig) for the depth fit and depth error "
                        "(default: every camera); --views 4 --no-baseline --no-render is the fast mode")


def table(result) -> str:
    """The summary means of the model and the baselines, one metric a row (mm)."""
    s = dict(result.summary())
    s.update((result.info.get("scans") or {}))
    cols = [("model", s)] + [(f"LBS {k.split('_')[0]}", v) for k, v in (result.info.get("baseline") or {}).items()]
    lines = [f"{'mm':16s}" + "".join(f"{name:>12s}" for name, _ in cols)]
    for key, label in ROWS:
        if any(c.get(key) is not None for _, c in cols):
            lines.append(f"{label:16s}" + "".join(f"{c[key]:12.3f}" if c.get(key) is not None else f"{'-':>12s}"
                                                   for _, c in cols))
    return "\n".join(lines)


def run(args) -> int:
    from dhmlib.data.dataset import DatasetError
    from dhmlib.data.scans import ScanError
    from dhmlib.data.split import SplitError
    from dhmlib.paths import output_dir
    from dhmlib.evaluation.held_out import evaluate_snapshot

    from dhmlib.paths import data_dir

    data = data_dir(args.data)
    if not data.is_dir():
        raise CLIError(f"--data {data}: no such dataset root" + (" (it is a file)" if data.exists() else "")
                       + "; expected a folder with hand_model/ and annotations/")
    out = writable_folder(output_dir(None, args.output), "--output")
    try:
        res = evaluate_snapshot(args.snapshot, args.data, out, epoch=args.epoch, split=args.held_out,
                            fit_steps=args.fit_steps, device=args.device, render=not args.no_render,
                            baseline=not args.no_baseline, num_views=args.views,
                            refresh_baseline=args.recompute_baseline)
    except (SplitError, DatasetError, ScanError) as e:
        raise CLIError(str(e)) from None
    info = res.info
    print(f"{info['snapshot']} (epoch {info['epoch']}), {len(res.frames)} held-out frame(s), "
          f"poses: {info['pose_source']}")
    print(table(res))
    print(f"wrote {info['metrics']}, {info['meshes']}/" + (f", {len(info['figures'])} figure(s) in "
                                                           f"{out / 'vis'}/" if info["figures"] else ""))
    return 0
