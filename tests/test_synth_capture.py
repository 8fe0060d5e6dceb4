"""The virtual capture: poses, ground-truth deformation, rig, and the written official layout.

A small capture (4 frames × 6 cameras, images 256 × 167) is written once per
module and read back through the official-format readers; the round-trip checks use only
what is on disk.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dhmlib.data.keypoints import KEYPOINT_NAMES, read_keypoints
from dhmlib.data.safe_pickle import load_array_pickle
from dhmlib.hand.anatomy import natural_range
from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.kinematics import euler_to_matrix
from dhmlib.render.cameras import Cameras, read_krt
from dhmlib.synth import build_procedural_hand
from dhmlib.synth.capture import CaptureConfig, write_capture
from dhmlib.synth.deform import (DeformParams, GroundTruthDeformer, dual_quaternion_skinning, fit_lbs,
                                 matrix_to_quaternion)
from dhmlib.synth.poses import SEQUENCE_KINDS, generate_sequences, plan_sequences
from dhmlib.synth.rig import dome_rig

SIZE = (256, 167)
# 8000 vertices: at ≲ 5000 the coarse meshing can cut fingertips short of their `_null` joints
CFG = CaptureConfig(frames=4, cameras=6, vertices=8000, image_size=SIZE, seed=3)


@pytest.fixture(scope="module")
def hand():
    return build_procedural_hand(2000, seed=5)


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_capture(root, CFG, progress=False)
    return root


def _cameras(root):
    return Cameras.from_krt(root / "annotations" / "KRT_512", dtype=torch.float64)


def _frames(root):
    params = json.loads((root / "annotations/synthetic/subject_1/params.json").read_text())
    return [(s["name"], f) for s in params["sequences"] for f in range(s["first_frame"], s["last_frame"] + 1)]


# --------------------------------------------------------------------------- poses
def test_pose_sequences_are_natural_smooth_and_deterministic(hand):
    sk = hand.skeleton
    seqs = generate_sequences(sk, 70, seed=1)
    assert [s.name for s in seqs] == list(SEQUENCE_KINDS)
    assert any("ROM" in s.name for s in seqs)
    lo, hi = natural_range(sk)
    mask = sk.dof_mask()
    for s in seqs:
        assert s.euler.shape == (s.num_frames, sk.num_joints, 3) and s.root.shape == (s.num_frames, 4, 4)
        assert np.all(s.euler >= lo - 1e-12) and np.all(s.euler <= hi + 1e-12)
        assert np.all(s.euler[:, ~mask] == 0)
        assert np.rad2deg(np.abs(np.diff(s.euler, axis=0))).max() < 25.0        # smooth in time
        R = s.root[:, :3, :3]
        assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-9)
        assert np.abs(s.root[:, :3, 3]).max() < 60.0                               # wrist near the origin
    fist = seqs[0].euler[:, sk.index("index2"), 2]
    assert fist.max() > np.deg2rad(70)                                              # the fist closes
    again = generate_sequences(sk, 70, seed=1)
    assert all(np.array_equal(a.euler, b.euler) and np.array_equal(a.root, b.root) for a, b in zip(seqs, again))
    assert sum(t for _, t in plan_sequences(3)) == 3 and plan_sequences(3)[-1][0].startswith("ROM")


# --------------------------------------------------------------------------- deformation
def test_quaternions_and_dual_quaternion_skinning_of_a_rigid_transform():
    e = torch.rand(200, 3, dtype=torch.float64) * 6 - 3
    R = euler_to_matrix(e)
    w, x, y, z = matrix_to_quaternion(R).unbind(-1)
    back = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
    assert torch.allclose(back, R, atol=1e-12)
    # every joint moved by the same rigid transform: DQS is that transform
    A = torch.cat([R[:2], torch.tensor([[10.0, -5, 3], [0, 7, 1]], dtype=torch.float64)[..., None]], -1)
    A = A[:, None].expand(2, 4, 3, 4)
    v = torch.randn(50, 3, dtype=torch.float64) * 30
    idx = torch.randint(0, 4, (50, 2))
    wts = torch.rand(50, 2, dtype=torch.float64)
    wts = wts / wts.sum(1, keepdim=True)
    out = dual_quaternion_skinning(v, idx, wts, A)
    assert torch.allclose(out, v @ A[:, 0, :, :3].transpose(-1, -2) + A[:, 0, None, :, 3], atol=1e-9)


def test_ground_truth_is_the_template_at_rest_and_beyond_lbs_when_flexed(hand):
    no_id = DeformParams(identity_amplitude_mm=0.0, bone_length_jitter=0.0)
    rest = GroundTruthDeformer(hand, 5, no_id)(np.zeros((1, hand.num_joints, 3)), np.eye(4)[None])
    assert np.abs(rest.vertices[0] - hand.vertices).max() < 1e-9
    assert np.allclose(rest.joints[0], hand.bind_joints)
    shape_only = GroundTruthDeformer(hand, 5, DeformParams(bone_length_jitter=0.0))(np.zeros((1, hand.num_joints, 3)),
                                                                                   np.eye(4)[None])
    off = np.linalg.norm(shape_only.vertices[0] - hand.vertices, axis=1)
    assert 0.2 < off.mean() < 2.0 and off.max() <= DeformParams().identity_amplitude_mm + 1e-9


def test_identity_bone_lengths_are_what_the_skeleton_corrective_expresses(hand):
    from dhmlib.hand.layer import HandLayer

    deformer = GroundTruthDeformer(hand, 5)
    sk = hand.skeleton
    rng = np.random.default_rng(3)
    euler = rng.uniform(-0.3, 0.6, size=(2, sk.num_joints, 3))
    gt = deformer(euler, np.stack([np.eye(4)] * 2))
    moved = np.linalg.norm(gt.joints - HandLayer(hand, dtype=torch.float64)(torch.as_tensor(euler)).joints.numpy(), axis=-1)
    assert 1.0 < moved.max() < 12.0                       # a few mm of bone-length change per identity
    layer = HandLayer(hand, dtype=torch.float64)
    same = layer(torch.as_tensor(euler), joint_offsets=torch.as_tensor(deformer.bone_offset)).joints.numpy()
    np.testing.assert_allclose(gt.joints, same, atol=1e-9)
    tips = [sk.index(f + "_null") for f in ("thumb", "index", "middle", "ring", "pinky")]
    assert np.all(deformer.bone_offset[tips] == 0) and np.all(deformer.bone_offset[sk.root] == 0)
    other = GroundTruthDeformer(hand, 6).bone_offset
    assert np.abs(other - deformer.bone_offset).max() > 0.5   # identities differ


@pytest.mark.slow
def test_lbs_only_fit_leaves_a_residual_except_at_rest(hand):
    sk = hand.skeleton
    fist = generate_sequences(sk, 14, seed=2)[0]
    k = int(np.argmax(fist.euler[:, sk.index("middle2"), 2]))
    euler = np.stack([np.zeros((sk.num_joints, 3)), fist.euler[k]])
    root = np.stack([np.eye(4), fist.root[k]])
    no_id = GroundTruthDeformer(hand, 5, DeformParams(identity_amplitude_mm=0.0, bone_length_jitter=0.0))(euler, root)
    _, _, err = fit_lbs(hand, no_id.vertices, euler, root, steps=40)
    assert err[0].mean() < 0.01                           # rest: LBS of the template is exact (≈ 0)
    assert err[1].mean() > 0.1 and err[1].max() > 2.0     # flexed: DQS + bulges are out of reach


# --------------------------------------------------------------------------- rig
def test_dome_rig_looks_at_the_hand_and_is_upright():
    cams = dome_rig(24)
    assert all(len(n) == 6 and n.startswith("40") for n in cams.names) and len(set(cams.names)) == 24
    assert torch.allclose(torch.linalg.det(cams.R), torch.ones(24, dtype=torch.float64))
    d = cams.position.norm(dim=-1)
    assert d.min() > 600 and d.max() < 850
    assert cams.focal.min() >= 1200 and cams.focal.max() <= 1500
    uv = cams.project(torch.tensor([[0.0, 0, 0], [0.0, 0, 190]], dtype=torch.float64))
    inside = (uv[..., 0] > 0) & (uv[..., 0] < 334) & (uv[..., 1] > 0) & (uv[..., 1] < 512)
    assert bool(inside.all())                              # wrist and fingertip height in every view
    assert bool((uv[:, 1, 1] < uv[:, 0, 1]).all())           # fingers (world up) toward the image top


# --------------------------------------------------------------------------- the written layout
def test_official_layout_and_extras(capture):
    root = capture
    recs = read_krt(root / "annotations" / "KRT_512")
    names = [r.name for r in recs]
    assert len(names) == CFG.cameras and all(n.startswith("40") and len(n) == 6 for n in names)
    HandModel.read(root / "hand_model")
    frames = _frames(root)
    assert [f for _, f in frames] == list(range(CFG.frames))                 # unique, global
    seqs = sorted(p.name for p in (root / "images" / "subject_1").iterdir())
    assert all("_RT_" in s for s in seqs) and any("ROM" in s for s in seqs)
    for seq, f in frames:
        for c in names:
            from PIL import Image
            with Image.open(root / f"images/subject_1/{seq}/cam{c}/image{f:04d}.jpg") as im:
                assert im.format == "JPEG" and im.size == (SIZE[1], SIZE[0])
            d = load_array_pickle(root / f"annotations/depthmaps/subject_1/{f:06d}/depthmap{c}.pkl")
            assert d.dtype == np.float32 and d.shape == SIZE and (d > 0).any() and d.min() >= 0
        pts = read_keypoints(root / f"annotations/keypoints/subject_1/keypoints{f:04d}.pts")
        assert np.all(pts[:21, 3] == 1) and np.all(pts[21:] == 0)
        assert np.all((pts[:21, 4] >= 0) & (pts[:21, 4] <= CFG.cameras)) and pts[:21, 4].mean() >= 3
    syn = root / "annotations" / "synthetic"
    assert (syn / "COMPLETE").is_file() and "Synthetic-only" in (syn / "README.txt").read_text()
    poses = np.load(syn / "subject_1" / "poses.npz")
    assert poses["euler"].shape == (CFG.frames, 22, 3) and poses["root"].shape == (CFG.frames, 4, 4)
    mesh = np.load(syn / "subject_1" / "meshes" / "000000.npy")
    assert mesh.dtype == np.float32 and mesh.shape == (HandModel.read(root / "hand_model").num_vertices, 3)
    assert not list(root.glob(".synth-partial-*"))


def test_decimated_scans_are_the_ground_truth_surface_subset(capture):
    """annotations/3D_scans_decimated/subject_1/<frame:06d>.ply: the ground-truth mesh of the frame restricted to
    scan_vertices.npy, with the clustered triangles of the rest template; it covers the whole surface."""
    from scipy.spatial import cKDTree

    from dhmlib.data.layout import Layout
    from dhmlib.data.scans import read_scan
    from dhmlib.synth.capture import SCAN_VERTEX_FRACTION
    from dhmlib.synth.meshops import decimate_by_clustering

    lay = Layout(capture)
    syn = capture / "annotations/synthetic/subject_1"
    keep = np.load(syn / "scan_vertices.npy")
    hand = HandModel.read(syn / "hand_model")
    keep_ref, faces_ref = decimate_by_clustering(hand.vertices, hand.faces,
                                                 round(SCAN_VERTEX_FRACTION * hand.num_vertices))
    assert np.array_equal(keep, keep_ref)
    assert abs(len(keep) - SCAN_VERTEX_FRACTION * hand.num_vertices) < 0.05 * hand.num_vertices
    assert lay.scan_frames() == list(range(CFG.frames))
    for f in lay.scan_frames():
        v, faces = read_scan(lay.scan_path(f))
        gt = np.load(syn / "meshes" / f"{f:06d}.npy")
        assert np.array_equal(v, gt[keep].astype(np.float64))          # exact: float32 in both files
        assert np.array_equal(faces, faces_ref)
        assert len(np.unique(faces)) == len(v)                         # every scan vertex is on a triangle
        d, _ = cKDTree(v).query(gt)                                     # every true vertex near the scan, mm
        assert d.max() < 6.0


def test_keypoints_land_on_the_rendered_hand_in_every_camera(capture):
    """Project the written keypoints with the written cameras onto the written depth maps and images.

    In every camera of every frame: each keypoint inside the image lands on the hand (depth > 0
    at its pixel, image not background), the skin there is in front of it, and the keypoints
    lying just under their own skin (camera depth − map depth ≤ 1.6 · finger radius + 3 mm,
    the radius taken from the template) are several; their per-keypoint count is ``num_views``.
    """
    from PIL import Image

    root = capture
    cams = _cameras(root)
    hand = HandModel.read(root / "hand_model")
    bind = np.stack([hand.bind_joints[hand.skeleton.index(n)] for n in KEYPOINT_NAMES])
    radius = np.sqrt(((bind[:, None] - hand.vertices[None]) ** 2).sum(-1).min(1))   # own skin depth, mm
    for seq, f in _frames(root):
        pts = read_keypoints(root / f"annotations/keypoints/subject_1/keypoints{f:04d}.pts")[:21]
        pc = cams.world_to_camera(torch.as_tensor(pts[:, :3]))
        uv = cams.camera_to_pixel(pc).numpy()
        z = pc[..., 2].numpy()
        seen = np.zeros(21, int)
        for c, name in enumerate(cams.names):
            d = load_array_pickle(root / f"annotations/depthmaps/subject_1/{f:06d}/depthmap{name}.pkl")
            img = np.asarray(Image.open(root / f"images/subject_1/{seq}/cam{name}/image{f:04d}.jpg"), float)
            j, i = np.floor(uv[c]).astype(int).T
            inside = (i >= 0) & (i < SIZE[0]) & (j >= 0) & (j < SIZE[1])
            assert inside.sum() >= 18, f"frame {f} cam {name}: {21 - inside.sum()} keypoints outside the image"
            i, j, zc = i[inside], j[inside], z[c][inside]
            assert (d[i, j] > 0).all(), f"frame {f} cam {name}: a keypoint projects off the hand"
            assert np.all(np.abs(img[i, j] - img[0, 0]).sum(-1) > 30)   # on the hand, not the background
            dz = zc - d[i, j]
            assert (dz > -0.5).all(), f"frame {f} cam {name}: skin behind a joint"
            own = dz <= 1.6 * radius[inside] + 3.0
            assert own.sum() >= 4, f"frame {f} cam {name}: only {own.sum()} keypoints just under their skin"
            seen[np.nonzero(inside)[0][own]] += 1
        assert np.all(seen >= 1)
        assert np.array_equal(seen, pts[:, 4]), (seen, pts[:, 4])


def test_depth_maps_agree_with_an_independent_ray_cast(capture):
    trimesh = pytest.importorskip("trimesh")
    pytest.importorskip("embreex")
    root = capture
    recs = read_krt(root / "annotations" / "KRT_512")
    faces = np.load(root / "annotations/synthetic/subject_1/faces.npy")
    H, W = SIZE
    i, j = np.mgrid[0:H, 0:W]
    pix = np.stack([j.ravel() + 0.5, i.ravel() + 0.5, np.ones(H * W)], -1)
    dz, both, differ, total = [], 0, 0, 0
    for _, f in _frames(root)[:2]:
        mesh = np.load(root / f"annotations/synthetic/subject_1/meshes/{f:06d}.npy").astype(np.float64)
        tm = trimesh.Trimesh(mesh, faces, process=False)
        caster = trimesh.ray.ray_pyembree.RayMeshIntersector(tm)
        for r in recs:
            Rm, t = r.Rt[:, :3], r.Rt[:, 3]
            d_cam = pix @ np.linalg.inv(r.K).T                                # z = 1 rays through pixel centres
            origin = -Rm.T @ t
            loc, ray, _ = caster.intersects_location(np.repeat(origin[None], H * W, 0), d_cam @ Rm,
                                                     multiple_hits=False)
            ref = np.zeros(H * W)
            ref[ray] = (loc @ Rm.T + t)[:, 2]
            ours = load_array_pickle(root / f"annotations/depthmaps/subject_1/{f:06d}/depthmap{r.name}.pkl")
            ours = ours.reshape(-1).astype(np.float64)
            m = (ref > 0) & (ours > 0)
            dz.append(np.abs(ref[m] - ours[m]))
            differ += int(((ref > 0) != (ours > 0)).sum())
            both += int(m.sum())
            total += H * W
    dz = np.concatenate(dz)
    assert dz.mean() <= 0.05, f"mean |Δz| {dz.mean():.4f} mm"
    assert differ <= 0.005 * both, f"coverage differs on {differ} of {both} covered pixels"


def test_refuses_to_overwrite_and_replaces_with_overwrite(capture, tmp_path, capsys):
    from dhmlib.cli import main

    with pytest.raises(FileExistsError, match="--overwrite"):
        write_capture(capture, CFG, progress=False)
    assert main(["synth", "--out", str(capture), "--frames", "1", "--quiet"]) == 2
    assert "already holds" in capsys.readouterr().err
    small = CaptureConfig(frames=2, cameras=2, vertices=800, image_size=(64, 42), seed=1)
    (tmp_path / "README.md").write_text("keep me")
    write_capture(tmp_path, small, progress=False)
    first = (tmp_path / "annotations/keypoints/subject_1/keypoints0001.pts").read_bytes()
    depth = (tmp_path / "annotations/depthmaps/subject_1/000001/depthmap400263.pkl").read_bytes()
    write_capture(tmp_path, small, overwrite=True, progress=False)
    assert (tmp_path / "annotations/keypoints/subject_1/keypoints0001.pts").read_bytes() == first   # deterministic
    assert (tmp_path / "annotations/depthmaps/subject_1/000001/depthmap400263.pkl").read_bytes() == depth
    assert (tmp_path / "README.md").read_text() == "keep me"
    assert len(list((tmp_path / "annotations/keypoints/subject_1").iterdir())) == 2


def test_the_images_show_a_forearm_that_the_depth_maps_and_truth_leave_out(tmp_path):
    """With ``forearm`` (the default) the colour images show skin below the wrist where the depth maps have no
    surface; without it they do not; depth maps, keypoints and true meshes are the same bytes either way."""
    from PIL import Image

    from dhmlib.data.safe_pickle import load_array_pickle
    from dhmlib.synth.forearm import forearm_mesh

    size = (128, 84)
    roots = {}
    for arm in (True, False):
        roots[arm] = tmp_path / f"arm_{arm}"
        write_capture(roots[arm], CaptureConfig(frames=2, cameras=4, vertices=2000, image_size=size, seed=2,
                                                forearm=arm), progress=False)
    skin_off_hand = {}
    for arm, root in roots.items():
        names = [r.name for r in read_krt(root / "annotations" / "KRT_512")]
        count = 0
        for c in names:
            d = load_array_pickle(root / f"annotations/depthmaps/subject_1/000000/depthmap{c}.pkl")
            img = np.asarray(Image.open(next(root.glob(f"images/subject_1/*/cam{c}/image0000.jpg"))), float)
            skin = np.abs(img - img[0, 0]).sum(-1) > 60          # clearly not the background
            count += int((skin & (d == 0)).sum())
        skin_off_hand[arm] = count
    assert skin_off_hand[True] > 200 and skin_off_hand[False] < 20, skin_off_hand
    for rel in ("annotations/depthmaps/subject_1/000001/depthmap400263.pkl", "annotations/keypoints/subject_1/keypoints0001.pts",
                "annotations/synthetic/subject_1/meshes/000001.npy"):
        assert (roots[True] / rel).read_bytes() == (roots[False] / rel).read_bytes(), rel
    params = json.loads((roots[True] / "annotations/synthetic/subject_1/params.json").read_text())
    assert params["forearm_in_images"] is True
    # the tube is closed around its axis and wound outward
    hand = HandModel.read(roots[True] / "hand_model")
    v, f = forearm_mesh(hand)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    out = v[f].mean(1) - [0.0, v[:, 1].mean(), v[:, 2].mean()]
    out[:, 0] = 0
    assert ((n * out).sum(1) > 0).all() and v[:, 0].max() < hand.vertices[:, 0].min() + 11
