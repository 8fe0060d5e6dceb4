"""dhmlib.train.checkpoint and dhmlib.train.distributed: resumable snapshots, NaN guard, sampler, launcher. (Two real
processes, kill -9 and --continue: test_train_cli.py, through the training loop itself.)"""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler
from toyhand import toy_hand

from dhmlib.network.model import DeepHandMesh, ModelConfig
from dhmlib.network.snapshot import read_snapshot
from dhmlib.train.checkpoint import (TRAIN_STATE_KEYS, BackgroundSnapshotWriter, NonFiniteLoss, check_finite,
                                     find_resumable, list_snapshots, parse_snapshot_name, restore_training_state,
                                     save_training_snapshot, snapshot_path)
from dhmlib.train.distributed import (DistInfo, ResumableSampler, command_line, init_distributed, is_main, make_sampler,
                                      parse_gpus, torchrun_command, wrap_model)



@pytest.fixture(scope="module")
def hand():
    return toy_hand(300, seed=1)


def _setup(hand, seed=0):
    torch.manual_seed(seed)
    model = DeepHandMesh(hand, ModelConfig(backbone=18, seed=3))
    emb = torch.nn.Embedding(10, model.hand.num_joints * 3)
    params = [p for n, p in model.named_parameters() if n.startswith("skin_refine_net")] + list(emb.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4], gamma=0.1)
    return model, emb, opt, sched


def _train_a_bit(model, emb, opt, sched, steps=3):
    for _ in range(steps):
        frames = torch.randint(0, 10, (2,))
        pose = model.decode(emb(frames).view(2, -1, 3))
        loss = pose.vertices.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _draws():
    return (torch.rand(4), np.random.rand(3), np.random.randn(2), random.random(), random.gauss(0, 1))


# ------------------------------------------------------------------ checkpoint
def test_round_trip_restores_everything(hand, tmp_path):
    model, emb, opt, sched = _setup(hand)
    _train_a_bit(model, emb, opt, sched)
    sampler = ResumableSampler(10, shuffle=True, seed=4)
    sampler.set_epoch(1)
    it = iter(sampler)
    seen = [next(it) for _ in range(3)]
    random.gauss(0, 1)  # python random caches a second gaussian: its state must survive too
    np.random.randn()   # numpy as well
    path = save_training_snapshot(snapshot_path(tmp_path, 1, step=7), model, 1, opt,
                                  train_config={"lr": 1e-3, "milestones": [2, 4]}, scheduler=sched,
                                  sampler_state=sampler.state_dict(), pose_embedding=emb, step=7, mid_epoch=True)
    assert path == tmp_path / "model_dump" / "snapshot_1_step7.pth.tar"
    expected_draws = _draws()
    rest = list(it)
    w_before = {k: v.clone() for k, v in model.state_dict().items()}
    e_before = emb.weight.detach().clone()
    opt_before, sched_before = opt.state_dict(), sched.state_dict()
    # the file is weights_only-loadable and keeps the official keys
    ckpt = read_snapshot(path)
    assert {"epoch", "network", "optimizer", "model_config", *TRAIN_STATE_KEYS} <= set(ckpt)
    assert all(k.startswith("module.") for k in ckpt["network"])

    # a fresh process-like state: other weights, other RNG states
    model2, emb2, opt2, sched2 = _setup(hand, seed=1)
    torch.manual_seed(123); np.random.seed(123); random.seed(123)
    found_path, found = find_resumable(tmp_path / "model_dump", log=lambda m: None)
    assert found_path == path
    state = restore_training_state(found, model2, opt2, sched2, pose_embedding=emb2, path=found_path)
    assert state["epoch"] == 1 and state["step"] == 7 and state["mid_epoch"] and state["start_epoch"] == 1
    got = _draws()
    for a, b in zip(expected_draws, got):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)
        else:
            np.testing.assert_array_equal(a, b)
    assert all(torch.equal(w_before[k], v) for k, v in model2.state_dict().items())
    assert torch.equal(emb2.weight, e_before)
    s2 = opt2.state_dict()
    assert s2["param_groups"] == opt_before["param_groups"]
    for i, st in opt_before["state"].items():
        for k, v in st.items():
            assert torch.equal(s2["state"][i][k], v), (i, k)
    assert sched2.state_dict() == sched_before and sched2.get_last_lr() == sched.get_last_lr()
    sampler2 = ResumableSampler(10, shuffle=True, seed=99)
    sampler2.load_state_dict(state["sampler"])
    sampler2.set_epoch(state["start_epoch"])  # the same epoch keeps the position
    assert list(sampler2) == rest and len(rest) == 7 and seen + rest == sampler.epoch_order(1).tolist()


def test_background_writer_saves_the_state_at_submit_time(hand, tmp_path):
    """A snapshot handed to the background writer holds the weights and optimizer state of the moment it
    was submitted, although training goes on changing them in place while the file is written; the
    file appears whole (no .tmp left), and a failed write is raised by the next wait()."""
    model, emb, opt, sched = _setup(hand)
    _train_a_bit(model, emb, opt, sched)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {i: {k: v.clone() for k, v in st.items() if torch.is_tensor(v)} for i, st in opt.state_dict()["state"].items()}
    writer = BackgroundSnapshotWriter()
    path = save_training_snapshot(snapshot_path(tmp_path, 0), model, 0, opt, train_config={"lr": 1e-3},
                                  scheduler=sched, pose_embedding=emb, step=3, writer=writer)
    _train_a_bit(model, emb, opt, sched, steps=2)              # in place, while the thread may be writing
    writer.wait()
    assert not any(p.name.endswith(".tmp") for p in path.parent.iterdir())
    ckpt = read_snapshot(path)
    changed = 0
    for k, v in weights.items():
        assert torch.equal(ckpt["network"]["module." + k], v), k
        changed += not torch.equal(model.state_dict()[k], v)
    assert changed > 0                                          # the later steps did change the live weights
    for i, st in moments.items():
        for k, v in st.items():
            assert torch.equal(ckpt["optimizer"]["state"][i][k], v), (i, k)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    writer.submit({"epoch": 0}, blocker / "snapshot_1.pth.tar")
    with pytest.raises((OSError, RuntimeError), match="not_a_folder"):
        writer.wait()
    writer.wait()                                               # the error is raised once


def test_names_and_newest_first(tmp_path):
    for name in ["snapshot_0.pth.tar", "snapshot_1_step5.pth.tar", "snapshot_1.pth.tar", "snapshot_1_step12.pth.tar",
                 "snapshot_10_step3.pth.tar", "snapshot_2.pth.tar", "notes.txt", "snapshot_x.pth.tar"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_snapshots(tmp_path)] == [
        "snapshot_10_step3.pth.tar", "snapshot_2.pth.tar", "snapshot_1.pth.tar", "snapshot_1_step12.pth.tar",
        "snapshot_1_step5.pth.tar", "snapshot_0.pth.tar"]
    assert parse_snapshot_name("snapshot_3.pth.tar") == (3, None)
    assert parse_snapshot_name("snapshot_3_step120.pth.tar") == (3, 120)
    assert parse_snapshot_name("snapshot_3.pth.tar.tmp") is None
    assert snapshot_path("out", 4) == Path("out/model_dump/snapshot_4.pth.tar")


def test_truncated_and_foreign_newest_are_skipped(hand, tmp_path):
    model, emb, opt, sched = _setup(hand)
    dump = tmp_path / "model_dump"
    good = save_training_snapshot(snapshot_path(tmp_path, 0), model, 0, opt, train_config={}, step=4)
    newer = save_training_snapshot(snapshot_path(tmp_path, 1), model, 1, opt, train_config={}, step=8)
    data = newer.read_bytes()
    newer.write_bytes(data[: len(data) // 2])  # killed mid-copy
    (dump / "snapshot_2.pth.tar").write_text("not a snapshot\n")
    torch.save({"weights": torch.zeros(3)}, dump / "snapshot_1_step6.pth.tar")  # a dict without 'network'
    (dump / "snapshot_3.pth.tar.tmp").write_bytes(b"\0" * 10)  # an interrupted save
    msgs = []
    path, ckpt = find_resumable(dump, log=msgs.append)
    assert path == good and ckpt["step"] == 4
    text = "\n".join(msgs)
    assert len(msgs) == 4, text
    assert "snapshot_3.pth.tar.tmp" in msgs[0] and "interrupted" in msgs[0]
    assert "snapshot_2.pth.tar" in msgs[1] and "unreadable" in msgs[1]
    assert str(newer) in msgs[2] and "truncated" in msgs[2]
    assert "snapshot_1_step6.pth.tar" in msgs[3] and "'network'" in msgs[3]
    assert find_resumable(tmp_path / "nothing-here") is None


def test_extra_keys_may_not_replace_entries(hand, tmp_path):
    model, emb, opt, sched = _setup(hand)
    with pytest.raises(ValueError, match="'network'"):
        save_training_snapshot(tmp_path / "a.pth.tar", model, 0, opt, train_config={}, extra={"network": {}})
    with pytest.raises(ValueError, match="'rng'"):
        save_training_snapshot(tmp_path / "a.pth.tar", model, 0, opt, train_config={}, extra={"rng": 1})
    save_training_snapshot(tmp_path / "a.pth.tar", model, 0, opt, train_config={}, extra={"note": "x"})
    assert read_snapshot(tmp_path / "a.pth.tar")["note"] == "x"


def test_end_of_epoch_snapshot_resumes_next_epoch(hand, tmp_path):
    model, emb, opt, sched = _setup(hand)
    save_training_snapshot(snapshot_path(tmp_path, 2), model, 2, opt, train_config={}, step=30)
    _, ckpt = find_resumable(tmp_path / "model_dump", log=lambda m: None)
    state = restore_training_state(ckpt, model, opt)
    assert (state["start_epoch"], state["mid_epoch"], state["sampler"]) == (3, False, None)


@pytest.mark.parametrize("bad, kind", [(float("nan"), "NaN"), (float("inf"), "+inf"), (float("-inf"), "-inf")])
def test_check_finite_names_step_and_term(bad, kind):
    check_finite({"joint": torch.tensor(1.0), "depth": torch.tensor([0.5, 2.0])}, step=3)
    with pytest.raises(NonFiniteLoss) as e:
        check_finite({"joint": torch.tensor(1.0), "depth": torch.tensor([0.5, bad]), "lap": torch.tensor(bad)}, 41)
    msg = str(e.value)
    assert "step 41" in msg and "'depth'" in msg and kind in msg and "lap" in msg
    assert (e.value.step, e.value.term, e.value.others) == (41, "depth", ("lap",))


# ------------------------------------------------------------------ sampler
@pytest.mark.parametrize("n, replicas", [(10, 1), (10, 2), (11, 2), (13, 3)])
def test_sampler_matches_distributed_sampler_and_shards(n, replicas):
    data = list(range(n))
    shards = []
    for r in range(replicas):
        s = ResumableSampler(n, replicas, r, shuffle=True, seed=7)
        ref = DistributedSampler(data, replicas, r, shuffle=True, seed=7, drop_last=True)
        for epoch in (0, 3):
            s.set_epoch(epoch); ref.set_epoch(epoch)
            assert list(s) == list(ref) and len(s) == len(ref)
        shards.append(set(s))
    assert sum(map(len, shards)) == len(set().union(*shards)) == (n // replicas) * replicas  # disjoint, covers


def test_sampler_resume_with_same_and_other_world_size():
    full = ResumableSampler(12, 1, 0, seed=3)
    full.set_epoch(2)
    order = list(full)
    # two ranks consume 2 indices each (position 4), then the run resumes
    ranks = [ResumableSampler(12, 2, r, seed=3) for r in range(2)]
    for s in ranks:
        s.set_epoch(2)
    its = [iter(s) for s in ranks]
    for it in its:
        next(it), next(it)
    state = ranks[0].state_dict()
    assert state == {"epoch": 2, "seed": 3, "position": 4, "num_samples": 12, "num_replicas": 2, "shuffle": True}
    # same world size: exactly the rest of each shard
    for r in range(2):
        s = ResumableSampler(12, 2, r, seed=0)
        s.load_state_dict(state)
        s.set_epoch(2)
        assert list(s) == order[4 + r::2]
        assert list(s) == order[r::2]  # a pass run to its end starts over
    # one process now: the global order continues
    one = ResumableSampler(12, 1, 0, seed=0)
    one.load_state_dict(state)
    assert len(one) == 8 and list(one) == order[4:]
    # a new epoch starts at 0; a state at the end of its epoch yields nothing
    one.set_epoch(3)
    assert len(one) == 12
    done = ResumableSampler(12, 1, 0)
    done.load_state_dict({**state, "position": 12})
    assert list(done) == [] and list(done) == order  # then starts over
    with pytest.raises(ValueError, match="num_samples"):
        ResumableSampler(10).load_state_dict(state)


def test_sampler_consumed_overrides_prefetch():
    s = ResumableSampler(10, 1, 0, shuffle=False)
    it = iter(s)
    [next(it) for _ in range(6)]  # a prefetching loader took 6, the trainer used 4
    assert s.state_dict()["position"] == 6 and s.state_dict(consumed=4)["position"] == 4


def test_make_sampler_one_process():
    info = init_distributed("cpu")
    assert info == DistInfo(0, 1, 0, torch.device("cpu"), "none") and is_main(info)
    s = make_sampler(range(5), info, shuffle=False, seed=0)
    assert list(s) == [0, 1, 2, 3, 4]
    m = torch.nn.Linear(2, 2)
    assert wrap_model(m, info) is m


# ------------------------------------------------------------------ launcher
@pytest.mark.parametrize("text, ids", [("0-3", [0, 1, 2, 3]), ("0,1,2,3", [0, 1, 2, 3]), ("0-1,3", [0, 1, 3]),
                                       ("2", [2]), (" 4, 6 ", [4, 6]), ("3,1", [3, 1])])
def test_parse_gpus(text, ids):
    assert parse_gpus(text) == ids


@pytest.mark.parametrize("text, token", [("0-", "'0-'"), ("a", "'a'"), ("0,,1", "''"), ("3-1", "'3-1'"),
                                         ("0,1-2,2", "'2'"), ("-1", "'-1'"), ("1.5", "'1.5'")])
def test_parse_gpus_errors_name_the_token(text, token):
    with pytest.raises(ValueError, match=f"bad token {token}"):
        parse_gpus(text)
    with pytest.raises(ValueError):
        parse_gpus("")


def test_torchrun_command():
    mod = ["-m", "dhmlib.cli", "train", "--preset", "cpu-small"]
    argv, env = torchrun_command(mod, gpus=[0, 1, 3])
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3", *mod]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,3" and env.get("PATH") == os.environ.get("PATH")
    argv, env = torchrun_command(mod, nproc=2)
    assert argv[3:6] == ["--standalone", "--nproc_per_node", "2"] and env["CUDA_VISIBLE_DEVICES"] == ""
    multi = ["--nnodes", "2", "--node_rank", "1", "--rdzv_endpoint", "host:29400"]
    argv, _ = torchrun_command(mod, gpus=[0, 1], extra=multi)
    assert argv == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *multi, *mod]
    assert "CUDA_VISIBLE_DEVICES=0,1 " in command_line(*torchrun_command(mod, gpus=[0, 1]))
    with pytest.raises(ValueError, match="nproc=3"):
        torchrun_command(mod, gpus=[0, 1], nproc=3)
    with pytest.raises(ValueError, match="nproc"):
        torchrun_command(mod)
    with pytest.raises(ValueError, match="--nproc_per_node"):
        torchrun_command(mod, nproc=2, extra=["--nproc_per_node=4"])
