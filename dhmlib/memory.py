"""Process-wide memory behaviour."""
from __future__ import annotations

import ctypes


def keep_freed_memory() -> bool:
    """Ask glibc malloc to reuse freed large blocks instead of unmapping them (this process only).

    Rendering, skinning and training allocate tens of MB per step; by default each such
    block is a fresh ``mmap`` whose pages are faulted in and zeroed every time (a quarter of
    the virtual capture's CPU time, several ms per decode+backward at B = 64). Raising the
    mmap and trim thresholds keeps them in the heap. Memory is then not returned to the OS
    before exit, so commands (``dhm synth``, benchmarks, training) call this; the library
    does not. Returns False where it does not apply (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
