"""Headless Debian chromium against the test server: one page load gives the DOM, console and a
screenshot (capture_page), or a scripted user's session with clicks (run_user_session)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .server import PACK_NAME

CHROMIUM_NAMES = ("chromium", "chromium-browser")

# `[pid:tid:time:INFO:CONSOLE:line] "message", source: url (line)` as written by --enable-logging=stderr
_CONSOLE_LINE = re.compile(r':CONSOLE(?::\d+)?\] "(?P<message>.*)", source: (?P<source>.*)$')


@dataclass
class PageCapture:
    dom: str  # the document after scripts ran (--dump-dom)
    console: list[str]  # console messages, each "message  [source]"
    screenshot: Path | None
    seconds: float


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def frontend_url(base_url: str, template: str | None = None) -> str:
    """The frontend's address; with `template`, it opens that workflow from the pack's workflows/ folder."""
    if template is None:
        return base_url + "/"
    return base_url + "/?" + urllib.parse.urlencode({"template": template, "source": PACK_NAME})


def capture_page(url: str, screenshot: Path | None = None, *, window: tuple[int, int] = (1400, 900),
                 virtual_time_ms: int = 20000, timeout: float = 180.0) -> PageCapture:
    """Loads `url` once in a fresh headless profile and lets its scripts run for `virtual_time_ms`."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    if screenshot is not None:
        screenshot = Path(screenshot).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.unlink(missing_ok=True)  # an old file must not pass for a new one
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="layert2v-chromium-") as profile:
        command = [
            chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}",
            # The frontend calls out to api.comfy.org and others: only loopback may be reached.
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--enable-logging=stderr", "--v=0",  # console messages go to stderr
            f"--window-size={window[0]},{window[1]}",
            f"--virtual-time-budget={virtual_time_ms}",
            "--dump-dom",
            *([f"--screenshot={screenshot}"] if screenshot is not None else []),
            url,
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}:\n{result.stderr[-4000:]}")
    console = [f"{m['message']}  [{m['source']}]" for m in map(_CONSOLE_LINE.search, result.stderr.splitlines()) if m]
    return PageCapture(result.stdout, console, screenshot, time.monotonic() - started)


# ---- a user's session in the real frontend (tests/browser/user_session.mjs, playwright-core) -------

BROWSER_TESTS_DIR = Path(__file__).resolve().parents[1] / "browser"
USER_SESSION = BROWSER_TESTS_DIR / "user_session.mjs"


def user_session_unavailable() -> str | None:
    """Why a scripted browser session cannot run here (None when it can)."""
    if find_chromium() is None:
        return "chromium is not installed (make system-deps installs it as root)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (BROWSER_TESTS_DIR / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (make browser-deps: npm ci in tests/browser)"
    return None


def run_user_session(base_url: str, name: str, out_dir: Path, workflows: list[dict],
                     run_timeout: float = 300.0, timeout: float = 900.0) -> dict:
    """Runs user_session.mjs; returns its report (report["error"] says where it stopped, if it did).

    workflows: [{"template": name, "widgets": {node type: {widget: value}}, "foregroundCounts": [..]?,
    "inspectViewer": bool?}, ...]; screenshots go to out_dir/<name>_*.png.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {"url": base_url, "chromium": find_chromium(), "pack": PACK_NAME, "name": name,
              "outDir": str(out_dir), "workflows": workflows, "runTimeoutMs": int(run_timeout * 1000)}
    result = subprocess.run(["node", str(USER_SESSION), json.dumps(config)], cwd=BROWSER_TESTS_DIR,
                            capture_output=True, text=True, timeout=timeout)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"user_session.mjs exited with {result.returncode}:\n{result.stderr[-4000:]}")
    return json.loads(lines[-1])
