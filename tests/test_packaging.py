"""The pack as artists install it: what the registry reads (`comfy node validate` and comfy-cli's own
parser, comfy-cli 1.23.0 in a venv of its own), what `comfy node pack` ships, which node ids
ComfyUI-Manager's scanner maps to this repository, and the pack inside a running ComfyUI 0.30.0:
nothing of ours on sys.path or under a top-level module name, no health-check node, clear names.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import uuid
import zipfile
from pathlib import Path

import pytest
from packaging.version import Version

from comfyhost.install import HOSTS, REPO_ROOT
from comfyhost.server import PACK_NAME
from side_venv import side_venv

COMFY_CLI = "comfy-cli==1.23.0"
# What the published pack is: the runtime, the bundled training scripts and configs, and the files an
# installer or a reader needs. Everything else tracked (tests, benches, tools, CI) stays out.
OUR_PACKAGES = ("nodes", "layert2v_core", "training")
SHIPPED = ("__init__.py", "nodes/", "layert2v_core/", "web/", "workflows/", "training/", "requirements.txt",
           "constraints.txt", "pyproject.toml", "README.md", "icon.png", "docs/layer_viewer.png")


def tracked_files() -> list[str]:
    listing = subprocess.run(["git", "-C", str(REPO_ROOT), "ls-files", "-z"], check=True, capture_output=True).stdout
    return [name for name in listing.decode().split("\0") if name and (REPO_ROOT / name).is_file()]


def is_shipped(name: str) -> bool:
    return any(name == entry or (entry.endswith("/") and name.startswith(entry)) for entry in SHIPPED)


# ---- comfy-cli: the registry's view --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def comfy_cli() -> Path:
    return side_venv("comfy-cli", [[COMFY_CLI]])


@pytest.fixture(scope="module")
def publisher_clone(tmp_path_factory) -> Path:
    """The repository as a publisher's clone holds it: the tracked files, as in the work tree, in a git
    repository of their own (comfy-cli packs what `git ls-files` lists)."""
    clone = tmp_path_factory.mktemp("publisher_clone")
    for name in tracked_files():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, clone / name)
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", "-C", str(clone), *command], check=True, capture_output=True)
    return clone


def run_comfy(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(cwd.parent / "comfy-cli-config")}  # keep its settings out of $HOME
    return subprocess.run([str(python.with_name("comfy")), "--skip-prompt", "--no-enable-telemetry", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_comfy_node_validate_passes_and_the_registry_gets_ranges_and_comfyui_versions(comfy_cli, publisher_clone):
    validated = run_comfy(comfy_cli, publisher_clone, "node", "validate")
    output = validated.stdout + validated.stderr
    assert validated.returncode == 0 and "All validation checks passed" in output, output
    assert "Warning" not in output and "Security warnings" not in output, output

    # What `comfy node publish` sends, read by comfy-cli's own parser.
    read = subprocess.run([str(comfy_cli), "-c", "import json; from comfy_cli.registry.config_parser import "
                           "extract_node_configuration as read; c = read('pyproject.toml'); print(json.dumps("
                           "{'deps': c.project.dependencies, 'comfyui': c.project.supported_comfyui_version}))"],
                          cwd=publisher_clone, capture_output=True, text=True, check=True)
    config = json.loads(read.stdout.strip().splitlines()[-1])
    oldest_tested = min(HOSTS, key=Version)
    assert config["comfyui"] == f">={oldest_tested}", "requires-comfyui should start at the oldest ComfyUI tested"
    requirements = [line.split("#")[0].strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    assert config["deps"] == [line for line in requirements if line], "pyproject's dependencies differ from requirements.txt"
    assert not [dep for dep in config["deps"] if "==" in dep], "pinned dependencies cannot share an environment"


def test_comfy_node_pack_ships_the_runtime_and_training_but_no_tests_or_benches(comfy_cli, publisher_clone):
    packed = run_comfy(comfy_cli, publisher_clone, "node", "pack")
    assert packed.returncode == 0, packed.stdout + packed.stderr
    with zipfile.ZipFile(publisher_clone / "node.zip") as archive:
        names = [info.filename for info in archive.infolist() if not info.is_dir()]
        size = sum(info.file_size for info in archive.infolist())

    unexpected = sorted(name for name in names if not is_shipped(name))
    assert not unexpected, f"{len(unexpected)} files beyond the runtime and training/, e.g. {unexpected[:8]}"
    missing = sorted(set(filter(is_shipped, tracked_files())) - set(names))
    assert not missing, f"runtime or training files left out of the pack: {missing[:8]}"
    assert any(name.startswith("training/configs/") for name in names)
    print(f"node.zip: {len(names)} files, {size / 2**20:.1f} MiB unpacked")


# ---- ComfyUI-Manager's node scanner ----------------------------------------------------------------------------
def scanner_node_ids(root: Path, files: list[str]) -> set[str]:
    """The node ids ComfyUI-Manager's scanner (scanner.py, SCANNER_VERSION 2.0.13) maps to a repository: it
    reads every .py file of the clone except under __pycache__ and folders whose name starts with a dot,
    and takes V3 ids from `Schema(node_id=...)` in classes deriving from ComfyNode (the class name when
    the id is not a literal), and V1 ids from the keys of NODE_CLASS_MAPPINGS / NODE_CONFIG /
    NODE_DISPLAY_NAME_MAPPINGS dicts, item assignments and `.update({...})` calls, plus any quoted key
    of a `..._CLASS_MAPPINGS = {...}` text. Written from its documented behaviour, not its code."""
    ids: set[str] = set()
    for name in files:
        parts = Path(name).parts
        if not name.endswith(".py") or "__pycache__" in parts or any(p.startswith(".") for p in parts):
            continue
        text = (root / name).read_text(errors="ignore")
        for block in re.findall(r"_CLASS_MAPPINGS\s*(?::\s*\w+\s*)?=\s*{([^}]*)}", text, re.DOTALL):
            ids.update(re.findall(r"[\"']([^\"']*)[\"']\s*:", block))
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        ids.update(_v3_ids(tree) | _v1_ids(tree))
    return ids


def _v3_ids(tree: ast.AST) -> set[str]:
    ids = set()
    for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
        if not any(getattr(base, "id", getattr(base, "attr", None)) == "ComfyNode" for base in cls.bases):
            continue
        literal = [kw.value.value for call in ast.walk(cls) if isinstance(call, ast.Call)
                   and getattr(call.func, "id", getattr(call.func, "attr", None)) == "Schema"
                   for kw in call.keywords if kw.arg == "node_id" and isinstance(kw.value, ast.Constant)]
        ids.add(literal[0] if literal else cls.name)
    return ids


def _v1_ids(tree: ast.AST) -> set[str]:
    mapping_names = {"NODE_CLASS_MAPPINGS", "NODE_CONFIG", "NODE_DISPLAY_NAME_MAPPINGS"}
    dicts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if getattr(target, "id", None) in mapping_names:
                    dicts.append(node.value)
                elif isinstance(target, ast.Subscript) and getattr(target.value, "id", None) in mapping_names:
                    dicts.append(ast.Dict(keys=[target.slice], values=[]))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "update"
              and getattr(node.func.value, "id", None) in mapping_names and node.args):
            dicts.append(node.args[0])
    return {key.value for d in dicts if isinstance(d, ast.Dict)
            for key in d.keys if isinstance(key, ast.Constant) and isinstance(key.value, str)}


def our_node_ids(object_info: dict) -> set[str]:
    return {name for name, info in object_info.items() if info["python_module"] == f"custom_nodes.{PACK_NAME}"}


def test_manager_scanner_maps_every_node_of_ours_and_no_other(comfy_server):
    ours = our_node_ids(comfy_server.object_info())
    mapped = scanner_node_ids(REPO_ROOT, tracked_files())
    assert mapped - ours == set(), "Manager would send users looking for these ids to this pack"
    assert ours - mapped == set(), "Manager would not find this pack for these ids"


# ---- the pack inside a running server -----------------------------------------------------------------------
def test_no_pack_folder_on_sys_path_and_nothing_of_ours_at_top_level(comfy_server):
    """The pack imports only through its own package: another pack's or a library's `nodes`, `training`
    or `layert2v_core` can never be shadowed by ours, nor ours by theirs."""
    workflow = {"1": {"class_type": "TestPythonPathProbe", "inputs": {"nonce": uuid.uuid4().hex}}}
    entry = comfy_server.wait(comfy_server.queue_prompt(workflow), timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    state = json.loads(entry["outputs"]["1"]["text"][0])
    pack = (comfy_server.base_dir / "custom_nodes" / PACK_NAME).resolve()

    on_path = [p for p in state["sys_path"] if (comfy_server.comfy_dir / p).resolve() == pack]
    assert not on_path, f"the pack folder is on sys.path at index {state['sys_path'].index(on_path[0])}"

    def source_of_ours(file: str | None) -> bool:
        path = Path(file).resolve() if file and os.path.isabs(file) else None
        return bool(path) and path.is_relative_to(pack) and (
            path == pack / "__init__.py" or path.relative_to(pack).parts[0] in OUR_PACKAGES)

    ours = {name: file for name, file in state["modules"].items() if source_of_ours(file)}
    root = [name for name, file in ours.items() if Path(file).resolve() == pack / "__init__.py"]
    assert len(root) == 1, f"the pack's own module: {root}"
    outside = sorted(name for name in ours if name != root[0] and not name.startswith(root[0] + "."))
    assert not outside, f"modules of ours under their own top-level names: {outside}"
    assert any(name.startswith(root[0] + ".layert2v_core.") for name in ours), "the core was not imported through the pack"


def test_user_sees_no_health_check_node_and_loaders_say_what_they_load(comfy_server):
    info = comfy_server.object_info()
    assert not [name for name in our_node_ids(info) if "ping" in name.lower()]
    assert info["LayerT2VLoadVAE"]["display_name"] == "LayerT2V Load VAE + Mask VAE"
    assert info["LayerT2VGivenLayers"]["display_name"] == "LayerT2V Given Layers"
    # Saved workflows name nodes by id: every id the bundled workflows use is still there.
    used = {node["type"] for path in (REPO_ROOT / "workflows").glob("*.json")
            for node in json.loads(path.read_text())["nodes"]}
    assert used - set(info) == set()
