"""Where data and outputs live: ``$DHM_DATA`` (default ``data``) and ``$DHM_OUTPUT`` (default ``output``).

The layout follows the original code: ``output/log``, ``output/model_dump``,
``output/result``, ``output/vis``; executed notebooks go to ``output/notebooks``.
"""
from __future__ import annotations

import os
from pathlib import Path


def data_dir(value: str | os.PathLike | None = None) -> Path:
    """``value`` if given (non-empty), else ``$DHM_DATA``, else ``data``."""
    return Path(value) if value else Path(os.environ.get("DHM_DATA", "data"))


def output_dir(sub: str | None = None, value: str | os.PathLike | None = None) -> Path:
    """``$DHM_OUTPUT`` (default ``output``), or ``value``; with ``sub`` one of its folders."""
    root = Path(value) if value else Path(os.environ.get("DHM_OUTPUT", "output"))
    return root / sub if sub else root
