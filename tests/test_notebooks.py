"""The notebook series: committed clean, one literal parameters cell, runs under `dhm notebooks`."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
#: the series and the notebooks beside it (03b_…: run only when named)
ALL_NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


def _env(tmp_path):
    return {**os.environ, "DHM_DATA": str(tmp_path / "data"), "DHM_OUTPUT": str(tmp_path / "output"),
            "MPLBACKEND": "Agg", "JUPYTER_DATA_DIR": str(tmp_path / "jupyter")}


def test_series_is_ordered_and_present():
    names = [p.name for p in NOTEBOOKS]
    assert names[0] == "01_data_inspection.ipynb" and names[1:] == ["02_training.ipynb", "03_ablation_correctives.ipynb",
                                                                "04_posing_widget.ipynb", "05_fit_your_hand.ipynb"]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=[p.name for p in ALL_NOTEBOOKS])
def test_committed_clean_with_one_literal_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert tagged[0] in code[:2], "the parameters cell comes first or right after the imports"
    tree = ast.parse("".join(tagged[0]["source"]))
    for node in tree.body:
        assert isinstance(node, (ast.Assign, ast.AnnAssign)), ast.dump(node)
        assert isinstance(node.value, ast.Constant) or (isinstance(node.value, ast.UnaryOp)
                                                       and isinstance(node.value.operand, ast.Constant)), \
            f"{path.name}: parameters must be literals, got {ast.unparse(node)}"
    assert "smoke" in {t.id for n in tree.body for t in (n.targets if isinstance(n, ast.Assign) else [n.target])}


@pytest.mark.slow
def test_data_inspection_runs_and_writes_the_capture(tmp_path):
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "notebooks", "--smoke", "--only", "01",
                        "--folder", str(NOTEBOOKS[0].parent), "--out", str(tmp_path / "nb"), "--kernel", "python3"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    nb = nbformat.read(tmp_path / "nb" / "01_data_inspection.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 5  # dome, keypoints, depth, sample crops, angle histograms
    text = "".join(o.get("text", "") for o in outputs)
    assert "problems                     0" in text
    assert (tmp_path / "data" / "annotations" / "KRT_512").is_file()
    assert (tmp_path / "data" / "annotations" / "synthetic" / "COMPLETE").is_file()


def _tiny_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("x = 1\nsmoke = False", metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, path)


def test_runner_stops_at_first_failure_and_prints_the_cell_error(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "01_ok.ipynb", ["assert smoke is True and x == 5", "open('ran_01', 'w').close()"])
    _tiny_notebook(folder / "02_fails.ipynb", ["y = x / 0"])
    _tiny_notebook(folder / "03_never.ipynb", ["open('ran_03', 'w').close()"])
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "notebooks", "--folder", str(folder), "--out",
                        str(tmp_path / "out"), "--smoke", "-p", "x", "5", "--kernel", "python3"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1
    assert (tmp_path / "ran_01").exists() and not (tmp_path / "ran_03").exists()
    assert "02_fails.ipynb FAILED" in r.stdout and "ZeroDivisionError" in r.stdout and "y = x / 0" in r.stdout


@pytest.mark.slow
def test_posing_notebook_started_in_notebooks_folder_writes_the_projects_folders(tmp_path):
    """As JupyterLab does: the kernel starts in notebooks/, no DHM_DATA/DHM_OUTPUT set.

    A copy of the project (pyproject.toml, dhmlib/, the notebook) stands in for the checkout, so
    the project's own data/ and output/ are those of the copy.
    """
    src = NOTEBOOKS[0].parents[1]
    proj = tmp_path / "proj"
    shutil.copytree(src / "dhmlib", proj / "dhmlib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(src / "pyproject.toml", proj)
    (proj / "notebooks").mkdir()
    book = next(p for p in NOTEBOOKS if p.name.startswith("04_"))
    shutil.copy(book, proj / "notebooks")
    env = {k: v for k, v in _env(tmp_path).items() if k not in ("DHM_DATA", "DHM_OUTPUT")}
    env["PYTHONPATH"] = str(proj)
    out = tmp_path / "executed.ipynb"
    r = subprocess.run([sys.executable, "-m", "papermill", str(proj / "notebooks" / book.name), str(out),
                        "-p", "smoke", "True", "--cwd", str(proj / "notebooks"), "--kernel", "python3"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=proj / "notebooks")
    assert r.returncode == 0, r.stderr[-4000:]
    assert sorted(p.name for p in (proj / "notebooks").iterdir()) == [book.name], "nothing under notebooks/"
    assert (proj / "data" / "hand_model" / "hand.obj").is_file()
    assert (proj / "output" / "vis" / "04_posing_snapshot.png").is_file()
    nb = json.loads(out.read_text())
    outputs = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    kinds = {k for o in outputs for k in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" in kinds      # the widgets were built
    assert "image/png" in kinds                                     # the static snapshot


@pytest.mark.slow
def test_fit_your_hand_notebook_smoke_fits_a_capture_image(tmp_path, small_capture):
    """Notebook 05 under the series runner with a capture image as the smoke input: detection, fit, overlay,
    widget, files, the record."""
    pytest.importorskip("mediapipe", reason="the photo extra is not installed (pip install -e '.[photo]')")
    env = {**_env(tmp_path), "DHM_DATA": str(small_capture)}
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "notebooks", "--smoke", "--only", "05",
                        "--folder", str(NOTEBOOKS[0].parent), "--out", str(tmp_path / "nb"), "--kernel", "python3"],
                       env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    from dhmlib.lab.record import read_recorded

    rec = read_recorded(tmp_path / "nb" / "05_fit_your_hand.ipynb")["05_fit_your_hand"]
    assert rec["photos"] == 1 and rec["fitted"] + rec["failed"] == 1
    nb = nbformat.read(tmp_path / "nb" / "05_fit_your_hand.ipynb", as_version=4)
    kinds = {k for c in nb.cells if c.cell_type == "code" for o in c.outputs for k in o.get("data", {})}
    if rec["fitted"]:
        assert "image/png" in kinds and "application/vnd.jupyter.widget-view+json" in kinds
        files = sorted(p.name for p in (tmp_path / "output" / "photo_fit").iterdir())
        assert any(f.endswith("_pose.npz") for f in files) and any(f.endswith("_overlay.png") for f in files)


def test_a_notebook_whose_extra_is_missing_is_skipped_with_the_install_hint(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "01_needs.ipynb", ["open('ran_01', 'w').close()"])
    nb = nbformat.read(folder / "01_needs.ipynb", as_version=4)
    nb.metadata["dhmlib"] = {"requires": [{"module": "no_such_module_dhm", "install": "pip install -e '.[x]'"}]}
    nbformat.write(nb, folder / "01_needs.ipynb")
    _tiny_notebook(folder / "02_runs.ipynb", ["open('ran_02', 'w').close()"])
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "notebooks", "--folder", str(folder), "--out",
                        str(tmp_path / "out"), "--kernel", "python3"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "01_needs.ipynb: skipped (needs no_such_module_dhm (pip install -e '.[x]'))" in r.stdout + r.stderr
    assert not (tmp_path / "ran_01").exists() and (tmp_path / "ran_02").exists()


def test_unknown_parameter_is_an_error_naming_the_declared_ones(tmp_path, capsys):
    from dhmlib.cli import main

    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "01_a.ipynb", ["open('ran', 'w').close()"])
    _tiny_notebook(folder / "02_b.ipynb", ["pass"])
    code = main(["notebooks", "--folder", str(folder), "--out", str(tmp_path / "out"), "-p", "presett", "point"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "dhm notebooks: error: parameter 'presett' is declared by none of the selected notebooks " \
           "(01_a: x, smoke; 02_b: x, smoke)" in err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
    assert main(["notebooks", "--folder", str(folder), "-p", "x", "1", "-p", "x", "2"]) == 2
    assert "-p x: given twice" in capsys.readouterr().err


def test_progress_line_per_cell_and_heartbeat(tmp_path, monkeypatch):
    from dhmlib.lab.series import run_notebooks

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "01_slow.ipynb", ["import time", "time.sleep(2.5)", "y = 2"])
    lines = []
    runs = run_notebooks(folder, tmp_path / "out", {"x": 3}, kernel="python3", log=lines.append, heartbeat=1.0)
    assert runs[0].ok
    cells = [ln for ln in lines if ": cell " in ln and "still running" not in ln]
    # 4 code cells + papermill's injected parameters cell, in order, each with the elapsed time
    assert [ln.split(": cell ")[1].split(",")[0] for ln in cells] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert cells[3].startswith("[dhm notebooks] 01_slow: cell 4/5, ") and cells[3].endswith("time.sleep(2.5)")
    assert int(cells[4].split(", ")[1].split(" s")[0]) >= 2
    beats = [ln for ln in lines if "still running" in ln]
    # the 2.5 s cell beats (1 s heartbeat); on a loaded machine a slow start may beat too
    assert any("cell 4/5 still running" in ln for ln in beats)
    assert all(" still running (" in ln for ln in beats)
    assert lines[-1].startswith("[dhm notebooks] 01_slow.ipynb ok in ")


@pytest.mark.slow
def test_training_notebook_smoke_trains_evaluates_and_records_its_metrics(tmp_path):
    """02 with smoke parameters: a tiny capture is written, 2 epochs train, the held-out frame is
    evaluated against LBS alone, and the recorded metrics read back from the notebook and the file."""
    from dhmlib.lab.record import read_recorded

    book = next(p for p in NOTEBOOKS if p.name.startswith("02_"))
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "notebooks", "--smoke", "--only", "02",
                        "--folder", str(book.parent), "--out", str(tmp_path / "nb"), "--kernel", "python3"],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = tmp_path / "output"
    executed = tmp_path / "nb" / book.name
    rec = read_recorded(executed)["02_training"]
    assert rec == json.loads((out / "result" / "02_training_metrics.json").read_text())
    assert rec["smoke"] is True and rec["train_config"]["epochs"] == 2
    assert rec["training"]["epochs"] == 2 and rec["training"]["steps"] == 4      # 7 training frames, batch 4
    assert rec["training"]["held_out_frames"] == 1 and "0005_RT_free" in rec["training"]["split"]
    # the snapshot of the last epoch, holding both configs
    from dhmlib.network.snapshot import read_snapshot
    assert rec["snapshot"] == str(out / "model_dump" / "snapshot_1.pth.tar")
    ckpt = read_snapshot(rec["snapshot"])
    assert ckpt["epoch"] == 1 and ckpt["train_config"] == rec["train_config"]
    # held-out metrics in mm, for the trained model and LBS alone
    for part in ("held_out", "lbs_baseline"):
        assert rec[part]["frames"] == 1
        assert 0 < rec[part]["vertex_mean_mm"] < 20 and 0 < rec[part]["joint_error_mm"] < 20
    assert rec["final_step"]["step"] == 4 and rec["final_step"]["total"] > 0
    # figures: the loss curves, the depth comparison and the error map, in the notebook and as files
    nb = nbformat.read(executed, as_version=4)
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 3
    for name in ("02_training_loss", "02_depth_comparison", "02_vertex_error"):
        assert (out / "vis" / f"{name}.png").stat().st_size > 5000
    tables = [o["data"]["text/markdown"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "text/markdown" in o.get("data", {})]
    assert any("| `render_size` | **(32, 32)** |" in t for t in tables)        # the config table marks overrides
    assert any(t.startswith("| metric | trained | LBS, fitted angles | LBS, true angles |") for t in tables)


@pytest.mark.slow
def test_training_notebook_as_a_batch_unit_variant_step_budget_probe_and_output_root(tmp_path):
    """02 as `dhm notebooks` runs it, with the batch parameters: variant "a" (LBS only), max_steps 3,
    probe_every 1, its own output_root, no baseline."""
    from dhmlib.lab.record import read_recorded

    book = next(p for p in NOTEBOOKS if p.name.startswith("02_"))
    run_out = tmp_path / "runs" / "a"
    params = ["-p", "max_steps", "3", "-p", "probe_every", "1", "-p", "output_root", str(run_out),
              "-p", "baseline", "false", "-p", "variant", "a"]
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "notebooks", "--smoke", "--only", "02",
                        "--folder", str(book.parent), "--out", str(tmp_path / "nb"), "--kernel", "python3", *params],
                       env=_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rec = read_recorded(tmp_path / "nb" / book.name)["02_training"]
    # the step budget: 3 steps of the smoke run's 4, a snapshot there
    assert rec["train_config"]["max_steps"] == 3 and rec["training"]["steps"] == 3
    assert "max_steps 3" in rec["training"]["stopped_early"]
    assert rec["training"]["steps_per_s"] == pytest.approx(3 / rec["training"]["seconds"], rel=0.05)
    assert rec["snapshot"] == str(run_out / "model_dump" / "snapshot_1_step3.pth.tar")
    # the correctives are off (the variant's)
    mc = rec["model_config"]
    assert (mc["pose_corrective"], mc["id_corrective"], mc["skeleton_corrective"]) == (False, False, False)
    assert rec["variant"]["key"] == "a" and rec["variant"]["name"] == "lbs_only"
    # the probe: steps 0..3, and LBS alone does not learn: the same error at every step
    assert [p[0] for p in rec["probe_curve"]] == [0, 1, 2, 3]
    assert len({round(p[2], 9) for p in rec["probe_curve"]}) == 1 and 0 < rec["probe_curve"][0][2] < 20
    assert [p[1] for p in rec["probe_curve"]] == sorted(p[1] for p in rec["probe_curve"])
    metrics = [json.loads(ln) for ln in (run_out / "log" / "metrics.jsonl").read_text().splitlines()]
    probes = [m for m in metrics if m["kind"] == "probe"]
    assert [m["step"] for m in probes] == [0, 1, 2, 3]
    assert all({"seconds", "vertex_mean_mm", "vertex_p95_mm"} <= set(m) for m in probes)
    # held-out summary, timings, and every file under output_root (none under DHM_OUTPUT)
    assert rec["held_out"]["frames"] == 1 and 0 < rec["held_out"]["vertex_mean_mm"] < 20
    assert rec["eval_seconds"] > 0 and rec["lbs_true_angles"] is None
    assert rec["output_root"] == str(run_out) and rec["meshes"] == str(run_out / "result" / "meshes")
    assert len(list((run_out / "result" / "meshes").glob("*.obj"))) == 1
    assert rec == json.loads((run_out / "result" / "02_training_metrics.json").read_text())
    for name in ("02_training_loss", "02_probe", "02_depth_comparison"):
        assert (run_out / "vis" / f"{name}.png").is_file(), name
    assert not (tmp_path / "output").exists()


@pytest.mark.slow
def test_ablation_notebook_smoke_runs_the_batch_collects_and_resumes(tmp_path):
    """03 with smoke parameters: variants (a) and (d) run as papermill runs of 02 (one executed notebook each),
    the table, claims, fist-pose interpenetration and figures are written; run again, both runs are skipped."""
    from dhmlib.lab.record import read_recorded

    book = next(p for p in NOTEBOOKS if p.name.startswith("03_"))
    cmd = [sys.executable, "-m", "dhmlib.cli", "notebooks", "--smoke", "--only", "03", "--folder", str(book.parent),
           "--out", str(tmp_path / "nb"), "--kernel", "python3"]
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = tmp_path / "output"
    rec = read_recorded(tmp_path / "nb" / book.name)["03_ablation"]
    assert rec["variants"] == ["a", "d"] and rec["failed"] == []
    table = {row["variant"]: row for row in rec["table"]}
    assert set(table) == {"a", "d"} and all(row["steps"] == 3 for row in table.values())
    for row in table.values():
        assert 0 < row["vertex_mean_mm"] < 20 and row["fist_penetration_fraction"] is not None
    claim = rec["claims"]["full_vs_lbs"]
    assert claim["ratio"] == pytest.approx(table["d"]["vertex_mean_mm"] / table["a"]["vertex_mean_mm"])
    best = rec["claims"]["best_vs_lbs"]
    assert best["variant"] == "d" and best["ratio"] == claim["ratio"] and best["goal"] == 0.35
    saved = json.loads((out / "result" / "ablation.json").read_text())
    assert saved["table"] == rec["table"] and [v["key"] for v in saved["variants"]] == ["a", "d"]
    for v in saved["variants"]:     # each variant's own executed notebook holds its record
        runs = read_recorded(v["notebook"])["02_training"]
        assert runs["variant"]["key"] == v["key"] and runs["held_out"] == v["held_out"]
        assert Path(runs["output_root"]) == out / "batch" / "ablation" / f"variant-{v['key']}"
    for name in ("03_ablation_vertex_error", "03_ablation_probe"):
        assert (out / "vis" / f"{name}.png").stat().st_size > 5000
    # the table agrees with the meshes in output/batch/ablation/variant-*/result/meshes (recomputed without dhmlib)
    from ablation_check import check
    recomputed = check(out / "result" / "ablation.json", tmp_path / "data")
    assert set(recomputed) == {"a", "d"}
    iv = saved["claims"]["intervals"]
    assert list(iv) == ["a→d"] and iv["a→d"]["frames"] >= 1 and iv["a→d"]["before"] == "a"
    # again: the batch finds both runs done and does not train them again
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    nb = nbformat.read(tmp_path / "nb" / book.name, as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert text.count("done earlier") == 2, text[-2000:]


@pytest.mark.slow
def test_diagnostics_notebook_smoke_scores_every_way_and_records(tmp_path):
    """03b with smoke parameters: an old-recipe and an oracle run of 02, each scored with the true angles
    (held out and training frames), its own evaluation's poses, the shared LBS poses and the full fit;
    the table, the intervals and ablation_diagnostics.json are written and read back."""
    from dhmlib.lab.record import read_recorded

    book = Path(__file__).parents[1] / "notebooks" / "03b_ablation_diagnostics.ipynb"
    assert book.name not in [p.name for p in NOTEBOOKS]          # beside the series, not in make run
    cmd = [sys.executable, "-m", "dhmlib.cli", "notebooks", "--smoke", "--only", "03b", "--folder", str(book.parent),
           "--out", str(tmp_path / "nb"), "--kernel", "python3"]
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rec = read_recorded(tmp_path / "nb" / book.name)["03b_diagnostics"]
    assert rec["runs"] == ["old_d", "oracle_d", "image_d", "pen16_d"]
    saved = json.loads((tmp_path / "output" / "result" / "ablation_diagnostics.json").read_text())
    for name in ("old_d", "oracle_d"):
        means = saved["scores"][name]["mean"]
        assert {"true_held_out", "true_train", "protocol", "shared_fit", "full_fit"} <= set(means)
        assert all(0 < v < 20 for v in means.values())
        # the true-angle score recomputed from its per-frame list
        assert means["true_held_out"] == pytest.approx(np.mean(saved["scores"][name]["true_held_out"]))
    assert saved["scores"]["oracle_d"]["train_pose_error_deg"] == pytest.approx(0.0, abs=1e-3)   # frozen truth
    assert saved["scores"]["old_d"]["train_pose_error_deg"] > 1.0
    # the image-source run: scored without training poses, and its penetration at the encoder's poses beside
    # the truth's at the same frames (recomputed here from the true meshes)
    assert {"true_held_out", "protocol"} <= set(saved["scores"]["image_d"]["mean"])
    assert "train_pose_error_deg" not in saved["scores"]["image_d"]
    pen = saved["penetration"]
    assert set(pen) == {"image_d", "truth"} and rec["penetration"] == pen
    # the penetration-weight sweep: the run trained with 16× the paper's weights, its interpenetration at its
    # own training poses beside the true meshes' at the same frames
    from dhmlib.data.ground_truth import ground_truth_meshes
    from dhmlib.hand.handmodel import read_hand_model
    from dhmlib.metrics.mesh import hand_parts, penetration
    from dhmlib.network.snapshot import read_snapshot

    sweep = saved["penetration_tradeoff"]
    assert rec["penetration_tradeoff"] == sweep and sweep["reference"] == "pen16_d" and list(sweep["rows"]) == ["pen16_d"]
    snap = next((tmp_path / "output" / "batch" / "ablation_diagnostics" / "pen16_d" / "model_dump").glob("snapshot_*"))
    tc = read_snapshot(snap)["train_config"]
    assert (tc["penetration_rigid_weight"], tc["penetration_nonrigid_weight"]) == (16.0, 80.0)
    row = sweep["rows"]["pen16_d"]
    assert row["factor"] == 16 and 0 <= row["training_poses"]["penetration_fraction"] < 1
    assert row["held_out_mm"] == pytest.approx(np.mean(saved["scores"]["pen16_d"]["protocol"]))
    data = tmp_path / "data"
    truth = penetration(ground_truth_meshes(data, tc["subject"], sweep["frames"]),
                        hand_parts(read_hand_model(data / "hand_model")))
    assert sweep["truth"]["penetration_fraction"] == pytest.approx(truth["penetration_fraction"])
    for where in ("training_poses", "held_out_predicted"):
        assert 0 <= pen["image_d"][where]["penetration_fraction"] < 0.5 and pen["image_d"][where]["frames"] >= 1
    from dhmlib.data.ground_truth import ground_truth_meshes
    from dhmlib.hand.handmodel import read_hand_model
    from dhmlib.metrics.mesh import hand_parts, penetration
    data = tmp_path / "data"
    held = saved["scores"]["image_d"]["frames"]
    again = penetration(ground_truth_meshes(data, 1, held), hand_parts(read_hand_model(data / "hand_model")))
    assert pen["truth"]["held_out_predicted"]["penetration_fraction"] == pytest.approx(again["penetration_fraction"])
