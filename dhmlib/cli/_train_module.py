"""Arguments of ``python -m dhmlib.train --preset cpu-small --data data --output output [--epochs N]
[--continue] [--set key=value …]`` — what ``torchrun -m dhmlib.train`` runs on every rank
(``dhmlib/train/__main__.py`` calls :func:`run`; argument parsing lives in ``dhmlib.cli`` only).

``--set`` takes TrainConfig fields (``lr=1e-3``, ``lr_milestones=[30,32]``, ``held_out=null``) and
ModelConfig fields prefixed ``model.`` (``model.backbone=18``); values are JSON where they parse.
Exit status: 0 done, 1 a loss became NaN/inf (the message names step and term), 2 bad arguments.
"""
from __future__ import annotations

import argparse
import sys

from ..train.config import PRESETS, parse_set, preset


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dhmlib.train", description="Train DeepHandMesh.")
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS), help="configuration preset")
    p.add_argument("--data", default=None, help="dataset root (default: the project's data/)")
    p.add_argument("--output", default=None, help="output root (default: the project's output/)")
    p.add_argument("--epochs", type=int, default=None, help="number of epochs (overrides the preset)")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume from the newest loadable snapshot in OUTPUT/model_dump")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field, or model.FIELD of the ModelConfig (repeatable)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: automatic)")
    p.add_argument("--time-limit", type=float, default=None, metavar="S", help="stop after S seconds of training")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from ..paths import data_dir, output_dir

    try:
        tc, mc = preset(args.preset)
        tc, mc = parse_set(args.sets, tc, mc)
        if args.epochs is not None:
            tc = tc.replace(epochs=args.epochs)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from ..train.loop import train

    try:
        train(tc, mc, data_dir(args.data), output_dir(value=args.output), resume=args.resume, device=args.device,
              progress=not args.no_progress, time_limit_s=args.time_limit)
    except FloatingPointError as e:   # the stand-in's NaN error
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if type(e).__name__ == "NonFiniteLoss":
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise
    return 0


def run() -> None:
    """``python -m dhmlib.train``: :func:`main` with the process's arguments, its status as exit code."""
    sys.exit(main())
