"""`layers.json`: the manifest of a layer set, its loader and its validator.

A script or a compositor template reads this file instead of guessing from file names: which
layers exist, which have alpha and in which convention each file stores it, the order in which
foregrounds are composited, and where every file is (paths relative to the set folder).

What the alpha fields mean, one truth each (schema 3; validate_manifest enforces it):
- `layers[i].has_alpha`: the layer has an alpha matte (the foregrounds); opaque layers do not.
- `layers[i].outputs[j].has_alpha`: this output holds THIS layer's matte: always the layer's own
  value. A multi-layer EXR entry speaks for its layer's channel group (`channels`); an opaque
  layer's group carries A = 1 there and says has_alpha false.
- `alpha_mode`: how the colour relates to that matte ("straight" or "premultiplied"); null exactly
  when has_alpha is false. `transfer`: what the colour values hold ("srgb" or "linear").
- A sidecar (`sequence.json`, `<movie>.json`) describes its whole file: a multi-layer EXR's says
  has_alpha true when any group holds a matte and lists those groups in `alpha_layers`.
- `comp`: `blender` (the script's file name or null), `reads` (layer -> the output format the
  script reads) and `why_none` (why a set has no script, else null).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .conventions import ALPHA_MODES, TRANSFERS

MANIFEST_NAME = "layers.json"
SCHEMA = "layert2v.layer_set"
SCHEMA_VERSION = 3  # 2: outputs state their transfer; composite space; multi-layer EXR.
#                     3: an output's has_alpha is its layer's; `comp` says what it reads or why none
OUTPUT_FORMATS = ("png8", "png16", "exr_half", "exr_float", "exr_multilayer", "prores_4444",
                  "prores_422_hq", "webm_vp9", "h264")
RECOMPOSITE = "recomposite"  # name of the preview of all layers composited again


class LayerSetError(ValueError):
    """A layer set folder or manifest that does not hold what it claims; lists every problem."""

    def __init__(self, where, problems: list[str]):
        self.problems = problems
        super().__init__(f"{where}: " + "; ".join(problems))


@dataclass
class LayerSet:
    path: Path          # the set folder
    manifest: dict

    def layer(self, name: str) -> dict:
        for layer in self.manifest["layers"]:
            if layer["name"] == name:
                return layer
        raise KeyError(f"no layer {name!r} in {self.path}; have {self.layer_names}")

    @property
    def layer_names(self) -> list[str]:
        return [layer["name"] for layer in self.manifest["layers"]]

    def output(self, layer: str, fmt: str) -> dict:
        for out in self.layer(layer)["outputs"]:
            if out["format"] == fmt:
                return out
        raise KeyError(f"layer {layer!r} has no {fmt!r} output in {self.path}")

    def files(self, output: dict) -> list[Path]:
        """Absolute paths of an output: every frame of a sequence, or the one movie file."""
        base = self.path / output["path"]
        if "pattern" not in output:
            return [base]
        first = output["first_frame"]
        return [base / (output["pattern"] % (first + i)) for i in range(output["frame_count"])]


def load_layer_set(path) -> LayerSet:
    """Read and validate a layer set (its folder or its layers.json); raises LayerSetError."""
    path = Path(path)
    folder = path.parent if path.name == MANIFEST_NAME else path
    manifest_path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayerSetError(folder, [f"no {MANIFEST_NAME} in this folder"]) from None
    except json.JSONDecodeError as e:
        raise LayerSetError(manifest_path, [f"not valid JSON: {e}"]) from None
    problems = validate_manifest(manifest, folder)
    if problems:
        raise LayerSetError(manifest_path, problems)
    return LayerSet(folder, manifest)


def validate_manifest(manifest, root=None) -> list[str]:
    """Every problem found (empty list = valid). With `root`, also checks that all files exist."""
    if not isinstance(manifest, dict):
        return [f"manifest must be a JSON object, got {type(manifest).__name__}"]
    problems: list[str] = []
    if manifest.get("schema") != SCHEMA:
        problems.append(f"schema must be {SCHEMA!r}, got {manifest.get('schema')!r}")
    version = manifest.get("schema_version")
    if not _is_int(version) or not 1 <= version <= SCHEMA_VERSION:
        problems.append(f"schema_version must be an integer 1..{SCHEMA_VERSION}, got {version!r}")
    for key in ("width", "height", "frame_count"):
        if not _is_int(manifest.get(key)) or manifest[key] < 1:
            problems.append(f"{key} must be a positive integer, got {manifest.get(key)!r}")
    problems += _check_fps(manifest.get("fps"), "fps")
    if manifest.get("seed") is not None and not _is_int(manifest["seed"]):
        problems.append(f"seed must be an integer or null, got {manifest['seed']!r}")
    if problems:
        return problems  # the checks below rely on these basics

    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        return problems + ["layers must be a non-empty list"]
    names, with_alpha = [], set()
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
            problems.append(f"{where} must be an object with a string 'name'")
            continue
        where = f"layer {layer['name']!r}"
        names.append(layer["name"])
        if not isinstance(layer.get("has_alpha"), bool):
            problems.append(f"{where}: has_alpha must be true or false")
        elif layer["has_alpha"]:
            with_alpha.add(layer["name"])
        outputs = layer.get("outputs")
        if not isinstance(outputs, list):
            problems.append(f"{where}: outputs must be a list")
            continue
        for j, out in enumerate(outputs):
            problems += _check_output(out, f"{where} output {j}", manifest, layer.get("has_alpha"), root)
    if len(set(names)) != len(names):
        problems.append(f"layer names must be unique, got {names}")

    order = manifest.get("composite_order")
    if not isinstance(order, list) or any(n not in names for n in order):
        problems.append(f"composite_order must list existing layers, got {order!r}")
    elif order and any(n not in with_alpha for n in order[1:]):
        problems.append(f"composite_order: every layer above the first needs alpha, got {order}")

    if version >= 3:
        problems += _check_comp(manifest.get("comp"), root)

    previews = manifest.get("previews", [])
    if not isinstance(previews, list):
        problems.append("previews must be a list")
    else:
        for j, out in enumerate(previews):
            problems += _check_output(out, f"previews[{j}]", manifest, False, root)
    return problems


def _check_output(out, where: str, manifest: dict, has_alpha, root) -> list[str]:
    if not isinstance(out, dict):
        return [f"{where} must be an object"]
    problems = []
    if out.get("format") not in OUTPUT_FORMATS:
        problems.append(f"{where}: format must be one of {OUTPUT_FORMATS}, got {out.get('format')!r}")
    path = out.get("path")
    if not isinstance(path, str) or not path or _escapes(path):
        return problems + [f"{where}: path must be a relative path inside the set, got {path!r}"]
    where = f"{where} ({path})"
    if manifest["schema_version"] >= 3 and out.get("has_alpha") is not bool(has_alpha):
        problems.append(f"{where}: has_alpha must be the layer's own ({bool(has_alpha)}), "
                        f"got {out.get('has_alpha')!r}")
    if has_alpha and out.get("alpha_mode") not in ALPHA_MODES:
        problems.append(f"{where}: alpha_mode must be one of {ALPHA_MODES}, "
                        f"got {out.get('alpha_mode')!r}")
    if not has_alpha and out.get("alpha_mode") is not None:
        problems.append(f"{where}: alpha_mode must be null for a layer without alpha")
    if manifest["schema_version"] >= 2 and out.get("transfer") not in TRANSFERS:
        problems.append(f"{where}: transfer must be one of {TRANSFERS}, got {out.get('transfer')!r}")
    for key in ("frame_count", "width", "height"):
        if out.get(key) != manifest[key]:
            problems.append(f"{where}: {key} {out.get(key)!r} differs from the set's {manifest[key]!r}")
    sequence = "pattern" in out
    if sequence and (not isinstance(out["pattern"], str) or not _is_int(out.get("first_frame"))
                     or out["first_frame"] < 0):
        problems.append(f"{where}: pattern must be a string and first_frame an integer >= 0")
        sequence = False
    elif sequence and not _plain_frame_pattern(out["pattern"]):
        problems.append(f"{where}: pattern must be a file name with one frame number (like "
                        f"'fg.%05d.png'), without folders, got {out['pattern']!r}")
        sequence = False
    if root is not None and not problems:
        base = Path(root) / path
        if sequence:
            missing = [out["pattern"] % (out["first_frame"] + i) for i in range(out["frame_count"])
                       if not (base / (out["pattern"] % (out["first_frame"] + i))).is_file()]
            if missing:
                problems.append(f"{where}: {len(missing)} frame files missing, first {missing[0]}")
        elif not base.is_file():
            problems.append(f"{where}: file is missing")
    return problems


def _check_comp(comp, root) -> list[str]:
    if not isinstance(comp, dict):
        return [f"comp must be an object, got {comp!r}"]
    script = comp.get("blender")
    if script is None:
        if not isinstance(comp.get("why_none"), str) or not comp["why_none"]:
            return ["comp: a set without a Blender comp must say why in comp.why_none"]
        return []
    if not isinstance(script, str) or not script or _escapes(script) or "/" in script:
        return [f"comp.blender must be a file name in the set folder or null, got {script!r}"]
    if not isinstance(comp.get("reads"), dict) or not comp["reads"]:
        return ["comp.reads must map each composited layer to the format the script reads"]
    if root is not None and not (Path(root) / script).is_file():
        return [f"comp.blender ({script}): file is missing"]
    return []


def _check_fps(fps, key: str) -> list[str]:
    if (not isinstance(fps, dict) or not _is_int(fps.get("num")) or not _is_int(fps.get("den"))
            or fps["num"] <= 0 or fps["den"] <= 0):
        return [f"{key} must be {{'num': int > 0, 'den': int > 0, 'value': float}}, got {fps!r}"]
    return []


def _plain_frame_pattern(pattern: str) -> bool:
    """One printf integer field and nothing that could leave the output's folder (untrusted JSON)."""
    if "/" in pattern or "\\" in pattern or ":" in pattern or pattern in (".", "..") or "\0" in pattern:
        return False
    if len(re.findall(r"%0?\d*d", pattern)) != 1 or len(re.findall(r"%[^%]", pattern.replace("%%", ""))) != 1:
        return False
    try:
        name = pattern % 0
    except (TypeError, ValueError):
        return False
    return name not in (".", "..") and not name.startswith("..")


def _escapes(path: str) -> bool:
    p = PurePosixPath(path)
    return p.is_absolute() or ".." in p.parts or "\\" in path or ":" in path


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
