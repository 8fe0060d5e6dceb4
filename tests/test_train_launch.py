"""dhmlib.train.launch (training in a followed subprocess) and the notebook helpers of dhmlib.viz.training."""
import json
import sys

import pytest

from dhmlib.train import parse_set, preset
from dhmlib.train.config import corrective_fields
from dhmlib.train.launch import config_sets, run_training, train_command


def test_config_sets_rebuild_the_configs_from_the_paper_preset():
    tc, mc = preset("cpu-small", model_overrides=corrective_fields(["pose", "skeleton"]), epochs=3,
                    render_size=(32, 48), held_out="last:2")
    base_tc, base_mc = preset("paper")
    rebuilt = parse_set(config_sets(tc, mc), base_tc, base_mc)
    assert rebuilt == (tc, mc)
    assert "epochs=3" in config_sets(tc, mc) and "model.id_corrective=false" in config_sets(tc, mc)
    assert config_sets(base_tc, base_mc) == []


def test_corrective_fields():
    assert corrective_fields("all") == {"pose_corrective": True, "id_corrective": True, "skeleton_corrective": True}
    assert corrective_fields("none") == corrective_fields([]) == dict.fromkeys(corrective_fields("all"), False)
    assert corrective_fields("pose") == {"pose_corrective": True, "id_corrective": False, "skeleton_corrective": False}
    assert corrective_fields("pose, skeleton") == corrective_fields(["skeleton", "pose"]) == \
        {"pose_corrective": True, "id_corrective": False, "skeleton_corrective": True}
    with pytest.raises(ValueError, match="unknown \\['skin'\\]"):
        corrective_fields(["pose", "skin"])


def test_train_command_is_dhm_train_with_gpu_or_nproc(tmp_path):
    import argparse

    from dhmlib.cli.train import add, configs

    tc, mc = preset("cpu-small", epochs=2)
    argv, env = train_command(tc, mc, tmp_path / "d", tmp_path / "o", gpus="0-1,3", time_limit_s=30)
    assert argv[:4] == [sys.executable, "-m", "dhmlib.cli", "train"]
    parser = argparse.ArgumentParser()
    add(parser)
    args = parser.parse_args(argv[4:])                  # what dhm train will see
    assert (args.preset, args.data, args.output, args.gpu, args.nproc, args.time_limit) == \
        ("paper", str(tmp_path / "d"), str(tmp_path / "o"), "0,1,3", None, 30.0)
    assert configs(args) == (tc, mc)
    argv, env = train_command(tc, mc, "d", "o", nproc=2)
    assert argv[-2:] == ["--nproc", "2"] and "--gpu" not in argv
    with pytest.raises(ValueError, match="bad token 'x'"):
        train_command(tc, mc, "d", "o", gpus="0,x")
    with pytest.raises(ValueError, match="give gpus or nproc"):
        train_command(tc, mc, "d", "o")


def test_run_training_follows_new_metrics_records_and_output(tmp_path):
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    (log_dir / "metrics.jsonl").write_text(json.dumps({"kind": "step", "step": 99}) + "\n")   # an earlier run
    script = ("import json, time, sys\n"
              f"f = open({str(log_dir / 'metrics.jsonl')!r}, 'a')\n"
              "for i in range(1, 4):\n"
              "    f.write(json.dumps({'kind': 'step', 'step': i, 'total': 1.0 / i}) + '\\n'); f.flush()\n"
              "    print('step', i, flush=True); time.sleep(0.2)\n"
              "f.write('{\"kind\": \"epo'); f.flush(); time.sleep(0.3)\n"     # a half-written line waits
              "f.write('ch\", \"step\": 3}\\n'); f.close()\n"
              "sys.exit(3)\n")
    got, lines = [], []
    res = run_training([sys.executable, "-c", script], None, tmp_path, on_record=got.append, log=lines.append,
                       poll_s=0.05)
    assert res.returncode == 3 and not res.ok
    assert [r["step"] for r in got] == [1, 2, 3, 3] and got[-1]["kind"] == "epoch"
    assert res.records == got
    assert lines[0].startswith("$ ") and lines[1:] == ["step 1", "step 2", "step 3"] == res.output


def test_live_plot_collects_headless_and_draws_the_final_figure(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from dhmlib.viz.training import LivePlot, metrics_markdown

    monkeypatch.setenv("DHM_NOTEBOOK_HEADLESS", "1")
    plot = LivePlot()
    assert plot.live is False
    for i in range(1, 6):
        plot({"kind": "step", "step": i, "epoch": 0, "total": 10.0 / i, "joint": 5.0 / i, "depth": 4.0,
              "laplacian": 0.0, "time_s": float(i)})
    plot({"kind": "epoch", "step": 5, "epoch": 0, "total": 4.0, "time_s": 5.0})
    assert len(plot.steps()) == 5 and len(plot.records) == 6
    fig = plot.finish(tmp_path / "loss.png")
    ax = fig.axes[0]
    labels = [ln.get_label() for ln in ax.lines]
    assert labels == ["total", "joint", "depth", "epoch mean (total)"]   # zero terms are not drawn (log scale)
    assert list(ax.lines[0].get_ydata()) == [10.0, 5.0, 10.0 / 3, 2.5, 2.0]
    assert ax.get_yscale() == "log" and "step 5, epoch 1, 5 s" in ax.get_title()
    assert (tmp_path / "loss.png").stat().st_size > 1000
    table = metrics_markdown({"trained": {"vertex_mean_mm": 0.5, "frames": 3}, "LBS only": {"vertex_mean_mm": 1.25}})
    assert table.splitlines()[2:] == ["| vertex_mean_mm | 0.5 | 1.25 |", "| frames | 3 | None |"]
