"""dhmlib.metrics.mesh: near-flexed error, penetration of non-adjacent parts, smoothness, fist-like poses."""
import numpy as np
import pytest
import torch

from dhmlib.hand.anatomy import gesture_euler
from dhmlib.hand.skeleton import official_skeleton
from dhmlib.metrics import mesh as mm


def uv_sphere(center, r, n=32):
    """A closed sphere: poles + (n-1) rings of 2n vertices; faces counter-clockwise seen from outside."""
    th = np.linspace(0, np.pi, n + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 0, 1]], ring, [[0, 0, -1]]]) * r + np.asarray(center, float)
    m = 2 * n
    idx = 1 + np.arange((n - 1) * m).reshape(n - 1, m)
    f = [[0, idx[0, j], idx[0, (j + 1) % m]] for j in range(m)]
    for i in range(n - 2):
        for j in range(m):
            a, b, c, d = idx[i, j], idx[i, (j + 1) % m], idx[i + 1, (j + 1) % m], idx[i + 1, j]
            f += [[a, d, c], [a, c, b]]
    last = len(v) - 1
    f += [[last, idx[-1, (j + 1) % m], idx[-1, j]] for j in range(m)]
    return v, np.asarray(f)


def two_spheres(distance, r=10.0, n=32):
    va, fa = uv_sphere([0, 0, 0], r, n)
    vb, fb = uv_sphere([distance, 0, 0], r, n)
    v = np.concatenate([va, vb])
    f = np.concatenate([fa, fb + len(va)])
    labels = np.repeat([0, 1], len(va))
    return v, f, labels


def test_uv_sphere_is_closed_and_outward():
    v, f = uv_sphere([1, 2, 3], 5.0, 12)
    w = mm.winding_numbers(np.array([[1, 2, 3], [1, 2, 10]]), v[f]).numpy()
    assert w == pytest.approx([1.0, 0.0], abs=1e-9)


@pytest.mark.parametrize("distance", [15.0, 12.0])
def test_overlapping_spheres_depth_matches_the_analytic_one(distance):
    r = 10.0
    v, f, labels = two_spheres(distance, r)
    parts = mm.mesh_parts(labels, f)
    assert not parts.adjacent[0, 1]
    depth = mm.penetration_depths(v, parts)
    centre_other = np.where(labels[:, None] == 0, [distance, 0, 0], [0, 0, 0])
    ref = r - np.linalg.norm(v - centre_other, axis=1)          # > 0: inside the other (true) sphere
    tess = r * (1 - np.cos(np.pi / 32))                          # chord sagitta of the tessellation
    assert (depth[ref > tess] > 0).all() and (depth[ref < -tess] == 0).all()
    pen = depth > 0
    np.testing.assert_allclose(depth[pen], ref[pen], atol=2 * tess)
    s = mm.penetration_summary(depth)
    assert s["penetration_depth_max"] == pytest.approx(2 * r - distance, abs=2 * tess)
    assert s["penetration_fraction"] == pytest.approx(pen.mean())
    # the winding number of the other sphere (the slow reference) agrees with the side test
    w = np.concatenate([mm.winding_numbers(v[labels == 0], v[f[labels[f].min(1) == 1]]).numpy(),
                        mm.winding_numbers(v[labels == 1], v[f[labels[f].max(1) == 0]]).numpy()])
    assert np.array_equal(w > 0.5, pen)


def test_separated_touching_and_adjacent_spheres_do_not_penetrate():
    r = 10.0
    v, f, labels = two_spheres(2 * r + 0.05, r)               # 0.05 mm apart: touching, not penetrating
    assert mm.penetration_summary(mm.penetration_depths(v, mm.mesh_parts(labels, f)))["penetration_count"] == 0
    v, f, labels = two_spheres(2 * r + 30, r)
    assert not mm.penetration_depths(v, mm.mesh_parts(labels, f)).any()
    v, f, labels = two_spheres(12.0, r)                        # overlapping, but declared adjacent
    assert not mm.penetration_depths(v, mm.mesh_parts(labels, f, extra_pairs=[(0, 1)])).any()


def test_penetration_of_a_batch_and_per_frame():
    v1, f, labels = two_spheres(15.0)
    v2, _, _ = two_spheres(25.0)
    s = mm.penetration(np.stack([v1, v2]), mm.mesh_parts(labels, f))
    assert s["per_frame"]["penetration_fraction"][1] == 0 and s["per_frame"]["penetration_fraction"][0] > 0
    assert s["penetration_fraction"] == pytest.approx(np.mean(s["per_frame"]["penetration_fraction"]))


def test_joint_flexion_and_near_flexed_mask():
    e = np.zeros((2, 3, 3))
    e[0, 1] = [0, 0, np.radians(40)]
    e[1, 2] = [np.radians(10), 0, 0]
    e[1, 1] = [0, np.radians(20), np.radians(25)]
    ang = mm.joint_flexion_deg(e)
    assert ang[0] == pytest.approx([0, 40, 0]) and ang[1, 2] == pytest.approx(10)
    # two rotations about orthogonal axes: cos(angle) = (tr R − 1)/2 with R = Rz Ry
    c = (np.cos(np.radians(20)) * np.cos(np.radians(25)) + np.cos(np.radians(20)) + np.cos(np.radians(25)) - 1) / 2
    assert ang[1, 1] == pytest.approx(np.degrees(np.arccos(c)))
    regions = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=bool)
    m = mm.near_flexed_mask(e, regions)
    assert m.tolist() == [[True, True, False, False], [ang[1, 1] > 30] * 2 + [False, False]]
    err = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    s = mm.near_flexed_error(err, m)
    sel = err[m]
    assert s["near_flexed_mean"] == pytest.approx(sel.mean()) and s["near_flexed_count"] == m.sum()
    assert s["near_flexed_p95"] == pytest.approx(np.percentile(sel, 95))
    assert s["not_near_flexed_mean"] == pytest.approx(err[~m].mean())


def test_near_joint_regions_on_a_hand(small_capture):
    from dhmlib.hand.handmodel import HandModel

    hand = HandModel.read(small_capture / "hand_model")
    reg = mm.near_joint_regions(hand)
    sk = hand.skeleton
    assert not reg[sk.root].any()
    j = sk.index("index2")
    d = np.linalg.norm(hand.vertices - hand.bind_joints[j], axis=1)
    w = hand.skinning_weights
    ref = (d < 15) & ((w[:, j] > 0.3) | (w[:, sk.parents[j]] > 0.3))
    assert np.array_equal(reg[j], ref) and ref.sum() > 10


def test_laplacian_smoothness_against_a_dense_reference():
    v, f = uv_sphere([0, 0, 0], 10.0, 6)
    V = len(v)
    A = np.zeros((V, V))
    for a, b in ((0, 1), (1, 2), (2, 0)):
        A[f[:, a], f[:, b]] = A[f[:, b], f[:, a]] = 1
    L = np.eye(V) - A / A.sum(1, keepdims=True)
    rng = np.random.default_rng(0)
    x = v + rng.normal(0, 0.3, v.shape)
    ref = np.linalg.norm(L @ x, axis=1).mean()
    assert mm.laplacian_norm(x, f)[0] == pytest.approx(ref)
    s = mm.smoothness(x[None], f, v[None])
    assert s["smoothness_ratio"] == pytest.approx(ref / np.linalg.norm(L @ v, axis=1).mean())
    assert mm.smoothness(v[None], f, v[None])["smoothness_ratio"] == pytest.approx(1.0)


def test_fist_like_poses():
    sk = official_skeleton()
    e = mm.fist_like_poses(6, seed=1)
    assert e.shape == (6, sk.num_joints, 3)
    np.testing.assert_allclose(e[0], gesture_euler("fist", sk))
    flex = np.degrees(e[:, [sk.index(f + "2") for f in ("index", "middle", "ring", "pinky")], 2])
    assert (flex > 55).all()
    np.testing.assert_array_equal(e, mm.fist_like_poses(6, seed=1))


def test_penetration_at_poses_of_plain_lbs(small_capture):
    from dhmlib.hand.handmodel import HandModel
    from dhmlib.network.model import DeepHandMesh, ModelConfig

    hand = HandModel.read(small_capture / "hand_model")
    model = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                           skeleton_corrective=False)).eval()
    rest = mm.penetration_at_poses(model, np.zeros((1, hand.num_joints, 3)))
    assert rest["penetration_count"] == 0 and rest["poses"] == 1
    fist = mm.penetration_at_poses(model, mm.fist_like_poses(4, 0, hand.skeleton))
    with torch.no_grad():
        v = model.decode(torch.as_tensor(mm.fist_like_poses(4, 0, hand.skeleton), dtype=torch.float32)).vertices
    ref = mm.penetration(v, mm.hand_parts(hand))
    assert fist["penetration_fraction"] == pytest.approx(ref["penetration_fraction"])
    assert fist["poses"] == 4
