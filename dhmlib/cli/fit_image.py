"""``dhm fit --image PATH…``: photos → MediaPipe landmarks → a fitted hand per photo (or per capture frame).

Exit status: 0 every photo fitted; 1 some photo had no hand (or was not an image): each is named on stderr
and the others are still fitted and written; 2 usage errors, and the ``photo`` extra missing (one line
saying ``pip install -e '.[photo]'``).
"""
from __future__ import annotations

import json
import sys

from dhmlib.cli._common import PROBLEMS, CLIError, fitting_model, note, snapshot_and_hand_model, warn, writable_folder


def run_images(args) -> int:
    import time

    import torch

    from dhmlib.photo.detect import HandDetector, MissingExtra, mediapipe_licence
    from dhmlib.photo.image import PhotoError, find_images
    from dhmlib.photo.outputs import fit_record, write_fit
    from dhmlib.photo.pipeline import FIT_STEPS, START_STEPS, detect_photos, fit_detections, group_views
    from dhmlib.progress import Progress

    if args.focal_mm is not None and args.fov is not None:
        raise CLIError("give --focal-mm or --fov, not both")
    if args.focal_mm is not None and not args.focal_mm > 0:
        raise CLIError(f"--focal-mm: expected a positive focal length, got {args.focal_mm}")
    if args.fov is not None and not 1 <= args.fov <= 179:
        raise CLIError(f"--fov: expected a horizontal field of view in degrees (1..179), got {args.fov}")
    out = writable_folder(args.out)
    try:
        paths = find_images(args.image)
    except PhotoError as e:
        raise CLIError(str(e)) from None
    try:
        detector = HandDetector()
    except MissingExtra as e:
        raise CLIError(str(e)) from None
    ckpt, hand = snapshot_and_hand_model(args)
    offsets = None
    if args.landmark_offsets is not None:
        from dhmlib.photo.calibrate import read_offsets

        try:
            offsets = read_offsets(args.landmark_offsets, hand.skeleton)
        except ValueError as e:
            raise CLIError(f"--landmark-offsets: {e}") from None
    dev = torch.device(args.device)
    model = fitting_model(args, ckpt, hand, dev)
    t0 = time.perf_counter()
    with detector:
        views, failures = detect_photos(paths, detector, focal_mm=args.focal_mm, fov_deg=args.fov, hand=args.hand)
    t_detect = time.perf_counter() - t0
    for f in failures:
        print(f"dhm {args.command}: {f.reason}", flush=True, file=sys.stderr)
    for v in views:
        if v.photo.note:
            note(args.command, f"{v.photo.path}: {v.photo.note}")
        if v.others:
            warn(args.command, f"{v.photo.path}: {v.others + 1} hands found; fitting the most confident one")
    groups = group_views(views)
    steps = FIT_STEPS if args.steps is None else args.steps
    fits = []
    if groups:
        bar = Progress(f"photo fit of {len(groups)} pose(s)", START_STEPS + steps)
        try:
            fits = fit_detections(model, groups, steps=steps, on_step=lambda k, n: bar.update(1),
                                  **({} if offsets is None else {"landmark_offsets": offsets}))
        finally:
            bar.close()
    records = []
    for fit in fits:
        paths_written = write_fit(fit, out, hand, figure=not args.no_figures)
        rec = fit_record(fit, hand.skeleton)
        records.append({"name": fit.name, "files": {k: str(p) for k, p in paths_written.items()},
                        "residual": rec["residual"], "left_hand": fit.left, "scale": fit.scale,
                        "views": [v.photo.path.as_posix() for v in fit.views],
                        "camera": [v.camera_note for v in fit.views]})
        r = rec["residual"]
        print(f"{fit.name}: {len(fit.views)} view(s), {'left' if fit.left else 'right'} hand, scale {fit.scale:.3f}, "
              f"residual {r['mean_px']:.1f} px mean ({100 * r['mean_fraction_of_hand_size']:.1f} % of the hand), "
              f"{fit.views[0].camera_note}")
    summary = {"images": [str(p) for p in paths], "fitted": records,
               "failed": [{"image": str(f.path), "reason": f.reason} for f in failures],
               "detector": {"package": "mediapipe 0.10.21 (solutions.hands)", "licence": mediapipe_licence()},
               "snapshot": args.snapshot, "landmark_offsets": args.landmark_offsets, "steps": steps, "detect_seconds": t_detect,
               "fit_seconds_per_pose": fits[0].seconds if fits else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"fitted {len(fits)} pose(s) from {len(views)} of {len(paths)} image(s); wrote {out}/"
          + (f"; {len(failures)} image(s) failed" if failures else ""))
    return PROBLEMS if failures else 0
