"""Virtual environments of their own, for tests that must not touch the project venv: comfy-cli, and an
artist's shared environment. Each is built once under .cache/envs/<name> and rebuilt when its recipe
changes (the pip arguments, and the content of every file they name).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from comfyhost.install import CACHE_DIR

ENVS_DIR = CACHE_DIR.parent / "envs"
PIP_OPTIONS = ("--no-input", "--progress-bar=off", "--disable-pip-version-check", "--quiet")


def side_venv(name: str, installs: list[list[str]]) -> Path:
    """The venv's python, after `pip install <args>` for each args list in `installs`, in order."""
    folder = ENVS_DIR / name
    python = folder / "bin" / "python"
    marker = folder / "recipe.json"
    recipe = json.dumps([[_fingerprint(arg) for arg in args] for args in installs])
    ENVS_DIR.mkdir(parents=True, exist_ok=True)
    with open(ENVS_DIR / f"{name}.lock", "w") as lock:  # two test runs at once must not both build it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file() and marker.read_text() == recipe and python.is_file():
            return python
        shutil.rmtree(folder, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(folder)], f"creating the {name} venv")
        for args in installs:
            _run([str(python), "-m", "pip", "install", *PIP_OPTIONS, *args], f"pip install {' '.join(args)} ({name})")
        marker.write_text(recipe)
    return python


def _fingerprint(arg: str) -> str:
    """A file by its content only: every checkout (main tree, worktrees, CI's clone) shares the venv."""
    path = Path(arg)
    return f"file:sha256={hashlib.sha256(path.read_bytes()).hexdigest()}" if path.is_file() else arg


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{(result.stdout + result.stderr)[-6000:]}")
