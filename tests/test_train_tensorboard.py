"""TensorBoard scalars of the training loop, read back with TensorBoard's own reader (dev extra)."""
from __future__ import annotations

import json

import pytest

from dhmlib.cli import main as dhm

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="TensorBoard is not installed (it is in the dev extra)")


def test_tensorboard_scalars_equal_the_metrics_lines(small_capture, tmp_path):
    out = tmp_path / "out"
    args = ["--preset", "cpu-small", "--data", str(small_capture), "--output", str(out), "--epochs", "1",
            "--no-progress", "--set", "batch_size=2", "--set", "render_size=[32,32]", "--set", "num_views=2",
            "--set", "log_every=1", "--set", "held_out=null", "--set", "keep_snapshots=1"]
    assert dhm(["train", *args]) == 0
    recs = [json.loads(line) for line in (out / "log" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "step"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert len(steps) >= 2 and len(epochs) == 1

    runs = list((out / "log" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(runs) == 1, runs
    acc = event_accumulator.EventAccumulator(str(runs[0].parent), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/total", "train/joint", "train/depth", "train/laplacian", "train/lr", "epoch/total"} <= tags
    total = acc.Scalars("train/total")
    assert [e.step for e in total] == [r["step"] for r in steps]
    assert [e.value for e in total] == pytest.approx([r["total"] for r in steps], rel=1e-6)   # stored as float32
    assert acc.Scalars("epoch/total")[0].value == pytest.approx(epochs[0]["total"], rel=1e-6)
