"""dhmlib.evaluation.held_out (evaluate_snapshot, lbs_baseline) and `dhm test` on a tiny virtual capture."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dhmlib.cli import main
from dhmlib.data.keypoints import keypoints_to_joints, read_keypoints
from dhmlib.data.layout import Layout
from dhmlib.evaluation.held_out import lbs_baseline, evaluate_snapshot
from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.layer import HandLayer
from dhmlib.mesh.io import read_obj, read_obj_uvs
from dhmlib.network.model import DeepHandMesh
from dhmlib.network.snapshot import model_from_snapshot
from dhmlib.train import PoseEmbedding, preset
from dhmlib.train.checkpoint import save_training_snapshot, snapshot_path

TINY = dict(batch_size=2, num_views=2, render_size=(48, 48), input_size=(64, 64), held_out="frames:4")


@pytest.fixture(scope="module")
def hand(small_capture):
    return HandModel.read(small_capture / "hand_model")


@pytest.fixture(scope="module")
def trained(small_capture, hand, tmp_path_factory):
    """An embedding-source snapshot of epoch 1 (held out: frame 4) with non-zero skin correctives."""
    out = tmp_path_factory.mktemp("out")
    tc, mc = preset("cpu-small", **TINY)
    torch.manual_seed(0)
    model = DeepHandMesh(hand, mc)
    with torch.no_grad():
        model.skin_refine_net.fc_id[2].bias.normal_(0, 0.3)       # an identity corrective: not plain LBS
    emb = PoseEmbedding([0, 1, 2, 3], model.hand.dof_mask)
    path = save_training_snapshot(snapshot_path(out, 1), model, 1, None, train_config=tc, pose_embedding=emb, step=7)
    return out, path


@pytest.mark.slow   # ~7 s: 40 joint-fit steps, 16 joint+depth steps rendering 6 views, a figure
def test_evaluate_snapshot_writes_metrics_meshes_poses_and_figures(small_capture, hand, trained):
    out, path = trained
    res = evaluate_snapshot(None, small_capture, out, epoch=1, fit_steps=40, device="cpu", baseline=False,
                        log=lambda s: None)
    assert res.frames == (4,)
    doc = json.loads((out / "result" / "metrics.json").read_text())
    for key in ("joint_error_mm", "depth_error_mm", "vertex_mean_mm", "vertex_p95_mm", "vertex_normal_mean_mm",
                "vertex_normal_p95_mm", "vertex_sideways_mean_mm", "vertex_sideways_p95_mm", "surface_a_to_b_mm",
                "surface_b_to_a_mm"):
        assert np.isfinite(doc["summary"][key]), key
    assert set(doc["scans"]["summary"]) >= {"scan_a_to_b_mm", "scan_b_to_a_mm", "scan_symmetric_mm"}
    info = doc["info"]
    assert (info["snapshot"], info["epoch"], info["step"], info["pose_source"]) == (str(path), 1, 7, "fit")
    assert info["split"]["spec"] == "frames:4" and info["split"]["test"] == [4]
    assert info["train_config"]["held_out"] == "frames:4" and info["model_config"]["corrective_basis"] == "normal"
    assert info["views"] == 6 and doc["baseline"] is None

    # the mesh written is the one evaluated: decode(poses.npz) with the snapshot's model, and its error to the
    # true mesh is the reported one
    v, f = read_obj(out / "result" / "meshes" / "000004.obj")
    np.testing.assert_array_equal(f, hand.faces)
    assert v.shape == (hand.num_vertices, 3)
    assert np.array_equal(read_obj_uvs(out / "result" / "meshes" / "000004.obj")[1], hand.uv_faces)
    z = np.load(out / "result" / "poses.npz")
    model = model_from_snapshot(path, hand)
    with torch.no_grad():
        again = model.decode(torch.as_tensor(z["euler"]), torch.as_tensor(z["root"])).vertices[0].double().numpy()
    np.testing.assert_allclose(v, again, atol=1e-4)
    true = np.load(small_capture / "annotations" / "synthetic" / "subject_1" / "meshes" / "000004.npy")
    assert np.linalg.norm(v - true, axis=-1).mean() == pytest.approx(doc["summary"]["vertex_mean_mm"], abs=1e-4)

    # the held-out pose came from fitting: joints close to the annotation (bone lengths differ from the truth's)
    j, valid = keypoints_to_joints(read_keypoints(Layout(small_capture).keypoints_path(4)), hand.skeleton)
    fitted = model.decode(torch.as_tensor(z["euler"]), torch.as_tensor(z["root"])).joints[0].detach().numpy()
    err = np.linalg.norm(fitted - j, axis=-1)[valid > 0].mean()
    assert err == pytest.approx(doc["summary"]["joint_error_mm"], abs=1e-3) and err < 3.0
    assert (out / "vis" / "test_000004.png").stat().st_size > 10_000


def test_lbs_baseline_with_true_angles_is_template_lbs_on_the_capture_poses(small_capture, hand):
    cfg = preset("cpu-small", **TINY)[0]
    base = lbs_baseline(small_capture, frames=[2, 4], fit=False, config=cfg, device="cpu", log=lambda s: None)
    assert set(base) == {"true_angles"}
    r = base["true_angles"].result
    syn = small_capture / "annotations" / "synthetic" / "subject_1"
    z = np.load(syn / "poses.npz")
    with torch.no_grad():
        pose = HandLayer(hand)(torch.as_tensor(z["euler"][[2, 4]], dtype=torch.float64),
                               root_transform=torch.as_tensor(z["root"][[2, 4]], dtype=torch.float64))
    true = np.stack([np.load(syn / "meshes" / f"{f:06d}.npy") for f in (2, 4)]).astype(np.float64)
    e = np.linalg.norm(pose.vertices.numpy() - true, axis=-1)
    assert r.vertex["mean"] == pytest.approx(e.mean(), abs=1e-4)
    assert r.vertex_per_frame["total"] == pytest.approx(e.mean(1), abs=1e-4)
    lay = Layout(small_capture)
    for i, f in enumerate((2, 4)):
        j, valid = keypoints_to_joints(read_keypoints(lay.keypoints_path(f)), hand.skeleton)
        d = np.linalg.norm(pose.joints[i].numpy() - j, axis=-1)[valid > 0].mean()
        assert r.joint_error[i] == pytest.approx(d, abs=1e-3)
    assert 0.3 < e.mean() < 5.0          # LBS cannot reproduce the capture's deformation


def test_dhm_test_exit_codes_and_user_errors(small_capture, trained, capsys):
    out, path = trained
    base = ["test", "--data", str(small_capture), "--output", str(out)]
    assert main(base + ["--snapshot", str(path), "--fit-steps", "8", "--no-render", "--no-baseline",
                        "--views", "2"]) == 0
    text = capsys.readouterr().out
    assert "epoch 1" in text and "joint error" in text and "vertex mean" in text
    assert "penetr. depth" in text and "|Laplacian|" in text
    info = json.loads((out / "result" / "metrics.json").read_text())["info"]
    assert info["views"] == 2 and info["view_selection"] == "2 spread over the rig"
    for extra, message in [(["--test_epoch", "5"], "no snapshot of epoch 5 (epochs in"),
                           (["--snapshot", str(out / "nope.pth.tar")], "snapshot not found"),
                           (["--held-out", "seq:nothing*"], "no sequence matches")]:
        assert main(base + extra + ["--fit-steps", "1", "--no-render", "--no-baseline"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("dhm test: error:") and message in err and "\n" not in err, err


def test_image_source_snapshot_takes_its_poses_from_the_encoder(small_capture, hand, tmp_path):
    tc, mc = preset("cpu-small", pose_source="image", **TINY)
    torch.manual_seed(1)
    model = DeepHandMesh(hand, mc)
    path = save_training_snapshot(tmp_path / "snap.pth.tar", model, 0, None, train_config=tc)
    res = evaluate_snapshot(path, small_capture, tmp_path, device="cpu", render=False, baseline=False,
                        log=lambda s: None)
    assert res.info["pose_source"] == "encoder" and res.frames == (4,)
    z = np.load(tmp_path / "result" / "poses.npz")
    assert str(z["source"]) == "encoder"
    # the encoder's angles on the frame's input crop, root by Kabsch: decode reproduces the written mesh
    v, _ = read_obj(tmp_path / "result" / "meshes" / "000004.obj")
    with torch.no_grad():
        again = model.decode(torch.as_tensor(z["euler"]), torch.as_tensor(z["root"])).vertices[0].double().numpy()
    np.testing.assert_allclose(v, again, atol=1e-4)
    assert np.isfinite(res.summary()["vertex_mean_mm"])


def test_spread_views():
    from dhmlib.evaluation.held_out import spread_views

    cams = [f"c{i}" for i in range(24)]
    assert spread_views(cams, None) == cams and spread_views(cams, 30) == cams
    assert spread_views(cams, 4) == ["c0", "c8", "c15", "c23"] and spread_views(cams, 1) == ["c0"]


@pytest.mark.slow   # ~10 s: two evaluations of one frame with 8 joint-fit steps + 1 depth step
def test_fast_mode_gives_the_full_mode_numbers_with_the_same_views(small_capture, hand, trained, tmp_path):
    """num_views = every camera, no baseline fit, no figures: the metrics equal the full evaluation's."""
    out, path = trained
    full = evaluate_snapshot(path, small_capture, tmp_path / "full", fit_steps=8, device="cpu", log=lambda s: None)
    fast = evaluate_snapshot(path, small_capture, tmp_path / "fast", fit_steps=8, device="cpu", baseline=False,
                         num_views=6, render_figures=False, log=lambda s: None)
    a, b = full.summary(), fast.summary()
    assert set(a) == set(b)
    for k in a:
        assert (a[k] is None and b[k] is None) or b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), k
    for k in ("vertex_near_flexed_count", "penetration_depth_mean_mm", "penetration_fraction",
              "smoothness_laplacian_mm", "smoothness_ratio"):
        assert k in b and np.isfinite(b[k]), k
    assert b["vertex_near_flexed_count"] == 0 or np.isfinite(b["vertex_near_flexed_mean_mm"])
    assert full.info["figures"] and not fast.info["figures"] and fast.info["baseline"] is None
    assert set(full.info["baseline"]) == {"true_angles", "fitted_angles"}
    # the baseline's mesh metrics: plain LBS with the true angles, near-flexed error included
    lbs = full.info["baseline"]["true_angles"]
    assert lbs["vertex_near_flexed_count"] == b["vertex_near_flexed_count"] and "penetration_fraction" in lbs


@pytest.mark.slow   # ~12 s: three evaluations of one frame with 8 joint-fit steps, two with the baseline fit
def test_the_lbs_baseline_is_kept_per_capture_and_recomputed_when_a_file_changes(small_capture, hand, trained,
                                                                                 tmp_path):
    """The snapshot-independent baseline is computed once: a second test of the same capture reads it back
    (the same numbers in metrics.json); a touched depth map or another fit length is another key."""
    import os

    from dhmlib.evaluation.baseline_cache import baseline_key

    out, path = trained
    cache = tmp_path / "cache"
    kw = dict(fit_steps=8, device="cpu", render_figures=False, baseline_cache=cache, log=lambda s: None)
    first = evaluate_snapshot(path, small_capture, tmp_path / "a", **kw)
    assert first.info["baseline_from_cache"] is False
    files = sorted(cache.glob("lbs_baseline_*.json"))
    assert len(files) == 1
    again = evaluate_snapshot(path, small_capture, tmp_path / "b", **kw)
    assert again.info["baseline_from_cache"] is True and sorted(cache.glob("lbs_baseline_*.json")) == files
    doc_a = json.loads((tmp_path / "a" / "result" / "metrics.json").read_text())
    doc_b = json.loads((tmp_path / "b" / "result" / "metrics.json").read_text())
    assert doc_a["baseline"] == doc_b["baseline"] and set(doc_b["baseline"]) == {"true_angles", "fitted_angles"}
    assert again.info["baseline"] == first.info["baseline"]
    # what the key covers
    lay = Layout(small_capture, 1)
    views = [["400001", "400002"]]
    args = dict(hand_sha256="h", render_size=(48, 48), crop_mode="seed", fit_steps=8, fit=True, device_type="cpu",
                depth_share=(2, 5))
    key = baseline_key(small_capture, 1, [4], views, **args)
    assert baseline_key(small_capture, 1, [4], views, **{**args, "fit_steps": 9}) != key
    assert baseline_key(small_capture, 1, [4], views, **{**args, "hand_sha256": "g"}) != key
    p = next((lay.depth_dir / "000004").iterdir())
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert baseline_key(small_capture, 1, [4], views, **args) != key
        third = evaluate_snapshot(path, small_capture, tmp_path / "c", **kw)
        assert third.info["baseline_from_cache"] is False and len(list(cache.glob("lbs_baseline_*.json"))) == 2
    finally:
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    # refresh: computed although the file is there, and the file replaced (dhm test --recompute-baseline)
    before = files[0].stat().st_mtime_ns
    fresh = evaluate_snapshot(path, small_capture, tmp_path / "e", **{**kw, "refresh_baseline": True})
    assert fresh.info["baseline_from_cache"] is False and files[0].stat().st_mtime_ns > before
    assert evaluate_snapshot(path, small_capture, tmp_path / "f", **kw).info["baseline_from_cache"] is True
    # a damaged file is said and computed again
    files[0].write_text("{not json")
    msgs = []
    again = evaluate_snapshot(path, small_capture, tmp_path / "d", **{**kw, "log": msgs.append})
    assert again.info["baseline_from_cache"] is False and any("unreadable" in m for m in msgs)
    rewritten = json.loads(files[0].read_text())["baseline"]
    assert {k: v["summary"]["vertex_mean_mm"] for k, v in rewritten.items()} == \
           pytest.approx({k: v["vertex_mean_mm"] for k, v in doc_a["baseline"].items()}, rel=1e-5)
