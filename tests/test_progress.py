"""Progress with an ETA (issue 15, item 3): dhmlib.progress in line mode, the evaluation's stages (``dhm test``,
notebook 02), and the lines a batch passes on from inside a run."""
from __future__ import annotations

import io

import pytest
import torch

from dhmlib.progress import PREFIX, LineRelay, Progress, Stages, eta_seconds, format_seconds
import dhmlib.progress as progress


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_line_mode_says_start_progress_with_eta_and_end():
    clock, lines = FakeClock(), []
    p = Progress("evaluation · fit", total=300, unit="steps", log=lines.append, every_s=10, clock=clock,
                 stream=io.StringIO())                     # not a terminal: lines
    for _ in range(40):
        clock.t += 0.25                                    # 10 s for 40 steps: 65 s left for 260
        p.update()
    clock.t += 5
    p.close()
    assert lines == [f"{PREFIX}evaluation · fit: 300 steps ...",
                     f"{PREFIX}evaluation · fit: 40/300 steps, 10 s, ETA 1 min 05 s",
                     f"{PREFIX}evaluation · fit: done in 15 s"]
    assert eta_seconds(0, 10, 5) is None and eta_seconds(5, None, 5) is None and eta_seconds(5, 10, 5) == 5
    assert (format_seconds(42), format_seconds(125), format_seconds(3725)) == ("42 s", "2 min 05 s", "1 h 02 min")


def test_terminal_gets_a_tqdm_bar_and_disabled_is_silent():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty, lines = Tty(), []
    with Stages("job", stream=tty, log=lines.append).stage("work", 4, "frames") as p:
        p.update(4)
    assert lines == [] and "job · work" in tty.getvalue() and "/4 [" in tty.getvalue()   # a bar, no lines
    quiet = []
    with Progress("x", 3, log=quiet.append, enabled=False) as p:
        p.update(3)
    assert quiet == []


def test_line_relay_passes_on_progress_lines_only():
    said = []
    relay = LineRelay(said.append, "[2/4] variant-b")
    relay.write("training step 5\n" + PREFIX + "evaluation · fit: 10/")
    relay.write("40 steps, 3 s, ETA 9 s\n\x1b[0mnoise\n")
    assert said == ["[2/4] variant-b: evaluation · fit: 10/40 steps, 3 s, ETA 9 s"]


@pytest.mark.slow   # ~10 s: a tiny snapshot evaluated with its baseline and a figure
def test_evaluation_reports_each_stage_with_an_eta(small_capture, tmp_path, monkeypatch):
    from dhmlib.hand.handmodel import HandModel
    from dhmlib.network.model import DeepHandMesh
    from dhmlib.train import PoseEmbedding, preset
    from dhmlib.train.checkpoint import save_training_snapshot, snapshot_path
    from dhmlib.evaluation.held_out import evaluate_snapshot

    hand = HandModel.read(small_capture / "hand_model")
    tc, mc = preset("cpu-small", batch_size=2, num_views=2, render_size=(48, 48), held_out="frames:3-4")
    torch.manual_seed(0)
    model = DeepHandMesh(hand, mc)
    save_training_snapshot(snapshot_path(tmp_path, 0), model, 0, None, train_config=tc,
                           pose_embedding=PoseEmbedding([0, 1, 2], model.hand.dof_mask), step=3)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)           # a line at every update
    lines = []
    evaluate_snapshot(None, small_capture, tmp_path, fit_steps=16, device="cpu", log=lines.append)
    ours = [ln for ln in lines if ln.startswith(PREFIX)]
    titles = [ln[len(PREFIX):].split(":")[0].removesuffix(" ...") for ln in ours]
    for stage in ("evaluation · loading 2 held-out frame(s)",
                  "evaluation · model", "evaluation · LBS baseline, true angles", "evaluation · LBS baseline",
                  "evaluation · writing metrics.json and 2 mesh(es)", f"evaluation · figures in {tmp_path / 'vis'}"):
        assert stage in titles, (stage, titles)
    # the fit's two stages (a joint step costs far less than a joint+depth step) each with their own ETA
    for stage, n in (("joints", 16), ("joints + depth of 6 views", 6)):
        fit = [ln for ln in ours if f"model: pose fit of 2 frame(s), {stage}:" in ln]
        assert fit[0].endswith(f": {n} steps ...") and any(", ETA " in ln and f"/{n} steps" in ln for ln in fit)
        assert fit[-1].split(": ")[-1].startswith("done in ")      # a stage with progress lines says when it ends
    assert any("figures in" in ln and "2/2 frames" in ln for ln in ours)


# ------------------------------------------------------------------ a smoke batch run on a bigger capture
@pytest.mark.slow   # ~1–2 min: a capture of 40 frames × 8 cameras, then notebook 02 with smoke = True
def test_smoke_batch_run_evaluates_few_frames_and_views_and_shows_progress_inside_the_run(tmp_path):
    """Items 3 and 8: the smoke evaluation is capped (4 of the 5 held-out frames, 3 of the 8 views, 40 fit
    steps) whatever the capture's size, and ``dhm batch`` shows the run's cells and its kernel's progress lines."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from dhmlib.synth.capture import CaptureConfig, write_capture
    from dhmlib.experiments.recipe import SMOKE_EVAL, evaluation_options

    assert evaluation_options(smoke=True, fit_steps=300) == {"fit_steps": 40, "num_views": 3, "num_frames": 4}
    assert evaluation_options(smoke=True, fit_steps=10, eval_views=2, baseline=False) == \
        {"fit_steps": 10, "num_views": 2, "num_frames": 4, "baseline": False}
    assert evaluation_options(fit_steps=300) == {"fit_steps": 300}

    data = tmp_path / "data"
    write_capture(data, CaptureConfig(frames=40, cameras=8, vertices=1500, image_size=(128, 96), seed=3),
                  progress=False, log=None)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "DHM_DATA": str(data), "DHM_OUTPUT": str(tmp_path / "output"), "MPLBACKEND": "Agg",
           "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"), "PYTHONPATH": str(repo)}
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "batch", str(repo / "notebooks" / "02_training.ipynb"),
                        "--smoke", "--batch", "smk", "--kernel", "python3"],
                       env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rec = json.loads((tmp_path / "output" / "batch" / "smk" / "run" / "result" / "02_training_metrics.json").read_text())
    assert rec["training"]["held_out_frames"] == 5
    assert rec["evaluation"] == {"frames": SMOKE_EVAL["num_frames"], "views": SMOKE_EVAL["num_views"],
                                 "fit_steps": SMOKE_EVAL["fit_steps"], "baseline": True}
    assert rec["held_out"]["frames"] == 4
    lines = r.stdout.splitlines()
    tag = "[1/1] run"
    assert any(ln.startswith(f"{tag}: cell 1/") for ln in lines), r.stdout[-3000:]
    assert any(ln.startswith(f"{tag}: evaluation · model: pose fit of 4 frame(s), joints + depth of 3 views: 16 steps")
               for ln in lines), r.stdout[-3000:]
    assert any(ln.startswith(f"{tag}: training (cpu-small): step 1") for ln in lines), r.stdout[-3000:]
    assert lines.index(next(ln for ln in lines if ln.startswith(f"{tag} ... done in "))) > \
        lines.index(next(ln for ln in lines if "evaluation · figures" in ln))


def test_live_plot_headless_prints_training_progress_with_the_eta(monkeypatch):
    from dhmlib.viz.training import LivePlot

    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    lines = []
    plot = LivePlot(live=False, title="a", total_steps=400, time_limit_s=150, epochs=60, log=lines.append)
    plot({"kind": "probe", "step": 0, "seconds": 0.0})
    plot({"kind": "step", "step": 100, "epoch": 2, "total": 1.5, "time_s": 25.0})   # 75 s left by steps
    plot({"kind": "step", "step": 200, "epoch": 5, "total": 1.25, "time_s": 120.0})  # 30 s left by the time limit
    assert lines == [f"{PREFIX}training (a): step 100/400, epoch 3/60, 25 s, loss 1.5, ETA 1 min 15 s",
                     f"{PREFIX}training (a): step 200/400, epoch 6/60, 2 min 00 s, loss 1.25, ETA 30 s"]
    quiet = LivePlot(live=True, log=lines.append)          # a person watches the live figure: no lines
    quiet.live = False                                     # (no kernel here to draw into)
    quiet({"kind": "step", "step": 1, "epoch": 0, "total": 1.0, "time_s": 1.0})
    assert len(lines) == 2


@pytest.mark.slow   # ~5 s: a capture of 3 frames × 2 cameras
def test_capture_writer_reports_frames_with_an_eta_outside_a_terminal(tmp_path, monkeypatch):
    """Notebook 01 (and 02 on an empty data folder) write the capture for minutes: lines, not a widget bar."""
    from dhmlib.synth.capture import CaptureConfig, write_capture

    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    lines = []
    write_capture(tmp_path / "d", CaptureConfig(frames=3, cameras=2, vertices=1500, image_size=(64, 48), seed=1),
                  log=lines.append)
    ours = [ln for ln in lines if ln.startswith(PREFIX)]
    assert ours[0] == f"{PREFIX}dhm synth: 3 frames ..."
    assert any(ln.startswith(f"{PREFIX}dhm synth: 1/3 frames, ") and ", ETA " in ln for ln in ours)
    assert ours[-1].startswith(f"{PREFIX}dhm synth: done in ")


def test_a_batch_inside_an_unwatched_kernel_marks_its_lines_for_the_outer_runner(monkeypatch):
    """Notebook 03 runs a batch of notebook 02 inside its kernel: under `dhm notebooks` its lines are passed on."""
    from dhmlib.lab.batch import progress_sink
    from dhmlib.lab.record import HEADLESS_ENV

    got = []
    monkeypatch.delenv(HEADLESS_ENV, raising=False)
    progress_sink(got.append)("[1/8] variant-a ... running")
    monkeypatch.setenv(HEADLESS_ENV, "1")
    progress_sink(got.append)("[1/8] variant-a: cell 5/8, 14 s")
    progress_sink(None)("dropped")
    assert got == ["[1/8] variant-a ... running", f"{PREFIX}[1/8] variant-a: cell 5/8, 14 s"]
    said = []
    LineRelay(said.append, "[dhm notebooks] 03_ablation_correctives").write(got[1] + "\n")
    assert said == ["[dhm notebooks] 03_ablation_correctives: [1/8] variant-a: cell 5/8, 14 s"]
