"""End-to-end: notebook 04 in a real JupyterLab, driven by Debian's headless Chromium via Playwright.

:func:`lab_browser.notebook_in_lab` opens a tmp copy of the notebook and runs all cells (what it needs is
in its module's docstring); the test checks that the pythreejs canvas shows the hand and changes after a
slider move and after a preset click.  Screenshots are kept in ``tests/artifacts/browser_posing/``.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest

import lab_browser
from lab_browser import CHANGE_TIMEOUT_S, RUN_TIMEOUT_S, notebook_in_lab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_posing_widget.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser_posing"
BACKGROUND = np.array([244, 244, 244])          # MeshView's scene background "#f4f4f4"


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def _coverage(img: np.ndarray) -> float:
    """Fraction of canvas pixels that differ from the scene background (the hand, roughly)."""
    return float((np.abs(img - BACKGROUND).max(-1) > 12).mean())


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(-1) > 12).mean())


def _poll_canvas(canvas, until, timeout_s, what):
    """Screenshot ``canvas`` until ``until(pixels)`` holds; returns (png, pixels)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        png = canvas.screenshot()
        img = _pixels(png)
        if until(img):
            return png, img
        last = img
        time.sleep(0.5)
    detail = f"coverage {_coverage(last):.3f}" if last is not None else "no screenshot"
    pytest.fail(f"timed out after {timeout_s} s waiting for {what} ({detail})")


@pytest.mark.slow
@pytest.mark.browser
def test_posing_widget_in_jupyterlab(tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    t0 = time.monotonic()
    coverage: list[float] = []
    with notebook_in_lab(tmp_path, NOTEBOOK, ARTIFACTS) as lab:
        page = lab.page
        widget = page.locator(".dhm-posing-widget").first
        canvas = widget.locator(".dhm-mesh-view canvas").first
        canvas.wait_for(state="visible", timeout=RUN_TIMEOUT_S * 1000)
        canvas.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "page_after_run.png"))

        # 1. the hand is drawn and covers a plausible part of the canvas
        png0, img0 = _poll_canvas(canvas, lambda im: _coverage(im) > 0.03, RUN_TIMEOUT_S,
                                  "the hand to appear on the canvas")
        (ARTIFACTS / "0_initial.png").write_bytes(png0)
        cov = _coverage(img0)
        coverage.append(cov)
        assert 0.03 < cov < 0.8, f"hand covers {cov:.1%} of the canvas"

        # 2. a finger slider (index1 flexion; the index tab is open): click its track near the start
        track = widget.locator(".dhm-slider-index1-z .noUi-target").first
        track.wait_for(state="visible", timeout=60_000)
        box = track.bounding_box()
        page.mouse.click(box["x"] + 0.1 * box["width"], box["y"] + box["height"] / 2)
        png1, img1 = _poll_canvas(canvas, lambda im: _changed(im, img0) > 0.005, CHANGE_TIMEOUT_S,
                                  "the canvas to change after the slider move")
        (ARTIFACTS / "1_slider.png").write_bytes(png1)
        assert 0.03 < _coverage(img1) < 0.8

        # 3. a preset
        widget.locator(".dhm-preset-spread").first.click()
        png2, img2 = _poll_canvas(canvas, lambda im: _changed(im, img1) > 0.005, CHANGE_TIMEOUT_S,
                                  "the canvas to change after the 'spread' preset")
        (ARTIFACTS / "2_preset_spread.png").write_bytes(png2)
        assert 0.03 < _coverage(img2) < 0.8
        page.screenshot(path=str(ARTIFACTS / "page_final.png"))
        status = widget.locator(".dhm-status").first.inner_text()
        assert "preset spread" in status and "error" not in status, status

        # 4. the error map's colour bar appears with the map
        widget.locator(".dhm-toggle-error").first.click()
        legend = widget.locator(".dhm-error-legend").first
        legend.wait_for(state="visible", timeout=CHANGE_TIMEOUT_S * 1000)
        assert "per-vertex error, mm" in legend.inner_text()
        bar = legend.bounding_box()
        assert bar["width"] > 200 and bar["height"] > 20, bar

        # 5. the compare view: every slider value is shown whole, inside the page
        compare = page.locator(".dhm-posing-widget").nth(1)
        compare.scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "3_compare.png"))
        readouts = compare.locator(".widget-readout")
        shown = [r for r in readouts.all() if r.is_visible()]
        assert len(shown) >= 4, f"{len(shown)} visible slider values in the compare view"
        for r in shown:
            rb = r.bounding_box()
            whole = r.evaluate("e => { const o = e.closest('.jp-OutputArea-output') || document.body;"
                               " const a = o.getBoundingClientRect(), b = e.getBoundingClientRect();"
                               " return e.scrollWidth <= e.clientWidth + 1 && b.right <= a.right + 1; }")
            assert whole and rb["x"] + rb["width"] <= 1600 + 0.5, (r.inner_text(), rb, whole)
            text = r.inner_text().strip()
            assert text and text.replace(".", "", 1).lstrip("-").isdigit(), text
    (ARTIFACTS / "timing.txt").write_text(f"browser end-to-end wall time: {time.monotonic() - t0:.1f} s\n"
                                          f"hand coverage of the canvas: {coverage}\n"
                                          + "".join(d + "\n" for d in lab.dialogs)
                                          + "".join(f"console/page error (known harmless or not): {e}\n"
                                                    for e in lab.errors))
    unexpected = lab.unexpected_errors()
    assert not unexpected, "unexpected page errors:\n" + "\n".join(unexpected)


def test_missing_chromium_fails_with_instructions(monkeypatch):
    monkeypatch.setattr(lab_browser, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        lab_browser._require_tools()
