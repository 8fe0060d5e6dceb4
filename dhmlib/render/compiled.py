"""Numba, where it imports: the switch of the compiled CPU kernels and their thread count.

The kernels (the z-buffer, interpolation and projection here, the depth loss of
:mod:`dhmlib.losses`) fall back to vectorised PyTorch when ``numba`` is None; ``NUMBA_UNAVAILABLE_REASON``
says why.
"""
from __future__ import annotations

try:  # Numba is a dependency; a broken installation falls back to the vectorised paths
    import numba
except Exception as exc:  # pragma: no cover - depends on the installation
    numba = None
    NUMBA_UNAVAILABLE_REASON: str | None = f"numba does not import ({type(exc).__name__}: {exc})"
else:
    NUMBA_UNAVAILABLE_REASON = None

__all__ = ["numba", "NUMBA_UNAVAILABLE_REASON", "match_torch_threads"]


def match_torch_threads() -> None:
    """Run Numba's parallel loops on as many threads as PyTorch uses (at most Numba's pool), so that a
    kernel called inside a training or fit step does not fight PyTorch's threads for the cores."""
    import torch

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
