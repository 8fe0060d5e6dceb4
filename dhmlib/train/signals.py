"""Ctrl-C and SIGTERM during training: the loop ends after the step it is in, with a snapshot."""
from __future__ import annotations

import signal
import threading
from pathlib import Path


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM after a snapshot of the last finished step was written
    (``snapshot``; ``--continue`` / ``train(resume=True)`` resumes from it). A ``KeyboardInterrupt``."""

    def __init__(self, signal_name: str, step: int, snapshot: Path | None):
        self.signal_name, self.step, self.snapshot = signal_name, step, snapshot
        super().__init__(f"{signal_name} at step {step}; snapshot {snapshot}")


class StopSignals:
    """While active (main thread only): SIGINT and SIGTERM set ``received`` (the signal's name) instead of
    stopping the process at once, so that the loop ends after the step it is in and writes a snapshot; a
    second signal raises KeyboardInterrupt at once. The previous handlers come back on exit."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.received: str | None = None
        self.previous: dict = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                if hasattr(signal, name):
                    sig = getattr(signal, name)
                    self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        return False
