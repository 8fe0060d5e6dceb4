"""Write the virtual capture where a notebook or script expects data and finds none."""
from __future__ import annotations

from collections.abc import Callable

from dhmlib.data.layout import Layout
from dhmlib.synth.capture import CaptureConfig, CaptureSummary, write_capture

#: The tiny capture of the notebooks' smoke runs (CI): 8 frames × 4 cameras, 1500 vertices.
SMOKE_CAPTURE = CaptureConfig(frames=8, cameras=4, vertices=1500)


def ensure_capture(data_root, config: CaptureConfig | None = None, *, smoke: bool = False, subject: int = 1,
                   log: Callable[[str], None] | None = print) -> CaptureSummary | None:
    """Write the virtual capture into ``data_root`` unless it already holds a dataset.

    A dataset is there when subject ``subject``'s camera file (``KRT_512``) exists: the real release or
    an earlier capture, which is then left untouched.

    Args:
        data_root: dataset root (official layout).
        config: the capture to write (default: :class:`CaptureConfig` ``()``, 200 frames × 24 cameras,
            about two minutes on a 2-core CPU; ``smoke``: :data:`SMOKE_CAPTURE`).
        log: receives one line before writing (None: quiet).
    Returns:
        the :class:`CaptureSummary` of what was written, or None when a dataset was already there.
    """
    if Layout(data_root, subject).krt.exists():
        return None
    config = config or (SMOKE_CAPTURE if smoke else CaptureConfig())
    if log is not None:
        log(f"no dataset in {data_root}: writing the virtual capture ({config.frames} frames × {config.cameras} "
            "cameras; 01_data_inspection shows it)")
    return write_capture(data_root, config)
