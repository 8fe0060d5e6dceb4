"""``dhm notebooks``: run the notebook series in order with papermill.

Each notebook in ``notebooks/`` (``NN_name.ipynb``, run in name order) is
executed into ``output/notebooks/``. Parameters given with ``-p name value``
are passed only to notebooks whose ``parameters`` cell declares them;
``--smoke`` sets ``smoke = True`` where declared. The run stops at the first
failing notebook and prints the failing cell's error.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

NOTEBOOK_RE = re.compile(r"^\d\d_.+\.ipynb$")


@dataclass
class NotebookRun:
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
        books = [p for p in books if any(p.name.startswith(o) or p.stem == o for o in only)]
        if not books:
            raise FileNotFoundError(f"{folder}: no notebook matches {only}")
    return books


def declared_parameters(path) -> dict:
    """Names → defaults declared in the notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(path))


def parse_value(text: str):
    """``-p`` values: YAML scalars (``3``, ``0.5``, ``true``, ``[1, 2]``), else the string."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _cell_error(nb_path: Path) -> str:
    """The error output of the failing cell of an executed notebook."""
    import nbformat

    nb = nbformat.read(nb_path, as_version=4)
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                tb = "\n".join(out.get("traceback", []))
                tb = re.sub(r"\x1b\[[0-9;]*m", "", tb)  # strip ANSI colours
                src = cell.get("source", "")
                return f"cell {i} ({src.splitlines()[0] if src else ''!r}):\n{tb}"
    return "(no error output found)"


def run_notebooks(folder="notebooks", out="output/notebooks", params: dict | None = None, smoke: bool = False,
                  only: list[str] | None = None, kernel: str | None = None, log=print) -> list[NotebookRun]:
    """Execute the series; stop at the first failure (its ``NotebookRun.ok`` is False)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = dict(params or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for nb in find_notebooks(folder, only):
        declared = declared_parameters(nb)
        given = {k: v for k, v in params.items() if k in declared}
        if smoke and "smoke" in declared:
            given["smoke"] = True
        target = out / nb.name
        log(f"[dhm notebooks] {nb.name} {given or ''}")
        t = time.perf_counter()
        try:
            papermill.execute_notebook(str(nb), str(target), parameters=given, kernel_name=kernel,
                                       cwd=str(Path.cwd()), progress_bar=False)
            runs.append(NotebookRun(nb, target, time.perf_counter() - t, True))
            log(f"[dhm notebooks] {nb.name} ok in {runs[-1].seconds:.1f} s → {target}")
        except PapermillExecutionError as e:
            err = _cell_error(target) if target.exists() else f"{e.ename}: {e.evalue}"
            runs.append(NotebookRun(nb, target, time.perf_counter() - t, False, err))
            log(f"[dhm notebooks] {nb.name} FAILED after {runs[-1].seconds:.1f} s (executed copy: {target})\n{err}")
            break
    return runs


def add_notebooks(p):
    p.add_argument("--folder", default="notebooks", help="folder of NN_*.ipynb notebooks")
    p.add_argument("--out", default="output/notebooks", help="where executed copies go")
    p.add_argument("--smoke", action="store_true", help="small, quick parameters (smoke = True)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="notebook parameter (YAML value), passed to notebooks that declare it")
    p.add_argument("--only", nargs="+", help="run only these notebooks (name prefixes, e.g. 01 04)")
    p.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")


def run_notebooks_cli(args):
    params = {k: parse_value(v) for k, v in args.parameter}
    runs = run_notebooks(args.folder, args.out, params, args.smoke, args.only, args.kernel)
    total = sum(r.seconds for r in runs)
    if runs and all(r.ok for r in runs):
        print(f"[dhm notebooks] {len(runs)} notebooks ok in {total:.0f} s")
        return
    sys.exit(1)
