import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/toyhand.py

import pytest


@pytest.fixture(scope="session")
def small_capture(tmp_path_factory):
    """A small virtual capture in the official layout: 5 frames × 6 cameras, ~2k vertices, 512×334."""
    from dhmlib.synth.capture import CaptureConfig, write_capture

    root = tmp_path_factory.mktemp("capture")
    write_capture(root, CaptureConfig(frames=5, cameras=6, vertices=2000, seed=3), progress=False)
    return root
