"""The ready comp: a Blender script written next to each layer set's layers.json.

It is `blender_scene.py` (the code that runs inside Blender) with the set's layers filled in:
which file each layer reads, its alpha mode and transfer, in composite order. The comp reads the
most exact format the set holds that Blender can read. A set without one gets no script, and its
manifest says why (`comp.why_none`): WebM is not one (Blender 3.4 decodes VP9 without its alpha:
every pixel reads opaque, measured by tests/test_compositor_recipes.py) and H.264 holds opaque
previews only.
"""

from __future__ import annotations

import pprint
from dataclasses import dataclass
from pathlib import Path

from .conventions import BACKGROUND
from .records import fps_to_json

COMP_NAME = "blender_comp.py"
_TEMPLATE = Path(__file__).with_name("blender_scene.py")
_PLACEHOLDER = "SET = None  # the layer set, filled in by the generator\n"
# Per layer, the first family the set has for every layer in the composite is used.
SOURCE_PREFERENCE = (("exr_multilayer",), ("png16",), ("exr_float",), ("exr_half",), ("png8",),
                     ("prores_4444", "prores_422_hq"))
# Foreground formats the comp cannot read, and why (Blender 3.4.1, measured by the recipe tests).
UNREADABLE = {
    "webm_vp9": "Blender 3.4 decodes VP9 WebM without its alpha (every pixel reads opaque)",
}


@dataclass
class BlenderComp:
    """What a set gets: the script's text and the output each layer reads, or why there is none."""
    script: str | None
    reads: dict | None     # layer -> output format, in composite order
    why_none: str | None

    def manifest_entry(self) -> dict:
        return {"blender": COMP_NAME if self.script else None, "reads": self.reads,
                "why_none": self.why_none}


def comp_source(outputs_by_layer: dict, order: list) -> tuple | None:
    """The format family the comp reads, or None when the set holds nothing Blender composites."""
    for family in SOURCE_PREFERENCE:
        if all(any(o["format"] in family for o in outputs_by_layer[n]) for n in order):
            return family
    return None


def blender_comp(outputs_by_layer: dict, order: list, width: int, height: int, frame_count: int,
                 fps) -> BlenderComp:
    """The comp for layers `order` (composite order: background first, then the foregrounds)."""
    why = _why_none(outputs_by_layer, order)
    if why:
        return BlenderComp(None, None, why)
    family = comp_source(outputs_by_layer, order)
    layers = []
    for name in order:
        out = next(o for o in outputs_by_layer[name] if o["format"] in family)
        sequence = "pattern" in out
        layers.append({
            "name": name,
            "kind": "sequence" if sequence else "movie",
            "file": (f"{out['path']}/{out['pattern'] % out['first_frame']}" if sequence
                     else out["path"]),
            "pattern": f"{out['path']}/{out['pattern']}" if sequence else None,
            "first_frame": out["first_frame"] if sequence else 0,
            "pass": name if out["format"] == "exr_multilayer" else None,
            "alpha_mode": out["alpha_mode"],
            "transfer": out["transfer"],
            "format": out["format"],
        })
    first = layers[0]["first_frame"] if layers[0]["kind"] == "sequence" else 0
    data = {"width": width, "height": height, "frame_count": frame_count, "first_frame": first,
            "fps": fps_to_json(fps), "layers": layers}
    template = _TEMPLATE.read_text(encoding="utf-8")
    if _PLACEHOLDER not in template:
        raise RuntimeError("blender_scene.py lost its SET placeholder line")
    filled = "SET = " + pprint.pformat(data, sort_dicts=False) + "\n"
    script = template.replace(_PLACEHOLDER, filled)
    return BlenderComp(script, {layer["name"]: layer["format"] for layer in layers}, None)


def _why_none(outputs_by_layer: dict, order: list) -> str | None:
    if order[:1] != [BACKGROUND]:
        return f"no {BACKGROUND!r} layer: the comp stacks the foregrounds over an opaque background"
    if len(order) < 2:
        return "no foreground (a layer with alpha) to composite over the background"
    if comp_source(outputs_by_layer, order) is not None:
        return None
    held = sorted({o["format"] for name in order[1:] for o in outputs_by_layer[name]})
    reasons = [UNREADABLE[f] for f in held if f in UNREADABLE] or [
        "the foregrounds have no file in this set (h264 writes opaque previews only)"]
    return ("; ".join(reasons) + "; add png16, an exr format or prores to the formats for a comp")
