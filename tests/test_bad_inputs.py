"""Bad inputs: found early (check-data without images/, a pre-flight check before dhm train), and each one
ends in one ``dhm <cmd>: error: …`` line with the promised exit status."""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dhmlib.cli import main
from dhmlib.synth.capture import CaptureConfig, write_capture

TINY_TRAIN = ["render_size=[48,48]", "num_views=2", "held_out=null", "max_frames=4", "log_every=1", "batch_size=2"]


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """6 frames × 2 cameras, 64×48 images; copied per test before it is damaged."""
    root = tmp_path_factory.mktemp("bad_inputs") / "capture"
    write_capture(root, CaptureConfig(frames=6, cameras=2, vertices=1500, image_size=(64, 48), seed=3),
                  progress=False, log=None)
    return root


@pytest.fixture
def copy(capture, tmp_path):
    d = tmp_path / "data"
    shutil.copytree(capture, d)
    return d


def _one_error_line(capsys, command):
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert err[0].startswith(f"dhm {command}: error: "), err
    return err[0]


def _depth(root, frame=1):
    return sorted((root / "annotations" / "depthmaps" / "subject_1" / f"{frame:06d}").glob("depthmap*.pkl"))


# ------------------------------------------------------------------ item 4: check-data without images/
def test_check_data_without_images_checks_keypoints_and_depth_maps(copy, capsys):
    shutil.rmtree(copy / "images")                                   # the public release's layout
    bad = _depth(copy)[0]
    bad.write_bytes(bad.read_bytes()[:200])                          # a truncated pickle
    assert main(["check-data", str(copy), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "no subject_N folders" not in out
    assert "truncated or corrupt pickle" in out and str(bad) in out
    counts = dict(ln.rsplit(None, 1) for ln in out.splitlines() if ln and not ln.startswith("  -"))
    assert counts["depth maps"] == str(6 * 2) and counts["keypoint files"] == "6"
    assert counts["frames with depth maps"] == "6" and counts["problems"] == "1"


def test_check_data_without_images_clean_is_ok(copy, capsys):
    shutil.rmtree(copy / "images")
    assert main(["check-data", str(copy), "--no-progress"]) == 0
    assert "problems                     0" in capsys.readouterr().out


# ------------------------------------------------------------------ item 4: before and during dhm train
def test_train_preflight_names_a_truncated_depth_map_before_training(copy, tmp_path, capsys):
    bad = _depth(copy, 5)[1]                                         # frame 5: not even among max_frames=4
    bad.write_bytes(bad.read_bytes()[:-100])
    out = tmp_path / "out"
    assert main(["train", "--data", str(copy), "--output", str(out), "--max-steps", "1", "--no-progress",
                 "--set", *TINY_TRAIN]) == 2
    line = _one_error_line(capsys, "train")
    assert f"{bad}: " in line and "truncated" in line and "dhm check-data" in line
    assert not (out / "model_dump").exists()                         # nothing trained


def test_train_preflight_names_a_truncated_image(copy, tmp_path, capsys):
    img = sorted((copy / "images").rglob("*.jpg"))[3]
    img.write_bytes(img.read_bytes()[:-400])
    assert main(["train", "--data", str(copy), "--output", str(tmp_path / "o"), "--max-steps", "1",
                 "--no-progress", "--set", *TINY_TRAIN, "pose_source=\"image\""]) == 2   # the encoder reads images
    line = _one_error_line(capsys, "train")
    assert f"{img}: not a complete JPEG (truncated" in line


@pytest.mark.slow
def test_a_corrupt_depth_map_mid_run_is_one_line_exit_2(copy, tmp_path, capsys):
    # same size, pickle header and STOP byte as before, garbage inside: only reading it finds it
    for p in _depth(copy, 2):
        data = bytearray(p.read_bytes())
        data[2:-1] = np.random.default_rng(0).integers(0, 256, len(data) - 3, dtype=np.uint8).tobytes()
        p.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["train", "--data", str(copy), "--output", str(out), "--epochs", "2", "--no-progress",
                 "--set", *TINY_TRAIN, "pose_source=embedding"]) == 2
    line = _one_error_line(capsys, "train")
    assert "/000002/depthmap" in line and "truncated or corrupt pickle" in line


# ------------------------------------------------------------------ item 5: the listed bad inputs
def test_train_unknown_held_out_sequence_is_one_line_exit_2(copy, tmp_path, capsys):
    assert main(["train", "--data", str(copy), "--output", str(tmp_path / "o"), "--max-steps", "1",
                 "--no-progress", "--set", *[s for s in TINY_TRAIN if not s.startswith("held_out")],
                 "held_out=\"seq:nosuch\""]) == 2
    line = _one_error_line(capsys, "train")
    assert "nosuch" in line


def test_fit_bad_keypoint_file_is_one_line_exit_2(tmp_path, capsys):
    from dhmlib.synth import build_procedural_hand

    hand = build_procedural_hand(400).write(tmp_path / "hm")
    bad = tmp_path / "keypoints0001.pts"
    bad.write_text("0 1 2 three 1 1\nnot a keypoint line\n")
    assert main(["fit", str(bad), "--hand-model", str(hand), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys, "fit")
    assert str(bad) in line


@pytest.mark.parametrize("argv", [
    ["train", "--data", "{data}", "--output", "/proc/dhm-nope", "--max-steps", "1"],
    ["batch", "-s", "max_steps", "1", "--output", "/proc/dhm-nope"],
    ["notebooks", "--only", "04", "--out", "/proc/dhm-nope"],
    ["test", "--data", "{data}", "--output", "/proc/dhm-nope"],
    ["synth", "--out", "/proc/dhm-nope", "--frames", "1"],
    ["demo", "--out", "/proc/dhm-nope/a.obj", "--hand-model", "{data}/hand_model"],
    ["fit", "x.npy", "--out", "/proc/dhm-nope"],
    ["hand-model", "--out", "/proc/dhm-nope"],
], ids=lambda a: a[0])
def test_unwritable_output_has_one_form_everywhere(capture, argv, capsys):
    argv = [a.replace("{data}", str(capture)) for a in argv]
    flag = next(a for a in argv if a in ("--out", "--output"))
    given = argv[argv.index(flag) + 1]
    assert main(argv) == 2
    line = _one_error_line(capsys, argv[0])
    assert line.endswith(f"{flag} {given}: /proc is not writable"), line


def test_check_data_missing_root_is_one_line_exit_2(tmp_path, capsys):
    assert main(["check-data", str(tmp_path / "nonexistent")]) == 2
    line = _one_error_line(capsys, "check-data")
    assert f"{tmp_path / 'nonexistent'}: no such dataset root" in line


def test_test_missing_data_root_names_the_root(tmp_path, capsys):
    assert main(["test", "--data", str(tmp_path / "nonexistent"), "--output", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys, "test")
    assert f"--data {tmp_path / 'nonexistent'}: no such dataset root" in line and "hand_model" not in line.split(":")[1]


def test_the_listed_errors_are_one_line_in_a_real_process(tmp_path):
    """No traceback reaches the terminal, whatever the logging set-up of the process."""
    from dhmlib.synth import build_procedural_hand

    hand = build_procedural_hand(400).write(tmp_path / "hm")
    bad = tmp_path / "bad.pts"
    bad.write_text("garbage\n")
    r = subprocess.run([sys.executable, "-m", "dhmlib.cli", "fit", str(bad), "--hand-model", str(hand), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"dhm fit: error: {bad}")


# ------------------------------------------------------------------ item 10: dhm fit warns on NaN and cm
def test_fit_warns_on_nan_joints_and_centimetres(tmp_path, capsys):
    from dhmlib.synth import build_procedural_hand

    hand = build_procedural_hand(400)
    folder = hand.write(tmp_path / "hm")
    joints = np.repeat(hand.global_pose[None, :, :3, 3], 2, 0)
    joints[0, 3] = np.nan
    np.save(tmp_path / "mm.npy", joints)
    assert main(["fit", str(tmp_path / "mm.npy"), "--hand-model", str(folder), "--out", str(tmp_path / "o"),
                 "--steps", "2", "--no-meshes"]) == 0
    err = capsys.readouterr().err
    assert "1 joint(s) in 1 of 2 frame(s) are NaN" in err and "centimetres" not in err
    np.save(tmp_path / "cm.npy", joints / 10)
    assert main(["fit", str(tmp_path / "cm.npy"), "--hand-model", str(folder), "--out", str(tmp_path / "o"),
                 "--steps", "2", "--no-meshes"]) == 0
    err = capsys.readouterr().err
    assert "they look like centimetres; expected millimetres (multiply by 10)" in err
