"""A batch's outcome: each run's result (status, the failing cell, its recorded metrics) and the table of all."""
from __future__ import annotations

import csv
import os
import io
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CellError:
    """Where a run failed: the failing cell's index in the source notebook (0-based, markdown cells
    counted, as ``nbformat.read(notebook).cells[cell_index]``), its execution count (``In [n]`` in the
    executed copy), its first source line, and the exception. ``cell_index`` is None when no cell
    failed (the kernel died, a missing record)."""

    cell_index: int | None
    source: str
    ename: str
    evalue: str
    execution_count: int | None = None

    def __str__(self) -> str:
        where = f"cell {self.cell_index}: " if self.cell_index is not None else ""
        return f"{where}{self.ename}: {self.evalue}"

    def to_dict(self) -> dict:
        return {"cell_index": self.cell_index, "execution_count": self.execution_count, "source": self.source,
                "ename": self.ename, "evalue": self.evalue}


@dataclass
class RunResult:
    """One run of a batch. ``state``: ``done``, ``failed``, ``interrupted`` or ``pending`` (not reached;
    ``running`` in a dry run while another process runs it);
    ``skipped``: done by an earlier call, not run again. ``metrics``: name → data of the notebook's
    records (``record`` given: that record's data)."""

    name: str
    params: dict
    state: str
    notebook: Path
    status_file: Path
    metrics_file: Path
    output_root: Path | None = None
    seconds: float | None = None
    metrics: dict = field(default_factory=dict)
    error: CellError | None = None
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.state == "done"


#: the columns summary.md shows when the runs recorded them (notebook 02's record, flattened; any record prefix)
KEY_METRICS = ("held_out.vertex_mean_mm", "held_out.vertex_p95_mm", "held_out.vertex_near_flexed_mean_mm",
               "held_out.joint_error_mm", "held_out.depth_error_mm", "lbs_baseline.vertex_mean_mm",
               "training.steps", "training.seconds", "eval_seconds")
#: at most this many metric columns in summary.md (the rest: summary.csv, summary.json)
MAX_SUMMARY_METRICS = 9


@dataclass
class BatchResult:
    """All runs of a batch, in order; ``folder`` holds the executed notebooks and the summary."""

    batch: str
    notebook: Path
    folder: Path
    runs: list[RunResult]
    varying: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.runs)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.runs if r.state == "failed"]

    def __getitem__(self, name: str) -> RunResult:
        for r in self.runs:
            if r.name == name:
                return r
        raise KeyError(f"no run {name!r} in batch {self.batch!r} (runs: {', '.join(r.name for r in self.runs)})")

    def table(self) -> list[dict]:
        """One row per run: ``run``, ``state``, ``seconds``, the parameters that vary between runs, then
        the metrics flattened to dotted keys (``held_out.vertex_mean_mm``; a metric whose key is already a
        column gets the prefix ``metrics.``)."""
        rows = []
        for r in self.runs:
            row = {"run": r.name, "state": r.state, "seconds": None if r.seconds is None else round(r.seconds, 2)}
            row.update({k: r.params.get(k) for k in self.varying})
            for k, v in flatten(r.metrics).items():
                row[f"metrics.{k}" if k in row else k] = v
            rows.append(row)
        return rows

    def columns(self) -> list[str]:
        return list(dict.fromkeys(k for row in self.table() for k in row))

    def markdown(self, columns: list[str] | None = None, max_metrics: int = MAX_SUMMARY_METRICS) -> str:
        """A markdown table: by default the run, state, time, varying parameters and the key metrics
        (:data:`KEY_METRICS`, under any record name) when the runs have them, else the numeric metrics that
        differ between runs (every numeric metric for a single run), at most ``max_metrics``; a last line
        says how many columns only ``summary.csv`` / ``summary.json`` hold."""
        rows = self.table()
        hidden = 0
        if columns is None:
            fixed = ["run", "state", "seconds", *self.varying]
            numeric = [c for c in self.columns() if c not in fixed
                       and all(_is_number(row.get(c)) or row.get(c) is None for row in rows)
                       and any(_is_number(row.get(c)) for row in rows)]
            key = [c for k in KEY_METRICS for c in numeric if c == k or c.endswith("." + k)]
            if key:
                numeric = list(dict.fromkeys(key))
            elif len([r for r in rows if r["state"] == "done"]) > 1:
                numeric = [c for c in numeric if len({json.dumps(r.get(c)) for r in rows if r["state"] == "done"}) > 1]
            columns = fixed + numeric[:max_metrics]
            hidden = len(self.columns()) - len(columns)
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        for row in rows:
            lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
        if hidden > 0:
            lines += ["", f"{hidden} more column(s) in summary.csv and summary.json."]
        return "\n".join(lines) + "\n"

    def write_summary(self) -> dict[str, Path]:
        """``summary.json`` (the rows, every column), ``summary.csv`` and ``summary.md`` in ``folder``."""
        rows = self.table()
        cols = self.columns()
        paths = {ext: self.folder / f"summary.{ext}" for ext in ("json", "csv", "md")}
        write_atomic(paths["json"], json.dumps({
            "batch": self.batch, "notebook": str(self.notebook), "varying": self.varying, "columns": cols,
            "runs": rows}, indent=2))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
                        for k, v in row.items()})
        write_atomic(paths["csv"], buf.getvalue())
        write_atomic(paths["md"], f"# batch {self.batch}: {self.notebook.name}\n\n" + self.markdown())
        return paths


def flatten(data, prefix: str = "") -> dict:
    """Nested dicts as dotted keys: ``{"a": {"b": 1}, "c": [1, 2]}`` → ``{"a.b": 1, "c": [1, 2]}``."""
    out = {}
    if isinstance(data, dict):
        for k, v in data.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict) and v:
                out.update(flatten(v, key))
            else:
                out[key] = v
    elif prefix:
        out[prefix] = data
    return out


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    text = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return text.replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------- files


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
