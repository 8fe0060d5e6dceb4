"""``make lab``: JupyterLab starts (as root too, as in containers) without the "Build Recommended" dialog."""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_quiet_lab_build_check_keeps_other_keys(tmp_path):
    from dhmlib.lab.series import quiet_lab_build_check

    path = tmp_path / "labconfig" / "page_config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"disabledExtensions": {"x": True}}))
    assert quiet_lab_build_check(tmp_path) == path
    assert json.loads(path.read_text()) == {"disabledExtensions": {"x": True}, "buildCheck": False,
                                            "buildAvailable": False}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_lab_starts_and_offers_no_build(tmp_path):
    port = _free_port()
    args = f"--no-browser --ServerApp.port={port} --ServerApp.ip=127.0.0.1 --IdentityProvider.token="
    dry = subprocess.run(["make", "-n", "lab", f"VENV={sys.prefix}", f"LAB_ARGS={args}"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    lab = next(ln for ln in lines if "jupyter lab" in ln)
    assert ("--allow-root" in lab) == (os.getuid() == 0)
    assert any("quiet_lab_build_check" in ln for ln in lines)
    from dhmlib.lab.series import quiet_lab_build_check

    quiet_lab_build_check(tmp_path / "config")           # what make lab does to .venv/etc/jupyter, here per user
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(shlex.split(lab), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        page, deadline = None, time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/lab", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(1)
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert page is not None
        config = json.loads(re.search(r'id="jupyter-config-data"[^>]*>(.*?)</script>', page, re.S).group(1))
        assert config["buildCheck"] is False and config["buildAvailable"] is False
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
