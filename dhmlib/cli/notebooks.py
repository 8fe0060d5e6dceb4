"""``dhm notebooks``: run notebooks/ in order with papermill, with a progress line per cell."""
from __future__ import annotations

import argparse

from dhmlib.cli._common import OK, PROBLEMS, CLIError, writable_folder

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return v

HELP = "run notebooks/ in order with papermill into output/notebooks/, a progress line per cell"
DESCRIPTION = HELP + """

Parameters (-p NAME VALUE) go to the notebooks whose parameters cell declares NAME; a name that no
selected notebook declares is an error. The first run of 01_data_inspection writes the virtual
capture into data/ (about 3.3 GB, about two minutes). Exit status 1 when a notebook fails (the
failing cell's error is printed; the executed copy is kept in --out).
"""


def add(p):
    p.description = DESCRIPTION
    p.add_argument("--folder", help="folder of NN_*.ipynb notebooks (default: the project's notebooks/)")
    p.add_argument("--out", help="where executed copies go (default: $DHM_OUTPUT/notebooks, else the "
                                 "project's output/notebooks/)")
    p.add_argument("--smoke", action="store_true", help="small, quick parameters (smoke = True)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="notebook parameter (YAML value), passed to notebooks that declare it")
    p.add_argument("--only", nargs="+", help="run only these notebooks (name prefixes, e.g. 01 04)")
    p.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")
    p.add_argument("--heartbeat", type=_seconds, default=30.0,
                   help="seconds between 'still running' lines inside a long cell (0: none)")


def run(args) -> int:
    try:
        import papermill  # noqa: F401
    except ImportError:
        raise CLIError("papermill is not installed; install the notebook stack with pip install -e '.[lab]' "
                       "(or make setup)") from None
    from dhmlib.lab.series import NotebookParameterError, parse_value, run_notebooks
    from dhmlib.progress import format_seconds

    from dhmlib.paths import output_dir

    writable_folder(args.out or output_dir("notebooks"), "--out")
    params = {}
    for name, value in args.parameter:
        if name in params:
            raise CLIError(f"-p {name}: given twice")
        params[name] = parse_value(value)
    try:
        runs = run_notebooks(args.folder, args.out, params, args.smoke, args.only, args.kernel,
                             log=lambda msg: print(msg, flush=True), heartbeat=args.heartbeat or None)
    except NotebookParameterError as e:
        raise CLIError(str(e)) from None
    if runs and all(r.ok for r in runs):
        print(f"[dhm notebooks] {len(runs)} notebooks ok in {format_seconds(sum(r.seconds for r in runs))}")
        return OK
    return PROBLEMS
