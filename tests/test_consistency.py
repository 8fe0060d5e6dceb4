"""Small consistencies a newcomer notices: --version, --help defaults naming $DHM_DATA/$DHM_OUTPUT, batch
parameter types, the log's process line, epoch numbering, notebook 02's duration, a quiet kernel."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dhmlib import __version__
from dhmlib.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"dhm (dhmlib) {__version__}")
    if (REPO / ".git").exists():
        assert re.search(r", git [0-9a-f]{12}", out), out


@pytest.mark.parametrize("command, option, env", [
    ("train", "--data", "$DHM_DATA"), ("train", "--output", "$DHM_OUTPUT"),
    ("test", "--data", "$DHM_DATA"), ("test", "--output", "$DHM_OUTPUT"),
    ("synth", "--out", "$DHM_DATA"), ("notebooks", "--out", "$DHM_OUTPUT"), ("batch", "--output", "$DHM_OUTPUT"),
    ("demo", "--hand-model", "$DHM_DATA"), ("fit", "--hand-model", "$DHM_DATA"),
])
def test_help_defaults_name_the_environment(command, option, env, capsys):
    assert main([command, "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith(option + " "))
    end = start + 1
    while end < len(lines) and lines[end].startswith(" " * 8):      # its continuation lines
        end += 1
    text = " ".join(" ".join(lines[start:end]).split())
    assert env in text, text


def test_batch_dry_run_checks_values_against_the_parameters_cell(tmp_path, capsys):
    common = ["batch", "--dry-run", "--output", str(tmp_path)]
    assert main([*common, "-p", "max_steps", "abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dhm batch: error: ") and "\n" not in err
    assert "max_steps='abc': expected int (the parameters cell has max_steps = None), got str" in err
    assert main([*common, "-s", "gpus", "0"]) == 2
    assert "gpus=0: expected str" in capsys.readouterr().err
    assert main([*common, "-p", "baseline", "3"]) == 2
    assert "baseline=3: expected bool" in capsys.readouterr().err
    # fitting values, None and ints for floats pass
    assert main([*common, "-p", "variant", "a,b", "-s", "max_steps", "10", "-s", "time_limit_s", "null",
                 "-s", "baseline", "false", "-s", "gpus", '"0"']) == 0
    assert "2 runs" in capsys.readouterr().out


def test_notebook_02_intro_duration_matches_the_readme():
    readme = (REPO / "README.md").read_text()
    m = re.search(r"01 \d+ min \d+ s \(the capture included\), 02 (\d+) min (\d+) s", readme)
    assert m, "README: the measured durations"
    readme_min = int(m.group(1)) + int(m.group(2)) / 60
    intro = nbformat.read(REPO / "notebooks" / "02_training.ipynb", as_version=4).cells[0].source
    said = re.search(r"runs in about (\d+) minutes", intro)
    assert said and abs(int(said.group(1)) - readme_min) <= 1, (said and said.group(0), readme_min)


@pytest.mark.slow
def test_log_explains_one_process_and_epochs_are_numbered_from_0(tmp_path):
    from dhmlib.synth.capture import CaptureConfig, write_capture

    data = tmp_path / "capture"
    write_capture(data, CaptureConfig(frames=6, cameras=2, vertices=1500, image_size=(64, 48), seed=3),
                  progress=False, log=None)
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "train", "--data", str(data), "--output",
                        str(tmp_path / "o"), "--epochs", "2", "--set", "render_size=[48,48]", "num_views=2",
                        "held_out=null", "max_frames=4", "batch_size=2", "log_every=1"],
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "o" / "log" / "train.log").read_text()
    assert "(1 process, no process group: one process, not distributed)" in log and "none)" not in log
    logged = sorted({int(e) for e in re.findall(r"epoch (\d+) step", log)})
    files = sorted(int(p.name.split("_")[1].split(".")[0]) for p in (tmp_path / "o" / "model_dump").glob("snapshot_*"))
    bars = sorted({int(e) for e in re.findall(r"epoch (\d+) \(0\.\.1\)", r.stderr + r.stdout)})
    assert logged == files == bars == [0, 1], (logged, files, bars)


def _tiny_notebook(path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(x + 1)")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_kernels_do_not_print_the_tcp_warning(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    _tiny_notebook(folder / "01_tiny.ipynb")
    env = {**os.environ, "DHM_OUTPUT": str(tmp_path / "out"), "JUPYTER_DATA_DIR": str(tmp_path / "jd")}
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "notebooks", "--folder", str(folder), "--out",
                        str(tmp_path / "nb"), "--kernel", "python3"], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "without encryption" not in r.stdout + r.stderr
    nb = nbformat.read(tmp_path / "nb" / "01_tiny.ipynb", as_version=4)
    assert nb.cells[-1].outputs[0]["text"].strip() == "2"          # the cells' own output is untouched
    # dhm batch's kernels too
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "batch", str(folder / "01_tiny.ipynb"), "-p", "x", "1,2",
                        "--output", str(tmp_path / "bo"), "--kernel", "python3"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert "without encryption" not in r.stdout + r.stderr
    assert json.loads((tmp_path / "bo" / "notebooks" / "01_tiny" / "x-1.status.json").read_text())["state"] in (
        "done", "failed")
