"""Process-wide memory behaviour."""
from __future__ import annotations

import ctypes

_kept: bool | None = None   # the outcome of the first call (mallopt is process-wide: once is enough)


def keep_freed_memory() -> bool:
    """Ask glibc malloc to reuse freed large blocks instead of unmapping them (this process only).

    Rendering, skinning and training allocate tens of MB per step; by default each such
    block is a fresh ``mmap`` whose pages are faulted in and zeroed every time. Measured on the
    2-core box: the projection of 64 frames × 8 views (forward + backward) takes ~110k page
    faults and ~850 ms of CPU a call by default, ~11k and ~280 ms with this (``bench/fit.py``
    measures the held-out fit both ways). Raising the mmap and trim thresholds to 1 GiB keeps
    those blocks in the heap; the numbers computed are the same, only where memory comes from
    changes. Memory is then not returned to the OS before exit (the peak stays reserved), so the
    library does not do this on import: every ``dhm`` command calls it, and so do the heavy jobs
    that notebooks run in their kernel (:func:`dhmlib.train.train`,
    :func:`dhmlib.evaluation.held_out.evaluate_snapshot`). ``DHM_KEEP_FREED_MEMORY=0`` turns it
    off. Returns False where it does not apply (not glibc, or turned off).
    """
    global _kept
    if _kept is None:
        import os

        if os.environ.get("DHM_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "no", "false", "off"):
            _kept = False
            return _kept
        try:
            libc = ctypes.CDLL("libc.so.6")
            M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
            _kept = bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
        except (OSError, AttributeError):
            _kept = False
    return _kept
