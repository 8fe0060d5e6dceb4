"""``dhm hand-model``: build the procedural hand and write it in the official ``hand_model/`` format."""
from __future__ import annotations

import time
from pathlib import Path

from dhmlib.cli._common import SEED, CLIError, int_at_least, writable_folder

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = "build the procedural hand model in the official format"
#: the vertex targets the procedural mesher accepts here (more takes minutes and gigabytes)
MIN_VERTICES, MAX_VERTICES = 200, 100_000


def add(p):
    p.add_argument("--out", required=True, help="folder to write the official-format hand model into")
    p.add_argument("--vertices", type=int_at_least(MIN_VERTICES, MAX_VERTICES), default=8000,
                   help=f"target vertex count (±10%%), {MIN_VERTICES}..{MAX_VERTICES}")
    p.add_argument("--seed", type=SEED, default=0, help="identity seed (0: the canonical hand)")
    p.add_argument("--overwrite", action="store_true", help="replace the hand-model files already in --out")


def existing_hand_model_files(folder) -> list[str]:
    """Names of the official hand-model files present in ``folder``."""
    from dhmlib.hand.handmodel import FILES

    folder = Path(folder)
    return [f for f in FILES if (folder / f).exists()]


def run(args) -> int:
    from dhmlib.synth import build_procedural_hand

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out}: is a file; expected a folder")
    present = existing_hand_model_files(out)
    if present and not args.overwrite:
        raise CLIError(f"--out {out}: already holds a hand model ({', '.join(present)}); "
                       "pass --overwrite to replace it")
    writable_folder(out)
    t = time.perf_counter()
    model = build_procedural_hand(target_vertices=args.vertices, seed=args.seed)
    from dhmlib.hand.handmodel import PROCEDURAL_ORIGIN

    model.write(out, origin=f"{PROCEDURAL_ORIGIN} (dhm hand-model --seed {args.seed} --vertices {args.vertices})")
    print(f"wrote {out} ({model.num_vertices} vertices, {len(model.faces)} faces, {model.num_joints} joints) "
          f"in {time.perf_counter() - t:.1f} s")
    return 0
