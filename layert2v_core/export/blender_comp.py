"""The ready comp: a Blender script written next to each layer set's layers.json.

It is `blender_scene.py` (the code that runs inside Blender) with the set's layers filled in:
which file each layer reads, its alpha mode and transfer, in composite order. The comp reads the
most exact format the set holds that Blender can read (WebM alpha is not one: Blender 3.4 decodes
VP9 without it).
"""

from __future__ import annotations

import pprint
from pathlib import Path

from .records import fps_to_json

COMP_NAME = "blender_comp.py"
_TEMPLATE = Path(__file__).with_name("blender_scene.py")
_PLACEHOLDER = "SET = None  # the layer set, filled in by the generator\n"
# Per layer, the first family the set has for every layer in the composite is used.
SOURCE_PREFERENCE = (("exr_multilayer",), ("png16",), ("exr_float",), ("exr_half",), ("png8",),
                     ("prores_4444", "prores_422_hq"))


def comp_source(outputs_by_layer: dict, order: list) -> tuple | None:
    """The format family the comp reads, or None when the set holds nothing Blender composites."""
    for family in SOURCE_PREFERENCE:
        if all(any(o["format"] in family for o in outputs_by_layer[n]) for n in order):
            return family
    return None


def blender_comp_script(outputs_by_layer: dict, order: list, width: int, height: int,
                        frame_count: int, fps) -> str | None:
    """The script's text for layers `order` (background first), or None (see comp_source)."""
    family = comp_source(outputs_by_layer, order)
    if family is None or len(order) < 2:
        return None
    layers = []
    for name in order:
        out = next(o for o in outputs_by_layer[name] if o["format"] in family)
        sequence = "pattern" in out
        layers.append({
            "name": name,
            "kind": "sequence" if sequence else "movie",
            "file": (f"{out['path']}/{out['pattern'] % out['first_frame']}" if sequence
                     else out["path"]),
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
    return template.replace(_PLACEHOLDER, "SET = " + pprint.pformat(data, sort_dicts=False) + "\n")
