"""dhmlib.metrics.errors: metrics against hand-built cases and independent references."""
import json

import numpy as np
import pytest
import torch

from dhmlib.data import ground_truth
from dhmlib.evaluation import result
from dhmlib.mesh.distance import point_triangle_distance
from dhmlib.mesh.io import read_obj, read_obj_uvs
from dhmlib.metrics import errors as ev


def grid(n=9, size=40.0):
    """A flat n×n grid in z = 0 (mm), faces counter-clockwise seen from +z (normal +z)."""
    x, y = np.meshgrid(np.linspace(0, size, n), np.linspace(0, size, n), indexing="xy")
    v = np.stack([x.ravel(), y.ravel(), np.zeros(n * n)], -1)
    i = np.arange(n * n).reshape(n, n)
    a, b, c, d = i[:-1, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, 1:].ravel(), i[1:, :-1].ravel()
    f = np.concatenate([np.stack([a, b, c], -1), np.stack([a, c, d], -1)])
    return v, f


def test_joint_error_masks_and_averages():
    gt = np.zeros((2, 3, 3))
    pred = gt.copy()
    pred[0, 0] = [3, 4, 0]            # 5 mm
    pred[0, 1] = [0, 0, 1]            # 1 mm
    pred[0, 2] = [100, 0, 0]          # invalid
    pred[1] = [[0, 6, 8]] * 3         # 10 mm each
    valid = np.array([[1, 1, 0], [1, 1, 1]])
    e = ev.joint_error(pred, gt, valid)
    assert e.tolist() == pytest.approx([3.0, 10.0])
    assert ev.joint_error(pred, gt, np.zeros((2, 3))).isnan().all()


def test_depth_error_only_where_both_nonzero():
    r = torch.zeros(1, 2, 2, 2)
    t = torch.zeros(1, 2, 2, 2)
    r[0, 0, 0, 0], t[0, 0, 0, 0] = 500.0, 503.0      # counts: 3
    r[0, 1, 1, 1], t[0, 1, 1, 1] = 400.0, 399.0      # counts: 1
    r[0, 0, 1, 0] = 450.0                           # target empty: ignored
    t[0, 1, 0, 1] = 420.0                           # render empty: ignored
    assert ev.depth_error(r, t).tolist() == pytest.approx([2.0])


def test_normal_and_sideways_split_on_a_flat_grid():
    v, f = grid()
    gt = torch.as_tensor(v)[None]
    along = ev.vertex_error_maps(gt + torch.tensor([0, 0, 0.7], dtype=torch.float64), gt, faces=f)
    assert along["normal"].numpy() == pytest.approx(0.7, abs=1e-12)
    assert along["sideways"].numpy() == pytest.approx(0.0, abs=1e-12)
    side = ev.vertex_error_maps(gt + torch.tensor([0.3, -0.4, 0.0], dtype=torch.float64), gt, faces=f)
    assert side["normal"].numpy() == pytest.approx(0.0, abs=1e-12)
    assert side["sideways"].numpy() == pytest.approx(0.5, abs=1e-12)
    # explicit normals give the same split, and total² = normal² + sideways² on random errors
    rng = np.random.default_rng(0)
    pred = gt + torch.as_tensor(rng.normal(size=gt.shape))
    m1 = ev.vertex_error_maps(pred, gt, faces=f)
    m2 = ev.vertex_error_maps(pred, gt, gt_normals=torch.tensor([0, 0, 2.0]).expand_as(gt))
    for k in m1:
        assert torch.allclose(m1[k], m2[k])
    assert torch.allclose(m1["total"] ** 2, m1["normal"] ** 2 + m1["sideways"] ** 2)
    assert torch.allclose(m1["normal"], (pred - gt)[..., 2].abs())


def test_vertex_error_summary_matches_numpy_percentile():
    v, f = grid()
    rng = np.random.default_rng(1)
    gt = np.stack([v, v + [0, 0, 5]])
    pred = gt + rng.normal(scale=2.0, size=gt.shape)
    s = ev.vertex_error(pred, gt, faces=f)
    e = pred - gt
    total = np.linalg.norm(e, axis=-1).ravel()
    normal = np.abs(e[..., 2]).ravel()
    side = np.linalg.norm(e[..., :2], axis=-1).ravel()
    assert s["mean"] == pytest.approx(total.mean())
    assert s["p95"] == pytest.approx(np.percentile(total, 95))
    assert s["normal_p95"] == pytest.approx(np.percentile(normal, 95))
    assert s["sideways_mean"] == pytest.approx(side.mean())
    assert s["sideways_p95"] == pytest.approx(np.percentile(side, 95))


def test_point_triangle_distance_against_dense_sampling():
    rng = np.random.default_rng(2)
    n = 100
    a, b, c = (rng.normal(scale=10, size=(n, 3)) for _ in range(3))
    p = rng.normal(scale=15, size=(n, 3))
    exact = point_triangle_distance(p, a, b, c)
    s = np.linspace(0, 1, 151)
    u, w = np.meshgrid(s, s)
    keep = u + w <= 1
    u, w = u[keep], w[keep]                                               # barycentric samples
    pts = a[:, None] + u[None, :, None] * (b - a)[:, None] + w[None, :, None] * (c - a)[:, None]
    ref = np.linalg.norm(pts - p[:, None], axis=-1).min(1)
    spacing = np.maximum(np.linalg.norm(b - a, axis=-1), np.linalg.norm(c - a, axis=-1)) / 150
    assert (exact <= ref + 1e-9).all()
    assert (ref - exact <= spacing).all()


def test_point_to_surface_is_certified_exact():
    """Faces of very different sizes: the candidate search must still find the nearest face."""
    rng = np.random.default_rng(3)
    v, f = grid(n=6, size=100.0)
    v = v + rng.normal(scale=3.0, size=v.shape)
    small = rng.uniform(0, 100, size=(200, 3)) * [1, 1, 0.05]
    sv = np.concatenate([v, small, small + [0.5, 0, 0], small + [0, 0.5, 0]])
    s = len(v) + np.arange(200)
    sf = np.concatenate([f, np.stack([s, s + 200, s + 400], -1)])
    p = rng.uniform(-10, 110, size=(500, 3)) * [1, 1, 0.3]
    fast = ev.point_to_surface(p, sv, sf)
    tri = sv[sf]
    brute = point_triangle_distance(p[:, None], tri[None, :, 0], tri[None, :, 1], tri[None, :, 2]).min(1)
    np.testing.assert_allclose(fast, brute, rtol=0, atol=1e-12)


def test_surface_distances_on_every_nth_frame_only():
    v, f = grid(n=5)
    gt = np.stack([v, v, v, v])
    pred = gt + np.array([0.5, 1.0, 1.5, 2.0])[:, None, None] * [0, 0, 1]
    every = result.evaluate([0, 1, 2, 3], pred_vertices=pred, gt_vertices=gt, faces=f)
    some = result.evaluate([0, 1, 2, 3], pred_vertices=pred, gt_vertices=gt, faces=f, surface_every=2)
    sym = some.to_dict()["per_frame"]["surface_symmetric_mm"]
    assert sym[1] is None and sym[3] is None
    assert sym[0] == pytest.approx(every.surface["symmetric"][0]) and sym[2] == pytest.approx(every.surface["symmetric"][2])
    assert some.summary()["surface_symmetric_mm"] == pytest.approx(1.0)          # mean of 0.5 and 1.5
    assert some.summary()["vertex_mean_mm"] == every.summary()["vertex_mean_mm"]  # the other metrics on all frames


def test_surface_distance_self_and_shifted_copy():
    v, f = grid(n=11)
    same = ev.surface_distance(v, f, v, f)
    assert same["symmetric"] == pytest.approx(0.0, abs=1e-12)
    d = 1.7
    shifted = ev.surface_distance(v, f, v + [0, 0, d], f)
    assert shifted["a_to_b"] == pytest.approx(d, abs=1e-12)
    assert shifted["b_to_a"] == pytest.approx(d, abs=1e-12)
    assert shifted["symmetric"] == pytest.approx(d, abs=1e-12)


def test_evaluate_and_write_results_round_trip(tmp_path):
    v, f = grid(n=5)
    gt = np.stack([v, v])
    pred = gt + [0, 0, 0.5]
    uvs = v[:, :2] / 40.0
    res = result.evaluate([3, 17], pred_joints=gt[:, :4], gt_joints=gt[:, :4] + [0, 2, 0],
                      joint_valid=np.ones((2, 4)), pred_vertices=pred, gt_vertices=gt, faces=f,
                      info={"subject": 1})
    assert res.summary()["joint_error_mm"] == pytest.approx(2.0)
    assert res.vertex["normal_mean"] == pytest.approx(0.5)
    assert res.vertex["sideways_p95"] == pytest.approx(0.0, abs=1e-12)
    assert res.summary()["surface_symmetric_mm"] == pytest.approx(0.5)
    path = result.write_results(res, tmp_path / "result", vertices=pred, faces=f, uvs=uvs, uv_faces=f)
    back = json.loads(path.read_text())
    assert back == json.loads(json.dumps(res.to_dict()))
    assert back["per_frame"]["frame"] == [3, 17]
    assert back["summary"]["vertex_mean_mm"] == pytest.approx(0.5)
    verts, faces = read_obj(tmp_path / "result" / "meshes" / "000017.obj")
    np.testing.assert_array_equal(verts, pred[1])
    np.testing.assert_array_equal(faces, f)
    t, tf = read_obj_uvs(tmp_path / "result" / "meshes" / "000003.obj")
    np.testing.assert_array_equal(t, uvs)
    np.testing.assert_array_equal(tf, f)


def test_ground_truth_meshes_reads_the_capture_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotations/synthetic/subject_1/meshes"):
        ground_truth.ground_truth_meshes(tmp_path, 1, [0])
    folder = tmp_path / "annotations" / "synthetic" / "subject_2" / "meshes"
    folder.mkdir(parents=True)
    m = np.random.default_rng(0).normal(size=(3, 10, 3)).astype(np.float32)
    for i, x in enumerate(m):
        np.save(folder / f"{i * 5:06d}.npy", x)
    np.save(folder.parent / "faces.npy", np.array([[0, 1, 2]], np.int32))
    np.testing.assert_array_equal(ground_truth.ground_truth_meshes(tmp_path, 2, [10, 0]), m[[2, 0]])
    assert ground_truth.ground_truth_faces(tmp_path, 2).tolist() == [[0, 1, 2]]
    with pytest.raises(FileNotFoundError, match="000001.npy"):
        ground_truth.ground_truth_meshes(tmp_path, 2, [1])


def test_evaluate_against_scans_of_another_topology():
    v, f = grid(n=5)
    fine_v, fine_f = grid(n=13)
    res = result.evaluate([0, 1], pred_vertices=np.stack([v, v]), faces=f,
                      scans=[(fine_v + [0, 0, 0.25], fine_f), (fine_v - [0, 0, 1.0], fine_f)])
    assert res.surface["symmetric"] == pytest.approx((0.25, 1.0), abs=1e-12)
    assert res.vertex is None and res.info["surface_reference"] == "scans"
