"""Papermill batch runs of one notebook, once per parameter set (behind ``dhm batch``).

A batch is a notebook (default ``notebooks/02_training.ipynb``) and a list of parameter sets: listed runs,
a grid (the product of value lists) or both, plus ``common`` parameters every run gets. Each run has a
stable, filesystem-safe name made of the parameters that vary between runs (``variant-a_seed-1``) and
leaves, under ``<output>/notebooks/<batch>/``::

    <run>.ipynb          the executed notebook: the record of the run (partial while it runs)
    <run>.status.json    state running/done/failed/interrupted, timings, the failing cell (written atomically)
    <run>.json           what the notebook recorded with dhmlib.lab.record.record (read back), and its parameters
    summary.json, summary.csv, summary.md    one table over the runs (nested records as dotted keys)

A notebook that declares an ``output_root`` parameter gets its own folder ``<output>/batch/<batch>/<run>/``.
Runs go one after another; a run that fails is reported with its failing cell and the batch goes on. Run
again, a batch skips the runs already done with the same parameters and re-runs the rest, including
the one a killed batch left ``running`` (its partial notebook is overwritten). Several GPUs are the
notebook's business (e.g. notebook 02 starts torchrun for its ``gpus`` parameter); runs never overlap.

From Python::

    result = run_batch("notebooks/02_training.ipynb", grid={"variant": ["a", "d"]}, batch="ablation",
                       common={"preset": "cpu-small", "max_steps": 200}, record="02_training")
    result.table()       # one row per run: run, state, seconds, the varying parameters, the metrics
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

from dhmlib.configs import split_top_level
from dhmlib.lab.record import HEADLESS_ENV, read_recorded
from dhmlib.lab.results import BatchResult, CellError, RunResult, write_atomic
from dhmlib.lab.series import (KERNEL_ARGUMENTS, CellProgress, NotebookParameterError, declared_parameters,
                               parameter_type_errors, register_progress_engine)
from dhmlib.paths import notebooks_dir, output_dir, process_alive
from dhmlib.progress import PREFIX, LineRelay, format_seconds

DEFAULT_NOTEBOOK = "02_training.ipynb"
#: a run or batch name: letters, digits and ``._+-``; starts with a letter or digit
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,119}$")
_RESERVED = {"summary"}
FILE_KEYS = ("batch", "notebook", "common", "grid", "runs")


class BatchSpecError(ValueError):
    """A malformed batch: a bad file, grid, run list or name (names the file and key)."""


class BatchBusyError(RuntimeError):
    """Another live process is running a run of this batch."""


# ----------------------------------------------------------------- the batch and its runs
@dataclass(frozen=True)
class BatchSpec:
    """What to run: ``common`` parameters for every run, a ``grid`` (name → list of values; every
    combination is a run) and listed ``runs`` (a list of parameter dicts, or name → parameters).
    Without grid and runs the batch is one run of ``common``."""

    common: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    runs: list | dict = field(default_factory=list)
    batch: str | None = None
    notebook: str | None = None

    @classmethod
    def from_file(cls, path) -> "BatchSpec":
        """Read a YAML (or JSON) file with the keys ``batch``, ``notebook``, ``common``, ``grid``, ``runs``.

        Raises:
            BatchSpecError: not YAML/JSON, not a mapping, an unknown key, or a value of the wrong kind
                (the message names the file, and the line for syntax errors).
        """
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            import yaml  # YAML optional: JSON otherwise
        except ImportError:       # JSON only then
            yaml = None
        try:
            data = yaml.safe_load(text) if yaml is not None else json.loads(text)
        except json.JSONDecodeError as e:
            raise BatchSpecError(f"{path}:{e.lineno}: not JSON ({e.msg}; YAML needs pyyaml, not installed)") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or str(e)
            raise BatchSpecError(f"{where}: not valid YAML ({problem})") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise BatchSpecError(f"{path}: expected a mapping with keys {', '.join(FILE_KEYS)}, "
                                 f"got {type(data).__name__}")
        unknown = [k for k in data if k not in FILE_KEYS]
        if unknown:
            raise BatchSpecError(f"{path}: unknown key {', '.join(map(repr, unknown))}; expected {', '.join(FILE_KEYS)}")
        for key, kinds in (("common", dict), ("grid", dict), ("runs", (list, dict))):
            if data.get(key) is not None and not isinstance(data[key], kinds):
                want = "a mapping" if kinds is dict else "a list or a mapping name → parameters"
                raise BatchSpecError(f"{path}: {key!r} must be {want}, got {type(data[key]).__name__}")
        for key in ("batch", "notebook"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise BatchSpecError(f"{path}: {key!r} must be a string, got {data[key]!r}")
        return cls(common=dict(data.get("common") or {}), grid=dict(data.get("grid") or {}),
                   runs=data.get("runs") or [], batch=data.get("batch"), notebook=data.get("notebook"))


@dataclass(frozen=True)
class RunSpec:
    """One run: its name, its own parameters (grid values or listed) and all it gets (common + own)."""

    name: str
    own: dict
    params: dict


def expand_grid(grid: Mapping[str, list]) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest:
    ``{"a": [1, 2], "b": ["x"]}`` → ``[{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]``. A scalar is a one-value list."""
    keys = list(grid)
    values = []
    for k in keys:
        v = grid[k]
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        if not v:
            raise BatchSpecError(f"grid {k!r}: no values")
        values.append(v)
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)] if keys else []


def _name_part(value) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (list, tuple)):
        text = "+".join(_name_part(v) for v in value)
    elif isinstance(value, dict):
        text = "+".join(f"{k}-{_name_part(v)}" for k, v in value.items())
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_.") or "_"


def _canonical(params: dict) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def run_name(own: dict, keys) -> str:
    """``key-value`` of ``keys`` (those present in ``own``) joined by ``_``, filesystem-safe; long names are
    cut and get a hash of the parameters: ``{"variant": "a", "seed": 1}`` → ``variant-a_seed-1``."""
    parts = [f"{_name_part(k)}-{_name_part(own[k])}" for k in keys if k in own]
    name = "_".join(parts) or "run"
    if len(name) > 100:
        name = name[:90].rstrip("_.-") + "-" + hashlib.sha1(_canonical(own).encode()).hexdigest()[:8]
    return name


def check_name(name: str, what: str = "run name") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name in _RESERVED or name.endswith(".status"):
        raise BatchSpecError(f"{what} {name!r}: expected letters, digits and ._+- (starting with a letter or digit, "
                             f"at most 120 characters, not 'summary' or '*.status')")
    return name


def plan_runs(runs: list | dict | None = None, grid: Mapping | None = None, common: Mapping | None = None) -> list[RunSpec]:
    """The runs of a batch, in order: the listed ``runs``, then the grid's combinations.

    A run's parameters are ``common`` updated with its own. Runs listed as a dict (name → parameters)
    or as ``(name, parameters)`` pairs keep their names; the others are named by :func:`run_name` after their own parameters whose
    values differ between runs (all their own parameters when none differ). Names that collide get
    ``-2``, ``-3``. Raises :class:`BatchSpecError` for two runs with the same parameters, a bad name,
    or parameters that are not JSON values.
    """
    common = dict(common or {})
    named: list[tuple[str | None, dict]] = []
    if isinstance(runs, dict):
        for name, own in runs.items():
            if own is not None and not isinstance(own, dict):
                raise BatchSpecError(f"run {name!r}: expected a mapping of parameters, got {own!r}")
            named.append((check_name(str(name)), dict(own or {})))
    else:
        for i, own in enumerate(runs or []):
            name = None
            if isinstance(own, tuple) and len(own) == 2:      # (name or None, parameters)
                name, own = own
                name = None if name is None else check_name(str(name))
            if not isinstance(own, dict):
                raise BatchSpecError(f"runs[{i}]: expected a mapping of parameters, got {own!r}")
            named.append((name, dict(own)))
    named += [(None, own) for own in expand_grid(grid or {})]
    if not named:
        named = [(None, {})]
    for name, own in named:
        try:
            json.dumps({**common, **own}, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise BatchSpecError(f"run {name or own}: parameters must be JSON values ({e})") from None

    keys = list(dict.fromkeys(k for _, own in named for k in own))
    varying = [k for k in keys if len({_canonical({"v": own.get(k, "\0absent")}) for _, own in named}) > 1]
    specs, seen_params, seen_names = [], {}, set()
    for i, (name, own) in enumerate(named):
        params = {**common, **own}
        canon = _canonical(params)
        if canon in seen_params:
            raise BatchSpecError(f"runs {seen_params[canon]} and {name or own} have the same parameters {params}")
        seen_params[canon] = name or own
        if name is None:
            base = run_name(own, [k for k in varying if k in own] or list(own))
            name, n = base, 1
            while name in seen_names or name in (nm for nm, _ in named):
                n += 1
                name = f"{base}-{n}"
        if name in seen_names:
            raise BatchSpecError(f"run name {name!r} given twice")
        seen_names.add(name)
        specs.append(RunSpec(name, own, params))
    return specs


def _write_json(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _alive_elsewhere(status: dict) -> bool:
    """Whether the process that wrote a ``running`` status still runs (same host and boot)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or status.get("boot_id") != _boot_id() or not isinstance(pid, int):
        return False
    return pid != os.getpid() and process_alive(pid)


@contextlib.contextmanager
def _headless():
    before = os.environ.get(HEADLESS_ENV)
    os.environ[HEADLESS_ENV] = "1"      # inherited by the kernels papermill starts
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(HEADLESS_ENV, None)
        else:
            os.environ[HEADLESS_ENV] = before


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _source_index(executed: Path, index: int) -> int:
    """Papermill's cell index (its executed notebook before the error banners) → the source notebook's:
    the injected-parameters cell before it is not counted."""
    import nbformat  # papermill/nbformat: the lab extra, imported when a notebook runs

    try:
        cells = nbformat.read(str(executed), as_version=4).cells
    except (OSError, ValueError):
        return index
    cells = [c for c in cells if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])]
    return index - sum("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in cells[:index])


def _first_line(source: str) -> str:
    line = next((ln for ln in (source or "").splitlines() if ln.strip()), "")
    return line if len(line) <= 80 else line[:77] + "..."


# ----------------------------------------------------------------- running
def run_batch(notebook=None, runs: list | dict | None = None, *, grid: Mapping | None = None,
              common: Mapping | None = None, batch: str | None = None, output_root=None,
              on_progress: Callable[[str], None] | None = print, smoke: bool = False, gpus: str | None = None,
              record: str | None = None, rerun: bool = False, dry_run: bool = False,
              kernel: str | None = None, cwd=None) -> BatchResult:
    """Execute ``notebook`` once per run with papermill; see the module docstring for the files.

    Args:
        notebook: the notebook (default: the project's ``notebooks/02_training.ipynb``).
        runs: a list of parameter dicts (named after the parameters that vary), or name → parameters.
        grid: name → list of values; every combination is a run (after the listed ones).
        common: parameters of every run (a run's own override them).
        batch: the batch's name (default: the notebook's stem); its files go to
            ``<output_root>/notebooks/<batch>/``.
        output_root: default :func:`dhmlib.paths.output_dir`. A notebook declaring ``output_root`` gets
            ``<output_root>/batch/<batch>/<run>/`` unless the run sets it.
        on_progress: receives a line as each run starts and ends; None for silence.
        smoke: set ``smoke = True`` in every run (the notebook must declare it).
        gpus: passed as the ``gpus`` parameter of every run (the notebook must declare it).
        record: the name of the record (:func:`dhmlib.lab.record.record`) that holds a run's metrics; a run
            whose notebook does not record it fails. None: every record, as name → data.
        rerun: run every run again, done or not.
        dry_run: run nothing; the result has each run's state from its files (``pending`` if none,
            ``running`` while another live process runs it).
        kernel: Jupyter kernel name (default: the notebook's).
        cwd: the kernels' working folder (default: this process's).
    Returns:
        A :class:`BatchResult` (every run's state, parameters, metrics and paths; ``table()``). The summary
        files are rewritten after each run.
    Raises:
        NotebookParameterError: a parameter the notebook's ``parameters`` cell does not declare (nothing ran).
        BatchSpecError: a bad grid, run list or name (nothing ran).
        BatchBusyError: another live process is running a run of this batch.
        FileNotFoundError: no such notebook.
    """

    notebook = Path(notebook) if notebook else notebooks_dir() / DEFAULT_NOTEBOOK
    if not notebook.is_file():
        raise FileNotFoundError(f"{notebook}: notebook not found")
    batch = check_name(batch or notebook.stem, "batch name")
    common = dict(common or {})
    if smoke:
        common["smoke"] = True
    if gpus is not None:
        common["gpus"] = gpus
    specs = plan_runs(runs, grid, common)
    declared = declared_parameters(notebook)
    for spec in specs:
        unknown = [k for k in spec.params if k not in declared]
        if unknown:
            raise NotebookParameterError(
                f"parameter {', '.join(map(repr, unknown))} (run {spec.name}) is not declared by {notebook.name} "
                f"(its parameters: {', '.join(declared) or '(none)'})")
        bad = parameter_type_errors(declared, spec.params)
        if bad:
            raise NotebookParameterError(f"run {spec.name}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1
                                                                         else ""))
    root = Path(output_root) if output_root else output_dir()
    folder = root / "notebooks" / batch
    say = progress_sink(on_progress)
    results = [_result(spec, folder, root / "batch" / batch / spec.name if "output_root" in declared
                       and "output_root" not in spec.params else None) for spec in specs]
    for res in results:
        status = _read_json(res.status_file) or {}
        if status.get("state") == "running" and _alive_elsewhere(status):
            if dry_run:
                res.state = "running"
                continue
            raise BatchBusyError(f"{res.status_file}: run {res.name} is being run by process {status['pid']} on "
                                 f"this machine; wait for it (or end it, or delete the file if that is not so)")
        _load_previous(res, status, record)
    varying = [k for k in dict.fromkeys(k for s in specs for k in s.params)
               if len({_canonical({"v": s.params.get(k, "\0")}) for s in specs}) > 1]
    result = BatchResult(batch, notebook, folder, results, varying)
    if dry_run:
        return result
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n = len(results)
    with _headless():
        for i, res in enumerate(results, 1):
            tag = f"[{i}/{n}] {res.name}"
            if res.state == "done" and not rerun:
                res.skipped = True
                say(f"{tag} ... done earlier in {format_seconds(res.seconds or 0)}, skipped")
                continue
            own = ", ".join(f"{k}={v!r}" for k, v in res.params.items() if k in varying)
            say(f"{tag} ... running{f' ({own})' if own else ''}")
            _run_one(res, notebook, record, kernel, cwd, folder, say=say if on_progress else None, tag=tag)
            if res.state == "done":
                say(f"{tag} ... done in {format_seconds(res.seconds)}")
            else:
                say(f"{tag} ... FAILED at {res.error}\n    {notebook.name} cell {res.error.cell_index} "
                    f"(In [{res.error.execution_count}] in {res.notebook}): {res.error.source}"
                    if res.error.cell_index is not None else f"{tag} ... FAILED: {res.error}")
            result.write_summary()
    paths = result.write_summary()
    counts = {s: sum(r.state == s for r in results) for s in ("done", "failed")}
    skipped = sum(r.skipped for r in results)
    say(f"batch {batch}: {counts['done']} done ({skipped} earlier), {counts['failed']} failed, "
        f"{format_seconds(time.perf_counter() - t0)} → {paths['md']}")
    return result


def progress_sink(on_progress: Callable[[str], None] | None) -> Callable[[str], None]:
    """Where a batch's lines go: ``on_progress``; inside a kernel that nobody watches (a batch run from a
    notebook that ``dhm notebooks`` or ``dhm batch`` executes, e.g. notebook 03) each line is marked as a
    :mod:`dhmlib.progress` line, so that the outer runner passes it on."""
    if on_progress is None:
        return lambda msg: None
    if os.environ.get(HEADLESS_ENV) == "1":

        return lambda msg: on_progress(PREFIX + msg)
    return on_progress


def _result(spec: RunSpec, folder: Path, run_root: Path | None) -> RunResult:
    return RunResult(name=spec.name, params=dict(spec.params), state="pending",
                     notebook=folder / f"{spec.name}.ipynb", status_file=folder / f"{spec.name}.status.json",
                     metrics_file=folder / f"{spec.name}.json", output_root=run_root)


def _load_previous(res: RunResult, status: dict, record: str | None) -> None:
    """Take over a run's state from its files when they belong to the same parameters."""
    if not status or status.get("params") is None or _canonical(status["params"]) != _canonical(res.params):
        return
    state = status.get("state")
    if state == "done":
        saved = _read_json(res.metrics_file)
        if saved is None or not res.notebook.is_file() or "records" not in saved:
            return                                  # incomplete: run it again
        metrics = _pick(saved["records"], record)
        if metrics is None:
            return
        res.state, res.seconds, res.metrics = "done", status.get("seconds"), metrics
    elif state in ("failed", "interrupted", "running"):
        res.state = "failed" if state == "failed" else "pending"
        res.seconds = status.get("seconds")
        err = status.get("error")
        if isinstance(err, dict):
            res.error = CellError(err.get("cell_index"), err.get("source", ""), err.get("ename", ""),
                                  err.get("evalue", ""), err.get("execution_count"))


def _pick(records: dict, record: str | None) -> dict | None:
    if record is None:
        return records
    data = records.get(record)
    return data if isinstance(data, dict) else ({"value": data} if data is not None else None)


def _run_one(res: RunResult, notebook: Path, record: str | None, kernel, cwd, folder: Path,
             say: Callable[[str], None] | None = None, tag: str = "", heartbeat: float | None = 30.0) -> None:
    """Run one notebook; with ``say``: a line as each code cell starts, every ``heartbeat`` s inside a long cell,
    and the kernel's progress lines (:mod:`dhmlib.progress`), each starting with ``tag``."""
    import nbformat     # papermill and nbformat: the lab extra, deferred so that planning a batch needs neither
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = dict(res.params)
    if res.output_root is not None:
        res.output_root.mkdir(parents=True, exist_ok=True)
        params["output_root"] = str(res.output_root.resolve())
    status = {"run": res.name, "state": "running", "params": res.params, "notebook_parameters": params,
              "source": str(notebook), "notebook": str(res.notebook), "started": _now(), "pid": os.getpid(),
              "host": socket.gethostname(), "boot_id": _boot_id()}
    _write_json(res.status_file, status)
    res.metrics, res.error = {}, None
    t = time.perf_counter()
    watch = {}
    if say is not None:
        cells = sum(c.cell_type == "code" for c in nbformat.read(notebook, as_version=4).cells) + bool(params)
        relay = LineRelay(say, tag)
        watch = {"engine_name": register_progress_engine(), "stdout_file": relay, "stderr_file": relay,
                 "dhm_progress": CellProgress(tag, cells, say, heartbeat, prefix="")}
    try:
        papermill.execute_notebook(str(notebook), str(res.notebook), parameters=params, kernel_name=kernel,
                                   cwd=str(cwd or Path.cwd()), progress_bar=False, log_output=False,
                                   extra_arguments=list(KERNEL_ARGUMENTS), **watch)
        records = read_recorded(res.notebook)
        metrics = _pick(records, record)
        if metrics is None:
            res.error = CellError(None, "", "MissingRecord",
                                  f"the notebook ran but recorded no {record!r} (dhmlib.lab.record.record); "
                                  f"records: {', '.join(records) or '(none)'}")
        else:
            res.metrics = metrics
            _write_json(res.metrics_file, {"run": res.name, "batch": folder.name, "params": res.params,
                                           "notebook": str(res.notebook), "output_root": params.get("output_root"),
                                           "records": records})
    except PapermillExecutionError as e:
        res.error = CellError(_source_index(res.notebook, e.cell_index), _first_line(e.source), e.ename,
                              str(e.evalue), e.exec_count)
    except KeyboardInterrupt:
        res.seconds = time.perf_counter() - t
        _write_json(res.status_file, {**status, "state": "interrupted", "finished": _now(), "seconds": res.seconds})
        res.state = "interrupted"
        raise
    except Exception as e:      # the kernel died, could not start, ...: the run failed, the batch goes on
        res.error = CellError(None, "", type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
    finally:
        if "dhm_progress" in watch:
            watch["dhm_progress"].close()
    res.seconds = time.perf_counter() - t
    res.state = "done" if res.error is None else "failed"
    _write_json(res.status_file, {**status, "state": res.state, "finished": _now(), "seconds": res.seconds,
                                  "error": None if res.error is None else res.error.to_dict()})


# ----------------------------------------------------------------- command-line values
def parse_run(text: str, parse_value: Callable[[str], object]) -> tuple[str | None, dict]:
    """``[NAME:]k=v,k=v`` → (NAME or None, parameters); values through ``parse_value``, commas inside
    brackets or quotes kept (``overrides="lr=1e-3,epochs=2"``)."""
    name = None
    m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._+-]*):(?!//)(.*)$", text)
    if m and "=" not in m.group(1):
        name, text = m.group(1), m.group(2)
    params = {}
    for part in split_top_level(text):
        if not part:
            continue
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise BatchSpecError(f"run {text!r}: expected NAME:key=value,key=value, got {part!r}")
        if key in params:
            raise BatchSpecError(f"run {text!r}: {key!r} given twice")
        params[key] = parse_value(value.strip())
    return name, params

