"""Load one file of the pack's `nodes/` outside ComfyUI, for tests and bench scripts.

Node modules import the core package-relatively (`..layert2v_core`), as they run inside ComfyUI, and
`nodes/__init__.py` imports ComfyUI. So the file is loaded as `layert2v_pack.nodes.<name>`, with the pack's
core aliased to the top-level `layert2v_core` already imported: one copy of every class.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_node_module(name: str, core_modules: tuple[str, ...] = ()):
    for module in core_modules:
        importlib.import_module(module)
    sys.modules.setdefault("layert2v_pack", types.ModuleType("layert2v_pack")).__path__ = [str(ROOT)]
    for loaded in [m for m in sys.modules if m == "layert2v_core" or m.startswith("layert2v_core.")]:
        sys.modules["layert2v_pack." + loaded] = sys.modules[loaded]
    spec = importlib.util.spec_from_file_location(f"layert2v_pack.nodes.{name}", ROOT / "nodes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
