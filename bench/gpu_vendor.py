"""Make the project importable on a machine that reaches no package registry (the lent GPU machine:
CUDA torch, transformers, peft, accelerate; no diffusers).

- diffusers and requests (+ urllib3, charset_normalizer, certifi; diffusers checks requests' version at
  import): the pure-Python wheels carried in bench/wheels/ are unpacked into a temporary folder put first
  on sys.path, each only when the machine lacks it. No pip, no network. About 6.8 MB in the tree.
- Pillow: diffusers imports it at start-up for image helpers no benchmark uses, and its wheels are
  per-platform; if it is missing, an inert placeholder module stands in: touching anything in it at run
  time raises, so it cannot fake a result.

tests/test_gpu_bench.py runs the benchmark's CPU dry run on a Python path holding only torch,
transformers, peft, accelerate and what they require (as on the GPU machine), so this path is proven.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import tempfile
import types
import zipfile
from pathlib import Path

WHEELS = Path(__file__).resolve().parent / "wheels"
DIFFUSERS_WHEEL = "diffusers-0.42.1-py3-none-any.whl"
PLACEHOLDER_PACKAGES = ("PIL",)


class _Absent(type):
    """A class for every attribute: works in annotations and Union[...] at import time, fails when used."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Absent(name, (), {})

    def __call__(cls, *args, **kwargs):
        raise RuntimeError(f"{cls.__name__}: this package is a placeholder on this machine (bench/gpu_vendor.py)")


class _PlaceholderModule(types.ModuleType):
    __version__ = "0.0"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Absent(name, (), {})


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots):
        self.roots = set(roots)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def add_placeholders(names) -> list[str]:
    """Inert placeholders for the packages of `names` this machine lacks; returns those."""
    missing = [name for name in names if not _importable(name)]
    if missing:
        sys.meta_path.append(_PlaceholderFinder(missing))
    return missing


def ensure_imports() -> dict:
    """Set up sys.path / placeholders; returns what was done, for the benchmark's header."""
    done = {}
    if not _importable("diffusers") and not (WHEELS / DIFFUSERS_WHEEL).is_file():
        raise SystemExit(f"error: diffusers is not installed and bench/wheels/{DIFFUSERS_WHEEL} is missing; carry it "
                         "with the tree (pip download diffusers==0.42.1 --no-deps -d bench/wheels)")
    target = None
    for wheel in sorted(WHEELS.glob("*.whl")):
        package = wheel.name.split("-")[0]
        if _importable(package):
            continue
        target = target or Path(tempfile.mkdtemp(prefix="layert2v_vendor_"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
        done.setdefault("unpacked", []).append(wheel.name)
    if target is not None:
        sys.path.insert(0, str(target))
        importlib.invalidate_caches()
    missing = add_placeholders(PLACEHOLDER_PACKAGES)
    if missing:
        done["placeholders"] = missing
    import diffusers

    done["diffusers_at"] = str(Path(diffusers.__file__).parent)
    return done
