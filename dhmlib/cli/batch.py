"""``dhm batch``: run one notebook once per parameter set with papermill (dhmlib.lab.batch)."""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

from dhmlib.cli._common import OK, PROBLEMS, CLIError, writable_folder

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = "run a notebook (default 02_training) once per parameter set: a grid or a list, resumable"
DESCRIPTION = HELP + """

Parameter sets: -p NAME V1,V2,… (several values: a grid axis, every combination is a run; one value:
every run), -s NAME VALUE (one value for every run, commas kept), --run [RUN:]k=v,k=v (a listed run),
or a YAML/JSON --file with 'batch', 'notebook', 'common' (parameters), 'grid' (name → list) and 'runs'
(a list of parameter mappings, or run name → parameters); the command line adds to the file. Values are
YAML scalars or lists ('[1, 2]'); commas inside brackets or quotes do not split.

Each run is named after the parameters that vary (variant-a_seed-1). Under <output>/notebooks/<batch>/:
<run>.ipynb (the executed notebook), <run>.status.json, <run>.json (the notebook's recorded metrics),
summary.json/.csv/.md (one table). A notebook declaring output_root gets <output>/batch/<batch>/<run>/.
Run again, the batch skips runs done with the same parameters and re-runs the rest (a killed batch
resumes). Exit status 1 when a run failed (each failure is printed with its cell; the others still run).

examples:
  dhm batch -p variant a,b,c,d -p max_steps 200 --batch ablation --record 02_training
  dhm batch --file ablation.yaml --smoke
  dhm batch my.ipynb --run fast:lr=1e-3,epochs=2 --run slow:lr=1e-4,epochs=8
"""


def add(p):
    p.description = DESCRIPTION
    p.add_argument("notebook", nargs="?", help="the notebook (default: the file's 'notebook', else "
                                               "notebooks/02_training.ipynb)")
    p.add_argument("-f", "--file", help="YAML or JSON batch file (batch, notebook, common, grid, runs)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUES"),
                   help="comma-separated values: a grid axis; one value: every run")
    p.add_argument("-s", "--set", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="one value for every run (commas kept)")
    p.add_argument("--run", action="append", default=[], metavar="[RUN:]K=V,K=V",
                   help="a listed run, optionally named")
    p.add_argument("--batch", help="batch name (default: the file's 'batch', the file's stem, or the notebook's stem)")
    p.add_argument("--output", help="output root (default: $DHM_OUTPUT, else the project's output/)")
    p.add_argument("--smoke", action="store_true", help="smoke = True in every run")
    p.add_argument("--gpus", help="the notebook's gpus parameter for every run (e.g. 0-3: its torchrun path)")
    p.add_argument("--record", help="name of the notebook record holding the metrics (default: every record)")
    p.add_argument("--rerun", action="store_true", help="run every run again, also those already done")
    p.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    p.add_argument("--kernel", help="Jupyter kernel name (default: the notebook's)")


def _terminate(signum, frame):
    raise KeyboardInterrupt      # SIGTERM ends like Ctrl-C: the running run is marked interrupted, exit 130


def spec_from_args(args):
    """The :class:`dhmlib.lab.batch.BatchSpec` of the file (if any) with the command line's additions."""
    from dhmlib.configs import split_top_level
    from dhmlib.lab.batch import BatchSpec, BatchSpecError, parse_run
    from dhmlib.lab.series import parse_value

    spec = BatchSpec.from_file(args.file) if args.file else BatchSpec()
    common, grid = dict(spec.common), dict(spec.grid)
    runs = list(spec.runs.items()) if isinstance(spec.runs, dict) else [(None, r) for r in spec.runs]
    given = set()
    for name, text in args.parameter + args.set:
        if name in given:
            raise CLIError(f"-p/-s {name}: given twice")
        if not name.isidentifier():
            raise CLIError(f"-p/-s {name!r}: not a parameter name")
        given.add(name)
    for name, text in args.parameter:
        values = [parse_value(v) for v in split_top_level(text)]
        if len(values) > 1:
            grid[name] = values
            common.pop(name, None)
        else:
            common[name] = values[0]
            grid.pop(name, None)
    for name, text in args.set:
        common[name] = parse_value(text)
        grid.pop(name, None)
    for text in args.run:
        try:
            runs.append(parse_run(text, parse_value))
        except BatchSpecError as e:
            raise CLIError(f"--run: {e}") from None
    batch = args.batch or spec.batch or (Path(args.file).stem if args.file else None)
    return BatchSpec(common=common, grid=grid, runs=runs, batch=batch, notebook=args.notebook or spec.notebook)


def run(args) -> int:
    try:
        import papermill  # noqa: F401
    except ImportError:
        raise CLIError("papermill is not installed; install the notebook stack with pip install -e '.[lab]' "
                       "(or make setup)") from None
    from dhmlib.lab.batch import BatchBusyError, BatchSpecError, run_batch
    from dhmlib.lab.series import NotebookParameterError

    try:
        spec = spec_from_args(args)
    except BatchSpecError as e:
        raise CLIError(str(e)) from None
    if not args.dry_run:
        from dhmlib.paths import output_dir

        writable_folder(output_dir(value=args.output), "--output")
    notebook = spec.notebook
    if notebook and args.file and not args.notebook and not Path(notebook).is_absolute():
        beside = Path(args.file).parent / notebook     # relative to the batch file, else to the working folder
        notebook = str(beside) if beside.is_file() else notebook
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread and sys.platform != "win32" else None
    try:
        result = run_batch(notebook, spec.runs, grid=spec.grid, common=spec.common, batch=spec.batch,
                           output_root=args.output, on_progress=lambda msg: print(msg, flush=True),
                           smoke=args.smoke, gpus=args.gpus, record=args.record, rerun=args.rerun,
                           dry_run=args.dry_run, kernel=args.kernel)
    except (BatchSpecError, NotebookParameterError, BatchBusyError) as e:
        raise CLIError(str(e)) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if args.dry_run:
        n = len(result.runs)
        for i, r in enumerate(result.runs, 1):
            own = ", ".join(f"{k}={r.params[k]!r}" for k in result.varying if k in r.params)
            print(f"[{i}/{n}] {r.name}  {r.state}{f'  ({own})' if own else ''}")
        print(f"batch {result.batch}: {n} runs of {result.notebook} → {result.folder}")
        return OK
    return OK if result.ok else PROBLEMS
