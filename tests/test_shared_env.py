"""The pack in an artist's shared environment: ComfyUI 0.30.0's requirements plus three packs Wan users
run (tests/popular_packs.txt), installed into a venv of their own, torch first as ComfyUI's install does.
Installing our requirements.txt there, as ComfyUI-Manager does, may add packages but must not move one
that is already installed: another pack may need exactly that version.

The venv is built once under .cache/envs/popular-packs (about 3 minutes and 3 GB; pip's download cache
serves later builds) and reused until one of its requirement files changes.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from comfyhost.install import MAIN_HOST, REPO_ROOT, ensure_installed
from comfyhost.install import _canonical as canonical
from side_venv import side_venv

POPULAR_PACKS = REPO_ROOT / "tests" / "popular_packs.txt"
TORCH = "torch==2.13.0"  # the Makefile's: the local CPU build, not GBs of CUDA packages


@pytest.fixture(scope="module")
def popular_env():
    ensure_installed()  # ComfyUI 0.30.0's tree, for its requirements.txt
    comfy_requirements = str(MAIN_HOST.comfy_dir / "requirements.txt")
    return side_venv("popular-packs", [[TORCH], ["-r", comfy_requirements, "-r", str(POPULAR_PACKS), TORCH]])


def installed_versions(python) -> dict[str, str]:
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], check=True,
                             capture_output=True, text=True).stdout
    return {canonical(p["name"]): p["version"] for p in json.loads(listing)}


def dry_run_install(python, *args: str) -> dict[str, str]:
    """What `pip install` would install or replace: {name: version}."""
    result = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                             "--disable-pip-version-check", *args], capture_output=True, text=True)
    assert result.returncode == 0, f"pip cannot install {args} here:\n{result.stderr[-3000:]}"
    return {canonical(p["metadata"]["name"]): p["metadata"]["version"] for p in json.loads(result.stdout)["install"]}


def test_requirements_install_into_the_popular_packs_env_without_moving_a_version(popular_env):
    before = installed_versions(popular_env)
    shared = {"diffusers", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "av"}
    assert shared <= before.keys(), "the environment lacks packages the packs share with us"

    planned = dry_run_install(popular_env, "-r", str(REPO_ROOT / "requirements.txt"))
    moved = [f"{name} {before[name]} -> {version}" for name, version in planned.items() if name in before]
    assert not moved, "installing requirements.txt would change: " + ", ".join(moved)
