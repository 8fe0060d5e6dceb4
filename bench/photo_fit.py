"""Your own hand, measured: MediaPipe landmarks → fitted DeepHandMesh on the virtual capture's held-out images.

    python bench/photo_fit.py [--data data] [--snapshot output/model_dump/snapshot_N.pth.tar]
                              [--encoder-snapshot …/image_d/model_dump/snapshot_1_step400.pth.tar]
                              [--frames 64] [--views 4] [--timing-images 5] [--sweep] [--calibrate]
                              [--out bench/results/photo_fit.json]

Needs the photo extra (``pip install -e '.[photo]'``) and the default capture in ``data/``.

1. Accuracy (FreiHAND's protocol, :mod:`dhmlib.photo.evaluate`): the held-out frames (``0005_RT_free``) ×
   ``--views`` cameras spread over the rig: detection rate (a right hand; each retry of
   :data:`dhmlib.photo.detect.ATTEMPTS` counted), 2D landmark error (px, fraction of the hand's size),
   PA-MPJPE, PA-MPVPE, F@5 mm, F@15 mm; one view (every detected image alone) and all views of a frame
   jointly; the template (LBS, no correctives) and a trained snapshot; beside them the image encoder of an
   image-source snapshot (the paper's way, trained on the capture's renders) on the same frames. The same on
   the named-gesture takes (fist, point, pinch, spread, ok: training frames of the snapshot) for contrast.
2. With ``--sweep`` (:mod:`dhmlib.photo.limits`, ~3 min): the fit of the trained snapshot on the same detected
   held-out images with the landmarks replaced by the true keypoints plus independent noise of a given mean
   error (0-0.10 of the hand's size, two seeds), and by MediaPipe's own landmarks with their mean per-joint
   offset removed: the landmark error each PA-MPJPE goal needs, and where MediaPipe sits.
3. With ``--calibrate`` (:mod:`dhmlib.photo.calibrate`, ~1 min): per model, landmark offsets fitted on the
   training takes' images (every training frame × ``--views`` cameras), then the held-out fit with them, paired
   per pose against the fit without (95 % t-interval over blocks of 5 frames).
4. Time per photo, one view, one photo at a time as ``dhm fit --image`` does it (goals: ≤ 2 s with the
   template, ≤ 5 s with a trained model), with peers measured in the same run: MediaPipe's detection of the
   same photo, ``fit_pose`` on 3D joints (``dhm fit`` with joints, 600 steps), the image encoder's forward pass.
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

from dhmlib.data.layout import Layout  # noqa: E402
from dhmlib.evaluation.held_out import model_and_config  # noqa: E402
from dhmlib.hand.handmodel import HandModel  # noqa: E402
from dhmlib.network.fit import fit_pose  # noqa: E402
from dhmlib.network.model import DeepHandMesh, ModelConfig  # noqa: E402
from dhmlib.network.snapshot import read_snapshot  # noqa: E402
from dhmlib.photo import evaluate as E  # noqa: E402
from dhmlib.photo.detect import ATTEMPTS, HandDetector, mediapipe_licence  # noqa: E402
from dhmlib.photo.image import load_photo  # noqa: E402
from dhmlib.photo.limits import landmark_error_sweep, needed_error  # noqa: E402
from dhmlib.photo.calibrate import calibrate_landmark_offsets, landmark_error, write_offsets  # noqa: E402
from dhmlib.data.split import split_frames  # noqa: E402
from dhmlib.experiments.ablation import paired_interval  # noqa: E402
from dhmlib.photo.pipeline import FIT_STEPS, START_STEPS, fit_detections  # noqa: E402

GOAL_S = {"template": 2.0, "trained": 5.0}
GOALS = {"pa_mpjpe_1_view_mm": 8.0, "pa_mpjpe_4_views_mm": 4.0, "detection_rate": 0.90}
SNAPSHOT = ROOT / "output" / "model_dump" / "snapshot_55_step936.pth.tar"
ENCODER = ROOT / "output" / "batch" / "ablation_diagnostics" / "image_d" / "model_dump" / "snapshot_1_step400.pth.tar"


def template_model(hand):
    return DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                          skeleton_corrective=False)).eval()


def timed(fn, repeats: int) -> list[float]:
    out = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def attempts_table(found, n_images: int) -> dict:
    """Cumulative detection rate after each retry of ATTEMPTS (a right hand found by then)."""
    by = {a: sum(v.detection.attempt == a for v in found) for a in ATTEMPTS}
    out, total = {}, 0
    for a in ATTEMPTS:
        total += by[a]
        out[a] = {"found_here": by[a], "cumulative_rate": total / max(n_images, 1)}
    return out


def calibration_rows(models, data, frames, held, plain_fits, views, det) -> dict:
    """Per model: offsets fitted on the training takes, the held-out landmark error and fit with them, paired
    against ``plain_fits[name]`` (the held-out evaluation without offsets, already run)."""
    train = E.detect_capture(data, list(split_frames(data, 1).train), views, detector=det)
    out = {}
    for name, model in models.items():
        cal = calibrate_landmark_offsets(model, data, train)
        path = write_offsets(ROOT / "bench" / "results" / f"landmark_offsets_{name}.json", cal, model.hand.skeleton,
                             note=f"bench/photo_fit.py --calibrate: MediaPipe 0.10.21 on {data} training takes")
        ev = E.evaluate_photo_fit(model, data, frames, views=views, detections=held, log=lambda m: None,
                                  landmark_offsets=cal.offsets)
        plain = plain_fits[name]
        r = {"train_images": cal.views, "train_error_frac": [cal.error_before, cal.error_after],
             "held_out_error_frac": [landmark_error(model, data, held), landmark_error(model, data, held, cal.offsets)],
             "offsets_mm": cal.offsets.tolist(), "file": str(path)}
        for mode in ev.fits:
            block = 5 if mode.endswith("views") else 5 * views       # 5 frames: one pose of the free take
            a = [x["pa_mpjpe_mm"] for x in plain.fits[mode]]
            b = [x["pa_mpjpe_mm"] for x in ev.fits[mode]]
            r[mode] = {"pa_mpjpe_mm": [float(np.mean(a)), float(np.mean(b))], "paired": paired_interval(a, b, block)}
        out[name] = r
        print(f"landmark offsets · {name}: {json.dumps({k: v for k, v in r.items() if k != 'offsets_mm'})}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data"))
    ap.add_argument("--snapshot", default=str(SNAPSHOT))
    ap.add_argument("--encoder-snapshot", default=str(ENCODER))
    ap.add_argument("--frames", type=int, default=64, help="held-out frames (evenly spaced; all 64 by default)")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--gesture-frames", type=int, default=20, help="frames of the named-gesture takes")
    ap.add_argument("--timing-images", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep", action="store_true", help="the landmark-error sweep (dhmlib.photo.limits)")
    ap.add_argument("--calibrate", action="store_true",
                    help="landmark offsets fitted on the training takes, judged on the held-out take")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "photo_fit.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    try:
        import mediapipe  # noqa: F401  (the photo extra)
    except ImportError:
        print("bench/photo_fit.py: skipped (the photo extra is not installed: pip install -e '.[photo]')")
        return 0
    if not (data / "annotations" / "synthetic").is_dir() or not (data / "images").is_dir():
        print(f"bench/photo_fit.py: skipped ({data} holds no virtual capture with images: make run writes it)")
        return 0
    hand = HandModel.read(data / "hand_model")
    models = {"template": template_model(hand)}
    if Path(args.snapshot).is_file():
        ckpt = read_snapshot(args.snapshot)
        models["trained"] = model_and_config(ckpt, args.snapshot, hand)[0].eval()
    else:
        print(f"bench/photo_fit.py: no snapshot {args.snapshot}: the template only (train one in notebook 02)")
    frames = E.held_out_frames(data)
    frames = [frames[i] for i in np.round(np.linspace(0, len(frames) - 1, min(args.frames, len(frames)))).astype(int)]
    report = {"machine": platform.platform(), "torch": torch.__version__, "threads": args.threads,
              "detector": f"mediapipe 0.10.21 solutions.hands ({mediapipe_licence()})",
              "snapshot": args.snapshot, "encoder_snapshot": args.encoder_snapshot,
              "steps": {"start": START_STEPS, "fit": FIT_STEPS}, "goals": GOALS, "accuracy": {}}
    with HandDetector() as det:
        for take, fr in (("held-out (0005_RT_free)", frames), ("named gestures (training takes)", None)):
            if fr is None:
                held = set(E.held_out_frames(data))
                gest = sorted(f for f in Layout(data).keypoint_frames() if f not in held and f < min(held))
                fr = [gest[i] for i in np.round(np.linspace(0, len(gest) - 1, args.gesture_frames)).astype(int)]
            d = E.detect_capture(data, fr, args.views, detector=det)
            evaluations = {}
            rows = {"frames": len(fr), "images": len(d.paths), "attempts": attempts_table(d.found, len(d.paths))}
            for name, model in models.items():
                ev = E.evaluate_photo_fit(model, data, fr, views=args.views, detections=d, log=lambda m: None)
                rows[name], evaluations[name] = ev.summary(), ev
                print(f"{take} · {name}: {json.dumps(rows[name])}", flush=True)
            report["accuracy"][take] = rows
            if take.startswith("held-out") and args.sweep:
                name = "trained" if "trained" in models else "template"
                sweep = landmark_error_sweep(models[name], data, d, views=args.views, mediapipe=rows[name])
                report["landmark_error_sweep"] = {"model": name, **sweep, "needed_error_frac": {
                    f"{mode} ≤ {GOALS[key]:g} mm": needed_error(sweep["noise"], mode, GOALS[key])
                    for mode, key in (("1 view", "pa_mpjpe_1_view_mm"),
                                      (f"{args.views} views", "pa_mpjpe_4_views_mm"))}}
            if take.startswith("held-out") and args.calibrate:
                report["landmark_offsets"] = calibration_rows(models, data, fr, d, evaluations, args.views, det)
        # encoder (the paper's way) on the held-out frames
        if Path(args.encoder_snapshot).is_file():
            eck = read_snapshot(args.encoder_snapshot)
            enc, cfg = model_and_config(eck, args.encoder_snapshot, hand)
            report["encoder"] = E.encoder_metrics(enc.eval(), data, frames, cfg)
            print(f"encoder: {json.dumps(report['encoder'])}", flush=True)
        # time per photo, one at a time
        d = E.detect_capture(data, frames[: args.timing_images], 1, detector=det, log=lambda m: None)
        views = list(d.found)
        photos = [v.photo.path for v in views]
        t_det = timed(lambda i: det.detect(load_photo(photos[i % len(photos)]), right=True), len(photos))
    timing = {"images": len(views), "detect_s": statistics.median(t_det)}
    for name, model in models.items():
        fit_detections(model, [(views[0],)], steps=5, start_steps=5)           # warm-up
        t = timed(lambda i: fit_detections(model, [(views[i],)]), len(views))
        timing[f"fit_{name}_s"] = statistics.median(t)
    J = hand.skeleton.num_joints
    target = models["template"].decode(torch.zeros(1, J, 3)).joints.detach()
    t3 = timed(lambda i: fit_pose(models["template"], joints=target + i, steps=600), 3)
    timing["peer_fit_pose_3d_joints_600_steps_s"] = statistics.median(t3)
    if Path(args.encoder_snapshot).is_file():
        img = torch.rand(1, 3, 256, 256)
        with torch.no_grad():
            te = timed(lambda i: enc.pose_net(enc.backbone_net(img)), 5)
        timing["peer_encoder_forward_s"] = statistics.median(te)
    report["timing"] = timing
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_tables(report)
    print(f"wrote {out}")
    return 0


def _f(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def print_tables(r: dict) -> None:
    print("\n| take | model | views | detected | 2D error px (frac) | PA-MPJPE mm | PA-MPVPE mm | F@5 | F@15 |")
    print("| --- | --- | --: | --: | --: | --: | --: | --: | --: |")
    for take, rows in r["accuracy"].items():
        for name in [n for n in ("template", "trained") if n in rows]:
            s = rows[name]
            for mode in [k for k in s if k.endswith("view") or k.endswith("views")]:
                m = s[mode]
                print(f"| {take} | {name} | {mode} | {s['detected']}/{s['images']} ({100 * s['detection_rate']:.0f} %) | "
                      f"{_f(s['landmark_error_px'])} ({_f(s['landmark_error_frac'], 3)}) | {_f(m['pa_mpjpe_mm'], 2)} | "
                      f"{_f(m['pa_mpvpe_mm'], 2)} | {_f(m['f@5mm'], 3)} | {_f(m['f@15mm'], 3)} |")
    if "encoder" in r:
        e = r["encoder"]
        print(f"| held-out | image encoder (paper's way) | 1 crop | – | – | {_f(e['pa_mpjpe_mm'], 2)} | "
              f"{_f(e['pa_mpvpe_mm'], 2)} | {_f(e['f@5mm'], 3)} | {_f(e['f@15mm'], 3)} |")
    for take, rows in r["accuracy"].items():
        print(f"\ndetection retries ({take}): " + ", ".join(
            f"{a}: +{v['found_here']} → {100 * v['cumulative_rate']:.0f} %" for a, v in rows["attempts"].items()))
    if "landmark_error_sweep" in r:
        sw = r["landmark_error_sweep"]
        modes = [k for k in sw["mediapipe"] if k.endswith("view") or k.endswith("views")]
        print(f"\nlandmark error → PA-MPJPE ({sw['model']}, held-out, the same detected images; noise: seeds averaged)")
        print("| landmarks | 2D error (frac of hand size) | " + " | ".join(f"PA-MPJPE {m}" for m in modes) + " |")
        print("| --- | --: | " + " | ".join("--:" for _ in modes) + " |")
        by = {}
        for row in sw["noise"]:
            by.setdefault(row["error_frac"], []).append(row)
        for frac, rows in sorted(by.items()):
            label = "true keypoints" if frac == 0 else "true + independent noise"
            print(f"| {label} | {np.mean([x['landmark_error_frac'] for x in rows]):.3f} | " + " | ".join(
                f"{np.mean([x[m]['pa_mpjpe_mm'] for x in rows]):.2f}" for m in modes) + " |")
        for key in ("mediapipe debiased", "mediapipe"):
            s = sw[key]
            print(f"| {key} | {s['landmark_error_frac']:.3f} | " + " | ".join(
                f"{s[m]['pa_mpjpe_mm']:.2f}" for m in modes) + " |")
        print("needed (independent noise): " + ", ".join(
            f"{k}: {'not within the sweep' if v is None else f'≤ {v:.3f} of the hand size'}"
            for k, v in sw["needed_error_frac"].items()))
    if "landmark_offsets" in r:
        print("\nlandmark offsets fitted on the training takes, held-out take (paired per pose, 95 % t-interval over"
              " blocks of 5 frames)")
        print("| model | landmark error train → | held-out → | views | PA-MPJPE without → with | difference |")
        print("| --- | --: | --: | --: | --: | --- |")
        for name, x in r["landmark_offsets"].items():
            for mode in [k for k in x if k.endswith("view") or k.endswith("views")]:
                p = x[mode]["paired"]
                print(f"| {name} | {x['train_error_frac'][0]:.3f} → {x['train_error_frac'][1]:.3f} | "
                      f"{x['held_out_error_frac'][0]:.3f} → {x['held_out_error_frac'][1]:.3f} | {mode} | "
                      f"{x[mode]['pa_mpjpe_mm'][0]:.2f} → {x[mode]['pa_mpjpe_mm'][1]:.2f} | "
                      f"{p['mean']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}] |")
    t = r["timing"]
    print("\n| per photo, 1 view | seconds | goal | × MediaPipe detection | × fit_pose 3D (600 steps) | × encoder forward |")
    print("| --- | --: | --: | --: | --: | --: |")
    for name in [n for n in ("template", "trained") if f"fit_{n}_s" in t]:
        s = t[f"fit_{name}_s"]
        enc = t.get("peer_encoder_forward_s")
        print(f"| fit ({name}) | {s:.2f} | ≤ {GOAL_S[name]:.0f} | {s / t['detect_s']:.1f} | "
              f"{s / t['peer_fit_pose_3d_joints_600_steps_s']:.2f} | {'–' if enc is None else f'{s / enc:.1f}'} |")
    print(f"| MediaPipe detection | {t['detect_s']:.3f} | | | | |")
    print(f"| fit_pose, 3D joints, 600 steps | {t['peer_fit_pose_3d_joints_600_steps_s']:.2f} | | | | |")
    if "peer_encoder_forward_s" in t:
        print(f"| image encoder forward (ResNet, 256²) | {t['peer_encoder_forward_s']:.3f} | | | | |")


if __name__ == "__main__":
    sys.exit(main())
