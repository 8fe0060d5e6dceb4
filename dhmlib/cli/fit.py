"""``dhm fit``: fit Euler angles and root placement to 3D joints, or to photos (``--image``), with a frozen decoder.

Photos: see :mod:`dhmlib.cli.fit_image` (the ``photo`` extra, MediaPipe Hands).

Inputs: a hand model, optionally a snapshot (its correctives), and joints: ``.npy`` arrays
(B, J, 3) or (J, 3) mm in skeleton.txt's joint order (NaN rows: not annotated), or official
keypoint files ``keypoints<frame>.pts`` (one frame each). Output ``--out`` folder: ``poses.npz``
(``euler`` (B, J, 3) rad, ``root`` (B, 4, 4) mm, ``joints`` (B, J, 3) mm, ``joint_error`` (B,) mm,
``source``) and ``meshes/<index:06d>.obj`` (world mm, the hand model's faces and texture coordinates).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dhmlib.cli._common import CLIError, device, fitting_model, int_at_least, snapshot_and_hand_model, warn, writable_folder

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = ("fit hand poses (Euler angles + root) to 3D joints or to photos (--image) with a frozen decoder; "
        "write poses and meshes")

EPILOG = """photos (--image PATH…, files or folders; needs the photo extra: pip install -e '.[photo]'):
MediaPipe Hands finds 21 landmarks per photo; Euler angles, root and one global scale are fitted to them by
perspective reprojection. Intrinsics: --focal-mm (35-mm equivalent) or --fov (horizontal degrees), else the
photo's EXIF FocalLengthIn35mmFilm, else a 26 mm guess; images of a capture in the official layout use their
KRT_512 cameras, and the cameras of one frame are fitted jointly. Per pose in --out: NAME_world.obj/.ply,
NAME_camera.obj/.ply, NAME_pose.npz (for dhm demo --pose-file), NAME_overlay.png, NAME_fit.json (residuals,
px); summary.json for the run. A photo without a hand is named on stderr and makes the exit status 1 (the
others are still fitted)."""


def add(p):
    p.epilog = EPILOG
    p.add_argument("joints", nargs="*", help=".npy joints (B, J, 3) or (J, 3) mm in skeleton order, or .pts "
                                             "keypoint files (official layout)")
    p.add_argument("--image", nargs="+", metavar="PATH", help="photos (files or folders of images) to fit instead "
                                                              "of joints (the photo extra)")
    p.add_argument("--focal-mm", type=float, help="with --image: 35-mm-equivalent focal length of the photos")
    p.add_argument("--fov", type=float, help="with --image: horizontal field of view of the photos, degrees")
    p.add_argument("--hand", choices=("auto", "right", "left"), default="auto",
                   help="with --image: which hand to fit (auto: MediaPipe's handedness; capture images: right)")
    p.add_argument("--no-figures", action="store_true", help="with --image: no overlay figures")
    p.add_argument("--landmark-offsets", metavar="JSON",
                   help="with --image: where the detector's landmarks sit in each joint's frame (a file of "
                        "dhmlib.photo.calibrate.write_offsets, e.g. from bench/photo_fit.py --calibrate; default: "
                        "on the joints)")
    p.add_argument("--hand-model", help="official-format hand_model folder (default: with --snapshot the hand model "
                                        "it was trained on, found by its hash; else $DHM_DATA/hand_model)")
    p.add_argument("--snapshot", help="snapshot_N.pth.tar whose decoder is used (default: no correctives)")
    p.add_argument("--out", required=True, help="output folder (joints: poses.npz, meshes/; photos: the files of each "
                                                "pose and summary.json)")
    p.add_argument("--steps", type=int_at_least(0), help="Adam steps (default: 600 for joints; for photos "
                                                          "dhmlib.photo.pipeline.FIT_STEPS after the 3D start)")
    p.add_argument("--lr", type=float, default=0.05, help="initial learning rate of the joint fit (radians per step)")
    p.add_argument("--no-meshes", action="store_true", help="write poses.npz only")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:N or mps")


def read_joints(paths, skeleton, warn_nan=None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Joint files → joints (B, J, 3) mm (0 where invalid), valid (B, J), and a source name per row.

    ``warn_nan(message)`` is told about NaN (not annotated) joints in ``.npy`` files."""
    from dhmlib.data.keypoints import KeypointFileError, keypoints_to_joints, read_keypoints

    J = skeleton.num_joints
    joints, valid, source = [], [], []
    for p in map(Path, paths):
        if not p.is_file():
            raise CLIError(f"{p}: joint file not found")
        if p.suffix == ".pts":
            try:
                j, v = keypoints_to_joints(read_keypoints(p), skeleton)
            except KeypointFileError as e:
                raise CLIError(str(e) if str(p) in str(e) else f"{p}: {e}") from None
            joints.append(j[None]), valid.append(v[None]), source.append(str(p))
        elif p.suffix == ".npy":
            a = np.load(p, allow_pickle=False).astype(np.float64)
            a = a[None] if a.ndim == 2 else a
            if a.ndim != 3 or a.shape[1:] != (J, 3):
                raise CLIError(f"{p}: expected joints of shape (B, {J}, 3) or ({J}, 3) mm, got {a.shape}")
            v = np.isfinite(a).all(-1).astype(np.float64)
            nan = int((v == 0).sum())
            if nan and warn_nan is not None:
                frames = int((v == 0).any(1).sum())
                warn_nan(f"{p}: {nan} joint(s) in {frames} of {len(a)} frame(s) are NaN or infinite; "
                         "they are left out of the fit (not annotated)")
            joints.append(np.nan_to_num(a)), valid.append(v)
            source += [f"{p}[{i}]" for i in range(len(a))]
        else:
            raise CLIError(f"{p}: expected a .npy array or a .pts keypoint file")
    return np.concatenate(joints), np.concatenate(valid), source


def unit_warning(joints: np.ndarray, valid: np.ndarray, hand) -> str | None:
    """A warning when the joints span far less than the hand model's (cm or m instead of mm), else None.

    The span of a frame is the largest distance between two of its valid joints; the median over frames
    is compared with the hand model's bind-pose joints (about 180 mm for a hand).
    """
    bind = hand.global_pose[:, :3, 3]
    ref = float(np.max(np.linalg.norm(bind[:, None] - bind[None], axis=-1)))
    spans = []
    for j, v in zip(joints, valid > 0):
        if v.sum() >= 2:
            p = j[v]
            spans.append(float(np.max(np.linalg.norm(p[:, None] - p[None], axis=-1))))
    if not spans or ref <= 0:
        return None
    span = float(np.median(spans))
    for unit, factor in (("metres", 1000.0), ("centimetres", 10.0)):
        if span * factor * 0.5 <= ref <= span * factor * 2.0:
            return (f"the joints span {span:.4g} units, the hand model's {ref:.0f} mm: they look like {unit}; "
                    f"expected millimetres (multiply by {factor:g})")
    return None


def run(args) -> int:
    import torch

    from dhmlib.metrics.errors import joint_error
    from dhmlib.network.fit import fit_pose
    from dhmlib.mesh.io import write_obj

    if args.image:
        if args.joints:
            raise CLIError("give joint files or --image photos, not both")
        from dhmlib.cli.fit_image import run_images

        return run_images(args)
    if not args.joints:
        raise CLIError("expected joint files (.npy, .pts) or --image PATH…")
    for flag in ("focal_mm", "fov", "landmark_offsets"):
        if getattr(args, flag) is not None:
            raise CLIError(f"--{flag.replace('_', '-')} goes with --image")
    if not args.lr > 0:
        raise CLIError(f"--lr: expected a positive learning rate, got {args.lr}")
    steps = 600 if args.steps is None else args.steps
    out = writable_folder(args.out)
    ckpt, hand = snapshot_and_hand_model(args)
    joints, valid, source = read_joints(args.joints, hand.skeleton, warn_nan=lambda m: warn(args.command, m))
    unit = unit_warning(joints, valid, hand)
    if unit:
        warn(args.command, unit)
    few = np.nonzero(valid.sum(1) < 3)[0]
    if len(few):
        raise CLIError(f"{source[few[0]]}: fewer than 3 valid joints; cannot place the hand")
    dev = torch.device(args.device)
    model = fitting_model(args, ckpt, hand, dev)
    res = fit_pose(model, joints=torch.as_tensor(joints, dtype=torch.float32, device=dev),
                   joint_valid=torch.as_tensor(valid, dtype=torch.float32, device=dev), steps=steps, lr=args.lr,
                   lr_end=min(args.lr, 0.001))
    err = joint_error(res.joints.cpu(), joints, valid).numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "poses.npz", euler=res.euler.cpu().numpy(), root=res.root.cpu().numpy(),
             joints=res.joints.cpu().numpy(), joint_error=err, source=np.array(source))
    if not args.no_meshes:
        uvs = hand.uvs if hand.uvs.any() else None
        for i, v in enumerate(res.vertices.double().cpu().numpy()):
            write_obj(out / "meshes" / f"{i:06d}.obj", v, hand.faces, uvs=uvs,
                      uv_faces=hand.uv_faces if uvs is not None else None)
    print(f"fitted {len(joints)} frame(s): joint error mean {np.nanmean(err):.3f} mm, max {np.nanmax(err):.3f} mm; "
          f"wrote {out / 'poses.npz'}" + ("" if args.no_meshes else f" and {out / 'meshes'}/"))
    return 0
