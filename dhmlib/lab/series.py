"""Run the notebook series in order with papermill (behind ``dhm notebooks``).

Each notebook in ``notebooks/`` (``NN_name.ipynb``, run in name order) is
executed into ``output/notebooks/``. Parameters are passed only to notebooks
whose ``parameters`` cell declares them, and a parameter that no selected
notebook declares is an error (:class:`NotebookParameterError`, before anything
runs); ``smoke=True`` sets ``smoke = True`` where declared. While a notebook
runs, a line per code cell (and every ``heartbeat`` seconds inside a long cell)
says where it is and for how long. The run stops at the first failing notebook
and reports the failing cell's error. The kernels see ``DHM_NOTEBOOK_HEADLESS=1`` (nobody watches:
live plots such as :class:`dhmlib.viz.training.LivePlot` only collect and draw once at the end).
"""
from __future__ import annotations

import ast
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from dhmlib.lab.record import HEADLESS_ENV
from dhmlib.paths import notebooks_dir, output_dir
from dhmlib.progress import LineRelay, format_seconds

NOTEBOOK_RE = re.compile(r"^\d\d_.+\.ipynb$")
#: notebooks beside the series (``03b_ablation_diagnostics``): run only when named (``--only 03b``)
COMPANION_RE = re.compile(r"^\d\d[a-z]_.+\.ipynb$")
#: set to "1" for the kernels of :func:`run_notebooks` (nobody watches them)


class NotebookParameterError(ValueError):
    """A parameter that none of the selected notebooks declares."""


@dataclass(frozen=True)
class NotebookRun:
    """One executed notebook: its executed copy, the time it took (s), and the error if it failed."""

    notebook: Path
    output: Path
    seconds: float
    ok: bool
    error: str = ""


def find_notebooks(folder, only: list[str] | None = None) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: notebook folder not found")
    books = sorted(p for p in folder.iterdir() if NOTEBOOK_RE.match(p.name))
    if only:
        # companions (``03b_…``: not part of the series) run when named: ``--only 03b``
        extra = sorted(p for p in folder.iterdir() if COMPANION_RE.match(p.name)
                       and any(p.stem == o or (p.name.startswith(o) and len(o) >= 3) for o in only))
        books = sorted([p for p in books if any(p.name.startswith(o) or p.stem == o for o in only)] + extra)
        if not books:
            raise FileNotFoundError(f"{folder}: no notebook matches {only}")
    return books


def declared_parameters(path) -> dict:
    """Names → defaults declared in the notebook's ``parameters`` cell."""
    import papermill  # papermill/nbformat: the lab extra, imported when a notebook runs

    return papermill.inspect_notebook(str(path))


_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "list": (list, tuple),
          "dict": (dict,)}


def _declared_type(entry: dict) -> str | None:
    """The type of a parameters-cell entry: its annotation, else its default literal's, else None (any)."""
    name = (entry.get("inferred_type_name") or "None").strip()
    if name in _TYPES:
        return name
    try:
        default = ast.literal_eval(entry.get("default", "None"))
    except (ValueError, SyntaxError):
        return None
    for key in ("bool", "int", "float", "str", "list", "dict"):
        if isinstance(default, _TYPES[key][-1]) and (key == "bool" or not isinstance(default, bool)):
            return key
    return None


def parameter_type_errors(declared: dict, params: dict) -> list[str]:
    """Values of ``params`` that do not fit the type of the notebook's parameters cell (None always fits).

    ``declared``: :func:`declared_parameters`. Returns one message per bad value, naming the parameter, the
    value and the expected type.
    """
    errors = []
    for name, value in params.items():
        if name not in declared or value is None:
            continue
        kind = _declared_type(declared[name])
        if kind is None:
            continue
        ok = isinstance(value, _TYPES[kind]) and (kind == "bool" or not isinstance(value, bool))
        if not ok:
            hint = " (quote it to pass a string: '\"…\"')" if kind == "str" else ""
            errors.append(f"{name}={value!r}: expected {kind} (the parameters cell has "
                          f"{name} = {declared[name].get('default')}), got {type(value).__name__}{hint}")
    return errors


def parse_value(text: str):
    """``-p`` values: YAML scalars (``3``, ``0.5``, ``true``, ``[1, 2]``), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _cell_error(nb_path: Path) -> str:
    """The error output of the failing cell of an executed notebook."""
    import nbformat  # papermill/nbformat: the lab extra, imported when a notebook runs

    nb = nbformat.read(nb_path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                tb = "\n".join(out.get("traceback", []))
                tb = re.sub(r"\x1b\[[0-9;]*m", "", tb)  # strip ANSI colours
                src = cell.get("source", "")
                return f"cell {i} ({src.splitlines()[0] if src else ''!r}):\n{tb}"
    return "(no error output found)"


def check_parameters(books: list[Path], params: dict) -> dict[Path, dict]:
    """The parameters each notebook declares; raises :class:`NotebookParameterError` for a name none declares."""
    declared = {nb: declared_parameters(nb) for nb in books}
    unknown = [k for k in params if not any(k in d for d in declared.values())]
    if unknown:
        listing = "; ".join(f"{nb.stem}: {', '.join(d) or '(none)'}" for nb, d in declared.items())
        raise NotebookParameterError(f"parameter {', '.join(map(repr, unknown))} is declared by none of the "
                                     f"selected notebooks ({listing})")
    return declared


class CellProgress:
    """Log lines for one running notebook: a line as each code cell starts, a heartbeat inside long cells."""

    def __init__(self, name: str, total: int, log: Callable[[str], None], heartbeat: float | None,
                 prefix: str = "[dhm notebooks] "):
        self.name, self.total, self.log, self.heartbeat, self.prefix = name, total, log, heartbeat, prefix
        self.t0 = self.cell_t0 = time.perf_counter()
        self.done = 0
        self.current = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = None
        if heartbeat:
            self.thread = threading.Thread(target=self._beat, daemon=True)
            self.thread.start()

    def cell_start(self, cell, index):
        if cell.cell_type != "code":
            return
        with self.lock:
            now = time.perf_counter()
            self.done += 1
            self.current, self.cell_t0 = self.done, now
            first = next((ln for ln in cell.source.splitlines() if ln.strip()), "")
            first = first if len(first) <= 60 else first[:57] + "..."
            self.log(f"{self.prefix}{self.name}: cell {self.done}/{self.total}, {format_seconds(now - self.t0)}"
                     + (f"  {first}" if first else ""))

    def _beat(self):
        while not self.stop.wait(self.heartbeat):
            with self.lock:
                if self.current is not None:
                    now = time.perf_counter()
                    self.log(f"{self.prefix}{self.name}: cell {self.current}/{self.total} still running "
                             f"({format_seconds(now - self.cell_t0)} in this cell, {format_seconds(now - self.t0)} in all)")

    def close(self):
        self.stop.set()
        if self.thread is not None:
            self.thread.join()


_ENGINE = "dhm-progress"
_registered = False


#: arguments of the kernels papermill starts (``dhm notebooks``, ``dhm batch``): ipykernel's own log only for
#: errors, so that its "Kernel is running over TCP without encryption" warning (a local kernel on 127.0.0.1,
#: started and spoken to by this process) is not printed on every run; the cells' output is unaffected
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=ERROR",)


def quiet_lab_build_check(config_dir) -> Path:
    """Turn off JupyterLab's "Build Recommended" dialog for the Jupyter config folder ``config_dir``.

    ``make bench`` installs Open3D, whose JupyterLab extension makes JupyterLab offer a rebuild on every
    start; nothing in dhmlib's notebooks needs it. Sets ``buildCheck`` and ``buildAvailable`` to false in
    ``config_dir/labconfig/page_config.json`` (other keys kept). ``make lab`` calls it on ``.venv/etc/jupyter``.
    """
    path = Path(config_dir) / "labconfig" / "page_config.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {}
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e}); expected JupyterLab's page config") from None
    data.update(buildCheck=False, buildAvailable=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def register_progress_engine() -> str:
    """Register (once) a papermill engine that calls ``dhm_progress.cell_start`` as each cell starts."""
    global _registered
    from papermill.engines import NBClientEngine, papermill_engines  # papermill: the lab extra

    if not _registered:
        class ProgressEngine(NBClientEngine):
            @classmethod
            def execute_managed_notebook(cls, nb_man, kernel_name, dhm_progress=None, **kwargs):
                if dhm_progress is not None:
                    start = nb_man.cell_start

                    def cell_start(cell, cell_index=None, **kw):
                        start(cell, cell_index, **kw)
                        dhm_progress.cell_start(cell, cell_index)

                    nb_man.cell_start = cell_start
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

        papermill_engines.register(_ENGINE, ProgressEngine)
        _registered = True
    return _ENGINE


def run_notebooks(folder=None, out=None, params: dict | None = None, smoke: bool = False,
                  only: list[str] | None = None, kernel: str | None = None, log: Callable[[str], None] | None = print,
                  heartbeat: float | None = 30.0) -> list[NotebookRun]:
    """Execute the series; stop at the first failure (its ``NotebookRun.ok`` is False).

    Args:
        folder: the notebooks (default: the project's ``notebooks/``).
        out: where executed copies go (default: :func:`dhmlib.paths.output_dir` ``/notebooks``).
        params: name → value, passed to the notebooks that declare the name.
        only: name prefixes or stems of the notebooks to run (default: all, in order).
        log: receives progress lines (one per code cell, a heartbeat every ``heartbeat`` s
            inside a long cell, one per finished notebook); None for silence.
    Raises:
        NotebookParameterError: a name in ``params`` that no selected notebook declares
            (nothing has run then).
        FileNotFoundError: no such folder, or no notebook matches ``only``.
    """
    params = dict(params or {})
    out = Path(out) if out else output_dir("notebooks")
    folder = Path(folder) if folder else notebooks_dir()
    books = find_notebooks(folder, only)
    declared = check_parameters(books, params)
    out.mkdir(parents=True, exist_ok=True)
    engine = register_progress_engine()
    say = log or (lambda msg: None)
    runs = []
    headless = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"      # inherited by the kernels papermill starts
    try:
        _run_books(books, declared, params, smoke, out, kernel, engine, say, log, heartbeat, runs)
    finally:
        if headless is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = headless
    return runs


def missing_requirements(metadata) -> list[str]:
    """What a notebook needs and this environment lacks: its metadata ``dhmlib.requires`` lists
    ``{"module": name, "install": hint}``; each module that cannot be found gives ``"name (hint)"``.

    A notebook of an optional extra (``05_fit_your_hand`` needs MediaPipe, the photo extra, which ``make run``
    does not install) is then skipped by the series with that line instead of failing."""
    import importlib.util

    out = []
    for req in (metadata.get("dhmlib", {}) or {}).get("requires", []):
        name = req["module"]
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(f"{name} ({req.get('install', 'not installed')})")
    return out


def _run_books(books, declared, params, smoke, out, kernel, engine, say, log, heartbeat, runs) -> None:
    import nbformat  # papermill/nbformat: the lab extra, imported when a notebook runs
    import papermill
    from papermill.exceptions import PapermillExecutionError

    for nb in books:
        given = {k: v for k, v in params.items() if k in declared[nb]}
        if smoke and "smoke" in declared[nb]:
            given["smoke"] = True
        target = out / nb.name
        book = nbformat.read(nb, as_version=4)
        missing = missing_requirements(book.metadata)
        if missing:
            why = "; ".join(f"needs {m}" for m in missing)
            runs.append(NotebookRun(nb, target, 0.0, True, f"skipped: {why}"))
            say(f"[dhm notebooks] {nb.name}: skipped ({why})")
            continue
        total = sum(c.cell_type == "code" for c in book.cells)
        say(f"[dhm notebooks] {nb.name}: {total} code cells{f', parameters {given}' if given else ''}")
        progress = CellProgress(nb.stem, total + (1 if given else 0), say, heartbeat if log else None)
        t = time.perf_counter()
        try:
            relay = LineRelay(say, f"[dhm notebooks] {nb.stem}")     # the kernel's progress lines (ETA)
            papermill.execute_notebook(str(nb), str(target), parameters=given, kernel_name=kernel,
                                       cwd=str(Path.cwd()), progress_bar=False, engine_name=engine,
                                       dhm_progress=progress, stdout_file=relay, stderr_file=relay,
                                       extra_arguments=list(KERNEL_ARGUMENTS))
            runs.append(NotebookRun(nb, target, time.perf_counter() - t, True))
            say(f"[dhm notebooks] {nb.name} ok in {format_seconds(runs[-1].seconds)} → {target}")
        except PapermillExecutionError as e:
            err = _cell_error(target) if target.exists() else f"{e.ename}: {e.evalue}"
            runs.append(NotebookRun(nb, target, time.perf_counter() - t, False, err))
            say(f"[dhm notebooks] {nb.name} FAILED after {format_seconds(runs[-1].seconds)} (executed copy: {target})"
                f"\n{err}")
            break
        finally:
            progress.close()
