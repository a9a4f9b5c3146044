"""Starts and stops a real ComfyUI server with our pack linked into its custom_nodes folder."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

from .client import ComfyClient
from .install import REPO_ROOT

# The folder name ComfyUI sees for our pack: its web files are served under /extensions/layert2v/.
PACK_NAME = "layert2v"
# Test-only packs (a probe, a dump node). The leading dot keeps them out of ComfyUI-Manager's node
# scanner, which reads every .py file of a repository except under dot-folders: their node ids must
# never point Manager's "Install missing custom nodes" at this pack. (.comfyignore keeps tests/ out
# of the published pack.)
TEST_PACKS_DIR = REPO_ROOT / "tests" / ".comfy_packs"

# Nothing in the tests may reach a hub; ComfyUI and the libraries it loads must stay offline.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "PYTHONUNBUFFERED": "1",  # the log file then shows progress as it happens
}


class ServerError(RuntimeError):
    pass


class ComfyServer(ComfyClient):
    """One ComfyUI process on 127.0.0.1 with its own base directory (models, output, user, ...)."""

    def __init__(self, comfy_dir: Path, base_dir: Path, pack_dir: Path = REPO_ROOT,
                 extra_args: tuple[str, ...] = (), startup_timeout: float = 300.0,
                 front_end_root: Path | None = None, test_packs: tuple[str, ...] = ()):
        self.port = _free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.comfy_dir = Path(comfy_dir)
        self.base_dir = Path(base_dir)
        self.pack_dir = Path(pack_dir)
        self.test_packs = tuple(test_packs)  # folder names under TEST_PACKS_DIR, linked beside the pack
        self.output_dir = self.base_dir / "output"
        self.log_path = self.base_dir / "comfyui.log"
        # None: the frontend that ComfyUI pins (its pip package); else a folder with index.html
        self.extra_args = tuple(extra_args) + (("--front-end-root", str(front_end_root)) if front_end_root else ())
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None  # process start -> first /object_info answer
        self._process: subprocess.Popen | None = None

    def start(self) -> "ComfyServer":
        self._prepare_base_dir()
        command = [
            sys.executable, "main.py",
            "--cpu",
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            "--disable-auto-launch",
            "--disable-api-nodes",  # paid cloud nodes: they would only add start-up time and network calls
            *self.extra_args,
        ]
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                command, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **OFFLINE_ENV}, preexec_fn=_die_with_parent,
            )
        self._wait_until_ready(started)
        self.startup_seconds = time.monotonic() - started
        # The frontend otherwise opens its first-run template dialog over the canvas.
        self.post("/settings/Comfy.TutorialCompleted", True)
        return self

    def stop(self, grace: float = 15.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running else None

    def rss_bytes(self) -> int:
        """Resident memory of the server process now (VmRSS from /proc; psutil elsewhere)."""
        if self.pid is None:
            raise ServerError("the ComfyUI server is not running")
        status = Path(f"/proc/{self.pid}/status")
        if status.exists():
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024  # reported in kB
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _prepare_base_dir(self) -> None:
        for name in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base_dir / name).mkdir(parents=True, exist_ok=True)
        links = {PACK_NAME: self.pack_dir.resolve(), **{name: TEST_PACKS_DIR / name for name in self.test_packs}}
        for name, target in links.items():
            link = self.base_dir / "custom_nodes" / name
            if not link.is_symlink():
                link.symlink_to(target, target_is_directory=True)

    def _wait_until_ready(self, started: float) -> None:
        while time.monotonic() - started < self.startup_timeout:
            if self._process.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self._process.returncode} during start-up:\n"
                                  + self.log_text()[-6000:])
            try:
                self.get("/object_info")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.stop()
        raise ServerError(f"ComfyUI did not answer /object_info within {self.startup_timeout:.0f} s:\n"
                          + self.log_text()[-6000:])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: a killed test run must not leave a server behind (Linux only)."""
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
