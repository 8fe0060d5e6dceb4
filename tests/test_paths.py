"""Default data and output folders are the project's own, whatever the working directory."""
import os
import subprocess
import sys
from pathlib import Path

from dhmlib import paths

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_the_projects_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("DHM_DATA", raising=False)
    monkeypatch.delenv("DHM_OUTPUT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.project_root() == ROOT
    assert paths.data_dir() == ROOT / "data"
    assert paths.output_dir("vis") == ROOT / "output" / "vis"
    assert paths.notebooks_dir() == ROOT / "notebooks"


def test_environment_and_explicit_values_override(monkeypatch, tmp_path):
    monkeypatch.setenv("DHM_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("DHM_OUTPUT", str(tmp_path / "o"))
    assert paths.data_dir() == tmp_path / "d"
    assert paths.output_dir("log") == tmp_path / "o" / "log"
    assert paths.data_dir("elsewhere") == Path("elsewhere")
    assert paths.output_dir(value="x") == Path("x")


def test_from_a_subprocess_in_notebooks_folder():
    env = {k: v for k, v in os.environ.items() if k not in ("DHM_DATA", "DHM_OUTPUT")}
    code = "from dhmlib.paths import data_dir, output_dir; print(data_dir()); print(output_dir())"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "notebooks", env=env,
                       capture_output=True, text=True, check=True)
    assert r.stdout.split() == [str(ROOT / "data"), str(ROOT / "output")]


def test_outside_a_checkout_the_nearest_project_above_the_working_directory(monkeypatch, tmp_path):
    proj = tmp_path / "proj"
    (proj / "dhmlib").mkdir(parents=True)
    (proj / "pyproject.toml").write_text('[project]\nname = "dhmlib"\n')
    (proj / "notebooks").mkdir()
    monkeypatch.setattr(paths, "_package_checkout", lambda: None)   # as if installed into site-packages
    monkeypatch.chdir(proj / "notebooks")
    assert paths.project_root() == proj
    monkeypatch.chdir(tmp_path)
    assert paths.project_root() == tmp_path                           # no checkout: the working directory
