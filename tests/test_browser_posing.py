"""End-to-end: notebook 04 in a real JupyterLab, driven by Debian's headless Chromium via Playwright.

Starts JupyterLab on a free 127.0.0.1 port (no token; settings, config, workspaces, runtime
and data dirs in a tmp folder; news and update checks off so no pop-up covers the canvas),
opens a tmp copy of the notebook, runs all cells, and checks that the pythreejs canvas shows
the hand and changes after a slider move and after a preset click.  Screenshots are kept in
``tests/artifacts/browser_posing/``.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``; ``make setup-dev`` does it) and the
``playwright`` Python package (``pip install -e '.[dev,lab]'``); Playwright's own browser
downloads are not used.  Nothing is installed at run time: a missing piece fails the test
with a message saying what to install.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_posing_widget.ipynb"
ARTIFACTS = ROOT / "tests" / "artifacts" / "browser_posing"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--headless=new", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
BACKGROUND = np.array([244, 244, 244])          # MeshView's scene background "#f4f4f4"

#: Console errors known to be harmless with JupyterLab 4.6 / ipywidgets 8.1 / pythreejs 2.4.  Only
#: page errors and console *errors* are collected; the ``@lumino/coreutils`` version warning and
#: pythreejs' debug lines are other console levels and never reach the check.
HARMLESS = (
    "@lumino/coreutils",                             # shared-package version warning
    "Error setting state: t.on is not a function",   # pythreejs DirectionalLight (target) state
)

# generous limits: this runs on a loaded 2-core machine with a software GL renderer
SERVER_TIMEOUT_S = 120
KERNEL_TIMEOUT_S = 180
RUN_TIMEOUT_S = 300
CHANGE_TIMEOUT_S = 90


def _require_tools():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM}: install Debian's Chromium with "
                    "'apt-get install -y chromium' (the README's test command, 'make test', does it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the playwright Python package is missing: pip install -e '.[dev,lab]' "
                    "(no browser download is needed; the test drives /usr/bin/chromium)")
    try:
        import jupyterlab  # noqa: F401
        import pythreejs  # noqa: F401
    except ImportError as e:
        pytest.fail(f"{e.name} is missing: pip install -e '.[lab]'")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(settings: Path, config: Path):
    """No news fetch, no update check, no "build recommended" check: their pop-ups cover the canvas."""
    f = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    # a stray prebuilt-less lab extension in the environment would otherwise ask for a rebuild
    f = config / "labconfig" / "page_config.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"buildCheck": False, "buildAvailable": False}))


def _start_lab(tmp: Path, port: int, log_path: Path, notebook: Path = NOTEBOOK) -> subprocess.Popen:
    dirs = {k: tmp / k for k in ("config", "settings", "workspaces", "runtime", "data", "ipython", "work")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    _write_settings(dirs["settings"], dirs["config"])
    shutil.copy(notebook, dirs["work"] / notebook.name)
    env = {**os.environ,
           "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
           "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]), "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
           "JUPYTER_DATA_DIR": str(dirs["data"]),    # hides user-level kernels: python3 = this venv
           "IPYTHONDIR": str(dirs["ipython"]),
           "DHM_DATA": str(dirs["work"] / "data"), "DHM_OUTPUT": str(dirs["work"] / "output")}
    env.pop("MPLBACKEND", None)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={dirs['work']}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.extension_manager=readonly", "--LabApp.check_for_updates_class="
           "jupyterlab.handlers.announcements.NeverCheckForUpdate"]
    if os.geteuid() == 0:   # CI containers run as root
        cmd.append("--allow-root")
    log = open(log_path, "w")
    return subprocess.Popen(cmd, env=env, cwd=dirs["work"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)   # own process group: killed as a whole


def _stop(proc: subprocess.Popen):
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass


def _wait_for_server(proc, base: str, log_path: Path):
    deadline = time.monotonic() + SERVER_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/api/status", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer on {base} within {SERVER_TIMEOUT_S} s:\n{log_path.read_text()[-3000:]}")


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


# the notebook panel: the main-area widget with a session (shell.currentWidget needs focus)
_PANEL = "Array.from(window.jupyterapp.shell.widgets('main')).find(w => w.sessionContext && w.content)"

_KERNEL_IDLE_JS = """() => {
  const app = window.jupyterapp; if (!app) return false;
  const w = PANEL;
  if (!w || !w.sessionContext || !w.context || !w.context.isReady) return false;
  const s = w.sessionContext.session; const k = s && s.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle';
}""".replace("PANEL", _PANEL)

_ALL_RUN_JS = """() => {
  const w = PANEL;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  const cells = w.content.widgets.filter(c => c.model.type === 'code');
  return !!k && k.status === 'idle' && cells.every(c => c.model.executionCount !== null);
}""".replace("PANEL", _PANEL)

_ERRORS_JS = """() => {
  const w = PANEL;
  const out = [];
  for (const c of w.content.widgets) {
    if (c.model.type !== 'code') continue;
    for (const o of c.model.outputs.toJSON()) {
      if (o.output_type === 'error') out.push(o.ename + ': ' + o.evalue + '\\n' + (o.traceback || []).join('\\n'));
    }
  }
  return out;
}""".replace("PANEL", _PANEL)

_RUN_ALL_JS = """() => {
  const app = window.jupyterapp; const w = PANEL;
  app.shell.activateById(w.id);
  return app.commands.execute('notebook:run-all-cells');
}""".replace("PANEL", _PANEL)


def _dismiss_dialogs(page, log: list[str]):
    """Close any modal dialog (recorded in ``log``); one would cover the canvas and swallow clicks."""
    for d in page.locator(".jp-Dialog").all():
        if d.is_visible():
            log.append("dismissed dialog: " + d.inner_text().replace("\n", " ")[:200])
            reject = d.locator(".jp-mod-reject")
            if reject.count():
                reject.first.click()
            else:
                page.keyboard.press("Escape")


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
    _require_tools()
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = ARTIFACTS / "jupyterlab.log"
    t0 = time.monotonic()
    proc = _start_lab(tmp_path, port, log_path)
    errors: list[str] = []
    dialogs: list[str] = []
    coverage: list[float] = []
    try:
        _wait_for_server(proc, base, log_path)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
                page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}")
                        if m.type == "error" else None)
                page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?reset", timeout=SERVER_TIMEOUT_S * 1000)
                page.wait_for_function(_KERNEL_IDLE_JS, timeout=KERNEL_TIMEOUT_S * 1000, polling=500)
                _dismiss_dialogs(page, dialogs)
                page.evaluate(_RUN_ALL_JS)   # the committed notebook has no execution counts yet
                page.wait_for_function(_ALL_RUN_JS, timeout=RUN_TIMEOUT_S * 1000, polling=500)
                cell_errors = page.evaluate(_ERRORS_JS)
                assert not cell_errors, "notebook cells failed:\n" + "\n".join(cell_errors)[-4000:]

                _dismiss_dialogs(page, dialogs)
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
            finally:
                browser.close()
    finally:
        _stop(proc)
    (ARTIFACTS / "timing.txt").write_text(f"browser end-to-end wall time: {time.monotonic() - t0:.1f} s\n"
                                          f"hand coverage of the canvas: {coverage}\n"
                                          + "".join(d + "\n" for d in dialogs)
                                          + "".join(f"console/page error (known harmless or not): {e}\n"
                                                    for e in errors))
    unexpected = [e for e in errors if not any(h in e for h in HARMLESS)]
    assert not unexpected, "unexpected page errors:\n" + "\n".join(unexpected)


def test_missing_chromium_fails_with_instructions(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        _require_tools()
