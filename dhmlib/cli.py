"""The ``dhm`` command.

Sub-commands are registered in :data:`COMMANDS`; each has an ``add_*``
function that declares its arguments and a ``run_*`` function.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


class CLIError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def parse_euler(text: str, skeleton) -> np.ndarray:
    """``'index1.z=90,middle1.z=90'`` (degrees) → (J, 3) radians.

    Joint names with or without the ``b_r_`` prefix; axes x, y, z.
    """
    euler = np.zeros((skeleton.num_joints, 3))
    mask = skeleton.dof_mask()
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            lhs, value = item.split("=")
            joint, axis = lhs.strip().rsplit(".", 1)
            deg = float(value)
        except ValueError:
            raise CLIError(f"--euler: expected items like 'index1.z=90', got {item!r}") from None
        try:
            j = skeleton.index(joint.strip())
        except KeyError as e:
            raise CLIError(f"--euler: {e.args[0]}") from None
        if axis not in ("x", "y", "z"):
            raise CLIError(f"--euler: axis must be x, y or z, got {axis!r} in {item!r}")
        a = "xyz".index(axis)
        if not mask[j, a]:
            allowed = "".join(c for c, m in zip("xyz", mask[j]) if m) or "none"
            raise CLIError(f"--euler: joint {skeleton.short_names[j]!r} has no {axis} degree of freedom "
                           f"(it has: {allowed})")
        euler[j, a] = np.deg2rad(deg)
    return euler


# --------------------------------------------------------------- hand-model
def add_hand_model(p):
    p.add_argument("--out", required=True, help="folder to write the official-format hand model into")
    p.add_argument("--vertices", type=int, default=8000, help="target vertex count (±10%%)")
    p.add_argument("--seed", type=int, default=0, help="identity seed")


def run_hand_model(args):
    from .synth import build_procedural_hand

    t = time.perf_counter()
    model = build_procedural_hand(target_vertices=args.vertices, seed=args.seed)
    out = model.write(args.out)
    print(f"wrote {out} ({model.num_vertices} vertices, {len(model.faces)} faces, {model.num_joints} joints) "
          f"in {time.perf_counter() - t:.1f} s")


# --------------------------------------------------------------------- demo
def add_demo(p):
    p.add_argument("--hand-model", required=True, help="official-format hand_model folder")
    p.add_argument("--snapshot", help="snapshot_N.pth.tar; without it the correctives are off")
    p.add_argument("--euler", default="", help="e.g. 'index1.z=90,middle1.z=90' (degrees)")
    p.add_argument("--out", required=True, help="output mesh (.obj or .ply)")
    p.add_argument("--unit", choices=("mm", "cm"), default="mm", help="unit of the written mesh")
    p.add_argument("--frame", choices=("root", "model"), default="root",
                   help="root: the root joint's frame, as the original demo; model: the hand model's frame")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")


def run_demo(args):
    import torch

    from .handmodel import HandModel
    from .meshio import write_obj, write_ply
    from .model import DeepHandMesh, ModelConfig
    from .snapshot import model_from_snapshot

    hand = HandModel.read(args.hand_model)
    euler = parse_euler(args.euler, hand.skeleton)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device}: CUDA is not available on this machine")
    if args.snapshot:
        model = model_from_snapshot(args.snapshot, hand, map_location="cpu")
    else:
        model = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                               skeleton_corrective=False))
    model = model.to(args.device).eval()
    root = torch.eye(4, device=args.device) if args.frame == "root" else None
    with torch.no_grad():
        out = model.decode(torch.as_tensor(euler, dtype=torch.float32, device=args.device)[None], root)
    verts = out.vertices[0].double().cpu().numpy()
    path = Path(args.out)
    writer = write_ply if path.suffix.lower() == ".ply" else write_obj
    writer(path, verts, hand.faces, unit=args.unit)
    print(f"wrote {path} ({len(verts)} vertices, unit {args.unit}, frame {args.frame})")


# ---------------------------------------------------------- other modules
def add_check_data(p):
    from .data.check import add_check_data as add
    add(p)


def run_check_data(args):
    from .data.check import run_check_data as run
    run(args)


def add_notebooks(p):
    from .notebooks import add_notebooks as add
    add(p)


def run_notebooks(args):
    from .notebooks import run_notebooks_cli
    run_notebooks_cli(args)


def add_synth(p):
    from .synth.capture import add_synth_arguments
    add_synth_arguments(p)


def run_synth(args):
    from .synth.capture import run_synth as run
    run(args)


COMMANDS = {
    "hand-model": (add_hand_model, run_hand_model, "build the procedural hand model in the official format"),
    "demo": (add_demo, run_demo, "pose a hand model (and snapshot) with Euler angles and write a mesh"),
    "synth": (add_synth, run_synth, "write the virtual multi-camera capture in the official layout"),
    "check-data": (add_check_data, run_check_data, "check a dataset in the official layout; non-zero exit on problems"),
    "notebooks": (add_notebooks, run_notebooks, "run notebooks/ in order with papermill into output/notebooks/"),
}


def register(name, add, run, help):
    """Add a sub-command (used by modules that bring their own)."""
    COMMANDS[name] = (add, run, help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dhm", description="dhmlib: DeepHandMesh research workbench")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add, run, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .handmodel import HandModelError
    from .snapshot import SnapshotError
    try:
        args._run(args)
    except (CLIError, HandModelError, SnapshotError, FileNotFoundError) as e:
        print(f"dhm {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
