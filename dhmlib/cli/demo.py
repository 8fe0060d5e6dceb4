"""``dhm demo``: pose a hand model (and a snapshot's correctives) and write a mesh per pose.

Poses come from ``--preset``, ``--euler`` (on top of the preset) or ``--pose-file``; ``--rotate``
turns the whole hand about the root joint.  Everything is checked before any work: the output
suffix, the device, finite angles, each joint axis given once, and the anatomical limits
(:func:`dhmlib.hand.anatomy.joint_limits_deg`; outside them is a warning, or an error with
``--strict-limits``).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dhmlib.cli._common import CLIError, device, snapshot_and_hand_model, warn, writable_file

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = "pose a hand model (and snapshot) with a preset, Euler angles or a pose file and write meshes"
SUFFIXES = (".obj", ".ply")
AXES = "xyz"

POSE_FILE_HELP = """\
pose files (--pose-file): a .npy array of Euler angles in radians, shape (B, J, 3) or (J, 3), in
skeleton.txt's joint order, axes (x, y, z), R = Rz·Ry·Rx in each joint's frame; or a .npz with such an
array under the key 'euler' (e.g. the virtual capture's annotations/synthetic/subject_1/poses.npz).
One mesh per row: --out hand.obj writes hand_000.obj, hand_001.obj, … (a single pose writes hand.obj).
Axes a joint does not have are ignored.

--rotate 'x=30,z=90' (degrees) turns the whole hand about the root joint (the wrist), R = Rz·Ry·Rx
about the axes of the output frame (--frame).
"""


def _items(text: str, option: str):
    """``'a=1, b=2'`` → [('a', 1.0), ('b', 2.0)], refusing malformed and non-finite values."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        try:
            lhs, value = item.split("=")
            deg = float(value)
        except ValueError:
            raise CLIError(f"{option}: expected items like {'index1.z=90' if option == '--euler' else 'x=30'}, "
                           f"got {item!r}") from None
        if not math.isfinite(deg):
            raise CLIError(f"{option}: expected a finite angle in degrees, got {item!r}")
        out.append((lhs.strip(), deg))
    return out


def parse_euler(text: str, skeleton, base: np.ndarray | None = None) -> np.ndarray:
    """``'index1.z=90,middle1.z=90'`` (degrees) → (J, 3) radians.

    Joint names with or without the ``b_r_`` prefix; axes x, y, z. Each joint axis at most once;
    values replace those of ``base`` ((J, 3) radians, e.g. a preset).

    Raises:
        CLIError: malformed item, unknown joint, an axis the joint does not have, a non-finite
            value, or a joint axis given twice.
    """
    euler = np.zeros((skeleton.num_joints, 3)) if base is None else np.array(base, dtype=np.float64)
    mask = skeleton.dof_mask()
    seen = {}
    for lhs, deg in _items(text, "--euler"):
        joint, _, axis = lhs.rpartition(".")
        if not joint:
            raise CLIError(f"--euler: expected items like 'index1.z=90', got {lhs!r}")
        try:
            j = skeleton.index(joint.strip())
        except KeyError as e:
            raise CLIError(f"--euler: {e.args[0]}") from None
        if axis not in AXES:
            raise CLIError(f"--euler: axis must be x, y or z, got {axis!r} in {lhs!r}")
        a = AXES.index(axis)
        if not mask[j, a]:
            allowed = "".join(c for c, m in zip(AXES, mask[j]) if m) or "none"
            raise CLIError(f"--euler: joint {skeleton.short_names[j]!r} has no {axis} degree of freedom "
                           f"(it has: {allowed})")
        key = (j, a)
        if key in seen:
            raise CLIError(f"--euler: {skeleton.short_names[j]}.{axis} is given twice ({seen[key]}° and {deg}°)")
        seen[key] = deg
        euler[j, a] = np.deg2rad(deg)
    return euler


def parse_rotation(text: str) -> np.ndarray:
    """``'x=30,y=0,z=90'`` (degrees) → (3, 3) rotation R = Rz·Ry·Rx (the Euler convention of dhmlib)."""
    import torch

    from dhmlib.hand.kinematics import euler_to_matrix

    angles = np.zeros(3)
    seen = set()
    for axis, deg in _items(text, "--rotate"):
        if axis not in AXES:
            raise CLIError(f"--rotate: axis must be x, y or z, got {axis!r}")
        if axis in seen:
            raise CLIError(f"--rotate: axis {axis} is given twice")
        seen.add(axis)
        angles[AXES.index(axis)] = np.deg2rad(deg)
    return euler_to_matrix(torch.as_tensor(angles, dtype=torch.float64)).numpy()


def read_pose_file(path, skeleton) -> np.ndarray:
    """A ``.npy`` (B, J, 3) / (J, 3) or a ``.npz`` with ``euler``, radians → (B, J, 3) float64."""
    path = Path(path)
    if not path.is_file():
        raise CLIError(f"--pose-file {path}: file not found")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if "euler" not in data.files:
                    raise CLIError(f"--pose-file {path}: expected an array 'euler' in the .npz, "
                                   f"found {', '.join(data.files) or 'none'}")
                data = data["euler"]
        arr = np.asarray(data)
    except (ValueError, OSError, EOFError) as e:
        raise CLIError(f"--pose-file {path}: cannot be read as a numpy .npy/.npz file ({e})") from None
    J = skeleton.num_joints
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (J, 3) or not np.issubdtype(arr.dtype, np.number):
        raise CLIError(f"--pose-file {path}: expected Euler angles of shape (B, {J}, 3) or ({J}, 3) radians, "
                       f"got {arr.dtype} {arr.shape}")
    if len(arr) == 0:
        raise CLIError(f"--pose-file {path}: holds no poses (shape {arr.shape})")
    arr = arr.astype(np.float64)
    bad = np.argwhere(~np.isfinite(arr))
    if len(bad):
        b, j, a = bad[0]
        raise CLIError(f"--pose-file {path}: pose {b}, {skeleton.short_names[j]}.{AXES[a]} is {arr[b, j, a]} "
                       f"({len(bad)} non-finite values); expected finite radians")
    return arr


def limit_violations(euler: np.ndarray, skeleton, limit: int = 5) -> tuple[int, list[str]]:
    """Angles outside :func:`dhmlib.hand.anatomy.joint_limits_deg`: (count, the first ``limit`` described).

    Args:
        euler: (B, J, 3) radians; axes a joint does not have are not checked.
    """
    lim = _anatomy().joint_limits_deg(skeleton)                         # (J, 3, 2) degrees
    mask = skeleton.dof_mask()
    deg = np.rad2deg(euler)
    out = mask[None] & ((deg < lim[None, ..., 0] - 1e-9) | (deg > lim[None, ..., 1] + 1e-9))
    where = np.argwhere(out)
    lines = []
    for b, j, a in where[:limit]:
        pose = f"pose {b}: " if len(euler) > 1 else ""
        lines.append(f"{pose}{skeleton.short_names[j]}.{AXES[a]} = {deg[b, j, a]:g}° is outside "
                     f"{lim[j, a, 0]:g}…{lim[j, a, 1]:g}°")
    return len(where), lines


def _anatomy():
    from dhmlib.hand import anatomy

    return anatomy


def _epilog() -> str:
    a = _anatomy()
    return a.describe_joints() + "\n\npresets (--preset): " + ", ".join(a.gesture_names()) + "\n\n" + POSE_FILE_HELP


def _preset_names():
    return list(_anatomy().gesture_names())


def add(p):
    p.epilog = _epilog()
    p.add_argument("--hand-model", help="official-format hand_model folder (default: with --snapshot the hand model "
                                        "it was trained on, found by its hash; else $DHM_DATA/hand_model, i.e. "
                                        "data/hand_model)")
    p.add_argument("--snapshot", help="snapshot_N.pth.tar; without it the correctives are off "
                                      "(template + linear blend skinning)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=_preset_names(), help="a named gesture (see below)")
    src.add_argument("--pose-file", help="Euler angles, radians: .npy (B, J, 3) or .npz with 'euler'; "
                                         "one mesh per pose (see below)")
    p.add_argument("--euler", default="", help="e.g. 'index1.z=90,middle1.z=90' (degrees); "
                                               "replaces those axes of --preset")
    p.add_argument("--rotate", default="", help="global rotation of the hand about the root joint, "
                                                "e.g. 'x=30,z=90' (degrees)")
    p.add_argument("--strict-limits", action="store_true",
                   help="refuse angles outside the anatomical joint limits (default: warn)")
    p.add_argument("--out", required=True, help=f"output mesh ({', '.join(SUFFIXES)}); several poses: "
                                                "<stem>_000<suffix>, …")
    p.add_argument("--unit", choices=("mm", "cm"), default="mm", help="unit of the written mesh")
    p.add_argument("--frame", choices=("root", "model"), default="root",
                   help="root: the root joint's frame, as the original demo; model: the hand model's frame")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps")
    p.add_argument("--png", nargs="?", const="", default=None, metavar="FILE",
                   help="also a picture of the mesh: FILE, or beside each mesh with the suffix .png")


def output_paths(out: Path, count: int) -> list[Path]:
    """``count`` file names for ``--out``: itself for one pose, else ``<stem>_000<suffix>`` …"""
    if count == 1:
        return [out]
    width = max(3, len(str(count - 1)))
    return [out.with_name(f"{out.stem}_{i:0{width}d}{out.suffix}") for i in range(count)]


def root_transform(hand, frame: str, rotation: np.ndarray | None) -> np.ndarray | None:
    """(4, 4) placement of the root joint, or None for its bind pose.

    ``root``: the output is in the root joint's frame (identity, as the original demo);
    ``model``: the hand model's frame (the root's bind pose). ``rotation`` (3, 3) turns the
    hand about the root joint, about the output frame's axes.
    """
    if frame == "root":
        M = np.eye(4)
    else:
        if rotation is None:
            return None
        M = hand.global_pose[hand.skeleton.root].copy()
    if rotation is not None:
        M[:3, :3] = rotation @ M[:3, :3]
    return M


def run(args) -> int:
    import torch

    from dhmlib.mesh.io import write_obj, write_ply

    out = writable_file(args.out, SUFFIXES)
    rotation = parse_rotation(args.rotate) if args.rotate else None
    ckpt, hand = snapshot_and_hand_model(args)
    sk = hand.skeleton
    if args.pose_file:
        if args.euler:
            raise CLIError("--euler cannot be combined with --pose-file (edit the file's angles instead)")
        euler = read_pose_file(args.pose_file, sk)
    else:
        base = None
        if args.preset:
            base = _anatomy().gesture_euler(args.preset, sk)
        euler = parse_euler(args.euler, sk, base)[None]
    count, lines = limit_violations(euler, sk)
    if count:
        more = f" (and {count - len(lines)} more)" if count > len(lines) else ""
        msg = "; ".join(lines) + more
        if args.strict_limits:
            raise CLIError(f"outside the anatomical joint limits: {msg}")
        warn(args.command, f"outside the anatomical joint limits (--strict-limits refuses): {msg}")

    dev = torch.device(args.device)
    if args.snapshot:
        from dhmlib.network.snapshot import model_from_snapshot

        model = model_from_snapshot(args.snapshot, hand, map_location="cpu", ckpt=ckpt).to(dev).eval()
        decode = model.decode
    else:
        from dhmlib.hand.layer import HandLayer

        layer = HandLayer(hand).to(dev)
        decode = lambda e, root: layer(e, root_transform=root)  # noqa: E731  (no correctives)
    M = root_transform(hand, args.frame, rotation)
    root = None if M is None else torch.as_tensor(M, dtype=torch.float32, device=dev)
    paths = output_paths(out, len(euler))
    pictures = []
    if args.png is not None:
        pictures = ([writable_file(args.png, (".png",), "--png")] if args.png and len(paths) == 1 else
                    [p.with_suffix(".png") for p in (output_paths(Path(args.png), len(paths)) if args.png else paths)])
    uvs = hand.uvs if hand.uvs.any() else None
    with torch.no_grad():
        for start in range(0, len(euler), 256):
            e = torch.as_tensor(euler[start:start + 256], dtype=torch.float32, device=dev)
            verts = decode(e, root).vertices.double().cpu().numpy()
            for v, path in zip(verts, paths[start:start + 256]):
                if path.suffix.lower() == ".ply":
                    write_ply(path, v, hand.faces, unit=args.unit)
                else:
                    write_obj(path, v, hand.faces, unit=args.unit, uvs=uvs, uv_faces=hand.uv_faces)
            for i, v in enumerate(verts):
                if start + i < len(pictures):
                    _picture(pictures[start + i], v, hand.faces, args, start + i, len(paths))
    what = f"{paths[0]}" if len(paths) == 1 else f"{len(paths)} meshes {paths[0]} … {paths[-1]}"
    print(f"wrote {what} ({hand.num_vertices} vertices, unit {args.unit}, frame {args.frame})")
    if pictures:
        print(f"wrote {pictures[0]}" if len(pictures) == 1 else f"wrote {len(pictures)} pictures {pictures[0]} … "
                                                                  f"{pictures[-1]}")
    return 0


def _picture(path: Path, vertices_mm: np.ndarray, faces, args, index: int, count: int) -> None:
    """``--png``: the mesh shaded, fingers up, titled with the pose and the correctives."""
    import matplotlib.pyplot as plt

    from dhmlib.viz.figures import hand_figure

    pose = (args.preset or ("pose file" if args.pose_file else "rest")) + (f", {args.euler}" if args.euler else "")
    if count > 1:
        pose += f", pose {index}"
    title = f"{pose} · {'snapshot ' + Path(args.snapshot).name if args.snapshot else 'template + LBS'}"
    fig = hand_figure([(title, vertices_mm)], faces, path=path, size=4.0)
    plt.close(fig)
