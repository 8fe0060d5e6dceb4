"""The virtual multi-camera capture: writes a dataset in the official DeepHandMesh layout.

::

    OUT/hand_model/                                   subject 1's procedural hand (HandModel.write)
    OUT/annotations/KRT_512                           the dome of C colour cameras (400262, …)
    OUT/annotations/keypoints/subject_N/keypoints<frame:04d>.pts
    OUT/annotations/depthmaps/subject_N/<frame:06d>/depthmap<cam>.pkl   float32 (H, W), camera z mm, 0 = none
    OUT/images/subject_N/<seq>/cam<cam>/image<frame:04d>.jpg             shaded, textured renders (with a forearm)
    OUT/annotations/3D_scans_decimated/subject_N/<frame:06d>.ply         decimated ground-truth surface
    OUT/annotations/synthetic/                        extras the real data lacks (see its README.txt):
        README.txt, COMPLETE
        subject_N/params.json, poses.npz, faces.npy, meshes/<frame:06d>.npy, hand_model/,
        subject_N/scan_vertices.npy                   (V',) int32: which ground-truth vertices the scans keep

Per subject: an identity (:class:`~dhmlib.synth.HandIdentity`) and its procedural
hand; takes ``0000_RT_fist`` … ``0006_RT_ROM_fingers`` (:mod:`.poses`) with
frame numbers unique across the subject's takes; the ground-truth surface of
every frame (:mod:`.deform`: identity bone lengths and shape + pose effects (flexion bulges,
knuckles, skin stretch and creases, thenar bulge, palm arch) + dual-quaternion skinning); all cameras of a frame rendered in one rasterizer call
(depth and colour together). Keypoints are the ground-truth joints (FK of the hand
model's skeleton with the identity's bone lengths), score 1, ``num_views`` = cameras in which
the point is inside the image and not hidden behind other skin.

Decimated scans, as the official ``3D_scans_decimated`` (triangle PLY per frame, world mm): every
frame's ground-truth surface restricted to a fixed subset of its vertices (about
:data:`SCAN_VERTEX_FRACTION` of them, chosen once per subject by vertex clustering of the rest
template, :func:`~.meshops.decimate_by_clustering`) with the clustered triangles; the subset is
``annotations/synthetic/subject_N/scan_vertices.npy``, so ``scan = meshes/<frame>.npy[subset]``
exactly (float32). Read them with :func:`dhmlib.data.scans.read_scan`.

Crash safety: everything is written under ``OUT/.synth-partial-<pid>/`` and
moved into place at the end (``annotations/synthetic`` last, holding the
``COMPLETE`` marker); an interrupted run removes its partial folder, and one left
by a killed run is removed by the next run into ``OUT``, which says so (:mod:`.staging`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image
import torch

from dhmlib.data.keypoints import KEYPOINT_NAMES, joints_to_keypoints, write_keypoints
from dhmlib.data.layout import Layout
from dhmlib.data.safe_pickle import save_array_pickle
from dhmlib.data.scans import write_scan
from dhmlib.hand.handmodel import PROCEDURAL_ORIGIN, hand_model_origin, is_generated_hand_model
from dhmlib.progress import Progress
from dhmlib.render.cameras import OFFICIAL_IMAGE_SIZE, Cameras, write_krt
from dhmlib.render.depth import render_depth
from dhmlib.render.settings import RasterSettings
from dhmlib.render.shade import Light, render_shaded
from dhmlib.synth.deform import DeformParams, GroundTruthDeformer
from dhmlib.synth.forearm import forearm_colors, forearm_in_world, forearm_mesh
from dhmlib.synth.identity import HandIdentity
from dhmlib.synth.meshops import decimate_by_clustering
from dhmlib.synth.poses import subject_sequences
from dhmlib.synth.procedural_hand import build_procedural_hand
from dhmlib.synth.rig import dome_rig
from dhmlib.synth.staging import remove_stale, staging_folder
from dhmlib.synth.texture import skin_colors

#: the pieces of OUT this writer owns, in the order they are moved into place (the marker's last)
OWNED = ("hand_model", "images", "annotations/KRT_512", "annotations/keypoints", "annotations/depthmaps",
         "annotations/3D_scans_decimated", "annotations/synthetic")
#: about this fraction of the ground-truth vertices is kept in the decimated scans
SCAN_VERTEX_FRACTION = 0.25
BACKGROUND_RGB = (0.17, 0.17, 0.19)
#: the images' lighting: ambient, a head-light at each camera, a key light fixed in the world (z up)
AMBIENT = 0.28
CAPTURE_LIGHTS = (Light((0.0, 0.0, -1.0), 0.50, "camera"), Light((0.35, -0.25, 1.0), 0.30, "world"))
#: the built-in rasterizer everywhere, so that the files do not depend on the machine
CAPTURE_RASTER = RasterSettings(backend="torch")

README = """Synthetic-only extras of dhmlib's virtual capture (`dhm synth`).

Nothing in this folder exists in the real DeepHandMesh release: it is the ground
truth that only a virtual capture knows. Code that trains on the official layout
must not need it; it is there to measure (e.g. per-vertex error).

subject_N/params.json      seeds, identity (HandIdentity), deformation parameters,
                           takes (name, first and last frame), cameras, image size
subject_N/poses.npz        per frame: frame, take (index into params' sequences),
                           euler (T, J, 3) rad, root (T, 4, 4) wrist placement
                           model -> world (mm), joints (T, J, 3) world mm,
                           keypoints (T, 21, 3), num_views (T, 21)
subject_N/faces.npy        (F, 3) int32 faces of the ground-truth meshes (= hand model)
subject_N/meshes/<frame:06d>.npy   (V, 3) float32 ground-truth vertices, world mm
subject_N/hand_model/      the subject's procedural hand (official format); subject 1's
                           is also OUT/hand_model
COMPLETE                   written last: the dataset was written completely

Ground truth = hand model template with per-identity bone lengths + per-identity
surface shape + pose effects (flexion bulges, knuckles, dorsal skin stretch, palmar
creases, thenar bulge, palm arch), posed by dual-quaternion skinning: linear blend
skinning of hand_model alone cannot reproduce it (see dhmlib/synth/deform.py).
"""


@dataclass(frozen=True)
class CaptureConfig:
    """What ``dhm synth`` writes.

    Attributes:
        subjects: number of subjects (identities), ``subject_1`` …
        frames: frames per subject (over all takes).
        cameras: C cameras of the dome.
        seed: master seed (poses, identities, rig, texture).
        vertices: target vertex count of the procedural hands.
        image_size: (H, W) of images and depth maps (official 512 × 334).
        jpeg_quality: Pillow JPEG quality.
        forearm: the colour images show a forearm (:mod:`dhmlib.synth.forearm`; depth maps and truth stay the
            hand's).
        workers: threads writing files while the next frame renders.
        deform: ground-truth deformation strengths.
    """

    subjects: int = 1
    frames: int = 200
    cameras: int = 24
    seed: int = 0
    vertices: int = 8000
    image_size: tuple[int, int] = OFFICIAL_IMAGE_SIZE
    jpeg_quality: int = 90
    forearm: bool = True
    workers: int = 2
    deform: DeformParams = field(default_factory=DeformParams)

    def __post_init__(self):
        for name in ("subjects", "frames", "cameras"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected at least 1, got {getattr(self, name)}")
        if self.frames > 10000:
            raise ValueError(f"frames: expected at most 10000 (keypoints<frame:04d>.pts), got {self.frames}")
        if int(self.vertices) < 200:
            raise ValueError(f"vertices: expected a target of at least 200, got {self.vertices}")
        if len(self.image_size) != 2 or min(self.image_size) < 8:
            raise ValueError(f"image_size: expected (H, W) of at least 8 pixels, got {self.image_size}")


@dataclass(frozen=True)
class CaptureSummary:
    """What :func:`write_capture` wrote: the dataset root, its size and the time it took (s)."""

    root: Path
    frames: int
    cameras: int
    subjects: int
    seconds: float
    #: staging folders of killed earlier runs that were removed first
    removed_partial: tuple[Path, ...] = ()

    @property
    def frames_per_second(self) -> float:
        return self.frames * self.subjects / max(self.seconds, 1e-9)


def subject_identity_seed(seed: int, subject: int) -> int:
    """Identity seed of ``subject_<subject>`` under master ``seed`` (never 0, the canonical hand)."""
    return int(np.random.SeedSequence([int(seed), int(subject), 0x4944]).generate_state(1)[0]) or 1


# --------------------------------------------------------------------------- rendering
def render_views(vertices: torch.Tensor, faces: torch.Tensor, colors: torch.Tensor, cameras: Cameras,
                 size: tuple[int, int], background=BACKGROUND_RGB,
                 extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Depth maps and shaded colour images of one mesh in all C cameras.

    :func:`~dhmlib.render.render_shaded` with the capture's lights (:data:`CAPTURE_LIGHTS`:
    ambient + head-light + key light, Lambert on interpolated normals) on the built-in
    ``"torch"`` backend; depth is exact at pixel centres, as :func:`~dhmlib.render.render_depth`.

    Args:
        vertices: (V, 3) world mm.  faces: (F, 3) long.  colors: (V, 3) RGB in [0, 1].
        cameras: batch shape (C,).  size: (H, W).
        extra: (vertices (A, 3), faces (G, 3), colors (A, 3)) of a mesh that only the colour images show
            (the forearm); the depth maps are the first mesh's alone.
    Returns:
        depth (C, H, W) float32 camera z mm (0 = no surface), rgb (C, H, W, 3) uint8.
    """
    depth = None
    if extra is not None:
        depth = render_depth(vertices[None], faces, cameras, size=size, settings=CAPTURE_RASTER)[0]
        ev, ef, ec = extra
        faces = torch.cat([faces, ef.to(faces) + len(vertices)])
        vertices, colors = torch.cat([vertices, ev.to(vertices)]), torch.cat([colors.to(vertices), ec.to(vertices)])
    r = render_shaded(vertices[None], faces, cameras, size=size, colors=colors.to(vertices), ambient=AMBIENT,
                      lights=CAPTURE_LIGHTS, background=background, settings=CAPTURE_RASTER)
    rgb8 = (r.rgb[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return (r.depth[0] if depth is None else depth).float().numpy(), rgb8.numpy()


def keypoint_views(points: np.ndarray, depth: np.ndarray, cameras: Cameras, radius: np.ndarray,
                   slack_mm: float = 3.0) -> np.ndarray:
    """Which cameras see which points: (C, N) bool.

    A point is seen when it projects inside the image onto the rendered hand and the
    surface there is no nearer than ``1.6 · radius + slack_mm`` in front of it (the
    point's own skin, not another finger).

    Args:
        points: (N, 3) world mm.  depth: (C, H, W) mm.  radius: (N,) depth of each point under
            its own skin (distance to the nearest template vertex at rest), mm.
    """
    C, H, W = depth.shape
    p = torch.as_tensor(points, dtype=torch.float64)
    cams = cameras.to(dtype=torch.float64)
    pc = cams.world_to_camera(p)                                    # (C, N, 3)
    uv = cams.camera_to_pixel(pc).numpy()
    z = pc[..., 2].numpy()
    j, i = np.floor(uv[..., 0]).astype(np.int64), np.floor(uv[..., 1]).astype(np.int64)
    inside = (z > 0) & (i >= 0) & (i < H) & (j >= 0) & (j < W)
    d = depth[np.arange(C)[:, None], np.clip(i, 0, H - 1), np.clip(j, 0, W - 1)]
    return inside & (d > 0) & (z - d <= 1.6 * radius[None] + slack_mm)


# --------------------------------------------------------------------------- writing
def _check_free(root: Path, overwrite: bool, log: Callable[[str], None] | None = None) -> list[Path]:
    """The pieces of :data:`OWNED` already under ``root`` that the capture will replace.

    Without ``overwrite`` only one thing may be there: a ``hand_model/`` that dhmlib built procedurally
    (``dhm hand-model``, notebook 04, an earlier capture: it can be built again), which the capture replaces
    with its own subject 1 hand, since its meshes, depth maps and keypoints are made from that hand, and says
    so through ``log``. Anything else (the official release, a user's own hand model, a capture) raises.
    """
    present = [root / p for p in OWNED if (root / p).exists()]
    if not present or overwrite:
        return present
    hand = root / "hand_model"
    if present == [hand]:
        if is_generated_hand_model(hand):
            if log is not None:
                origin = hand_model_origin(hand)
                what = origin if origin != "dhmlib" else "a procedural hand written by dhmlib"
                log(f"{hand}: replacing the hand model there ({what}) with the virtual capture's own hand "
                    "(subject 1; the capture is made from it); 'dhm hand-model' builds the other one again")
            return present
        raise FileExistsError(f"{hand}: holds a hand model that dhmlib did not build (its hand.obj has no dhmlib "
                              "header); the virtual capture brings its own hand and does not replace yours. "
                              "Move it away, write the capture into another folder, or pass --overwrite "
                              "(overwrite=True) to replace it")
    raise FileExistsError(f"{root}: already holds {', '.join(str(p.relative_to(root)) for p in present)}; "
                          "expected an empty target. Pass --overwrite (overwrite=True) to replace them "
                          f"(all of: {', '.join(OWNED)})")


def _save_jpeg(path: Path, rgb: np.ndarray, quality: int):
    Image.fromarray(rgb).save(path, format="JPEG", quality=quality)


def write_capture(out, config: CaptureConfig = CaptureConfig(), overwrite: bool = False,
                  progress: bool = True, log: Callable[[str], None] | None = print) -> CaptureSummary:
    """Run the virtual capture and write the official layout (plus extras) under ``out``.

    Staging folders that killed earlier runs left in ``out`` are removed first (each reported
    through ``log``; see :mod:`.staging`).

    A ``hand_model/`` alone that dhmlib built procedurally is replaced by the capture's own hand (said
    through ``log``); a hand model dhmlib did not build is never replaced without ``overwrite``.

    Raises:
        FileExistsError: ``out`` already holds any of :data:`OWNED` (but a procedural hand model alone)
            and ``overwrite`` is False,
            or another capture is being written into ``out`` right now (:class:`StagingBusyError`).
    """
    root = Path(out)
    replace = _check_free(root, overwrite, log)
    root.mkdir(parents=True, exist_ok=True)
    removed = remove_stale(root, log)
    t0 = time.perf_counter()
    with staging_folder(root) as tmp:
        cams = dome_rig(config.cameras, config.image_size, seed=config.seed)
        (tmp / "annotations").mkdir(parents=True)
        write_krt(tmp / "annotations" / "KRT_512", cams)
        with ThreadPoolExecutor(max(1, config.workers)) as pool, \
                Progress("dhm synth", config.frames * config.subjects, "frames", enabled=progress,
                         log=log) as bar:       # a bar in a terminal, lines with the ETA in a notebook
            for n in range(1, config.subjects + 1):
                _write_subject(tmp, n, config, cams, pool, bar)
        syn = Layout(tmp).synthetic_root
        (syn / "README.txt").write_text(README)
        (syn / "COMPLETE").write_text(f"dhm synth: {config.subjects} subject(s) × {config.frames} frames × "
                                      f"{config.cameras} cameras, seed {config.seed}\n")
        now = [root / p for p in OWNED if (root / p).exists()]
        if any(p not in replace for p in now):   # appeared meanwhile: checked as at the start
            _check_free(root, overwrite, None)
        for p in now:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for rel in OWNED:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, root / rel)
    return CaptureSummary(root, config.frames, config.cameras, config.subjects, time.perf_counter() - t0,
                          tuple(removed))


def _write_subject(tmp: Path, n: int, config: CaptureConfig, cams: Cameras, pool: ThreadPoolExecutor, bar):
    id_seed = subject_identity_seed(config.seed, n)
    identity = HandIdentity.sample(id_seed)
    hand = build_procedural_hand(config.vertices, seed=id_seed, identity=identity)
    syn = Layout(tmp, n).synthetic_dir
    origin = (f"{PROCEDURAL_ORIGIN} (virtual capture subject {n}: dhm synth --seed {config.seed} "
              f"--vertices {config.vertices}, identity seed {id_seed})")
    hand.write(syn / "hand_model", origin=origin)
    if n == 1:
        hand.write(tmp / "hand_model", origin=origin)
    np.save(syn / "faces.npy", hand.faces.astype(np.int32))
    (syn / "meshes").mkdir(parents=True)

    seqs = subject_sequences(hand.skeleton, config.frames, config.seed, n)
    names = [f"{i:04d}_RT_{s.name}" for i, s in enumerate(seqs)]
    euler = np.concatenate([s.euler for s in seqs])
    root_tf = np.concatenate([s.root for s in seqs])
    take = np.concatenate([np.full(s.num_frames, i) for i, s in enumerate(seqs)])
    deformer = GroundTruthDeformer(hand, id_seed, config.deform)
    gt = deformer(euler, root_tf)
    skin = skin_colors(hand, id_seed)
    colors = torch.as_tensor(skin)
    if config.forearm:
        arm, arm_faces = forearm_mesh(hand)
        arm_colors = torch.as_tensor(forearm_colors(hand, skin, len(arm)))
        arm_faces = torch.as_tensor(arm_faces)
    faces = torch.as_tensor(hand.faces, dtype=torch.long)
    cam_f = cams.to(dtype=torch.float32)
    sk = hand.skeleton

    kp_dir = tmp / "annotations" / "keypoints" / f"subject_{n}"
    dm_dir = tmp / "annotations" / "depthmaps" / f"subject_{n}"
    img_dir = tmp / "images" / f"subject_{n}"
    scan_dir = tmp / "annotations" / "3D_scans_decimated" / f"subject_{n}"
    kp_dir.mkdir(parents=True)
    scan_dir.mkdir(parents=True)
    scan_keep, scan_faces = decimate_by_clustering(hand.vertices, hand.faces,
                                                   int(round(SCAN_VERTEX_FRACTION * hand.num_vertices)))
    np.save(syn / "scan_vertices.npy", scan_keep.astype(np.int32))
    for name in names:
        for c in cams.names:
            (img_dir / name / f"cam{c}").mkdir(parents=True)
    T = config.frames
    # depth of each keypoint under its own skin, from the template at rest (in a fist the nearest skin
    # is another finger's); the identity shape adds at most a mm or two, within keypoint_views' slack
    kp_rest = joints_to_keypoints(hand.bind_joints, sk)
    radius = np.sqrt(((kp_rest[:, None] - hand.vertices[None]) ** 2).sum(-1).min(1))
    keypoints = np.zeros((T, len(KEYPOINT_NAMES), 3))
    num_views = np.zeros((T, len(KEYPOINT_NAMES)), dtype=np.int64)
    pending = []
    for frame in range(T):
        verts = gt.vertices[frame]
        extra = None
        if config.forearm:
            extra = (torch.as_tensor(forearm_in_world(hand, arm, root_tf[frame]), dtype=torch.float32), arm_faces,
                     arm_colors)
        depth, rgb = render_views(torch.as_tensor(verts, dtype=torch.float32), faces, colors, cam_f,
                                  config.image_size, extra=extra)
        kp = joints_to_keypoints(gt.joints[frame], sk)
        nv = keypoint_views(kp, depth, cams, radius).sum(0)
        keypoints[frame], num_views[frame] = kp, nv
        seq = names[take[frame]]
        fdir = dm_dir / f"{frame:06d}"
        fdir.mkdir(parents=True)
        for p in pending:  # at most one frame in flight: bounded memory
            p.result()
        pending = [pool.submit(write_keypoints, kp_dir / f"keypoints{frame:04d}.pts", kp, None, nv),
                   pool.submit(np.save, syn / "meshes" / f"{frame:06d}.npy", verts.astype(np.float32)),
                   pool.submit(write_scan, scan_dir / f"{frame:06d}.ply", verts[scan_keep], scan_faces)]
        for c, cname in enumerate(cams.names):
            pending.append(pool.submit(save_array_pickle, fdir / f"depthmap{cname}.pkl", depth[c]))
            pending.append(pool.submit(_save_jpeg, img_dir / seq / f"cam{cname}" / f"image{frame:04d}.jpg",
                                       rgb[c], config.jpeg_quality))
        bar.update(1)
    for p in pending:
        p.result()

    first = np.concatenate([[0], np.cumsum([s.num_frames for s in seqs])])
    params = {
        "generator": "dhmlib.synth.capture",
        "note": "synthetic-only extras: not part of the official DeepHandMesh layout",
        "seed": config.seed, "subject": n, "identity_seed": id_seed, "identity": identity.to_dict(),
        "deform": config.deform.to_dict(),
        "bone_offsets_mm": {sk_name: [float(x) for x in off] for sk_name, off in
                            zip(hand.skeleton.names, deformer.bone_offset)},
        "hand_model": {"vertices": hand.num_vertices, "faces": int(len(hand.faces)),
                       "target_vertices": config.vertices},
        "sequences": [{"name": nm, "kind": s.name, "first_frame": int(first[i]), "last_frame": int(first[i + 1] - 1)}
                      for i, (nm, s) in enumerate(zip(names, seqs))],
        "cameras": list(cams.names), "image_size": list(config.image_size), "forearm_in_images": config.forearm,
        "world": "mm; wrist near the origin, fingers up (+z) at rest orientation; root = model -> world",
        "keypoint_names": list(KEYPOINT_NAMES), "joint_names": list(sk.names),
    }
    (syn / "params.json").write_text(json.dumps(params, indent=2))
    np.savez(syn / "poses.npz", frame=np.arange(T), take=take, euler=euler, root=root_tf, joints=gt.joints,
             keypoints=keypoints, num_views=num_views)
