"""The capture's staging folder: ``OUT/.synth-partial-<pid>/``, locked while its writer runs.

:func:`write_capture` writes everything there and moves it into place at the end, so a
reader never sees half a dataset. A writer that is killed (SIGKILL, power loss) cannot
remove its folder; the next writer into the same ``OUT`` finds it, sees that no process
holds its lock, and removes it (:func:`remove_stale`). The lock is an ``flock`` on
``.lock`` inside the folder, released by the kernel when its process dies, so a reused
process id cannot make a dead folder look alive.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: fall back to asking whether the process id is alive
    fcntl = None

PREFIX = ".synth-partial-"
LOCK = ".lock"


class StagingBusyError(FileExistsError):
    """Another live writer is staging into the same folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _folder_size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def is_stale(folder: Path) -> bool:
    """Whether no running process holds ``folder``'s lock (or, without a lock file, its pid is dead)."""
    lock = folder / LOCK
    if fcntl is not None and lock.is_file():
        with open(lock, "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(fh, fcntl.LOCK_UN)
            return True
    try:
        pid = int(folder.name[len(PREFIX):])
    except ValueError:
        return True
    return pid != os.getpid() and not _pid_alive(pid)


def remove_stale(root, log: Callable[[str], None] | None = print) -> list[Path]:
    """Remove the staging folders under ``root`` left by writers that are no longer running.

    Raises:
        StagingBusyError: a live writer is staging into ``root``.
    Returns:
        the removed folders (each reported through ``log`` with its size).
    """
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    for folder in sorted(root.glob(PREFIX + "*")):
        if not folder.is_dir() or folder.name == f"{PREFIX}{os.getpid()}":
            continue
        if not is_stale(folder):
            raise StagingBusyError(f"{folder}: another dhm synth (pid {folder.name[len(PREFIX):]}) is writing "
                                   f"into {root}; wait for it, or stop it and run again")
        size = _folder_size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        if log is not None:
            log(f"removed {folder}: left by an interrupted capture ({size / 1e6:.0f} MB; its process is gone)")
    return removed


@contextmanager
def staging_folder(root) -> Iterator[Path]:
    """``root/.synth-partial-<pid>/``, empty and locked for the duration; removed on exit."""
    tmp = Path(root) / f"{PREFIX}{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    fh = open(tmp / LOCK, "w")
    try:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield tmp
    finally:
        fh.close()
        shutil.rmtree(tmp, ignore_errors=True)
