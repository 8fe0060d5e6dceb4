"""What a training run writes as it goes: ``log/train.log``, ``log/metrics.jsonl``, TensorBoard scalars (rank 0),
and the wall time of each part of a step."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm


def _summary_writer(folder: Path, **kwargs):
    """A TensorBoard ``SummaryWriter`` on ``folder``; deferred: TensorBoard is optional (the dev extra)."""
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(folder), **kwargs)


class RunLog:
    """Rank-0 text log (train.log), metrics (metrics.jsonl), TensorBoard; no-ops elsewhere."""

    def __init__(self, output_root: Path, active: bool, echo: bool, tensorboard: bool = True):
        self.active, self.echo = active, echo
        self.tb = None
        self.records: list[dict] = []
        if not active:
            return
        self.dir = output_root / "log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.text = open(self.dir / "train.log", "a", encoding="utf-8")
        self.metrics = open(self.dir / "metrics.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                self.tb = _summary_writer(self.dir / "tensorboard")
            except Exception:   # TensorBoard not installed: scalars stay in metrics.jsonl
                self.tb = None

    def __call__(self, msg: str) -> None:
        if not self.active:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}"
        self.text.write(line + "\n")
        self.text.flush()
        if self.echo:
            tqdm.write(line)

    def drop_after(self, step: int) -> int:
        """Remove the metrics records after ``step`` (those of a run interrupted after its last snapshot, which a
        resumed run writes again) from metrics.jsonl and TensorBoard; returns how many were removed."""
        if not self.active:
            return 0
        self.metrics.close()
        path = self.dir / "metrics.jsonl"
        kept, dropped = [], 0
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:        # a line cut short by a kill
                dropped += 1
                continue
            if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > step:
                dropped += 1
            else:
                kept.append(line)
        if dropped:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
            tmp.replace(path)
        self.metrics = open(path, "a", encoding="utf-8")
        if self.tb is not None:                 # TensorBoard drops its events from step + 1 on
            self.tb.close()
            self.tb = _summary_writer(self.dir / "tensorboard", purge_step=step + 1)
        return dropped

    def record(self, rec: dict) -> None:
        if not self.active:
            return
        self.records.append(rec)
        self.metrics.write(json.dumps(rec) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            prefix = {"epoch": "epoch/", "probe": "probe/"}.get(rec.get("kind"), "train/")
            x = rec["epoch"] if rec.get("kind") == "epoch" else rec["step"]
            for k, v in rec.items():
                if k not in ("kind", "step", "epoch") and isinstance(v, (int, float)):
                    self.tb.add_scalar(prefix + k, v, x)

    def close(self) -> None:
        if self.active:
            self.text.close()
            self.metrics.close()
            if self.tb is not None:
                self.tb.close()


class StepClock:
    """Wall time of the parts of a step (ms), synchronising CUDA so that each part is its own."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t = time.perf_counter()
        self.parts: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + (now - self.t) * 1000
        self.t = now

    def take(self) -> dict[str, float]:
        parts, self.parts = self.parts, {}
        return parts
