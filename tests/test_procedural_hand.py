"""The procedural hand (dhmlib.synth) and the mesh checks (dhmlib.mesh.check)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dhmlib.hand.handmodel import HandModel, validate_poses
from dhmlib.hand.kinematics import (KinematicTree, euler_to_matrix, forward_kinematics, linear_blend_skinning,
                                    skinning_transforms)
from dhmlib.hand.skeleton import OFFICIAL_JOINT_NAMES
from dhmlib.mesh import check as mc
from dhmlib.synth import HandIdentity, build_procedural_hand
from dhmlib.synth.meshops import unique_edges


@pytest.fixture(scope="module")
def hand() -> HandModel:
    return build_procedural_hand(8000, seed=0)


@pytest.fixture(scope="module")
def small_hand() -> HandModel:
    return build_procedural_hand(3000, seed=7)


def _pose(model: HandModel, angles: dict[str, tuple[int, float]]):
    """Posed joints (J, 3) and vertices (V, 3) for {joint: (axis, radians)}."""
    euler = torch.zeros(1, model.num_joints, 3, dtype=torch.float64)
    for name, (axis, a) in angles.items():
        euler[0, model.skeleton.index(name), axis] = a
    G = forward_kinematics(euler_to_matrix(euler), torch.from_numpy(model.local_pose),
                           KinematicTree(model.parents))
    A = skinning_transforms(G, torch.from_numpy(model.global_pose_inv))
    v = linear_blend_skinning(torch.from_numpy(model.vertices), torch.from_numpy(model.skinning_weights), A)
    return G[0, :, :3, 3].numpy(), v[0].numpy()


# ----------------------------------------------------------------------------- mesh quality
@pytest.mark.parametrize("which", ["hand", "small_hand"])
def test_mesh_is_closed_oriented_single_and_clean(which, request):
    m = request.getfixturevalue(which)
    assert mc.is_watertight(m.faces)
    assert mc.edge_manifold(m.faces)
    assert mc.connected_components(m.faces, m.num_vertices)[0] == 1
    assert mc.signed_volume(m.vertices, m.faces) > 0
    assert len(mc.degenerate_faces(m.vertices, m.faces, tol=1e-6)) == 0
    assert len(mc.self_intersections(m.vertices, m.faces)) == 0
    # every vertex is used; the faces are what uv_faces index
    assert np.array_equal(np.unique(m.faces), np.arange(m.num_vertices))
    assert np.array_equal(m.uv_faces, m.faces)


def test_normals_point_outward_at_extremes(hand):
    from dhmlib.mesh.normals import vertex_normals
    n = vertex_normals(hand.vertices, hand.faces)
    for axis in range(3):
        assert n[np.argmax(hand.vertices[:, axis]), axis] > 0.5
        assert n[np.argmin(hand.vertices[:, axis]), axis] < -0.5


def test_realistic_size(hand):
    lo, hi = hand.vertices.min(0), hand.vertices.max(0)
    tip = hand.bind_joints[hand.skeleton.index("middle_null")]
    assert 175 < hi[0] < 195 and 175 < tip[0] < 195            # wrist → middle fingertip
    knuckles = hand.bind_joints[[hand.skeleton.index(f + "1") for f in ("index", "middle", "ring", "pinky")]]
    assert 80 <= knuckles[:, 0].max() <= 95                      # palm length
    band = (hand.vertices[:, 0] > 55) & (hand.vertices[:, 0] < 65)
    width = np.ptp(hand.vertices[band, 2][hand.vertices[band, 2] < 38])  # palm without the thumb
    assert 70 < width < 90
    mid = band & (np.abs(hand.vertices[:, 2]) < 5)
    assert 22 < np.ptp(hand.vertices[mid, 1]) < 32               # palm thickness


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_identities_are_clean_too(seed):
    m = build_procedural_hand(2000, seed=seed)
    report = mc.check_mesh(m.vertices, m.faces)
    assert report["watertight"] and report["edge_manifold"] and report["components"] == 1
    assert report["signed_volume"] > 0 and report["degenerate_faces"] == 0
    assert report["self_intersections"] == 0
    validate_poses(m)


@pytest.mark.parametrize("target", [3000, 8000])
def test_vertex_count_near_target(target, hand):
    m = hand if target == 8000 else build_procedural_hand(target, seed=0)
    assert abs(m.num_vertices / target - 1) <= 0.10, m.num_vertices


# ----------------------------------------------------------------------------- skeleton and frames
def test_official_joint_names_and_parents(hand):
    sk = hand.skeleton
    assert sk.names == OFFICIAL_JOINT_NAMES
    p = {sk.short_names[j]: (sk.short_names[q] if q >= 0 else None) for j, q in enumerate(sk.parents)}
    assert p["wrist"] is None
    assert [p[n] for n in ("thumb0", "thumb1", "thumb2", "thumb3", "thumb_null")] == \
        ["wrist", "thumb0", "thumb1", "thumb2", "thumb3"]
    for f in ("index", "middle", "ring", "pinky"):
        assert [p[f + s] for s in ("1", "2", "3", "_null")] == ["wrist", f + "1", f + "2", f + "3"]


def test_bind_poses_and_frames(hand):
    validate_poses(hand)
    G = hand.global_pose
    root = hand.skeleton.root
    assert np.allclose(G[root], np.eye(4))
    R = G[:, :3, :3]
    assert np.allclose(R.transpose(0, 2, 1) @ R, np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    for j, name in enumerate(hand.skeleton.short_names):
        kids = hand.skeleton.children(j)
        if len(kids) == 1:          # x points along the bone to the child
            d = G[kids[0], :3, 3] - G[j, :3, 3]
            assert np.allclose(R[j, :, 0], d / np.linalg.norm(d), atol=1e-9), name
        if name.endswith("_null"):  # tips keep their parent's orientation
            assert np.allclose(R[j], R[hand.parents[j]], atol=1e-12), name
    # right hand: fingers +x, palm +y, thumb on +z
    idx = hand.skeleton.index
    assert all(R[idx(f + "1"), 0, 0] > 0.9 and R[idx(f + "1"), 1, 1] > 0.9 for f in ("index", "middle", "ring", "pinky"))
    assert G[idx("thumb_null"), 2, 3] > G[idx("index_null"), 2, 3] > G[idx("pinky_null"), 2, 3]


def test_flexion_bends_toward_palm(hand):
    idx = hand.skeleton.index
    joints0, verts0 = _pose(hand, {})
    joints1, verts1 = _pose(hand, {"index1": (2, np.pi / 2)})
    tip0, tip1 = joints0[idx("index_null")], joints1[idx("index_null")]
    assert tip1[1] - tip0[1] > 50                                  # toward +y (palm side)
    assert tip1[0] < tip0[0] - 40
    seg = hand.segmentation
    moved = np.isin(seg, [idx("index2"), idx("index3")])
    assert (verts1[moved, 1] - verts0[moved, 1]).mean() > 30
    still = np.isin(seg, [idx("pinky3"), idx("ring3"), idx("middle3")])
    assert np.abs(verts1[still] - verts0[still]).max() < 1e-9
    # thumb flexion curls across the palm (toward the pinky side, -z)
    j2, _ = _pose(hand, {"thumb2": (2, 1.0), "thumb3": (2, 1.0)})
    assert j2[idx("thumb_null"), 2] < joints0[idx("thumb_null"), 2] - 20


# ----------------------------------------------------------------------------- skinning and uvs
def test_skinning_weights_valid(hand):
    W = hand.skinning_weights
    assert W.shape == (hand.num_vertices, 22)
    assert np.all(W >= 0)
    assert np.allclose(W.sum(1), 1.0, atol=1e-12)
    assert (W > 0).sum(1).max() <= 4
    names = hand.skeleton.short_names
    nulls = [j for j, n in enumerate(names) if n.endswith("_null")]
    assert np.all(W[:, nulls] == 0)
    owned = np.bincount(hand.segmentation, minlength=22)
    assert all(owned[j] > 20 for j in range(22) if j not in nulls), owned
    assert (W.max(1) < 0.99).mean() > 0.1                        # blending across joints exists


def test_skinning_weights_smooth(hand):
    e = unique_edges(hand.faces)
    W = hand.skinning_weights
    diff = np.abs(W[e[:, 0]] - W[e[:, 1]]).sum(1)              # L1 over joints, per edge
    assert diff.mean() < 0.1, diff.mean()
    assert np.quantile(diff, 0.99) < 0.35 and diff.max() < 0.6
    # no leakage between fingers: the middle finger's distal skin ignores its neighbours
    idx = hand.skeleton.index
    mid = np.isin(hand.segmentation, [idx("middle2"), idx("middle3")])
    others = [idx(f + s) for f in ("index", "ring") for s in ("1", "2", "3")]
    assert W[np.ix_(mid, others)].max() < 0.01


def test_uvs_in_unit_square_with_palm_and_back_halves(hand):
    uv = hand.uvs
    assert uv.shape == (hand.num_vertices, 2) and uv.min() >= 0 and uv.max() <= 1
    centre = (np.abs(hand.vertices[:, 0] - 40) < 25) & (np.abs(hand.vertices[:, 2]) < 20)
    palm = centre & (hand.vertices[:, 1] > 5)
    back = centre & (hand.vertices[:, 1] < -5)
    assert palm.sum() > 50 and back.sum() > 50
    assert np.all(uv[palm, 1] > 0.5) and np.all(uv[back, 1] < 0.5)


# ----------------------------------------------------------------------------- identities and determinism
def test_identity_sampling():
    assert HandIdentity.sample(3) == HandIdentity.sample(3)
    a, b = HandIdentity.sample(1), HandIdentity.sample(2)
    assert a != b
    for ident in (a, b, HandIdentity.sample(12345)):
        scales = ident.finger_length + (ident.thickness, ident.palm_width, ident.palm_length)
        assert all(0.92 - 1e-12 <= s <= 1.08 + 1e-12 for s in scales)
        assert HandIdentity.from_dict(ident.to_dict()) == ident
    with pytest.raises(ValueError, match="5 scales"):
        HandIdentity(finger_length=(1.0, 1.0))


def test_seeds_differ_and_repeat_bit_identically(hand, small_hand):
    assert hand.meta["identity"] == HandIdentity.default().to_dict()    # seed 0: canonical identity
    a = build_procedural_hand(3000, seed=7)
    assert a.equals(small_hand)                                     # same seed: bit-identical
    assert a.meta["identity"] == small_hand.meta["identity"]
    b = build_procedural_hand(3000, seed=8)
    assert b.meta["identity"] != a.meta["identity"]
    assert np.abs(b.bind_joints - a.bind_joints).max() > 1.0
    assert b.num_vertices != a.num_vertices or not np.array_equal(a.vertices, b.vertices)


def test_explicit_identity_and_meta():
    ident = HandIdentity(finger_length=(1.05, 1.05, 1.05, 1.05, 1.05), thickness=0.95)
    m = build_procedural_hand(2000, seed=4, identity=ident)
    assert m.meta["identity"] == ident.to_dict()
    assert m.meta["seed"] == 4 and m.meta["target_vertices"] == 2000
    base = build_procedural_hand(2000, seed=0)
    idx = m.skeleton.index
    L = lambda h: np.linalg.norm(h.bind_joints[idx("middle_null")] - h.bind_joints[idx("middle1")])  # noqa: E731
    assert L(m) == pytest.approx(1.05 * L(base), rel=1e-9)


def test_write_read_round_trip_is_exact(small_hand, tmp_path):
    small_hand.write(tmp_path / "hand_model")
    back = HandModel.read(tmp_path / "hand_model")
    assert back.equals(small_hand)


# ----------------------------------------------------------------------------- meshcheck
def _box(lo, hi):
    """Closed axis-aligned box: 8 vertices, 12 outward counter-clockwise triangles."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


def _two_boxes(offset):
    v1, f1 = _box((0, 0, 0), (1, 1, 1))
    v2, f2 = _box(np.add((0, 0, 0), offset), np.add((1, 1, 1), offset))
    return np.vstack([v1, v2]), np.vstack([f1, f2 + 8])


def _brute_force_intersections(v, f):
    i, j = np.triu_indices(len(f), 1)
    shared = np.any(f[i][:, :, None] == f[j][:, None, :], axis=(1, 2))
    i, j = i[~shared], j[~shared]
    hit = mc.triangles_intersect(v[f[i]], v[f[j]])
    return {tuple(p) for p in np.stack([i[hit], j[hit]], 1).tolist()}


def test_meshcheck_box_basics():
    v, f = _box((0, 0, 0), (2, 1, 1))
    assert mc.is_watertight(f) and mc.edge_manifold(f)
    assert mc.signed_volume(v, f) == pytest.approx(2.0)
    assert mc.signed_volume(v, f[:, ::-1]) == pytest.approx(-2.0)
    v2, f2 = _two_boxes((3, 0, 0))
    assert mc.connected_components(f2, len(v2))[0] == 2
    assert len(mc.self_intersections(v2, f2)) == 0
    assert mc.check_mesh(v2, f2)["self_intersections"] == 0


def test_meshcheck_catches_planted_nonmanifold_edges():
    v, f = _box((0, 0, 0), (1, 1, 1))
    flipped = f.copy()
    flipped[3] = flipped[3, ::-1]
    assert mc.is_watertight(flipped) and not mc.edge_manifold(flipped)   # inconsistent orientation
    holed = f[1:]
    assert not mc.is_watertight(holed) and not mc.edge_manifold(holed)
    assert len(mc.boundary_edges(holed)) == 3
    fin = np.vstack([f, [[0, 1, 8]]])                                     # a third face on edge (0, 1)
    assert not mc.edge_manifold(fin)
    assert [0, 1] in mc.nonmanifold_edges(fin).tolist()


def test_meshcheck_catches_overlapping_boxes():
    v, f = _two_boxes((0.5, 0.3, 0.2))
    hits = mc.self_intersections(v, f)
    assert len(hits) > 0
    assert np.all(hits[:, 0] < 8 * 2 - 4) and np.all(hits[:, 1] >= 12)   # always box 1 against box 2
    assert {tuple(p) for p in hits.tolist()} == _brute_force_intersections(v, f)


def test_meshcheck_catches_vertex_pushed_through():
    trimesh = pytest.importorskip("trimesh")
    s = trimesh.creation.icosphere(subdivisions=2)
    v, f = np.array(s.vertices), np.array(s.faces, dtype=np.int64)
    assert mc.edge_manifold(f) and len(mc.self_intersections(v, f)) == 0
    top = int(np.argmax(v[:, 2]))
    v[top] = [0.0, 0.0, -1.4]                                            # through the opposite side
    hits = mc.self_intersections(v, f)
    assert len(hits) > 0
    assert {tuple(p) for p in hits.tolist()} == _brute_force_intersections(v, f)
    for cell in (0.05, 0.3, 2.0):                                         # grid size changes nothing
        assert np.array_equal(mc.self_intersections(v, f, cell_size=cell), hits)


def test_meshcheck_catches_dent_in_the_hand(small_hand):
    v, f = small_hand.vertices.copy(), small_hand.faces
    # push the most dorsal palm vertex through to the palm side
    palm = (np.abs(v[:, 0] - 45) < 10) & (np.abs(v[:, 2]) < 10)
    k = np.flatnonzero(palm)[np.argmin(v[palm, 1])]
    v[k, 1] += 40.0
    assert len(mc.self_intersections(v, f)) > 0
