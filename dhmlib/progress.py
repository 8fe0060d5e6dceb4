"""Progress of long jobs with an ETA: a tqdm bar in a terminal, plain lines everywhere else.

``with Progress("evaluation · fit (joints)", total=300, unit="steps") as p: … p.update()``

- in a terminal (``stream.isatty()``): a tqdm bar (rate, elapsed, ETA) on ``stream`` (stderr);
- otherwise (papermill, a notebook kernel, a log file): one line as the stage starts, one at most every
  ``every_s`` seconds while it runs (``k/total``, elapsed, ETA from the rate so far) and one as it ends,
  each starting with :data:`PREFIX` (a stage under :data:`QUIET_BELOW_S` without progress lines has no end
  line) so that ``dhm batch`` and ``dhm notebooks`` can pass them on from the
  kernel (:class:`LineRelay`).

``enabled=False`` makes it silent (the library's ``progress=False`` options).
"""
from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable

#: the start of every line-mode progress line
PREFIX = "[progress] "
#: seconds between line-mode progress lines (when not given)
EVERY_S = 15.0
#: a stage shorter than this, without progress lines, gets no "done" line in line mode
QUIET_BELOW_S = 1.0


def format_seconds(s: float) -> str:
    """``42 s``, ``2 min 05 s``, ``1 h 02 min``."""
    s = int(round(max(0.0, s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def eta_seconds(done: float, total: float | None, elapsed: float) -> float | None:
    """Seconds left at the rate so far (None without a total or before the first unit)."""
    if not total or done <= 0 or elapsed <= 0:
        return None
    return elapsed * max(total - done, 0) / done


class Progress:
    """One stage of a job (see the module docstring).

    Args:
        title: what runs (``"evaluation · measuring"``).
        total: units in all (None: unknown; no ETA).
        unit: their name (``"steps"``, ``"frames"``).
        enabled: False: no output at all.
        stream: where the bar or the lines go (default ``sys.stderr`` for the bar, the log for lines).
        log: receives each line in line mode (default: print to ``sys.stdout``, flushed).
        every_s: seconds between progress lines in line mode (None: :data:`EVERY_S`).
        bar: force the tqdm bar (True) or lines (False); None: a bar when ``stream`` is a terminal.
        clock: the time source (seconds).
    """

    def __init__(self, title: str, total: int | None = None, unit: str = "steps", *, enabled: bool = True,
                 stream=None, log: Callable[[str], None] | None = None, every_s: float | None = None,
                 bar: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.title, self.total, self.unit, self.enabled = title, total, unit, enabled
        self.every_s, self.clock = EVERY_S if every_s is None else every_s, clock
        self.stream = stream if stream is not None else sys.stderr
        self.log = log or (lambda line: print(line, flush=True))
        if bar is None:
            bar = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.said = False
        self.t0 = self.last = clock()
        self._bar = None
        if not enabled:
            return
        if bar:
            try:
                from tqdm import tqdm  # a bar only when asked for
                self._bar = tqdm(total=total, desc=title, unit=f" {unit}", file=self.stream, leave=False,
                                 dynamic_ncols=True)
            except ImportError:
                pass
        if self._bar is None:
            self.log(f"{PREFIX}{title}" + (f": {total} {unit}" if total else "") + " ...")

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            self.said = True
            self.log(self.line(now))

    def line(self, now: float | None = None) -> str:
        """``[progress] title: k/total unit, elapsed, ETA …``."""
        elapsed = (self.clock() if now is None else now) - self.t0
        left = eta_seconds(self.done, self.total, elapsed)
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        return (f"{PREFIX}{self.title}: {count} {self.unit}, {format_seconds(elapsed)}"
                + (f", ETA {format_seconds(left)}" if left is not None else ""))

    def close(self) -> float:
        """End the stage (a last line in line mode); returns its seconds."""
        elapsed = self.clock() - self.t0
        if self.enabled:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self.said or elapsed >= QUIET_BELOW_S:      # a quick stage: its start line says enough
                self.log(f"{PREFIX}{self.title}: done in {format_seconds(elapsed)}")
        self.enabled = False
        return elapsed

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


class Stages:
    """A job of several stages: ``stages.stage(name, total, unit)`` → :class:`Progress` titled
    ``"<job> · <name>"`` with the same options."""

    def __init__(self, job: str, **options):
        self.job, self.options = job, options

    def stage(self, name: str, total: int | None = None, unit: str = "steps") -> Progress:
        return Progress(f"{self.job} · {name}", total, unit, **self.options)


class LineRelay:
    """A file-like sink for a kernel's stdout/stderr (papermill's ``stdout_file``): passes each complete
    line that starts with :data:`PREFIX` to ``say`` as ``"<tag>: <line without the prefix>"``."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

    def __init__(self, say: Callable[[str], None], tag: str):
        self.say, self.tag, self.buffer = say, tag, ""

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            line = self._ANSI.sub("", line).strip("\r ")
            if line.startswith(PREFIX):
                self.say(f"{self.tag}: {line[len(PREFIX):]}")
        return len(text)

    def flush(self) -> None:
        pass
