"""``python -m dhmlib.train``'s entry points, kept under their earlier names; the one parser
definition is :func:`dhmlib.cli.train.add` (shared with ``dhm train``)."""
from dhmlib.cli.train import module_main as main, module_parser as build_parser, module_run as run

__all__ = ["main", "build_parser", "run"]
