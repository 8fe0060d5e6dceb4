"""The held-out probe (dhmlib.train.probe), TrainConfig.max_steps / probe_every in the loop, the notebook
recipe (dhmlib.experiments.recipe), `dhm train --max-steps/--probe-every`, and the probe figure."""
from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
import torch

from dhmlib.cli import build_parser
from dhmlib.cli.train import configs, worker_args
from dhmlib.data.ground_truth import Poses, true_poses
from dhmlib.evaluation.held_out import PLAIN_LBS, lbs_baseline, load_held_out, measure
from dhmlib.experiments.recipe import SMOKE, build_recipe
from dhmlib.hand.handmodel import HandModel
from dhmlib.hand.layer import HandLayer
from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.train import TrainConfig, parse_set, preset, train
from dhmlib.train.config import split_assignments
from dhmlib.train.probe import HeldOutProbe, probe_frames

#: frames 3 and 4 of the 5-frame small capture held out; 3 training frames, 2 per step: 2 steps an epoch
TINY = dict(batch_size=2, num_views=2, render_size=(32, 32), input_size=(64, 64), held_out="frames:3-4",
            log_every=1, lr_milestones=(50,))
LBS_ONLY = dict(pose_corrective=False, id_corrective=False, skeleton_corrective=False)


@pytest.fixture(scope="module")
def hand(small_capture):
    return HandModel.read(small_capture / "hand_model")


# --------------------------------------------------------------------------- the probe itself
def test_probe_frames_are_evenly_spaced_deterministic_and_keep_both_ends():
    assert probe_frames([5, 3, 9], limit=4) == (3, 5, 9)
    got = probe_frames(range(100, 128), limit=8)
    assert got == probe_frames(list(reversed(range(100, 128))), limit=8)
    assert len(got) == 8 and got[0] == 100 and got[-1] == 127
    assert np.ptp(np.diff(got)) <= 1                     # evenly spaced (to rounding)


def test_probe_of_lbs_is_the_evaluation_of_lbs_with_true_angles_and_the_kabsch_root(small_capture, hand):
    """Step 0 of an LBS-only model: the probe equals (a) evaluation.measure (the path lbs_baseline takes) with
    the same poses — true angles, root by Kabsch of the model's alignment joints on the held-out joints
    as the dataset reads them — and (b) the template posed by HandLayer against the true meshes in numpy.
    Against lbs_baseline's true ROOT it differs only by that root (the capture's bones differ from the
    template's)."""
    model = DeepHandMesh(hand, ModelConfig(backbone=18, **LBS_ONLY))
    logs = []
    probe = HeldOutProbe.create(small_capture, 1, [4, 3], model, log=logs.append)
    assert probe.frames == (3, 4) and len(logs) == 1 and "2 of 2 held-out frames" in logs[0]
    got = probe(model)
    assert got["frames"] == 2

    cfg = preset("cpu-small", **TINY)[0]
    data = load_held_out(small_capture, [3, 4], cfg, hand.skeleton, torch.device("cpu"), images=False)
    true = true_poses(small_capture, 1, data.frames, "cpu")
    root = model.root_from_joints(data.joints, data.valid)
    ref = measure(model, data, Poses(true.euler, root, "true", {}), small_capture, 1, correctives=PLAIN_LBS).result
    assert got["vertex_mean_mm"] == pytest.approx(ref.vertex["mean"], abs=1e-5)
    assert got["vertex_p95_mm"] == pytest.approx(ref.vertex["p95"], abs=1e-4)
    assert got["vertex_normal_mean_mm"] == pytest.approx(ref.vertex["normal_mean"], abs=1e-5)

    syn = small_capture / "annotations" / "synthetic" / "subject_1"
    with torch.no_grad():
        v = HandLayer(hand)(true.euler.double(), root_transform=root.double()).vertices.numpy()
    gt = np.stack([np.load(syn / "meshes" / f"{f:06d}.npy") for f in (3, 4)]).astype(np.float64)
    assert got["vertex_mean_mm"] == pytest.approx(np.linalg.norm(v - gt, axis=-1).mean(), abs=1e-4)

    base = lbs_baseline(small_capture, frames=[3, 4], fit=False, config=cfg, log=lambda s: None)["true_angles"]
    assert got["vertex_mean_mm"] == pytest.approx(base.result.vertex["mean"], abs=0.1)   # 1.590 vs 1.583 mm here
    assert not torch.allclose(root, true.root, atol=1e-3)                                 # the root differs


def test_probe_sees_weights_that_fused_adam_changed(small_capture, hand):
    """Fused Adam leaves the version counters unchanged, so the model's inference cache of the identity
    corrective would go stale: the probe must see the updated weights (as a fresh copy of the model does)."""
    model = DeepHandMesh(hand, ModelConfig(backbone=18))
    probe = HeldOutProbe.create(small_capture, 1, [3, 4], model, log=lambda s: None)
    before = probe(model)["vertex_mean_mm"]
    params = list(model.skin_refine_net.fc_id.parameters()) + list(model.skeleton_refine_net.parameters())
    opt = torch.optim.Adam(params, lr=0.05, fused=True)
    g = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
    opt.step()
    fresh = DeepHandMesh(hand, ModelConfig(backbone=18))
    fresh.load_state_dict(model.state_dict())
    after = probe(model)["vertex_mean_mm"]
    assert after == pytest.approx(probe(fresh)["vertex_mean_mm"], abs=1e-9)
    assert abs(after - before) > 1e-3


def test_no_probe_without_true_angles_or_held_out_frames(small_capture, hand, tmp_path):
    data = tmp_path / "real_like"
    shutil.copytree(small_capture, data, ignore=shutil.ignore_patterns("images", "synthetic"))
    model = DeepHandMesh(hand, ModelConfig(backbone=18))
    logs = []
    assert HeldOutProbe.create(data, 1, [3, 4], model, log=logs.append) is None
    assert len(logs) == 1 and "no true angles and meshes" in logs[0]
    assert HeldOutProbe.create(small_capture, 1, [], model, log=logs.append) is None
    assert len(logs) == 2 and "no held-out frames" in logs[1]


# --------------------------------------------------------------------------- the loop
@pytest.mark.slow
def test_max_steps_stops_with_a_snapshot_probes_are_recorded_and_left_out_of_the_training_time(
        small_capture, tmp_path, monkeypatch):
    real = HeldOutProbe.__call__

    def slow(self, model):                # a probe that takes 0.4 s: the training time must not see it
        time.sleep(0.4)
        return real(self, model)

    monkeypatch.setattr(HeldOutProbe, "__call__", slow)
    tc, mc = preset("cpu-small", max_steps=3, probe_every=2, **TINY)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    res = train(tc, mc, small_capture, out, progress=False, echo=False, device="cpu")
    total = time.perf_counter() - t0
    assert res.steps == 3 and res.epochs == 1 and "max_steps 3 reached at epoch 1, step 3" in res.stopped_early
    assert sorted(p.name for p in (out / "model_dump").iterdir()) == ["snapshot_0.pth.tar", "snapshot_1_step3.pth.tar"]
    recs = [json.loads(ln) for ln in (out / "log" / "metrics.jsonl").read_text().splitlines()]
    probes = [r for r in recs if r["kind"] == "probe"]
    assert [r["step"] for r in probes] == [0, 2, 3]                  # the first, every 2nd, the last
    assert [r["step"] for r in recs if r["kind"] == "step"] == [1, 2, 3]
    assert res.probe_curve == [[r["step"], r["seconds"], r["vertex_mean_mm"]] for r in probes]
    # probing (3 × ≥ 0.4 s) is outside the training time, the time stamps and the steps/s
    assert res.probe_s >= 1.2 and res.wall_s + res.probe_s <= total
    assert probes[0]["seconds"] < 0.05 and probes[-1]["seconds"] == pytest.approx(res.wall_s, abs=0.05)
    assert max(r["time_s"] for r in recs if "time_s" in r) <= res.wall_s
    # step 0: the model is LBS (zero-initialised correctives, skeleton corrective 0): its probe is LBS's
    lbs = DeepHandMesh(HandModel.read(small_capture / "hand_model"), ModelConfig(backbone=18, **LBS_ONLY))
    ref = real(HeldOutProbe.create(small_capture, 1, [3, 4], lbs, log=lambda s: None), lbs)
    assert probes[0]["vertex_mean_mm"] == pytest.approx(ref["vertex_mean_mm"], abs=1e-5)
    assert probes[-1]["vertex_mean_mm"] != probes[0]["vertex_mean_mm"]          # the correctives moved
    log = (out / "log" / "train.log").read_text()
    assert "probe: 2 of 2 held-out frames" in log and "s probing)" in log

    # resumed with a larger budget: the steps count on from the snapshot, the probe at the new last step
    res2 = train(tc.replace(max_steps=4), mc, small_capture, out, resume=True, progress=False, echo=False,
                 device="cpu")
    assert res2.steps == 4 and [p[0] for p in res2.probe_curve] == [4]
    # resumed at the budget already: nothing trains
    res3 = train(tc.replace(max_steps=4), mc, small_capture, out, resume=True, progress=False, echo=False,
                 device="cpu")
    assert res3.steps == 4 and res3.stopped_early == "max_steps 4 reached (step 4)" and res3.probe_curve == []


# --------------------------------------------------------------------------- configs and the command line
def test_overrides_string_split_and_parse_like_set():
    assert split_assignments("lr=1e-3, lr_milestones=[30, 32],model.backbone=34,, held_out=\"seq:a,b\"") == \
        ["lr=1e-3", "lr_milestones=[30, 32]", "model.backbone=34", 'held_out="seq:a,b"']
    tc, mc = preset("cpu-small")
    tc2, mc2 = parse_set("max_steps=7, probe_every=2, lr_milestones=[3,4], pose_corrective=false, "
                         "model.seed=5, seed=9, held_out=seq:0005*", tc, mc)
    assert (tc2.max_steps, tc2.probe_every, tc2.lr_milestones, tc2.seed, tc2.held_out) == (7, 2, (3, 4), 9, "seq:0005*")
    assert (mc2.pose_corrective, mc2.seed) == (False, 5)
    with pytest.raises(ValueError, match="unknown key 'bogus'"):
        parse_set("bogus=1", tc, mc)
    for bad in (dict(max_steps=0), dict(probe_every=-1), dict(max_steps=2.5)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


def test_recipe_order_preset_smoke_explicit_overrides():
    r = build_recipe("cpu-small", smoke=True, train_fields=dict(epochs=5, batch_size=None, max_steps=3),
                     model_fields=dict(id_corrective=False, backbone=None),
                     overrides="epochs=7, model.backbone=34")
    tc, mc = r.train_config, r.model_config
    assert (tc.epochs, tc.batch_size, tc.render_size, tc.max_steps) == (7, SMOKE["batch_size"], (32, 32), 3)
    assert (mc.backbone, mc.id_corrective, mc.pose_corrective) == (34, False, True)
    assert r.base == preset("cpu-small") and r.variant is None and r.variant_record() is None
    with pytest.raises(ValueError, match="unknown preset"):
        build_recipe("huge")


def test_recipe_variant_then_explicit_parameters():
    r = build_recipe("cpu-small", variant="a")
    assert (r.model_config.pose_corrective, r.model_config.id_corrective, r.model_config.skeleton_corrective) == \
        (False, False, False)
    assert r.variant_record()["key"] == "a" and r.variant_record()["name"] == "lbs_only"
    r2 = build_recipe("cpu-small", variant="lbs_only", model_fields=dict(pose_corrective=True))
    assert r2.model_config.pose_corrective and not r2.model_config.id_corrective


def test_dhm_train_max_steps_and_probe_every_flags():
    args = build_parser().parse_args(["train", "--max-steps", "12", "--probe-every", "4", "--set", "max_steps=99"])
    tc, _ = configs(args)
    assert (tc.max_steps, tc.probe_every) == (12, 4)          # the flag wins over --set
    argv = worker_args(args, "/d", "/o", "cpu")
    assert argv[argv.index("--max-steps") + 1] == "12" and argv[argv.index("--probe-every") + 1] == "4"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--max-steps", "0"])


# --------------------------------------------------------------------------- the figure
def test_probe_figure_draws_one_labelled_line_per_run():
    import matplotlib
    matplotlib.use("Agg")
    from dhmlib.viz.training import probe_figure

    rows = [[0, 0.0, 1.3], [10, 2.0, 0.9], [20, 4.0, 0.7]]
    records = [{"kind": "step", "step": 5, "seconds": 1.0, "vertex_mean_mm": 99.0},
               {"kind": "probe", "step": 0, "seconds": 0.0, "vertex_mean_mm": 1.3},
               {"kind": "probe", "step": 10, "seconds": 3.0, "vertex_mean_mm": 1.1}]
    fig = probe_figure({"(a) LBS only": rows, "(d) full": records}, x="seconds", reference={"LBS true": 1.29})
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.lines}
    assert set(lines) == {"(a) LBS only", "(d) full", "LBS true"}
    assert list(lines["(a) LBS only"].get_xdata()) == [0.0, 2.0, 4.0]
    assert list(lines["(d) full"].get_ydata()) == [1.3, 1.1]                   # the step record is not a probe
    assert ax.get_xlabel() == "training time (s)"
    with pytest.raises(ValueError, match="x must be"):
        probe_figure({}, x="epoch")
