"""Headless Debian chromium against the test server: one page load gives the DOM, console and a screenshot."""

from __future__ import annotations

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
