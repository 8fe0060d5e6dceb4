"""The training recipe of issue 14: prepared depth crops, poses fitted before training, the local pose
corrective, the per-step schedule, the extra loss terms and the paired intervals of the ablation."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dhmlib.hand.handmodel import HandModel
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.correctives import local_corrective_support
from dhmlib.train.config import TrainConfig, preset


# --------------------------------------------------------------------------- prepared crops
def _dataset(root, **kw):
    from dhmlib.data.dataset import DeepHandMeshDataset

    return DeepHandMeshDataset(root, num_views=3, render_size=(24, 24), input_size=(16, 16), images=False,
                               seed=1, **kw)


def test_prepared_crops_equal_the_full_size_path_and_follow_the_files(small_capture, tmp_path):
    from dhmlib.data.crop_cache import _key

    ref = _dataset(small_capture)
    ds = _dataset(small_capture).use_prepared_crops(tmp_path, progress=False)
    assert ds.crop_store is not None and len(ds) == len(ref)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        ref.set_epoch(epoch)
        for i in range(len(ds)):
            a, b = ds[i], ref[i]
            assert a.view_names == b.view_names
            assert torch.equal(a.depth, b.depth) and torch.equal(a.view_crops.matrix, b.view_crops.matrix)
    stores = sorted(p.name for p in tmp_path.iterdir())
    assert len(stores) == 1 and stores[0].startswith("depth_crops_")
    # reopened, not rebuilt: the same folder and the file is not rewritten
    mtime = os.stat(tmp_path / stores[0] / "depth.npy").st_mtime_ns
    _dataset(small_capture).use_prepared_crops(tmp_path, progress=False)
    assert os.stat(tmp_path / stores[0] / "depth.npy").st_mtime_ns == mtime
    # another render size or a touched depth map is another store (a stale one is never used)
    key = _key(ref)
    assert _key(_dataset(small_capture, crop_mode="square")) != key
    f = ref.frames[0]
    p = next((ref.layout.depth_dir / f"{f:06d}").iterdir())
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
    assert _key(_dataset(small_capture)) != key


@pytest.mark.parametrize("resident", [True, False])
def test_a_loader_batch_is_one_gather_equal_to_the_samples_collated(small_capture, tmp_path, monkeypatch, resident):
    from dhmlib.data import crop_cache
    from dhmlib.data.sample import GatheredSamples, HandBatch, collate_samples

    monkeypatch.setattr(crop_cache, "RESIDENT_MAX_BYTES", 1 << 40 if resident else 0)
    ref = _dataset(small_capture)                       # full-size files, sample by sample
    ds = _dataset(small_capture).use_prepared_crops(tmp_path, progress=False)
    assert ds.crop_store.resident is resident
    assert isinstance(ds.crop_store.depth, np.memmap) is not resident
    ds.set_epoch(2)
    ref.set_epoch(2)
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=5, sampler=order, collate_fn=collate_samples)
    seen = []
    for k, got in enumerate(loader):
        idx = order[5 * k: 5 * k + 5]
        want = collate_samples([ref[i] for i in idx])
        for f in ("joints", "joint_valid", "depth", "view_index", "frame", "index"):
            a, b = getattr(got, f), getattr(want, f)
            assert a.dtype == b.dtype and torch.equal(a, b), f
        assert torch.equal(got.view_crops.matrix, want.view_crops.matrix) and got.view_crops.size == want.view_crops.size
        for a in ("R", "t", "focal", "principal"):
            assert torch.equal(getattr(got.view_cameras, a), getattr(want.view_cameras, a)), a
        assert (got.view_names, got.subject, got.sequence, got.camera) == \
               (want.view_names, want.subject, want.sequence, want.camera)
        assert got.view_cameras.names == want.view_cameras.names
        seen += got.index.tolist()
    assert seen == order
    # another collate_fn sees the samples themselves
    items = ds.__getitems__([0, 3])
    assert isinstance(items, GatheredSamples) and isinstance(items.batch, HandBatch)
    assert [s.index for s in items] == [0, 3] and torch.equal(items[1].depth, ref[3].depth)


def test_with_prepared_crops_a_batch_reads_no_file(small_capture, tmp_path, monkeypatch):
    """use_prepared_crops reads the keypoint files and lists the depth folders once, up front: the first
    epoch's batches then touch no file (they used to read 8 keypoint files and list 8 folders each)."""
    from dhmlib.data import dataset as dataset_py
    from dhmlib.data.sample import collate_samples

    ref = _dataset(small_capture)
    want = collate_samples([ref[i] for i in range(len(ref))])
    ds = _dataset(small_capture).use_prepared_crops(tmp_path, progress=False)

    def no_file(*a, **k):
        raise AssertionError("a batch read a keypoint file or listed a folder")

    monkeypatch.setattr(dataset_py, "read_keypoints", no_file)
    monkeypatch.setattr(type(ds.layout), "depth_cameras", no_file)
    got = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds), collate_fn=collate_samples)))
    assert torch.equal(got.joints, want.joints) and torch.equal(got.depth, want.depth)
    assert got.view_names == want.view_names


def test_a_killed_build_leaves_nothing_that_is_taken_for_a_store(small_capture, tmp_path):
    from dhmlib.data.crop_cache import _key, open_or_build

    ds = _dataset(small_capture)
    folder = tmp_path / f"depth_crops_{_key(ds)}"
    (folder.with_name(folder.name + ".tmp999999")).mkdir(parents=True)      # a half-written build
    (folder.with_name(folder.name + ".lock")).write_text("999999")           # its lock (no such process)
    old = os.stat(folder.with_name(folder.name + ".lock")).st_mtime - 10
    os.utime(folder.with_name(folder.name + ".lock"), (old, old))
    store = open_or_build(ds, tmp_path, progress=False)
    assert store.folder == folder and (folder / "meta.json").is_file()
    assert not folder.with_name(folder.name + ".lock").exists()


@pytest.mark.parametrize("damage", ["truncated", "foreign", "wrong_shape"])
def test_a_damaged_store_is_named_and_rebuilt(small_capture, tmp_path, damage):
    """A truncated depth.npy, another store's meta.json or an array of the wrong shape is detected
    on open, named in one line, removed and rebuilt; the rebuilt store gives the same crops."""
    from dhmlib.data.crop_cache import _key, open_or_build

    ds = _dataset(small_capture)
    first = open_or_build(ds, tmp_path, progress=False)
    good = np.array(first.depth)
    folder = tmp_path / f"depth_crops_{_key(ds)}"
    del first
    if damage == "truncated":
        path = folder / "depth.npy"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        named = "depth.npy"
    elif damage == "foreign":
        meta = json.loads((folder / "meta.json").read_text())
        meta["key"] = "depth_crops_0123456789abcdef0123"
        (folder / "meta.json").write_text(json.dumps(meta))
        named = "meta.json"
    else:
        np.save(folder / "present.npy", np.zeros((1, 1), bool))
        named = "present.npy"
    said = []
    store = open_or_build(_dataset(small_capture), tmp_path, progress=False, log=said.append)
    assert any(named in line and "rebuilding" in line for line in said), said
    assert np.array_equal(np.array(store.depth), good)


def test_kill_9_during_a_build_leaves_no_store_that_is_used(small_capture, tmp_path):
    """A build process killed with SIGKILL mid-way leaves a temporary folder and a lock; the next
    open ignores both and builds a complete store."""
    from dhmlib.data.crop_cache import _key, open_or_build

    code = (f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "import dhmlib.data.crop_cache as cc\n"
            "from test_recipe import _dataset\n"
            "real = cc._compute_frame\n"
            "def slow(*a, **k):\n    time.sleep(0.2); return real(*a, **k)\n"
            "cc._compute_frame = slow\n"
            f"cc.open_or_build(_dataset({str(small_capture)!r}), {str(tmp_path)!r}, progress=False)\n")
    p = subprocess.Popen([sys.executable, "-c", code])
    folder = tmp_path / f"depth_crops_{_key(_dataset(small_capture))}"
    deadline = time.time() + 60
    while not list(tmp_path.glob(folder.name + ".tmp*")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert list(tmp_path.glob(folder.name + ".tmp*")) and not (folder / "meta.json").exists()
    store = open_or_build(_dataset(small_capture), tmp_path, progress=False)
    ref = _dataset(small_capture)
    a = ref[0]
    got = store.crops(a.frame, a.view_names)
    assert got is not None and torch.equal(got[0], a.depth)


# --------------------------------------------------------------------------- poses before training
def test_joint_fit_init_poses_the_frames_and_is_cached(small_capture, tmp_path):
    from dhmlib.data.layout import Layout
    from dhmlib.data.ground_truth import true_poses
    from dhmlib.train.pose_init import joint_fit_init

    hand = HandModel.read(small_capture / "hand_model")
    frames = [0, 1, 2, 3, 4]
    euler, info = joint_fit_init(small_capture, 1, frames, hand, cache_dir=tmp_path)
    assert not info["cached"] and info["joint_error_mm"] < 1.5
    true = true_poses(small_capture, 1, frames, "cpu").euler
    mask = hand.dof_mask
    err = np.rad2deg((euler - true).abs().numpy()[:, mask])
    rest = np.rad2deg(true.abs().numpy()[:, mask])
    assert err.mean() < 0.5 * rest.mean()            # much closer to the truth than the rest pose
    again, info2 = joint_fit_init(small_capture, 1, frames, hand, cache_dir=tmp_path)
    assert info2["cached"] and torch.equal(again, euler)
    kp = Layout(small_capture, 1).keypoints_path(2)
    st = os.stat(kp)
    os.utime(kp, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))           # a changed capture: fitted again
    assert not joint_fit_init(small_capture, 1, frames, hand, cache_dir=tmp_path)[1]["cached"]


def test_training_with_the_recipe_starts_from_fitted_poses_and_logs_its_terms(small_capture, tmp_path):
    from dhmlib.train import train

    tc, mc = preset("cpu-small")
    tc = tc.replace(batch_size=2, num_views=2, render_size=(24, 24), max_steps=3, held_out=None, log_every=1,
                    embedding_init="joint_fit", pose_prior_weight=1.0, lr_schedule="cosine", warmup_steps=2,
                    tangential_weight=1.0, pose_offset_weight=0.1)
    mc = mc.replace(corrective_basis="free")
    r = train(tc, mc, small_capture, tmp_path, progress=False, echo=False)
    steps = [h for h in r.history if h["kind"] == "step"]
    assert len(steps) == 3
    for term in ("pose_prior", "tangential", "pose_offset"):
        assert term in steps[-1] and math.isfinite(steps[-1][term])
    assert list((tmp_path / "cache").glob("embedding_init_*.npz"))
    assert r.embedding.euler.abs().max() > 0.1                      # not the rest pose


def test_oracle_poses_are_the_true_angles_and_stay_frozen(small_capture, tmp_path):
    from dhmlib.train import train
    from dhmlib.data.ground_truth import true_poses

    tc, mc = preset("cpu-small")
    tc = tc.replace(batch_size=2, num_views=2, render_size=(24, 24), max_steps=2, held_out=None,
                    embedding_init="true_angles", train_embedding=False)
    r = train(tc, mc, small_capture, tmp_path, progress=False, echo=False)
    true = true_poses(small_capture, 1, list(r.train_frames), "cpu").euler
    mask = torch.as_tensor(HandModel.read(small_capture / "hand_model").dof_mask)
    assert torch.allclose(r.embedding.euler.detach(), (true * mask).float())


# --------------------------------------------------------------------------- schedule
def test_cosine_schedule_with_warmup_of_the_correctives():
    from dhmlib.train.optim import step_schedule

    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"name": "correctives", "params": [a], "lr": 1e-3},
                           {"name": "embedding", "params": [b], "lr": 1e-2}], lr=1.0)
    cfg = TrainConfig(lr_schedule="cosine", warmup_steps=10, lr_end_ratio=0.01)   # 10 <= 100 // 8
    sched = step_schedule(opt, cfg, total_steps=100, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    lrs = np.array(lrs)
    cos = lambda s: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * s / 100))  # noqa: E731
    assert lrs[0, 0] == pytest.approx(1e-3 * 0.1) and lrs[9, 0] == pytest.approx(1e-3 * cos(9))
    assert lrs[0, 1] == pytest.approx(1e-2)                         # no warm-up for the poses
    assert lrs[50, 1] == pytest.approx(1e-2 * cos(50)) and lrs[99, 0] == pytest.approx(1e-3 * cos(99))
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="linear")


def test_multistep_in_steps_matches_the_epoch_milestones():
    from dhmlib.train.optim import step_schedule

    a = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"name": "network", "params": [a], "lr": 1.0}])
    sched = step_schedule(opt, TrainConfig(lr_milestones=(2, 3), lr_gamma=0.1, warmup_steps=1), 50, 5)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[9] == pytest.approx(1.0) and seen[10] == pytest.approx(0.1) and seen[15] == pytest.approx(0.01)


# --------------------------------------------------------------------------- local pose corrective
@pytest.fixture(scope="module")
def hand(small_capture):
    return HandModel.read(small_capture / "hand_model")


def test_local_pose_corrective_is_zero_at_rest_and_moves_only_its_joints_vertices(hand):
    torch.manual_seed(0)
    net = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective_kind="local", id_corrective=False,
                                         skeleton_corrective=False))
    loc = net.skin_refine_net.pose_local
    torch.nn.init.normal_(loc.weight, std=0.5)
    zero = torch.zeros(1, hand.skeleton.num_joints, 3)
    assert net.pose_corrective(zero).abs().max() == 0
    joints, parents, index, _ = local_corrective_support(hand)
    V = hand.num_vertices
    j = hand.skeleton.index("index2")
    slot = list(joints).index(j)
    e = zero.clone()
    e[0, j, 2] = 0.8
    moved = net.pose_corrective(e)[0].abs().sum(-1) > 0                  # (V,)
    # only the supports of the joint and of the joints whose parent it is (their features include it)
    allowed = np.zeros(V + 1, bool)
    for s in [slot] + [i for i, p in enumerate(parents) if p == slot]:
        allowed[index[s]] = True
    assert moved.any() and not moved.numpy()[~allowed[:V]].any()
    # an independent, loop-by-loop evaluation of the formula
    feats = loc.features(e)[0]
    mask = torch.sigmoid(loc.mask_logit)
    ref = torch.zeros(V + 1, 3)
    for s in range(len(joints)):
        for m in range(index.shape[1]):
            if index[s, m] < V:
                ref[index[s, m]] += mask[s, m] * (loc.weight[s, m] @ feats[s])
    torch.testing.assert_close(net.pose_corrective(e)[0], ref[:V], atol=1e-5, rtol=1e-5)


def test_local_support_is_near_the_joint(hand):
    joints, parents, index, mask = local_corrective_support(hand, radius_mm=30.0)
    pos = np.asarray(hand.global_pose)[:, :3, 3]
    V = hand.num_vertices
    for s, j in enumerate(joints):
        keep = index[s][index[s] < V]
        assert len(keep) > 0
        d = np.linalg.norm(np.asarray(hand.vertices)[keep] - pos[j], axis=1)
        assert d.max() < 30.0
        np.testing.assert_allclose(mask[s, :len(keep)], np.exp(-0.5 * (d / 15.0) ** 2))
    assert parents[0] == -1 or parents[0] < len(joints)


def test_the_original_pose_mlp_is_unchanged_by_the_new_kind(hand):
    """(d)'s model draws the same initial weights as before the local kind existed (mlp path untouched)."""
    torch.manual_seed(0)
    a = DeepHandMesh(hand, ModelConfig(backbone=18))
    torch.manual_seed(0)
    b = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective_kind="local"))
    torch.testing.assert_close(a.skin_refine_net.fc_id[0].weight, b.skin_refine_net.fc_id[0].weight)
    torch.testing.assert_close(a.skeleton_refine_net.fc_skeleton[0].weight, b.skeleton_refine_net.fc_skeleton[0].weight)


# --------------------------------------------------------------------------- paired intervals
def test_paired_interval_against_an_independent_t_interval():
    from scipy import stats

    from dhmlib.experiments.ablation import paired_interval

    rng = np.random.default_rng(0)
    a = rng.uniform(0.8, 1.2, 60)
    b = a - 0.05 + rng.normal(0, 0.02, 60)
    iv = paired_interval(a, b, block=5)
    blocks = (b - a).reshape(12, 5).mean(1)
    lo, hi = stats.t.interval(0.95, 11, loc=blocks.mean(), scale=stats.sem(blocks))
    assert iv["blocks"] == 12 and iv["low"] == pytest.approx(lo) and iv["high"] == pytest.approx(hi)
    assert iv["mean"] == pytest.approx((b - a).mean()) and iv["high"] < 0
    assert iv["relative"] == pytest.approx((b - a).mean() / a.mean())


def test_original_linear_init_is_n_0_001_and_the_default_is_unchanged(hand):
    torch.manual_seed(0)
    a = DeepHandMesh(hand, ModelConfig(backbone=18))
    torch.manual_seed(0)
    b = DeepHandMesh(hand, ModelConfig(backbone=18, linear_init="original"))
    w = b.skin_refine_net.fc_pose[0].weight
    assert abs(float(w.std()) - 0.01) < 5e-4 and float(b.skin_refine_net.fc_pose[0].bias.abs().max()) == 0
    assert float(b.skin_refine_net.fc_pose[2].weight.std()) == pytest.approx(0.01, rel=0.05)
    assert float(a.skin_refine_net.fc_pose[2].weight.abs().max()) == 0          # the default: last layer zero
    assert float(a.skin_refine_net.fc_pose[0].weight.std()) > 0.05              # PyTorch's default, ~8x larger
    # the id code (drawn after) is the same either way
    assert torch.equal(a.id_code, b.id_code)
