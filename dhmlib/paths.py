"""Where data and outputs live, wherever the process runs.

``data_dir()`` is ``$DHM_DATA`` if set, else the project's ``data/``; ``output_dir()`` is
``$DHM_OUTPUT`` if set, else the project's ``output/``.  The project is the dhmlib checkout
this package is imported from (the folder holding ``dhmlib/`` and a ``pyproject.toml`` that
names it), so a notebook kernel started in ``notebooks/`` (as JupyterLab does) writes the same
folders as ``make run`` at the top.  When dhmlib is installed as a plain package outside a
checkout, the nearest dhmlib checkout above the working directory is the project, and failing
that the working directory itself.

The layout follows the original code: ``output/log``, ``output/model_dump``,
``output/result``, ``output/vis``; executed notebooks go to ``output/notebooks``.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

_NAME_RE = re.compile(r'^\s*name\s*=\s*["\']dhmlib["\']', re.MULTILINE)


def _is_project(folder: Path) -> bool:
    """Whether ``folder`` is a dhmlib checkout: ``pyproject.toml`` naming dhmlib beside ``dhmlib/``."""
    try:
        text = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return (folder / "dhmlib").is_dir() and _NAME_RE.search(text) is not None


@functools.lru_cache(maxsize=None)
def _package_checkout() -> Path | None:
    folder = Path(__file__).resolve().parents[1]
    return folder if _is_project(folder) else None


def project_root() -> Path:
    """The dhmlib checkout in use (absolute); see the module docstring for the search order."""
    root = _package_checkout()
    if root is not None:
        return root
    cwd = Path.cwd().resolve()
    return next((p for p in (cwd, *cwd.parents) if _is_project(p)), cwd)


def data_dir(value: str | os.PathLike | None = None) -> Path:
    """``value`` if given (non-empty), else ``$DHM_DATA``, else the project's ``data/``."""
    if value:
        return Path(value)
    env = os.environ.get("DHM_DATA")
    return Path(env) if env else project_root() / "data"


def output_dir(sub: str | None = None, value: str | os.PathLike | None = None) -> Path:
    """``value`` if given, else ``$DHM_OUTPUT``, else the project's ``output/``; with ``sub`` one of its folders."""
    if value:
        root = Path(value)
    else:
        env = os.environ.get("DHM_OUTPUT")
        root = Path(env) if env else project_root() / "output"
    return root / sub if sub else root


def notebooks_dir() -> Path:
    """The project's ``notebooks/`` folder (the ordered series)."""
    return project_root() / "notebooks"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a lock or status file's writer; signal 0 probes it)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # it exists, owned by someone else
        return True
    return True
