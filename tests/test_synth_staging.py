"""The capture's staging folder: a killed run's leftovers are removed by the next run, which says so."""
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from dhmlib.cli import main
from dhmlib.synth.capture import CaptureConfig, write_capture
from dhmlib.synth.staging import LOCK, PREFIX, StagingBusyError, is_stale, remove_stale, staging_folder

TINY = CaptureConfig(frames=1, cameras=1, vertices=400, image_size=(16, 12))


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_partial(root, pid, lock=True, mb=1):
    d = root / f"{PREFIX}{pid}"
    (d / "images").mkdir(parents=True)
    (d / "images" / "x.bin").write_bytes(b"\0" * (mb * 1_000_000))
    if lock:
        (d / LOCK).write_text(f"{pid}\n")
    return d


def test_stale_partial_folders_are_removed_and_reported(tmp_path):
    stale_locked = _fake_partial(tmp_path, _dead_pid(), lock=True, mb=2)
    stale_old = _fake_partial(tmp_path, _dead_pid(), lock=False)       # written before the lock existed
    lines = []
    s = write_capture(tmp_path, TINY, progress=False, log=lines.append)
    assert not stale_locked.exists() and not stale_old.exists()
    assert set(s.removed_partial) == {stale_locked, stale_old}
    assert len(lines) == 2 and any(f"removed {stale_locked}" in ln and "(2 MB" in ln for ln in lines)
    assert (tmp_path / "annotations" / "synthetic" / "COMPLETE").is_file()
    assert not list(tmp_path.glob(PREFIX + "*"))


def test_a_live_writer_is_left_alone(tmp_path):
    live = _fake_partial(tmp_path, 4242424, lock=True)
    with open(live / LOCK, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)   # as a running writer holds it
        assert not is_stale(live)
        with pytest.raises(StagingBusyError, match="another dhm synth .* is writing"):
            remove_stale(tmp_path, log=None)
    assert live.exists() and is_stale(live)
    assert remove_stale(tmp_path, log=None) == [live] and not live.exists()


def test_staging_folder_is_locked_and_removed(tmp_path):
    with staging_folder(tmp_path) as d:
        assert d.name == f"{PREFIX}{os.getpid()}" and not is_stale(d)
        (d / "x").write_text("x")
    assert not d.exists()


@pytest.mark.slow
def test_killed_synth_leaves_a_folder_the_next_run_removes(tmp_path, capsys):
    out = tmp_path / "data"
    args = [sys.executable, "-m", "dhmlib.cli", "synth", "--out", str(out), "--frames", "500", "--cameras", "2",
            "--vertices", "400", "--image-size", "64", "42", "--quiet"]

    def start_and_wait_for_staging():
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t = time.time()
        while not list(out.glob(PREFIX + "*/images")) and time.time() - t < 120:
            time.sleep(0.1)
        time.sleep(1.0)
        assert p.poll() is None, p.communicate()
        return p

    # SIGTERM ends like Ctrl-C: the run removes its own staging folder, exit 130
    p = start_and_wait_for_staging()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "dhm synth: interrupted" in err and "Traceback" not in err
    assert not list(out.glob(PREFIX + "*"))
    # SIGKILL cannot clean up: the folder stays until the next run, which removes it and says so
    p = start_and_wait_for_staging()
    p.kill()
    p.wait()
    left = list(out.glob(PREFIX + "*"))
    assert len(left) == 1
    assert main(["synth", "--out", str(out), "--frames", "1", "--cameras", "1", "--vertices", "400",
                 "--image-size", "16", "12", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"dhm synth: removed {left[0]}: left by an interrupted capture" in err
    assert not list(out.glob(PREFIX + "*"))
