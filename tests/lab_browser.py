"""A notebook in a real JupyterLab, driven by Debian's headless Chromium via Playwright (the browser tests).

:func:`notebook_in_lab` starts JupyterLab on a free 127.0.0.1 port (no token; settings, config, workspaces,
runtime and data dirs in a tmp folder; news and update checks off so no pop-up covers the page), opens a tmp
copy of a notebook, runs all its cells and checks that none failed, and hands the page to the test.

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``; ``make setup-dev`` does it) and the
``playwright`` Python package (``pip install -e '.[dev,lab]'``); Playwright's own browser downloads are not
used. Nothing is installed at run time: a missing piece fails the test with a message saying what to install.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--no-sandbox", "--headless=new", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                  "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
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


def _start_lab(tmp: Path, port: int, log_path: Path, notebook: Path) -> subprocess.Popen:
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



@dataclass
class LabSession:
    """The open notebook's page, and what happened on it: page errors and console errors (``errors``, compare with
    :data:`HARMLESS`), dialogs that were dismissed."""

    page: object = None
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(h in e for h in HARMLESS)]


@contextmanager
def notebook_in_lab(tmp: Path, notebook: Path, artifacts: Path, viewport: tuple[int, int] = (1600, 1000)):
    """A copy of ``notebook`` open in JupyterLab (server under ``tmp``, its log in ``artifacts``) in headless
    Chromium, every cell run without an error; yields a :class:`LabSession`. The browser and the server are
    stopped on the way out."""
    _require_tools()
    from playwright.sync_api import sync_playwright

    artifacts.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = artifacts / "jupyterlab.log"
    proc = _start_lab(tmp, port, log_path, notebook)
    session = LabSession()
    try:
        _wait_for_server(proc, base, log_path)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
                page.on("pageerror", lambda e: session.errors.append(f"pageerror: {e}"))
                page.on("console", lambda m: session.errors.append(f"console.{m.type}: {m.text}")
                        if m.type == "error" else None)
                page.goto(f"{base}/lab/tree/{notebook.name}?reset", timeout=SERVER_TIMEOUT_S * 1000)
                page.wait_for_function(_KERNEL_IDLE_JS, timeout=KERNEL_TIMEOUT_S * 1000, polling=500)
                _dismiss_dialogs(page, session.dialogs)
                page.evaluate(_RUN_ALL_JS)   # a committed notebook has no execution counts yet
                page.wait_for_function(_ALL_RUN_JS, timeout=RUN_TIMEOUT_S * 1000, polling=500)
                cell_errors = page.evaluate(_ERRORS_JS)
                assert not cell_errors, "notebook cells failed:\n" + "\n".join(cell_errors)[-4000:]
                _dismiss_dialogs(page, session.dialogs)
                session.page = page
                yield session
            finally:
                browser.close()
    finally:
        _stop(proc)
