"""Notebook 05's upload widget (:func:`dhmlib.photo.notebook.upload_widget`) in a real JupyterLab, driven by
Debian's headless Chromium via Playwright: a photo chosen in the browser's file input reaches the kernel, is
saved in the upload folder byte for byte, and the widget says where. The JupyterLab set-up and the page checks
are ``test_browser_posing``'s; screenshots go to ``tests/artifacts/browser_upload/``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from test_browser_posing import (CHROMIUM, CHROMIUM_FLAGS, HARMLESS, KERNEL_TIMEOUT_S, RUN_TIMEOUT_S,
                                 SERVER_TIMEOUT_S, _ALL_RUN_JS, _ERRORS_JS, _KERNEL_IDLE_JS, _RUN_ALL_JS,
                                 _dismiss_dialogs, _free_port, _require_tools, _start_lab, _stop, _wait_for_server)

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
    _require_tools()
    from PIL import Image
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    photo = tmp_path / "my hand.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photo)
    notebook = _notebook(tmp_path / "upload.ipynb")
    lab = tmp_path / "lab"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = ARTIFACTS / "jupyterlab.log"
    proc = _start_lab(lab, port, log_path, notebook)
    errors: list[str] = []
    dialogs: list[str] = []
    try:
        _wait_for_server(proc, base, log_path)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
                page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                        if m.type == "error" else None)
                page.goto(f"{base}/lab/tree/{notebook.name}?reset", timeout=SERVER_TIMEOUT_S * 1000)
                page.wait_for_function(_KERNEL_IDLE_JS, timeout=KERNEL_TIMEOUT_S * 1000, polling=500)
                _dismiss_dialogs(page, dialogs)
                page.evaluate(_RUN_ALL_JS)
                page.wait_for_function(_ALL_RUN_JS, timeout=RUN_TIMEOUT_S * 1000, polling=500)
                cell_errors = page.evaluate(_ERRORS_JS)
                assert not cell_errors, "notebook cells failed:\n" + "\n".join(cell_errors)[-4000:]
                _dismiss_dialogs(page, dialogs)
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
            finally:
                browser.close()
    finally:
        _stop(proc)
    saved = lab / "work" / "uploads" / photo.name
    deadline = time.monotonic() + 10
    while not saved.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert saved.read_bytes() == photo.read_bytes()                    # the same bytes reached the kernel
    unexpected = [e for e in errors if not any(h in e for h in HARMLESS)]
    assert not unexpected, "unexpected page errors:\n" + "\n".join(unexpected)
