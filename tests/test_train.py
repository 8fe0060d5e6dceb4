"""dhmlib.train: configs, pose embeddings, the training step (Kabsch root, gradients) and the loop."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from dhmlib.cli import main as dhm
from dhmlib.data.dataset import DeepHandMeshDataset
from dhmlib.data.sample import collate_samples
from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.kinematics import euler_to_matrix
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.snapshot import model_from_snapshot, read_snapshot
from dhmlib.train import PoseEmbedding, TrainConfig, TrainStep, parse_set, preset

SMALL = dict(batch_size=2, num_views=2, render_size=(48, 48), input_size=(64, 64), log_every=1)


# --------------------------------------------------------------------------- config
def test_train_config_round_trips_and_rejects_unknown_keys():
    tc = TrainConfig(pose_source="embedding", lr_milestones=(3, 5), held_out="last:2", render_size=(96, 80))
    d = tc.to_dict()
    assert json.loads(json.dumps(d)) == d                     # JSON-able, tuples as lists
    assert TrainConfig.from_dict(d) == tc
    with pytest.raises(ValueError, match="unknown key 'learning_rate'"):
        TrainConfig.from_dict({**d, "learning_rate": 1})
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        tc.replace(bogus=1)
    with pytest.raises(ValueError, match="pose_source"):
        TrainConfig(pose_source="video")
    with pytest.raises(ValueError, match="lr_milestones"):
        TrainConfig(lr_milestones=(32, 30))
    with pytest.raises(ValueError, match="render_size"):
        TrainConfig(render_size=(4, 96))


def test_paper_preset_is_the_original_recipe_and_set_overrides():
    tc, mc = preset("paper")
    assert (tc.lr, tc.lr_milestones, tc.lr_gamma, tc.epochs, tc.batch_size, tc.num_views) == \
        (1e-4, (30, 32), 0.1, 35, 8, 6)
    assert (tc.input_size, tc.render_size, tc.pose_source, mc.backbone) == ((256, 256), (256, 256), "image", 50)
    assert (tc.joint_weight, tc.depth_weight, tc.penetration_rigid_weight, tc.penetration_nonrigid_weight,
            tc.laplacian_weight) == (1, 1, 1, 5, 5)
    small, smc = preset("cpu-small")
    assert small.pose_source == "embedding" and smc.backbone == 18
    tc2, mc2 = parse_set(["lr=1e-3", "lr_milestones=[2, 4]", "held_out=null", "laplacian_form=posed",
                          "model.backbone=34"], tc, mc)
    assert (tc2.lr, tc2.lr_milestones, tc2.held_out, tc2.laplacian_form, mc2.backbone) == \
        (1e-3, (2, 4), None, "posed", 34)
    with pytest.raises(ValueError, match="unknown key 'lrr'"):
        parse_set(["lrr=1"], tc, mc)
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpu-huge")


# --------------------------------------------------------------------------- embedding
def test_pose_embedding_maps_frames_masks_dof_and_reloads():
    mask = torch.tensor([[True, True, True], [True, False, False], [False, False, True]])
    init = torch.arange(27, dtype=torch.float32).view(3, 3, 3)
    emb = PoseEmbedding([7, 2, 40], mask, init=init)
    out = emb(torch.tensor([40, 7, 40]))
    assert torch.equal(out[0], init[2] * mask) and torch.equal(out[1], init[0] * mask)
    with pytest.raises(KeyError, match=r"frame\(s\) \[3\]"):
        emb(torch.tensor([2, 3]))
    other = PoseEmbedding([1], mask)                 # a different frame list: the state dict brings its own
    other.load_state_dict(emb.state_dict())
    assert torch.equal(other(torch.tensor([2])), emb(torch.tensor([2])))


# --------------------------------------------------------------------------- step
@pytest.fixture(scope="module")
def hand(small_capture):
    return HandModel.read(small_capture / "hand_model")


def test_step_places_the_root_by_kabsch_on_the_ground_truth_joints(small_capture, hand):
    """Ground-truth joints = the rest-pose refined skeleton moved rigidly: with zero angles the step's
    hand lands exactly on them (joint loss 0) and its mesh is the rest mesh moved the same way."""
    ds = DeepHandMeshDataset(small_capture, num_views=2, render_size=(48, 48), images=False)
    model = DeepHandMesh(hand, ModelConfig(backbone=18)).double()
    with torch.no_grad():   # a non-zero skeleton corrective: the rest joints are the *refined* ones
        model.skeleton_refine_net.fc_skeleton[2].bias.normal_(0, 2.0)
    rest = model.rest_pose()
    R = euler_to_matrix(torch.tensor([[0.3, -1.1, 2.0], [-2.5, 0.4, 0.1]], dtype=torch.float64))
    t = torch.tensor([[10.0, -40.0, 90.0], [-50.0, 20.0, 70.0]], dtype=torch.float64)
    gt = rest.joints @ R.transpose(1, 2) + t[:, None]                                   # (2, J, 3)
    batch = collate_samples([ds[0], ds[1]])
    batch = dataclasses.replace(batch, joints=gt, joint_valid=torch.ones(gt.shape[:2], dtype=torch.float64))
    tc = TrainConfig(pose_source="embedding", penetration_rigid_weight=0, penetration_nonrigid_weight=0, **SMALL)
    emb = PoseEmbedding(ds.frames, model.hand.dof_mask).double()
    out = TrainStep(model, tc, emb)(batch)
    assert torch.allclose(out.pose.joints, gt, atol=1e-8)
    assert out.terms["joint"] < 1e-8
    assert torch.allclose(out.pose.vertices, rest.vertices @ R.transpose(1, 2) + t[:, None], atol=1e-8)


@pytest.mark.parametrize("options", [{}, {"corrective_basis": "normal", "pose_corrective_gauge": "zero_at_rest"}])
def test_step_gradients_reach_correctives_embedding_and_skeleton(small_capture, hand, options):
    tc = TrainConfig(pose_source="embedding", penetration_rigid_weight=0, penetration_nonrigid_weight=0, **SMALL)
    ds = DeepHandMeshDataset(small_capture, num_views=2, render_size=(48, 48), images=False)
    model = DeepHandMesh(hand, ModelConfig(backbone=18, **options))
    with torch.no_grad():   # leave the zero init of the last layers so that every corrective gets a gradient
        for fc in (model.skin_refine_net.fc_pose, model.skin_refine_net.fc_id, model.skeleton_refine_net.fc_skeleton):
            fc[2].weight.normal_(0, 1e-3)
    # away from the rest pose: with the zero_at_rest gauge f(θ) − f(0) has no weight gradient at θ = 0
    init = 0.2 * torch.randn(len(ds.frames), hand.num_joints, 3, generator=torch.Generator().manual_seed(0))
    emb = PoseEmbedding(ds.frames, model.hand.dof_mask, init=init)
    step = TrainStep(model, tc, emb)
    batch = collate_samples([ds[0], ds[1]])
    out = step(batch)
    assert set(out.terms) == {"joint", "depth", "laplacian"}
    assert out.depth.shape == (2, 2, 48, 48) and (out.depth > 0).any()
    expect = out.terms["joint"] + out.terms["depth"] + 5 * out.terms["laplacian"]
    assert torch.allclose(out.total, expect)
    out.total.backward()
    for name, p in [("fc_pose", model.skin_refine_net.fc_pose[2].weight),
                    ("fc_id", model.skin_refine_net.fc_id[2].weight),
                    ("skeleton", model.skeleton_refine_net.fc_skeleton[2].weight)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    rows = emb.rows(batch.frame)
    g = emb.euler.grad
    assert g[rows].abs().sum() > 0
    others = torch.ones(emb.num_frames, dtype=torch.bool)
    others[rows] = False
    assert g[others].abs().sum() == 0                         # only the batch's frames move
    assert (g[rows][:, ~emb.dof_mask] == 0).all()             # and only their degrees of freedom


def test_image_source_trains_the_encoder(small_capture, hand):
    tc = TrainConfig(pose_source="image", penetration_rigid_weight=0, penetration_nonrigid_weight=0, **SMALL)
    ds = DeepHandMeshDataset(small_capture, num_views=2, render_size=(48, 48), input_size=(64, 64))
    model = DeepHandMesh(hand, ModelConfig(backbone=18))
    step = TrainStep(model, tc)
    out = step(collate_samples([ds[0], ds[1]]))
    out.total.backward()
    assert model.pose_net.fc[2].weight.grad.abs().sum() > 0
    assert model.backbone_net.resnet.conv1.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs images"):
        TrainStep(model, tc)(collate_samples([DeepHandMeshDataset(small_capture, num_views=2, render_size=(48, 48),
                                                                   images=False)[0]]))


# --------------------------------------------------------------------------- loop
@pytest.mark.slow
def test_two_epochs_without_images_lower_the_loss_and_write_snapshots_and_logs(small_capture, hand, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_capture, data, ignore=shutil.ignore_patterns("images"))
    assert not (data / "images").exists()
    out = tmp_path / "out"
    args = ["--preset", "cpu-small", "--data", str(data), "--output", str(out), "--epochs", "2", "--no-progress",
            "--set", "batch_size=5", "--set", "render_size=[64,64]", "--set", "num_views=3",
            "--set", "log_every=1", "--set", "held_out=null", "--set", "lr_milestones=[1]", "--set", "lr_schedule=multistep", "--set", "keep_snapshots=1"]
    assert dhm(["train", *args]) == 0
    recs = [json.loads(line) for line in (out / "log" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    steps = [r for r in recs if r["kind"] == "step"]
    assert [r["epoch"] for r in epochs] == [0, 1] and len(steps) >= 2
    assert all({"joint", "depth", "laplacian", "total", "lr", "steps_per_s"} <= set(r) for r in steps)
    assert epochs[1]["total"] < epochs[0]["total"]
    assert steps[-1]["lr"] == pytest.approx(preset("cpu-small")[0].lr * 0.1)       # MultiStepLR at epoch 1
    log = (out / "log" / "train.log").read_text()
    assert "snapshot" in log and "done: 2 epochs" in log
    assert sorted(p.name for p in (out / "model_dump").iterdir()) == ["snapshot_1.pth.tar"]    # keep_snapshots=1
    for e in (1,):
        path = out / "model_dump" / f"snapshot_{e}.pth.tar"
        ckpt = read_snapshot(path)
        assert ckpt["epoch"] == e
        assert TrainConfig.from_dict(ckpt["train_config"]).pose_source == "embedding"
        assert ModelConfig.from_dict(ckpt["model_config"]) == preset("cpu-small")[1]
        assert ckpt["pose_embedding"]["euler"].shape[1:] == (hand.num_joints, 3)
    model = model_from_snapshot(out / "model_dump" / "snapshot_1.pth.tar", hand)
    trained = model.skin_refine_net.fc_id[2].weight
    assert trained.abs().sum() > 0                            # the correctives moved from their zero init


@pytest.mark.slow
def test_a_nan_loss_stops_with_step_and_term_and_keeps_the_last_good_snapshot(small_capture, tmp_path, monkeypatch):
    import dhmlib.train.step as step_module
    from dhmlib.train import train

    calls = {"n": 0}
    real = step_module.depth_loss

    def flaky(rendered, target, **kw):
        calls["n"] += 1
        value = real(rendered, target, **kw)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(step_module, "depth_loss", flaky)
    tc, mc = preset("cpu-small", batch_size=5, num_views=2, render_size=(48, 48), epochs=3, held_out=None)
    out = tmp_path / "out"
    with pytest.raises(Exception, match=r"step 1: loss term 'depth'"):
        train(tc, mc, small_capture, out, progress=False, echo=False)
    assert (out / "model_dump" / "snapshot_0.pth.tar").is_file()
    assert sorted(p.name for p in (out / "model_dump").iterdir()) == ["snapshot_0.pth.tar"]
    assert "step 1: loss term 'depth'" in (out / "log" / "train.log").read_text()


def test_step_with_penetration_weights_its_two_terms(small_capture, hand):
    from dhmlib.losses import PenetrationLoss

    tc = TrainConfig(pose_source="embedding", penetration_rigid_weight=2.0, penetration_nonrigid_weight=5.0, **SMALL)
    ds = DeepHandMeshDataset(small_capture, num_views=2, render_size=(48, 48), images=False)
    model = DeepHandMesh(hand, ModelConfig(backbone=18))
    init = 0.8 * torch.randn(len(ds.frames), hand.num_joints, 3, generator=torch.Generator().manual_seed(1))
    step = TrainStep(model, tc, PoseEmbedding(ds.frames, model.hand.dof_mask, init=init),
                     PenetrationLoss.from_hand(hand))
    out = step(collate_samples([ds[0], ds[1]]))
    t = out.terms
    assert set(t) == {"joint", "depth", "penetration_rigid", "penetration_nonrigid", "laplacian"}
    expect = t["joint"] + t["depth"] + 2 * t["penetration_rigid"] + 5 * t["penetration_nonrigid"] + 5 * t["laplacian"]
    assert torch.allclose(out.total, expect)
    rest = model.rest_pose()
    ref = PenetrationLoss.from_hand(hand)(out.pose.joints, out.pose.vertices, rest.joints[0], rest.vertices[0])
    assert torch.allclose(t["penetration_rigid"], ref.rigid) and torch.allclose(t["penetration_nonrigid"], ref.nonrigid)
