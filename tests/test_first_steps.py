"""A newcomer's first steps in any order: a hand model written first does not break the capture writers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dhmlib.hand.handmodel import HandModel
from dhmlib.synth.capture import CaptureConfig, write_capture

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"
TINY = CaptureConfig(frames=1, cameras=1, vertices=400, image_size=(16, 12))


def _env(tmp_path):
    return {**os.environ, "DHM_DATA": str(tmp_path / "data"), "DHM_OUTPUT": str(tmp_path / "output"),
            "MPLBACKEND": "Agg", "JUPYTER_DATA_DIR": str(tmp_path / "jupyter")}


def _dhm(tmp_path, *args, timeout=900):
    return subprocess.run([sys.executable, "-m", "dhmlib.cli", *map(str, args)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


def _capture_hand(root):
    return HandModel.read(root / "annotations" / "synthetic" / "subject_1" / "hand_model")


@pytest.mark.slow
def test_hand_model_first_then_notebook_01_and_synth_end_with_a_capture(tmp_path):
    # the README's first dhm example, then the main job's first notebook into the same data root
    data = tmp_path / "data"
    r = _dhm(tmp_path, "hand-model", "--out", data / "hand_model", "--vertices", 1500)
    assert r.returncode == 0, r.stderr
    r = _dhm(tmp_path, "notebooks", "--smoke", "--only", "01", "-p", "data_root", data, "--out", tmp_path / "nb",
             "--kernel", "python3")
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (data / "annotations" / "synthetic" / "COMPLETE").is_file()
    hand = HandModel.read(data / "hand_model")
    assert hand.num_vertices == _capture_hand(data).num_vertices   # the capture's own hand, not dhm hand-model's
    from dhmlib.hand.handmodel import hand_model_origin

    assert "virtual capture subject 1" in hand_model_origin(data / "hand_model")

    # and dhm synth into a second root that only holds dhm hand-model's hand
    other = tmp_path / "other"
    assert _dhm(tmp_path, "hand-model", "--out", other / "hand_model", "--vertices", 1500).returncode == 0
    before = HandModel.read(other / "hand_model").num_vertices
    r = _dhm(tmp_path, "synth", "--out", other, "--frames", 2, "--cameras", 2, "--vertices", 1500,
             "--image-size", 64, 48, "--quiet")
    assert r.returncode == 0, r.stderr
    assert "replacing the hand model there (dhmlib procedural hand (dhm hand-model --seed 0" in r.stderr
    assert (other / "annotations" / "synthetic" / "COMPLETE").is_file()
    after = HandModel.read(other / "hand_model")
    assert after.num_vertices == _capture_hand(other).num_vertices != before


def test_procedural_hand_model_alone_is_replaced_and_said(tmp_path):
    from dhmlib.synth import build_procedural_hand

    build_procedural_hand(target_vertices=400, seed=5).write(tmp_path / "hand_model",
                                                             origin="dhmlib procedural hand (a test)")
    lines = []
    write_capture(tmp_path, TINY, progress=False, log=lines.append)
    assert any("replacing the hand model there (dhmlib procedural hand (a test))" in ln for ln in lines)
    assert (tmp_path / "hand_model" / "hand.obj").read_text() == \
        (tmp_path / "annotations/synthetic/subject_1/hand_model/hand.obj").read_text()


def test_a_users_hand_model_is_never_replaced(tmp_path):
    from dhmlib.cli import main
    from dhmlib.hand.handmodel import hand_model_origin, is_generated_hand_model
    from dhmlib.synth import build_procedural_hand

    folder = build_procedural_hand(target_vertices=400).write(tmp_path / "hand_model")
    obj = folder / "hand.obj"
    obj.write_text("# my own scan\n" + obj.read_text().split("\n", 1)[1])    # not written by dhmlib
    assert hand_model_origin(folder) is None and not is_generated_hand_model(folder)
    before = obj.read_bytes()
    with pytest.raises(FileExistsError, match="did not build .* does not replace yours"):
        write_capture(tmp_path, TINY, progress=False, log=None)
    assert main(["synth", "--out", str(tmp_path), "--frames", "1", "--cameras", "1", "--vertices", "400",
                 "--image-size", "16", "12", "--quiet"]) == 2
    assert obj.read_bytes() == before and not (tmp_path / "annotations").exists()
    # with --overwrite it is replaced, as asked
    write_capture(tmp_path, TINY, overwrite=True, progress=False, log=None)
    assert obj.read_bytes() != before


def test_a_capture_is_still_not_replaced_without_overwrite(tmp_path):
    write_capture(tmp_path, TINY, progress=False, log=None)
    with pytest.raises(FileExistsError, match="already holds hand_model, images"):
        write_capture(tmp_path, TINY, progress=False, log=None)


# ------------------------------------------------------------------ item 2: snapshots know their hand model
TINY_TRAIN = ["render_size=[48,48]", "num_views=2", "held_out=null", "max_frames=4", "log_every=1", "batch_size=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A capture (1500-vertex hand) and a one-step snapshot trained on it."""
    from dhmlib.cli import main

    root = tmp_path_factory.mktemp("trained")
    data = root / "capture"
    write_capture(data, CaptureConfig(frames=6, cameras=2, vertices=1500, image_size=(64, 48), seed=3),
                  progress=False, log=None)
    assert main(["train", "--data", str(data), "--output", str(root / "out"), "--max-steps", "1", "--no-progress",
                 "--set", *TINY_TRAIN]) == 0
    snap = sorted((root / "out" / "model_dump").glob("snapshot_*.pth.tar"))[-1]
    return data, snap


@pytest.mark.slow
def test_snapshot_records_hand_model_and_code_version(trained):
    from dhmlib import __version__
    from dhmlib.network.provenance import hand_model_sha256
    from dhmlib.network.snapshot import read_snapshot

    data, snap = trained
    ck = read_snapshot(snap)
    rec = ck["hand_model"]
    hand = HandModel.read(data / "hand_model")
    assert rec["path"] == str((data / "hand_model").resolve()) and rec["vertices"] == hand.num_vertices
    assert rec["sha256"] == hand_model_sha256(hand)
    assert "virtual capture subject 1" in rec["origin"]
    assert ck["code_version"]["dhmlib"] == __version__
    commit = ck["code_version"]["git_commit"]
    assert commit is None or len(commit) == 40


@pytest.mark.slow
def test_snapshot_is_demoed_without_naming_its_hand_model(trained, tmp_path):
    data, snap = trained
    elsewhere = tmp_path / "data"        # $DHM_DATA: another hand model (dhm hand-model's, 400 vertices)
    assert _dhm(tmp_path, "hand-model", "--out", elsewhere / "hand_model", "--vertices", 400).returncode == 0
    r = _dhm(tmp_path, "demo", "--snapshot", snap, "--out", tmp_path / "m.obj")
    assert r.returncode == 0, r.stderr
    assert f"using the hand model {(data / 'hand_model').resolve()}: the one {snap} was trained on" in r.stderr
    nv = sum(1 for ln in (tmp_path / "m.obj").read_text().splitlines() if ln.startswith("v "))
    assert nv == HandModel.read(data / "hand_model").num_vertices

    # the recorded folder is gone, but the capture's copy sits beside $DHM_DATA/hand_model: found by its hash
    import shutil
    moved = tmp_path / "moved_capture"
    shutil.copytree(data, moved)
    shutil.rmtree(moved / "hand_model")
    env_data = moved
    from dhmlib.network.provenance import pick_hand_model
    from dhmlib.network.snapshot import read_snapshot
    ck = read_snapshot(snap)
    ck["hand_model"] = {**ck["hand_model"], "path": str(tmp_path / "gone")}
    said = []
    hand = pick_hand_model(ck, "S", default_dir=env_data / "hand_model", log=said.append)
    assert hand.num_vertices == nv
    assert said and "annotations/synthetic/subject_1/hand_model" in said[0]

    # nothing matches: one line naming what the snapshot needs, exit 2
    (data / "hand_model").rename(data / "hand_model.bak")
    try:
        syn = data / "annotations" / "synthetic" / "subject_1" / "hand_model"
        syn.rename(syn.with_name("hm.bak"))
        try:
            r = _dhm(tmp_path, "demo", "--snapshot", snap, "--out", tmp_path / "m2.obj")
        finally:
            syn.with_name("hm.bak").rename(syn)
    finally:
        (data / "hand_model.bak").rename(data / "hand_model")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("dhm demo: error: ") and "was trained on the hand model" in lines[0]
    assert "Pass --hand-model" in lines[0] and not (tmp_path / "m2.obj").exists()


@pytest.mark.slow
def test_metrics_json_records_hand_model_and_code_version(trained, tmp_path):
    import json

    data, snap = trained
    r = _dhm(tmp_path, "test", "--snapshot", snap, "--data", data, "--output", tmp_path / "o", "--views", 1,
             "--no-baseline", "--no-render", "--fit-steps", 2, "--held-out", "last:2")
    assert r.returncode == 0, r.stderr
    info = json.loads((tmp_path / "o" / "result" / "metrics.json").read_text())["info"]
    assert info["hand_model"]["path"] == str((data / "hand_model").resolve())
    assert info["hand_model"]["sha256"] == info["snapshot_provenance"]["hand_model"]["sha256"]
    assert info["code_version"]["dhmlib"] and "git_commit" in info["code_version"]


# ------------------------------------------------------------------ item 7: the README's quickstart
@pytest.mark.slow
def test_readme_quickstart_works_as_written(tmp_path):
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    script = block.replace("/tmp/dhm-quick", str(tmp_path / "dhm-quick"))
    lines = [ln for ln in script.splitlines() if not ln.startswith(("make setup", "source .venv"))]
    assert sum(ln.startswith("dhm ") for ln in lines) >= 5
    env = {**_env(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-e", "-c", "\n".join(lines)], env=env, capture_output=True, text=True,
                       timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert (tmp_path / "dhm-quick-out" / "fist.obj").is_file()
    assert (tmp_path / "dhm-quick-out" / "result" / "metrics.json").is_file()
    assert "Traceback" not in r.stderr
    assert "dhm demo: using the hand model" in r.stderr          # $DHM_DATA has none: the snapshot's own


@pytest.mark.slow
def test_posing_widget_loads_a_snapshot_with_its_hand_model(trained, tmp_path, monkeypatch, capsys):
    from dhmlib.viz.loading import load_posing_model

    data, snap = trained
    monkeypatch.setenv("DHM_DATA", str(tmp_path / "elsewhere"))      # notebook 04 builds its own hand there
    loaded = load_posing_model("", str(snap), vertices=400)
    assert loaded.model.hand.num_vertices == HandModel.read(data / "hand_model").num_vertices
    assert "using the hand model" in capsys.readouterr().out
