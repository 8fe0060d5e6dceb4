"""Notebook 05's upload widget (:func:`dhmlib.photo.notebook.upload_widget`) in a real JupyterLab, driven by
Debian's headless Chromium via Playwright: a photo chosen in the browser's file input reaches the kernel, is
saved in the upload folder byte for byte, and the widget says where. The notebook is opened and run by
:func:`lab_browser.notebook_in_lab`; screenshots go to ``tests/artifacts/browser_upload/``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from lab_browser import RUN_TIMEOUT_S, notebook_in_lab

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser_upload"
CELL = """from dhmlib.photo.notebook import upload_widget
widget, saved = upload_widget("uploads")
widget"""


def _notebook(path: Path) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


@pytest.mark.slow
@pytest.mark.browser
def test_a_photo_uploaded_in_the_browser_is_saved_for_the_fit(tmp_path):
    from PIL import Image

    photo = tmp_path / "my hand.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
    notebook = _notebook(tmp_path / "upload.ipynb")
    with notebook_in_lab(tmp_path / "lab", notebook, ARTIFACTS, viewport=(1400, 900)) as lab:
        page = lab.page
        button = page.locator(".widget-upload").first
        button.wait_for(state="visible", timeout=RUN_TIMEOUT_S * 1000)
        assert "photos" in button.inner_text()
        with page.expect_file_chooser(timeout=60_000) as chooser:   # as a user: click, pick the file
            button.click()
        chooser.value.set_files(str(photo))
        note = page.locator(".jp-OutputArea-output", has_text="saved 1 photo(s)").first
        note.wait_for(state="visible", timeout=RUN_TIMEOUT_S * 1000)
        page.screenshot(path=str(ARTIFACTS / "after_upload.png"))
        text = note.inner_text()
        assert "uploads" in text and "re-run below" in text, text
    saved = tmp_path / "lab" / "work" / "uploads" / photo.name
    deadline = time.monotonic() + 10
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert saved.read_bytes() == photo.read_bytes()                    # the same bytes reached the kernel
    unexpected = lab.unexpected_errors()
    assert not unexpected, "unexpected page errors:\n" + "\n".join(unexpected)
