"""The ``dhm`` command: argument parsing and exit codes live here and nowhere else in dhmlib.

One module per sub-command (``add(parser)`` declares its arguments, ``run(args) -> exit code``);
the library functions they call raise or return results.

Exit codes: 0 done; 1 the command ran and found problems (``check-data``), a notebook or a batch run failed or a
training loss became NaN (``train``);
2 a usage or input error, printed as one ``dhm <cmd>: error: …`` line without a traceback
(as argparse does for malformed arguments); 130 interrupted (Ctrl-C, SIGTERM).
"""
from __future__ import annotations

import argparse
import sys

from dhmlib.cli import batch, check_data, demo, fit, hand_model, notebooks, synth, test, train
from dhmlib.cli._common import USAGE, CLIError, HelpFormatter, run_command
from dhmlib.cli.demo import parse_euler, parse_rotation

# the library is imported inside the functions below: `dhm --help` and every command start without loading torch

__all__ = ["CLIError", "main", "build_parser", "parse_euler", "parse_rotation", "COMMANDS", "register"]

#: name → (add arguments, run, one-line help)
COMMANDS = {
    "hand-model": (hand_model.add, hand_model.run, hand_model.HELP),
    "demo": (demo.add, demo.run, demo.HELP),
    "synth": (synth.add, synth.run, synth.HELP),
    "check-data": (check_data.add, check_data.run, check_data.HELP),
    "notebooks": (notebooks.add, notebooks.run, notebooks.HELP),
    "batch": (batch.add, batch.run, batch.HELP),
    "fit": (fit.add, fit.run, fit.HELP),
    "train": (train.add, train.run, train.HELP),
    "test": (test.add, test.run, test.HELP),
}

EPILOG = """exit status: 0 done; 1 ran and found problems (check-data), a notebook or batch run failed or a training loss became NaN;
2 usage or input error; 130 interrupted. 'dhm <command> --help' for each command."""


def register(name, add, run, help):
    """Add a sub-command: ``add(parser)`` declares arguments, ``run(args)`` returns an exit code."""
    COMMANDS[name] = (add, run, help)


def version_text() -> str:
    """``dhm --version``: ``dhm (dhmlib) 0.1.0``, plus the checkout's commit when there is one."""
    from dhmlib.network.provenance import code_version

    v = code_version()
    commit = f", git {v['git_commit'][:12]}{' with local changes' if v['git_dirty'] else ''}" if v["git_commit"] else ""
    return f"dhm (dhmlib) {v['dhmlib']}{commit}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dhm", description="dhmlib: DeepHandMesh research workbench",
                                     epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=version_text(),
                        help="dhmlib's version (and the git commit of the checkout it runs from)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (add, run, help) in COMMANDS.items():
        p = sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None) -> int:
    """Run ``dhm`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else USAGE
    return run_command(args.command, args._run, args)
