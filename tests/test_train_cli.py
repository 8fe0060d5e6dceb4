"""``dhm train`` end to end with the real trainer on a tiny virtual capture: the torchrun launch line,
user errors, a NaN stop, kill -9 + ``--continue`` (bit-identical), a truncated newest snapshot, and a
2-process gloo run against a 1-process run with the same global batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dhmlib.cli import build_parser, main
from dhmlib.cli.train import launch_command
from dhmlib.network.snapshot import read_snapshot
from dhmlib.train.checkpoint import list_snapshots

REPO = Path(__file__).resolve().parents[1]
#: tiny cpu-small: 8 training frames, 48² renders, 2 views, deterministic; one epoch = 4 steps of 2
TINY = ["render_size=[48,48]", "num_views=2", "held_out=null", "max_frames=8", "deterministic=true",
        "log_every=1", "lr_milestones=[1]"]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """12 frames × 4 cameras, ~1500 vertices, 128×96 images (official layout)."""
    from dhmlib.synth.capture import CaptureConfig, write_capture

    root = tmp_path_factory.mktemp("train_cli_capture")
    write_capture(root, CaptureConfig(frames=12, cameras=4, vertices=1500, image_size=(128, 96), seed=3),
                  progress=False)
    return root


def train_args(data, out, *sets, epochs=2, batch=2):
    return ["--data", str(data), "--output", str(out), "--epochs", str(epochs), "--no-progress",
            "--set", *TINY, f"batch_size={batch}", *sets]


def final_state(out: Path, epoch: int) -> dict[str, torch.Tensor]:
    """Network, pose embedding and Adam moments of ``snapshot_<epoch>.pth.tar``, flat by name."""
    ck = read_snapshot(out / "model_dump" / f"snapshot_{epoch}.pth.tar")
    state = {f"network.{k}": v for k, v in ck["network"].items()}
    state.update({f"embedding.{k}": v for k, v in ck["pose_embedding"].items()})
    for i, s in ck["optimizer"]["state"].items():
        state.update({f"adam.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return state


# ------------------------------------------------------------------ launcher (no training)
def launch(argv):
    args = build_parser().parse_args(["train", *argv])
    return launch_command(args, Path("/d"), Path("/o"))


@pytest.mark.parametrize("gpus", ["0-3", "0,1,2,3"])
def test_gpu_launches_torchrun_with_one_process_per_gpu(gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)     # the child's --device cuda check
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    argv, env = launch(["--gpu", gpus, "--set", "lr=1e-3", "model.backbone=34", "--continue", "--epochs", "3"])
    assert argv[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4"]
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    child = argv[argv.index("dhmlib.cli") + 1:]
    assert argv[argv.index("dhmlib.cli") - 1] == "-m" and child[0] == "train" and "--gpu" not in child
    args = build_parser().parse_args(child)            # the child (dhm train, one rank) reads what the launcher wrote
    assert args.gpu is None and args.nproc is None
    assert (args.data, args.output, args.epochs, args.resume, args.device) == ("/d", "/o", 3, True, "cuda")
    assert [kv for g in args.sets for kv in g] == ["lr=1e-3", "model.backbone=34"]


def test_nproc_passes_multi_node_flags_to_torchrun():
    argv, env = launch(["--nproc", "2", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "host:29400",
                        "--master-port", "29500"])
    assert env["CUDA_VISIBLE_DEVICES"] == ""
    head = argv[:argv.index("dhmlib.cli")]
    assert "--standalone" not in head and head[head.index("--nproc_per_node") + 1] == "2"
    assert {"--nnodes=2", "--node_rank=1", "--rdzv_endpoint=host:29400", "--master_port=29500"} <= set(head)
    assert argv[argv.index("--device") + 1] == "cpu"


@pytest.mark.parametrize("argv, phrase", [
    (["--set", "bogus=1"], "unknown key 'bogus'"),
    (["--set", "model.backbone=7"], "backbone"),
    (["--gpu", "0-x"], "bad token '0-x'"),
    (["--gpu", "1", "--nproc", "2"], "give one"),
    (["--nnodes", "2"], "--nnodes: torchrun flags need --gpu IDS or --nproc N"),
    (["--nproc", "2", "--device", "cuda"] if torch.cuda.is_available() else ["--gpu", "0"],
     "--nproc starts CPU processes" if torch.cuda.is_available() else "CUDA is not available"),
])
def test_user_errors_are_one_line_exit_2(tmp_path, capsys, argv, phrase):
    (tmp_path / "data").mkdir()                       # checked before any data is read
    assert main(["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dhm train: error: ") and phrase in err and "\n" not in err
    assert not (tmp_path / "o").exists()
    assert main(["train", "--data", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err


# ------------------------------------------------------------------ NaN
@pytest.mark.slow
def test_a_nan_exits_1_naming_step_and_term_and_keeps_the_last_good_snapshot(capture, tmp_path, monkeypatch,
                                                                             capsys):
    import dhmlib.train.step as step_module

    calls = {"n": 0}
    real = step_module.depth_loss

    def flaky(rendered, target, **kw):        # the 3rd step's depth term is NaN
        calls["n"] += 1
        value = real(rendered, target, **kw)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(step_module, "depth_loss", flaky)
    out = tmp_path / "out"
    assert main(["train", *train_args(capture, out, "snapshot_every_steps=1", "keep_snapshots=null")]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["dhm train: error: step 2: loss term 'depth' is NaN (also non-finite: total); training stopped, "
                   "the last good snapshot is kept"]
    # steps are counted from 0 in the message (2 finished); the snapshots of steps 1 and 2 stay, nothing later
    assert [p.name for p in list_snapshots(out / "model_dump")] == ["snapshot_0_step2.pth.tar",
                                                                   "snapshot_0_step1.pth.tar"]
    assert read_snapshot(out / "model_dump" / "snapshot_0_step2.pth.tar")["step"] == 2
    assert "ERROR NonFiniteLoss: step 2: loss term 'depth'" in (out / "log" / "train.log").read_text()


# ------------------------------------------------------------------ kill -9, truncated snapshot, --continue
@pytest.mark.slow
def test_kill_9_mid_epoch_then_continue_is_bit_identical(capture, tmp_path):
    """A subprocess writing a snapshot after every step is SIGKILLed once its 3rd mid-epoch snapshot of
    epoch 0 exists; the newest snapshot left is then truncated. ``--continue`` skips it (saying so),
    resumes mid-epoch from the one before, and ends bit-identical to an uninterrupted run."""
    sets = ("snapshot_every_steps=1",)              # keep_snapshots stays 2 (cpu-small)
    ref, out = tmp_path / "ref", tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.Popen([sys.executable, "-m", "dhmlib.cli", "train", *train_args(capture, out, *sets)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "model_dump" / "snapshot_0_step3.pth.tar"
    try:
        deadline = time.monotonic() + 120
        while True:
            while not target.exists():
                assert proc.poll() is None, f"the training process ended ({proc.returncode}) before {target.name}"
                assert time.monotonic() < deadline, f"no {target.name} after 120 s"
                time.sleep(0.02)
            # frozen, then killed with two step snapshots on disk: the writer prunes to keep_snapshots - 1 before
            # it renames the next one into place, and a kill inside that window leaves one (complete) snapshot
            proc.send_signal(signal.SIGSTOP)
            if len(list_snapshots(out / "model_dump")) >= 2:
                break
            proc.send_signal(signal.SIGCONT)
            assert time.monotonic() < deadline, "never two snapshots on disk at once"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    left = list_snapshots(out / "model_dump")
    assert len(left) >= 2 and all("_step" in p.name for p in left[:2])   # killed during epoch 0
    newest, fallback = left[0], left[1]
    newest.write_bytes(newest.read_bytes()[:5000])                        # a truncated newest snapshot

    assert main(["train", *train_args(capture, out, *sets), "--continue"]) == 0
    log = (out / "log" / "train.log").read_text()
    assert f"skipping {newest}" in log
    assert f"resumed from {fallback}: epoch 0 (mid-epoch)" in log

    assert main(["train", *train_args(capture, ref, *sets)]) == 0        # uninterrupted
    a, b = final_state(ref, 1), final_state(out, 1)
    assert a.keys() == b.keys() and any(k.startswith("embedding.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []


# ------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_two_gloo_processes_agree_and_match_one_process_with_the_same_global_batch(capture, tmp_path):
    """``dhm train --nproc 2`` with 2 samples per process against one process with 4: the same samples per
    step (the sampler deals one permutation), gradients averaged by DDP. Tolerance per parameter tensor and
    the embedding: 1e-6 + 1 % of how far the tensor moved in the compared epoch. The differences are float32
    summation order (DDP's average against one batch's mean; torchrun runs its workers with 1 thread, the single
    process with several), magnified by Adam's division where a gradient is near zero: on the pose corrective's
    last layer they were 4e-7 on one 2-core machine and 1.4e-6 on another (the same code: the machine sets the
    summation order), against 6.6e-4 moved in the epoch, so an absolute 1e-6 held on one machine only. A DDP
    fault (other samples per step, a missing all-reduce) moves whole tensors by about their movement."""
    two, one = tmp_path / "two", tmp_path / "one"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    probe = ["held_out=frames:10-11", "--probe-every", "3"]     # frames 10, 11 are not among the 8 trained
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "train", "--nproc", "2",
                        *train_args(capture, two, *probe, batch=2)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torch.distributed.run --standalone --nproc_per_node 2 -m dhmlib.cli train" in r.stdout.splitlines()[0]
    log = (two / "log" / "train.log").read_text()
    assert "(2 processes, gloo process group)" in log
    assert "parameters on the 2 ranks: max |difference| 0 (identical)" in log    # rank 1 holds rank 0's model
    # rank 0 alone probes (steps 0, 3 and the last, 4), the other rank waits for it
    records = [json.loads(ln) for ln in (two / "log" / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in records if p["kind"] == "probe"] == [0, 3, 4]
    assert "--probe-every 3" in r.stdout.splitlines()[0]
    assert main(["train", *train_args(capture, one, *probe, batch=4)]) == 0
    a, b = final_state(two, 1), final_state(one, 1)
    before = final_state(one, 0)          # after the first epoch: what the compared (second) epoch started from
    for k in a:
        if k.startswith(("network.", "embedding.")) and a[k].is_floating_point():
            diff, moved = float((a[k] - b[k]).abs().max()), float((b[k] - before[k]).abs().max())
            assert diff <= 1e-6 + 0.01 * moved, (k, diff, moved)
    moved = (a["embedding.euler"] - read_snapshot(two / "model_dump" / "snapshot_0.pth.tar")
             ["pose_embedding"]["euler"]).abs().max()
    assert moved > 1e-4                                # the second epoch trained (the comparison is not vacuous)
