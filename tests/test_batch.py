"""dhm batch / dhmlib.lab.batch: grids and names, failures with their cell, resume (also after kill -9), the table."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from dhmlib.configs import split_top_level
from dhmlib.lab.batch import BatchSpec, BatchSpecError, expand_grid, parse_run, plan_runs, run_batch
from dhmlib.lab.results import BatchResult, RunResult, flatten
from dhmlib.lab.series import parse_value

ROOT = Path(__file__).resolve().parents[1]


def fake_notebook(path: Path) -> Path:
    """A parameters cell; a cell that logs its start and sleeps once (``sleep`` s, only while ``marker`` is
    absent); a cell that raises for ``variant == 'bad'``; a cell that records ``score`` and logs its end."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell("# a fake training notebook"),
        nbformat.v4.new_code_cell("variant = 'a'\nepochs = 1\nsleep = 0.0\nmarker = ''\nlog = ''\n"
                                  "output_root = ''\nsmoke = False", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            "import os, time\nfrom dhmlib.lab.record import record\n"
            "if log:\n    open(log, 'a').write(f'start {variant} {epochs}\\n')\n"
            "if sleep and not os.path.exists(marker):\n    open(marker, 'w').close()\n    time.sleep(sleep)"),
        nbformat.v4.new_code_cell("if variant == 'bad':\n    raise ValueError(f'variant {variant} is bad')"),
        nbformat.v4.new_code_cell(
            "record('fake', {'variant': variant, 'score': {'mean': len(variant) * epochs, 'p95': 0.5 * epochs},"
            " 'output_root': output_root, 'smoke': smoke})\n"
            "if log:\n    open(log, 'a').write(f'end {variant} {epochs}\\n')"),
    ]
    nbformat.write(nb, path)
    return path


# ----------------------------------------------------------------- planning (no kernels)
def test_grid_expansion_order_and_run_names():
    assert expand_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
    assert expand_grid({"a": 3}) == [{"a": 3}]
    specs = plan_runs(grid={"variant": ["a", "d"], "seed": [0]}, common={"epochs": 2, "variant": "z"})
    # seed is the same for every run: only variant names them; a run's own values override common
    assert [s.name for s in specs] == ["variant-a", "variant-d"]
    assert specs[1].params == {"epochs": 2, "variant": "d", "seed": 0}
    specs = plan_runs(runs=[{"lr": 1e-3, "correctives": ["pose", "skeleton"]}, {"lr": 1e-4, "held_out": "seq:05 RT"},
                            {"lr": 0.5, "flag": True, "x": None}])
    assert [s.name for s in specs] == ["lr-0.001_correctives-pose+skeleton", "lr-0.0001_held_out-seq_05_RT",
                                       "lr-0.5_flag-true_x-null"]
    # listed names are kept; names that sanitize to the same string are told apart; one run of common only
    specs = plan_runs(runs={"fast": {"lr": 1}, "slow": {"lr": 2}})
    assert [s.name for s in specs] == ["fast", "slow"]
    assert [s.name for s in plan_runs(grid={"v": ["a/b", "a b"]})] == ["v-a_b", "v-a_b-2"]
    assert [s.name for s in plan_runs(common={"epochs": 1})] == ["run"]
    long = plan_runs(grid={"overrides": ["x" * 150, "y" * 150]})
    assert all(len(s.name) <= 100 for s in long) and long[0].name != long[1].name
    assert all(all(c.isalnum() or c in "._+-" for c in s.name) for s in long)
    # the same spec always gives the same names (resume depends on it)
    assert [s.name for s in plan_runs(grid={"v": ["a/b", "a b"]})] == ["v-a_b", "v-a_b-2"]


def test_plan_rejects_duplicates_bad_names_and_non_json():
    with pytest.raises(BatchSpecError, match="same parameters"):
        plan_runs(runs=[{"a": 1}], grid={"a": [1, 2]})
    with pytest.raises(BatchSpecError, match="run name '../x'"):
        plan_runs(runs={"../x": {"a": 1}})
    with pytest.raises(BatchSpecError, match="'summary'"):
        plan_runs(runs={"summary": {"a": 1}})
    with pytest.raises(BatchSpecError, match="JSON values"):
        plan_runs(runs=[{"a": object()}])
    with pytest.raises(BatchSpecError, match="grid 'a': no values"):
        plan_runs(grid={"a": []})


def test_command_line_values_split_at_top_level_commas():
    assert split_top_level('a,[1, 2],"x,y",{k: 1, j: 2}') == ["a", "[1, 2]", '"x,y"', "{k: 1, j: 2}"]
    assert [parse_value(v) for v in split_top_level("1,0.5,true,d")] == [1, 0.5, True, "d"]
    assert parse_run('full:variant=d,overrides="lr=1e-3,epochs=2",gpus=0-3', parse_value) == (
        "full", {"variant": "d", "overrides": "lr=1e-3,epochs=2", "gpus": "0-3"})
    assert parse_run("held_out=seq:0005,epochs=2", parse_value) == (None, {"held_out": "seq:0005", "epochs": 2})
    with pytest.raises(BatchSpecError, match="expected NAME:key=value"):
        parse_run("x:epochs", parse_value)


def test_batch_file_yaml_and_json(tmp_path):
    f = tmp_path / "ablation.yaml"
    f.write_text("batch: abl\nnotebook: nb.ipynb\ncommon: {preset: cpu-small, max_steps: 200}\n"
                 "grid:\n  variant: [a, d]\nruns:\n  - {variant: e, seed: 1}\n")
    spec = BatchSpec.from_file(f)
    assert spec == BatchSpec(common={"preset": "cpu-small", "max_steps": 200}, grid={"variant": ["a", "d"]},
                             runs=[{"variant": "e", "seed": 1}], batch="abl", notebook="nb.ipynb")
    assert [s.name for s in plan_runs(spec.runs, spec.grid, spec.common)] == ["variant-e_seed-1", "variant-a",
                                                                              "variant-d"]
    j = tmp_path / "b.json"
    j.write_text(json.dumps({"runs": {"one": {"epochs": 1}}}))
    assert BatchSpec.from_file(j).runs == {"one": {"epochs": 1}}
    (tmp_path / "bad.yaml").write_text("common: {a: 1}\ngrid:\n  variant: [a, b\n")
    with pytest.raises(BatchSpecError, match=r"bad\.yaml:4: not valid YAML"):
        BatchSpec.from_file(tmp_path / "bad.yaml")
    (tmp_path / "key.yaml").write_text("grids: {a: [1]}\n")
    with pytest.raises(BatchSpecError, match="unknown key 'grids'"):
        BatchSpec.from_file(tmp_path / "key.yaml")
    (tmp_path / "kind.yaml").write_text("grid: [1, 2]\n")
    with pytest.raises(BatchSpecError, match="'grid' must be a mapping"):
        BatchSpec.from_file(tmp_path / "kind.yaml")


def test_table_flattens_records_and_writes_json_csv_markdown(tmp_path):
    def run(name, state, params, metrics):
        return RunResult(name, params, state, tmp_path / f"{name}.ipynb", tmp_path / f"{name}.status.json",
                         tmp_path / f"{name}.json", seconds=1.234, metrics=metrics)

    res = BatchResult("b", tmp_path / "nb.ipynb", tmp_path, [
        run("variant-a", "done", {"variant": "a", "epochs": 2},
            {"held_out": {"vertex_mean_mm": 1.5, "p95": {"x": 3}}, "epochs": 2, "curve": [1, 2], "lr": 0.1}),
        run("variant-d", "done", {"variant": "d", "epochs": 2},
            {"held_out": {"vertex_mean_mm": 0.5, "p95": {"x": 4}}, "epochs": 2, "curve": [3], "lr": 0.1}),
        run("variant-x", "failed", {"variant": "x", "epochs": 2}, {}),
    ], varying=["variant"])
    rows = res.table()
    assert rows[0] == {"run": "variant-a", "state": "done", "seconds": 1.23, "variant": "a",
                       "held_out.vertex_mean_mm": 1.5, "held_out.p95.x": 3, "epochs": 2, "curve": [1, 2], "lr": 0.1}
    assert rows[2] == {"run": "variant-x", "state": "failed", "seconds": 1.23, "variant": "x"}
    res.varying = ["variant", "epochs"]          # a metric named like a column gets "metrics."
    assert res.table()[0]["metrics.epochs"] == 2 and res.table()[0]["epochs"] == 2
    paths = res.write_summary()
    back = json.loads(paths["json"].read_text())
    assert back["runs"][1]["held_out.vertex_mean_mm"] == 0.5 and back["runs"][1]["curve"] == [3]
    with open(paths["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["held_out.p95.x"] for r in table] == ["3", "4", ""] and table[0]["curve"] == "[1, 2]"
    md = paths["md"].read_text().splitlines()
    # the key metrics (here held_out.vertex_mean_mm); the others, constant ones (lr) and lists are left to the CSV
    assert md[2] == "| run | state | seconds | variant | epochs | held_out.vertex_mean_mm |"
    assert md[4] == "| variant-a | done | 1.23 | a | 2 | 1.5 |"
    assert md[-1] == "4 more column(s) in summary.csv and summary.json."   # p95.x, metrics.epochs, curve, lr
    # without key metrics: the numeric metrics that differ between the done runs
    for r in res.runs:
        r.metrics.pop("held_out", None) if r.metrics else None
        if r.metrics:
            r.metrics["score"] = 1.0 if r.name.endswith("a") else 2.0
    assert res.markdown().splitlines()[0] == "| run | state | seconds | variant | epochs | score |"
    assert flatten({"a": {"b": {}, "c": {"d": 1}}}) == {"a.b": {}, "a.c.d": 1}


# ----------------------------------------------------------------- running (papermill kernels)
@pytest.mark.slow
def test_failed_run_reported_with_its_cell_others_complete_and_resume_skips_done(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    nb = fake_notebook(tmp_path / "fake.ipynb")
    out = tmp_path / "out"
    lines = []
    res = run_batch(nb, grid={"variant": ["a", "bad", "ccc"]}, common={"epochs": 2}, batch="b1", output_root=out,
                    on_progress=lines.append, record="fake", kernel="python3", smoke=True)
    assert [r.name for r in res.runs] == ["variant-a", "variant-bad", "variant-ccc"]
    assert [r.state for r in res.runs] == ["done", "failed", "done"] and not res.ok
    bad = res["variant-bad"]
    # the reported cell is the one that raised: its index in the source notebook, its In [n] in the executed copy
    assert nbformat.read(nb, as_version=4).cells[bad.error.cell_index].source.startswith("if variant == 'bad':")
    executed = nbformat.read(bad.notebook, as_version=4)
    failing = [c for c in executed.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert len(failing) == 1 and failing[0].execution_count == bad.error.execution_count
    assert failing[0].source.startswith("if variant == 'bad':") and failing[0].outputs[-1].ename == "ValueError"
    assert bad.error.source == "if variant == 'bad':" and bad.error.evalue == "variant bad is bad"
    assert json.loads(bad.status_file.read_text())["error"]["cell_index"] == bad.error.cell_index
    inside = [ln for ln in lines if " ... " not in ln and not ln.startswith("batch ")]   # lines from inside a run
    assert inside and all(ln.split(": ")[1].startswith("cell ") for ln in inside)
    assert "[2/3] variant-bad: cell 4/5, " in "\n".join(inside)              # up to the failing cell
    lines = [ln for ln in lines if ln not in inside]
    assert f"[2/3] variant-bad ... FAILED at cell {bad.error.cell_index}: ValueError: variant bad is bad" in lines[3]
    assert lines[3].endswith(f"fake.ipynb cell 3 (In [{bad.error.execution_count}] in {bad.notebook}): "
                             "if variant == 'bad':")
    assert lines[1].startswith("[1/3] variant-a ... done in ") and lines[5].startswith("[3/3] variant-ccc ... done")
    # metrics: read back from the executed notebooks, beside them as JSON, and one table
    folder = out / "notebooks" / "b1"
    assert res["variant-ccc"].metrics["score"] == {"mean": 6, "p95": 1.0}
    saved = json.loads((folder / "variant-ccc.json").read_text())
    assert saved["records"]["fake"]["score"]["mean"] == 6 and saved["params"] == {"epochs": 2, "variant": "ccc",
                                                                                   "smoke": True}
    summary = json.loads((folder / "summary.json").read_text())
    assert [(r["run"], r["state"], r.get("score.mean")) for r in summary["runs"]] == [
        ("variant-a", "done", 2), ("variant-bad", "failed", None), ("variant-ccc", "done", 6)]
    assert summary["runs"][0]["smoke"] is True
    # each run had its own output folder, passed as output_root
    assert res["variant-a"].metrics["output_root"] == str((out / "batch" / "b1" / "variant-a").resolve())
    assert (out / "batch" / "b1" / "variant-a").is_dir()

    # again, from the command line: the done runs are skipped (untouched), the failed one runs again
    stamps = {n: (folder / f"{n}.ipynb").stat().st_mtime_ns for n in ("variant-a", "variant-ccc")}
    capsys.readouterr()
    from dhmlib.cli import main

    code = main(["batch", str(nb), "-p", "variant", "a,bad,ccc", "-s", "epochs", "2", "--batch", "b1", "--smoke",
                 "--output", str(out), "--record", "fake", "--kernel", "python3"])
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ": cell " not in ln]
    assert code == 1
    assert printed[0].startswith("[1/3] variant-a ... done earlier in ") and printed[0].endswith(", skipped")
    assert printed[2].startswith("[2/3] variant-bad ... FAILED at cell ")
    assert printed[4].startswith("[3/3] variant-ccc ... done earlier")
    assert {n: (folder / f"{n}.ipynb").stat().st_mtime_ns for n in stamps} == stamps
    # changed parameters are not "done": a dry run shows them pending
    again = run_batch(nb, grid={"variant": ["a", "ccc"]}, common={"epochs": 3}, batch="b1", output_root=out,
                      dry_run=True, smoke=True)
    assert [r.state for r in again.runs] == ["pending", "pending"]


@pytest.mark.slow
def test_batch_killed_with_sigkill_resumes_where_it_stopped(tmp_path):
    nb = fake_notebook(tmp_path / "fake.ipynb")
    log, marker, out = tmp_path / "ran.log", tmp_path / "slept", tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "JUPYTER_DATA_DIR": str(tmp_path / "jupyter")}
    argv = [sys.executable, "-m", "dhmlib.cli", "batch", str(nb), "--output", str(out), "--batch", "k",
            "-s", "log", str(log), "-s", "marker", str(marker), "--kernel", "python3",
            "--run", "first:variant=a", "--run", "second:variant=bb,sleep=60", "--run", "third:variant=ccc"]
    status = out / "notebooks" / "k" / "second.status.json"
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():          # the second run is inside its sleep
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)       # the kernel the killed runner started, if still there
        except ProcessLookupError:
            pass
    assert json.loads(status.read_text())["state"] == "running"
    assert not (out / "notebooks" / "k" / "third.status.json").exists()
    assert log.read_text().split("\n")[:-1] == ["start a 1", "end a 1", "start bb 1"]

    r = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "[1/3] first ... done earlier" in r.stdout and "[2/3] second ... done in" in r.stdout
    # only the missing runs ran: the interrupted one again from its start, then the one never reached
    assert log.read_text().split("\n")[:-1] == ["start a 1", "end a 1", "start bb 1",
                                                 "start bb 1", "end bb 1", "start ccc 1", "end ccc 1"]
    summary = json.loads((out / "notebooks" / "k" / "summary.json").read_text())
    assert [(row["run"], row["state"], row["fake.score.mean"]) for row in summary["runs"]] == [
        ("first", "done", 1), ("second", "done", 2), ("third", "done", 3)]
    from dhmlib.lab.record import read_recorded

    assert read_recorded(out / "notebooks" / "k" / "second.ipynb")["fake"]["variant"] == "bb"


# ----------------------------------------------------------------- bad input: exit 2, one line, nothing run
def test_bad_input_is_exit_2_with_a_clear_message(tmp_path, capsys, monkeypatch):
    from dhmlib.cli import main

    monkeypatch.chdir(tmp_path)
    nb = fake_notebook(tmp_path / "fake.ipynb")
    out = tmp_path / "out"

    def fails(argv, message):
        code = main(["batch", str(nb), "--output", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert message in err, err

    fails(["-p", "variantt", "a,b"], "dhm batch: error: parameter 'variantt' (run variantt-a) is not declared by "
                                     "fake.ipynb (its parameters: variant, epochs, sleep, marker, log, output_root, smoke)")
    fails(["--run", "x:epochs=1,lr=2"], "parameter 'lr' (run x) is not declared by fake.ipynb")
    (tmp_path / "bad.yaml").write_text("grid:\n  variant: [a, b\n")
    fails(["-f", "bad.yaml"], "dhm batch: error: bad.yaml:3: not valid YAML")
    (tmp_path / "key.yaml").write_text("common: {epochs: 1}\nrun: []\n")
    fails(["-f", "key.yaml"], "key.yaml: unknown key 'run'; expected batch, notebook, common, grid, runs")
    fails(["-p", "variant", "a", "-s", "variant", "b"], "-p/-s variant: given twice")
    fails(["--run", "epochs"], "--run: run 'epochs': expected NAME:key=value,key=value")
    fails(["--batch", "../up"], "batch name '../up'")
    fails(["--run", "a:variant=a", "--run", "b:variant=a"], "have the same parameters")
    code = main(["batch", str(tmp_path / "missing.ipynb"), "--output", str(out)])
    assert code == 2 and "missing.ipynb: notebook not found" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_another_live_process_is_running_is_not_started_twice(tmp_path):
    from dhmlib.lab.batch import BatchBusyError, _boot_id

    nb = fake_notebook(tmp_path / "fake.ipynb")
    folder = tmp_path / "out" / "notebooks" / "busy"
    folder.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (folder / "variant-b.status.json").write_text(json.dumps({
            "state": "running", "params": {"variant": "b"}, "pid": other.pid, "host": socket.gethostname(),
            "boot_id": _boot_id()}))
        kw = dict(grid={"variant": ["a", "b"]}, batch="busy", output_root=tmp_path / "out", on_progress=None)
        assert [r.state for r in run_batch(nb, dry_run=True, **kw).runs] == ["pending", "running"]
        with pytest.raises(BatchBusyError, match=f"run variant-b is being run by process {other.pid}"):
            run_batch(nb, **kw)
    finally:
        other.kill()
        other.wait()
    # once that process is gone, its run counts as interrupted: pending, run again
    assert [r.state for r in run_batch(nb, dry_run=True, **kw).runs] == ["pending", "pending"]
    assert not (folder / "variant-a.ipynb").exists()
