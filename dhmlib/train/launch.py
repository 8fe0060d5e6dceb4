"""Training command lines: the one builder of ``dhm train``'s arguments, and training in a followed subprocess.

:func:`train_args` writes the arguments of ``dhm train`` for given settings. ``dhm train --gpu/--nproc``
starts ``torchrun … -m dhmlib.cli train ARGS`` with them (every rank runs ``dhm train`` in its process), and
a notebook, which cannot host torchrun's workers itself, starts ``dhm train --gpu 0-3`` (or ``--nproc N``) in
a subprocess and follows it: :func:`train_command` turns the configs into that command line (every field that
differs from the ``paper`` preset as a ``--set``, so the workers build exactly these configs), and
:func:`run_training` runs it, passes each new record of ``output/log/metrics.jsonl`` to ``on_record`` (the
same hook as :func:`dhmlib.train.train`) and the workers' output lines to ``log``, and returns when it ends.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dhmlib.network.model import ModelConfig
from dhmlib.train.config import PRESETS, TrainConfig
from dhmlib.train.distributed import command_line, parse_gpus

BASE_PRESET = "paper"

#: what a training command runs: ``python -m dhmlib.cli train …`` is ``dhm train …``
DHM_TRAIN = ("-m", "dhmlib.cli", "train")


def train_args(data_root, output_root, *, preset: str | None = None, sets=(), epochs: int | None = None,
               resume: bool = False, time_limit_s: float | None = None, max_steps: int | None = None,
               probe_every: int | None = None, device: str | None = None, progress: bool = True) -> list[str]:
    """The arguments of ``dhm train`` (after ``train``) for these settings, launcher flags left out.

    ``sets``: ``key=value`` strings (``--set``, in order). The one place a training command line is written:
    ``dhm train --gpu/--nproc`` passes these to every torchrun rank, :func:`train_command` to ``dhm train``.
    """
    out = [*(["--preset", preset] if preset else []), "--data", str(data_root), "--output", str(output_root)]
    if epochs is not None:
        out += ["--epochs", str(epochs)]
    for kv in sets:
        out += ["--set", kv]
    if resume:
        out.append("--continue")
    if time_limit_s is not None:
        out += ["--time-limit", repr(float(time_limit_s))]
    if max_steps is not None:
        out += ["--max-steps", str(max_steps)]
    if probe_every is not None:
        out += ["--probe-every", str(probe_every)]
    if device is not None:
        out += ["--device", device]
    if not progress:
        out.append("--no-progress")
    return out


def config_sets(train_config: TrainConfig, model_config: ModelConfig, base: str = BASE_PRESET) -> list[str]:
    """``key=value`` strings (``--set``) that turn preset ``base`` into these configs (JSON values)."""
    tb, mb = PRESETS[base]
    out = [f"{k}={json.dumps(v)}" for k, v in train_config.to_dict().items() if tb.to_dict()[k] != v]
    out += [f"model.{k}={json.dumps(v)}" for k, v in model_config.to_dict().items() if mb.to_dict()[k] != v]
    return out


def train_command(train_config: TrainConfig, model_config: ModelConfig, data_root, output_root, *,
                  gpus: str | list[int] | None = None, nproc: int | None = None,
                  time_limit_s: float | None = None) -> tuple[list[str], dict]:
    """(argv, env) of ``dhm train --gpu IDS`` / ``--nproc N`` for these configs.

    Args:
        gpus: GPU ids (``"0-3"``, ``"0,2"`` or a list): one process per GPU.
        nproc: process count without ``gpus`` (CPU processes, gloo).
        time_limit_s: ``--time-limit``.
    Raises:
        ValueError: bad ``gpus`` text (the token is named), or neither ``gpus`` nor ``nproc``.
    """
    ids = parse_gpus(gpus) if isinstance(gpus, str) else (list(gpus) if gpus else None)
    if ids is None and (nproc is None or int(nproc) < 1):
        raise ValueError(f"train_command: give gpus or nproc >= 1, got gpus={gpus!r}, nproc={nproc!r}")
    argv = [sys.executable, *DHM_TRAIN, *train_args(data_root, output_root, preset=BASE_PRESET,
                                                    sets=config_sets(train_config, model_config),
                                                    time_limit_s=time_limit_s, progress=False)]
    argv += ["--gpu", ",".join(str(i) for i in ids)] if ids else ["--nproc", str(int(nproc))]
    return argv, dict(os.environ)


@dataclass
class LaunchResult:
    """A finished subprocess run: exit status, the metrics records it wrote, its output lines, seconds."""

    command: str
    returncode: int
    records: list[dict] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self, lines: int = 20) -> "LaunchResult":
        """Self when the run succeeded, else RuntimeError with the exit status and its last output lines."""
        if not self.ok:
            tail = "\n".join(self.output[-lines:])
            raise RuntimeError(f"training exited with status {self.returncode}: {self.command}\n{tail}")
        return self


def _new_records(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete JSON lines of ``path`` after byte ``offset``, and the offset after them."""
    if not path.is_file():
        return [], offset
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1     # a half-written last line waits for the next poll
    recs = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
    return recs, offset + end


def run_training(argv: list[str], env: dict | None, output_root, *, on_record: Callable[[dict], None] | None = None,
                 log: Callable[[str], None] | None = print, poll_s: float = 1.0) -> LaunchResult:
    """Run ``argv`` and follow ``output_root/log/metrics.jsonl`` until it exits.

    Records already in the file when it starts (earlier runs: the file is appended to) are skipped.
    ``log`` gets the command line, then each output line of the subprocess (stdout and stderr).
    """
    say = log or (lambda s: None)
    metrics = Path(output_root) / "log" / "metrics.jsonl"
    offset = metrics.stat().st_size if metrics.is_file() else 0
    line = command_line(argv, env)
    say(f"$ {line}")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    output: list[str] = []
    lines: queue.SimpleQueue = queue.SimpleQueue()

    def pump():     # reads the pipe; the lines are passed on in the calling thread (a notebook cell's output)
        for text in proc.stdout:
            lines.put(text.rstrip("\n"))

    def drain():
        while not lines.empty():
            output.append(lines.get())
            say(output[-1])

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    records: list[dict] = []
    try:
        while True:
            done = proc.poll() is not None
            if done:
                reader.join(5)     # the rest of the output
            drain()
            new, offset = _new_records(metrics, offset)
            for r in new:
                records.append(r)
                if on_record is not None:
                    on_record(r)
            if done:
                break
            time.sleep(poll_s)
    except BaseException:       # interrupted in the notebook: stop the workers too
        proc.terminate()
        proc.wait(30)
        raise
    return LaunchResult(line, proc.returncode, records, output, time.perf_counter() - t0)
