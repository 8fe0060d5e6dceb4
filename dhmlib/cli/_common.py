"""What every ``dhm`` sub-command shares: the user-error exception, exit codes, argument types."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

#: exit codes of ``dhm``
OK = 0
PROBLEMS = 1   # the command ran and found problems (check-data) or a notebook failed
USAGE = 2      # bad arguments or input: nothing (or nothing useful) was done; argparse uses 2 too
INTERRUPTED = 130


class CLIError(Exception):
    """A user error: printed as ``dhm <cmd>: error: <message>`` without a traceback, exit status 2."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (when it has a meaningful one) and keeps the epilog's line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        hidden = (default is None or default is False or default is argparse.SUPPRESS
                  or (isinstance(default, (str, list, tuple)) and len(default) == 0))
        if ("%(default)" not in text and not hidden
                and (action.option_strings or action.nargs in ("?", "*"))):
            shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
            text += f" (default: {shown})"
        return text


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions reported as one ``dhm <cmd>: error: …`` line with exit status 2."""
    from dhmlib.hand.handmodel import HandModelError
    from dhmlib.network.snapshot import SnapshotError

    # OSError: missing, unreadable or unwritable files and folders named by the user
    return CLIError, HandModelError, SnapshotError, OSError


def _terminate(signum, frame):
    raise KeyboardInterrupt      # SIGTERM (kill, torchrun stopping its workers) ends like Ctrl-C: exit 130


def run_command(command: str, run, args) -> int:
    """``run(args)`` with dhm's error handling: user errors → one line and 2, Ctrl-C and SIGTERM → 130.
    Freed memory is kept for reuse first (:func:`dhmlib.memory.keep_freed_memory`)."""
    import signal
    import threading

    from dhmlib.memory import keep_freed_memory

    keep_freed_memory()

    previous = None
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGTERM"):
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        code = run(args)
    except user_errors() as e:
        print(f"dhm {command}: error: {e}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print(f"dhm {command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0 if code is None else int(code)


def warn(command: str, message: str) -> None:
    print(f"dhm {command}: warning: {message}", file=sys.stderr)


def note(command: str, message: str) -> None:
    print(f"dhm {command}: {message}", file=sys.stderr)


def int_at_least(lo: int, hi: int | None = None):
    """An argparse type: an integer in ``lo..hi``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f"at least {lo}" if hi is None else f"{lo}..{hi}"
            raise argparse.ArgumentTypeError(f"expected an integer {rng}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


SEED = int_at_least(0)


def device(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked against this machine."""
    import torch

    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}") from None
    if d.type == "cpu":
        return str(d)
    if d.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine (use cpu)")
        if d.index is not None and d.index >= n:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
        return str(d)
    if d.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine (use cpu)")
        return str(d)
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")


def writable_file(path, suffixes: tuple[str, ...] | None = None, what: str = "--out") -> Path:
    """Check before any work that ``path`` can be written: suffix, not a folder, parent creatable."""
    path = Path(path)
    if path.is_dir():
        raise CLIError(f"{what} {path}: is a folder; expected a file name")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise CLIError(f"{what} {path}: cannot write {path.suffix or 'a file without suffix'}; "
                       f"expected one of {', '.join(suffixes)}")
    writable_folder(path.parent, what, shown=path)
    return path


def writable_folder(folder, what: str = "--out", shown=None) -> Path:
    """Check that ``folder`` exists or can be created, and is writable; else ``CLIError`` in the one form
    ``--out X: Y is not writable`` (Y: X or the folder above it that exists).

    Writability is tried, not inferred from permission bits (root passes every ``os.access`` test, and
    read-only file systems, ``/proc`` or container mounts refuse anyway): a temporary file is created in
    the nearest existing folder and removed at once. Nothing else is created. ``shown``: the name the
    user gave (a file in ``folder``), for the message.
    """
    import os
    import tempfile

    folder = Path(folder)
    given = folder if shown is None else shown
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise CLIError(f"{what} {given}: {probe} is a file, not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".dhm-write-test-", dir=probe)
    except OSError:
        raise CLIError(f"{what} {given}: {probe} is not writable") from None
    os.close(fd)
    os.unlink(name)
    return folder


def snapshot_and_hand_model(args):
    """``(ckpt or None, HandModel)`` for ``--snapshot`` / ``--hand-model``: with a snapshot the hand model it
    was trained on (:func:`dhmlib.network.provenance.pick_hand_model`, saying which), else ``--hand-model`` or the
    default folder."""
    from dhmlib.hand.handmodel import HandModel, default_hand_model_dir

    if not args.snapshot:
        return None, HandModel.read(args.hand_model or default_hand_model_dir())
    from dhmlib.network.provenance import pick_hand_model
    from dhmlib.network.snapshot import read_snapshot

    ckpt = read_snapshot(args.snapshot)
    return ckpt, pick_hand_model(ckpt, args.snapshot, args.hand_model, log=lambda m: note(args.command, m),
                                 warn=lambda m: warn(args.command, m))


def fitting_model(args, ckpt, hand, dev):
    """The snapshot's DeepHandMesh, or the template with linear blend skinning (no correctives), in eval mode."""
    from dhmlib.network.model import DeepHandMesh, ModelConfig

    if args.snapshot:
        from dhmlib.network.snapshot import model_from_snapshot

        model = model_from_snapshot(args.snapshot, hand, map_location="cpu", ckpt=ckpt)
    else:
        model = DeepHandMesh(hand, ModelConfig(backbone=18, pose_corrective=False, id_corrective=False,
                                               skeleton_corrective=False))
    return model.to(dev).eval()
