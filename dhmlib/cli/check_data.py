"""``dhm check-data ROOT``: counts and every problem of a dataset; exit 1 when there are problems."""
from __future__ import annotations

from pathlib import Path

from dhmlib.cli._common import OK, PROBLEMS, CLIError

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

HELP = "check a dataset in the official layout; exit status 1 when it has problems, 2 when ROOT is not a folder"


def add(p):
    p.add_argument("root", help="dataset root (images/, annotations/, hand_model/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-problems", type=int, default=1000, help="list at most this many problems")


def run(args) -> int:
    from dhmlib.data.check import check_dataset

    root = Path(args.root)
    if not root.is_dir():
        raise CLIError(f"{root}: no such dataset root" + (" (it is a file)" if root.exists() else "")
                       + "; expected a folder with hand_model/ and annotations/")
    rep = check_dataset(args.root, progress=not args.no_progress, max_problems=args.max_problems)
    print(rep.summary())
    return OK if rep.ok else PROBLEMS
