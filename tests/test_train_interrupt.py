"""Ctrl-C and resume (issue 15, item 6): SIGINT/SIGTERM during training writes a snapshot of the last finished
step and train.log says so; ``--continue`` resumes it bit-identically, without repeating steps in metrics.jsonl,
with the run's own max_steps and probe_every; ``keep_snapshots`` counts the snapshots of the run it continues;
SIGTERM ends every ``dhm`` command with 130."""
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

from dhmlib.cli import main
from dhmlib.network.snapshot import read_snapshot
from dhmlib.train.checkpoint import list_snapshots

REPO = Path(__file__).resolve().parents[1]
#: 8 training frames (4 steps of 2 an epoch), 48² renders, 2 views, deterministic
TINY = dict(render_size=(48, 48), num_views=2, held_out="frames:10-11", max_frames=8, deterministic=True,
            log_every=1, lr_milestones=(1,), batch_size=2, epochs=2)
TINY_SETS = ["render_size=[48,48]", "num_views=2", "held_out=frames:10-11", "max_frames=8", "deterministic=true",
             "log_every=1", "lr_milestones=[1]", "batch_size=2"]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """12 frames × 4 cameras, ~1500 vertices, 128×96 images (official layout)."""
    from dhmlib.synth.capture import CaptureConfig, write_capture

    root = tmp_path_factory.mktemp("interrupt_capture")
    write_capture(root, CaptureConfig(frames=12, cameras=4, vertices=1500, image_size=(128, 96), seed=3),
                  progress=False, log=None)
    return root


def configs(**overrides):
    from dhmlib.train.config import preset

    tc, mc = preset("cpu-small")
    return tc.replace(**{**TINY, **overrides}), mc


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log" / "metrics.jsonl").read_text().splitlines()]


def state(path: Path) -> dict[str, torch.Tensor]:
    """Network, pose embedding and Adam moments of a snapshot, flat by name."""
    ck = read_snapshot(path)
    out = {f"network.{k}": v for k, v in ck["network"].items()}
    out.update({f"embedding.{k}": v for k, v in ck["pose_embedding"].items()})
    for i, s in ck["optimizer"]["state"].items():
        out.update({f"adam.{i}.{k}": v for k, v in s.items() if torch.is_tensor(v)})
    return out


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and any(k.startswith("embedding.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ------------------------------------------------------------------ in-process: SIGINT at a known step
@pytest.mark.slow
def test_sigint_writes_a_snapshot_that_resume_continues_bit_identically(capture, tmp_path):
    """SIGINT arrives during step 3 (sent from the metrics hook): training ends after that step with
    ``snapshot_0_step3``, train.log records it, and ``resume=True`` ends bit-identical to an uninterrupted run,
    with each step once in metrics.jsonl."""
    from dhmlib.train.loop import train
    from dhmlib.train.signals import TrainingInterrupted

    tc, mc = configs()
    ref, out = tmp_path / "ref", tmp_path / "out"
    train(tc, mc, capture, ref, progress=False, echo=False)

    def ctrl_c_at_step_3(rec):
        if rec["kind"] == "step" and rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(tc, mc, capture, out, progress=False, echo=False, on_record=ctrl_c_at_step_3)
    assert isinstance(info.value, KeyboardInterrupt)
    assert (info.value.signal_name, info.value.step) == ("SIGINT", 3)
    snap = out / "model_dump" / "snapshot_0_step3.pth.tar"
    assert info.value.snapshot == snap and read_snapshot(snap)["step"] == 3
    log = (out / "log" / "train.log").read_text()
    assert f"snapshot {snap}" in log and "interrupted by SIGINT at epoch 0, step 3 (resume with --continue)" in log
    assert signal.getsignal(signal.SIGINT) is handler                        # the handler is put back

    train(tc, mc, capture, out, resume=True, progress=False, echo=False)
    assert_identical(state(ref / "model_dump" / "snapshot_1.pth.tar"), state(out / "model_dump" / "snapshot_1.pth.tar"))
    steps = [r["step"] for r in records(out) if r["kind"] == "step"]
    assert steps == [r["step"] for r in records(ref) if r["kind"] == "step"] == list(range(1, 9))


@pytest.mark.slow
def test_resume_drops_the_records_after_its_snapshot_and_keeps_only_keep_snapshots(capture, tmp_path):
    """A run that logged steps 1–5 but whose newest snapshot is step 4 (as after a kill): resuming drops the
    step-5 records and writes them again; with keep_snapshots=2 only two snapshot files are left in all."""
    from dhmlib.train.loop import train

    out = tmp_path / "out"
    tc, mc = configs(snapshot_every_steps=1, keep_snapshots=2, max_steps=5, probe_every=2)
    train(tc, mc, capture, out, progress=False, echo=False)
    dump = out / "model_dump"
    assert [p.name for p in list_snapshots(dump)] == ["snapshot_1_step5.pth.tar", "snapshot_0.pth.tar"]
    (dump / "snapshot_1_step5.pth.tar").unlink()                   # killed after logging step 5
    assert max(r["step"] for r in records(out)) == 5

    train(tc.replace(max_steps=7), mc, capture, out, resume=True, progress=False, echo=False)
    recs = records(out)
    for kind in ("step", "probe"):
        steps = [r["step"] for r in recs if r["kind"] == kind]
        assert steps == sorted(set(steps)), (kind, steps)           # no step twice
    assert [r["step"] for r in recs if r["kind"] == "step"] == list(range(1, 8))
    assert [r["step"] for r in recs if r["kind"] == "probe"] == [0, 2, 4, 6, 7]
    assert [p.name for p in list_snapshots(dump)] == ["snapshot_1_step7.pth.tar", "snapshot_1_step6.pth.tar"]
    assert "removed 2 record(s) after step 4" in (out / "log" / "train.log").read_text()  # step 5's and its probe


# ------------------------------------------------------------------ dhm train: Ctrl-C, then a bare --continue
def _wait_for(proc, cond, what, timeout=240):
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"the process ended ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_dhm_train_ctrl_c_exits_130_with_a_snapshot_and_a_bare_continue_finishes_the_run(capture, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(torch.get_num_threads()))
    # the real command, each step made 0.3 s longer so that the signal comes well before the last step
    paced = ("import sys, time\n"
             "import dhmlib.train.step as s\n"
             "forward = s.TrainStep.forward\n"
             "s.TrainStep.forward = lambda self, *a, **k: (time.sleep(0.3), forward(self, *a, **k))[1]\n"
             "from dhmlib.cli import main\n"
             "sys.exit(main(sys.argv[1:]))\n")
    argv = [sys.executable, "-c", paced, "train", "--data", str(capture), "--output", str(out),
            "--epochs", "3", "--no-progress", "--max-steps", "9", "--probe-every", "4", "--set", *TINY_SETS]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = out / "log" / "metrics.jsonl"
    try:
        _wait_for(proc, lambda: metrics.exists() and '"kind": "step", "step": 2' in metrics.read_text(),
                  "step 2 in metrics.jsonl")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("dhm train: interrupted (SIGINT) after step ") and "(resume with --continue)" in last
    step = int(last.split("after step ")[1].split(";")[0])
    snaps = list_snapshots(out / "model_dump")
    assert snaps and read_snapshot(snaps[0])["step"] == step < 9
    log = (out / "log" / "train.log").read_text()
    assert f"interrupted by SIGINT at epoch {(step - 1) // 4}, step {step}" in log and f"snapshot {snaps[0]}" in log

    # no flags: the run's own max_steps (9) and probe_every (4), epochs (3) and --set values
    assert main(["train", "--data", str(capture), "--output", str(out), "--continue", "--no-progress"]) == 0
    recs = records(out)
    assert [r["step"] for r in recs if r["kind"] == "step"] == list(range(1, 10))
    assert [r["step"] for r in recs if r["kind"] == "probe"] == [0, 4, 8, 9]
    assert read_snapshot(list_snapshots(out / "model_dump")[0])["step"] == 9
    assert "max_steps 9 reached" in (out / "log" / "train.log").read_text()


def test_continue_takes_the_snapshots_configs_unless_told_otherwise():
    from dhmlib.cli import build_parser
    from dhmlib.cli.train import configs
    from dhmlib.train.config import preset

    tc, mc = preset("cpu-small", max_steps=600, probe_every=50, lr=3e-4)
    mc = mc.replace(backbone=34)
    resumed = {"train_config": {**tc.to_dict(), "a_field_of_an_older_dhmlib": 1}, "model_config": mc.to_dict()}
    parse = build_parser().parse_args
    assert configs(parse(["train", "--continue"]), resumed) == (tc, mc)
    t2, m2 = configs(parse(["train", "--continue", "--probe-every", "10", "--set", "lr=1e-3"]), resumed)
    assert (t2.max_steps, t2.probe_every, t2.lr, m2.backbone) == (600, 10, 1e-3, 34)
    t3, _ = configs(parse(["train", "--continue", "--preset", "cpu-small"]), resumed)     # told otherwise
    assert t3 == preset("cpu-small")[0]
    assert configs(parse(["train"]), None) == preset("cpu-small")


# ------------------------------------------------------------------ SIGTERM → 130 for every command
def test_sigterm_ends_any_dhm_command_with_130_and_one_line():
    code = ("import os, signal, sys, time\n"
            "from dhmlib.cli._common import run_command\n"
            "def run(args):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "sys.exit(run_command('test', run, None))\n")
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 130 and r.stderr.strip() == "dhm test: interrupted"
