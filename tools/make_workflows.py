"""Writes the drag-and-drop workflows in workflows/ from compact specs (run after changing a node).

    .venv/bin/python tools/make_workflows.py

A spec lists nodes with their widget values in schema order and their links; this script lays
them out left to right in ComfyUI's UI (LiteGraph) format. tests/test_comfy_nodes.py converts
every file back to API form against the live server's /object_info, so a wrong order fails there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from layert2v_core.recommended import AUTO, AUTO_DTYPE  # noqa: E402  (0 / "auto": the model's own)

WORKFLOWS = ROOT / "workflows"
# The built-in demo model (layert2v_core/demo_model/), listed under this name by every loader node.
DEMO_MODEL = "layert2v-demo (built-in)"
DEMO = {"dit": DEMO_MODEL, "vae": DEMO_MODEL, "adapter": DEMO_MODEL, "text": DEMO_MODEL}
NEGATIVE = ""                    # the demo model learnt CFG against the empty prompt (text dropout)
# Layered Sampler width, height, frames, steps, cfg, shift: the loaded model's own (its checkpoint config),
# so a template fits whichever model the loaders pick.
MODEL_SETTINGS = [AUTO] * 4 + [float(AUTO)] * 2
SEED_CONTROL = "randomize"       # each Run makes a new generation (the first one uses the seed shown)
ATTENTION = "sdpa"               # Load Model's attention kernel: PyTorch's own, on every machine
SPEED = [0.0, 1.0, "skip"]       # Layered Sampler: step_cache off, guidance on every step (bench: README)
SAVE_SWITCHES = [True, False, False, True, False, True, False]  # png16 png8 exr_half prores webm h264 exr_multilayer

# (id, type, [widget values in schema order], {input name: (type, from id, from slot)}, [(output name, type)])
def layered(num_fg: int, prompts: list[str]) -> list:
    fg_values = (prompts[2:] + [""] * 3)[:3]
    return [
        (1, "LayerT2VLoadModel", [DEMO["dit"], DEMO["adapter"], AUTO_DTYPE, "auto", ATTENTION], {},
         [("layert2v_model", "LAYERT2V_MODEL")]),
        (2, "LayerT2VLoadVAE", [DEMO["vae"], DEMO["adapter"], "auto"], {}, [("layert2v_vae", "LAYERT2V_VAE")]),
        (3, "LayerT2VLoadTextEncoder", [DEMO["text"], AUTO, AUTO_DTYPE], {},
         [("text_encoder", "LAYERT2V_TEXT_ENCODER")]),
        (4, "LayerT2VPrompts", [num_fg, prompts[0], prompts[1], *fg_values, NEGATIVE],
         {"text_encoder": ("LAYERT2V_TEXT_ENCODER", 3, 0)}, [("layer_conditioning", "LAYERT2V_CONDITIONING")]),
        (5, "LayerT2VSampler", [*MODEL_SETTINGS, "unipc", 42, SEED_CONTROL, *SPEED],
         {"layert2v_model": ("LAYERT2V_MODEL", 1, 0), "layer_conditioning": ("LAYERT2V_CONDITIONING", 4, 0)},
         [("layered_latent", "LATENT")]),
        (6, "LayerT2VDecodeLayers", [], {"layered_latent": ("LATENT", 5, 0), "layert2v_vae": ("LAYERT2V_VAE", 2, 0)},
         [("layers", "LAYERT2V_LAYERS"), ("full", "IMAGE"), ("background", "IMAGE"), ("recomposite", "IMAGE")]),
        (7, "LayerT2VSaveLayers", ["LayerT2V/layers", 16.0, "straight", *SAVE_SWITCHES],
         {"layers": ("LAYERT2V_LAYERS", 6, 0)}, [("folder", "STRING")]),
    ]


# Captions in the demo model's training template; red circle and yellow square are (colour, shape)
# pairs its training data never shows (training/data/synthetic.py, hold_out_pairs).
SPECS = {
    "layered_t2v": layered(1, ["a red circle moving right over blue stripes", "blue stripes",
                               "a red circle moving right"]),
    "layered_t2v_two_foregrounds": layered(2, ["a red circle moving right and a yellow square moving down over green dots",
                                               "green dots", "a red circle moving right", "a yellow square moving down"]),
}


def with_given(spec: list, wire: str, prompts: list[str], prefix: str) -> list:
    """A second, conditional pass on top of a first generation: its `wire` layer becomes a given layer.
    In real use the first pass is replaced by your own footage (LoadVideo / LoadImage + a MASK)."""
    given_links = {"layert2v_vae": ("LAYERT2V_VAE", 2, 0)}
    extra = []
    if wire == "full":
        given_links["full"] = ("IMAGE", 6, 1)
    elif wire == "background":
        given_links["background"] = ("IMAGE", 6, 2)
    else:  # an RGBA foreground: straight colour + alpha
        extra.append((10, "LayerT2VGetForeground", [1, "straight"], {"layers": ("LAYERT2V_LAYERS", 6, 0)},
                      [("foreground", "IMAGE"), ("alpha", "MASK")]))
        given_links.update(foreground=("IMAGE", 10, 0), alpha=("MASK", 10, 1))
    fg_values = (prompts[2:] + [""] * 3)[:3]
    return spec + extra + [
        (8, "LayerT2VGivenLayers", [1, "straight", "replace"], given_links, [("given", "LAYERT2V_GIVEN")]),
        (11, "LayerT2VPrompts", [1, prompts[0], prompts[1], *fg_values, NEGATIVE],
         {"text_encoder": ("LAYERT2V_TEXT_ENCODER", 3, 0)}, [("layer_conditioning", "LAYERT2V_CONDITIONING")]),
        (9, "LayerT2VSampler", [*MODEL_SETTINGS, "unipc", 7, SEED_CONTROL, *SPEED],
         {"layert2v_model": ("LAYERT2V_MODEL", 1, 0), "layer_conditioning": ("LAYERT2V_CONDITIONING", 11, 0),
          "given": ("LAYERT2V_GIVEN", 8, 0)}, [("layered_latent", "LATENT")]),
        (12, "LayerT2VDecodeLayers", [], {"layered_latent": ("LATENT", 9, 0), "layert2v_vae": ("LAYERT2V_VAE", 2, 0)},
         [("layers", "LAYERT2V_LAYERS"), ("full", "IMAGE"), ("background", "IMAGE"), ("recomposite", "IMAGE")]),
        (13, "LayerT2VSaveLayers", [f"LayerT2V/{prefix}", 16.0, "straight", *SAVE_SWITCHES],
         {"layers": ("LAYERT2V_LAYERS", 12, 0)}, [("folder", "STRING")]),
    ]


def with_trajectory(spec: list, boxes: dict) -> list:
    """Adds a Trajectories node feeding the sampler (node 5) of a layered spec."""
    sampler = next(n for n in spec if n[1] == "LayerT2VSampler")
    sampler[3]["trajectory"] = ("LAYERT2V_TRAJECTORY", 8, 0)
    return spec + [(8, "LayerT2VTrajectory", [json.dumps(boxes), 0.8, 8], {"layert2v_vae": ("LAYERT2V_VAE", 2, 0)},
                    [("trajectory", "LAYERT2V_TRAJECTORY")])]


BASE_1 = ["a red circle moving right over blue stripes", "blue stripes", "a red circle moving right"]
SPECS["decompose_video"] = with_given(layered(1, BASE_1), "full", BASE_1, "decomposed")
SPECS["background_for_foreground"] = with_given(
    layered(1, BASE_1), "foreground",
    ["a red circle moving right over green dots", "green dots", "a red circle moving right"], "new_background")
SPECS["foreground_for_background"] = with_given(
    layered(1, BASE_1), "background",
    ["a yellow square moving down over blue stripes", "blue stripes", "a yellow square moving down"], "new_foreground")
SPECS["trajectory_two_objects"] = with_trajectory(
    layered(2, ["a red circle moving right and a yellow square moving left over green dots", "green dots",
                "a red circle moving right", "a yellow square moving left"]),
    {"1": [[0, 0.02, 0.3, 0.38, 0.7], [16, 0.62, 0.3, 0.98, 0.7]],
     "2": [[0, 0.62, 0.3, 0.98, 0.7], [16, 0.02, 0.3, 0.38, 0.7]]})


def to_ui(spec: list) -> dict:
    nodes, links, link_id = [], [], 0
    consumers: dict[tuple[int, int], list[int]] = {}
    for order, (node_id, node_type, widgets, inputs, outputs) in enumerate(spec):
        node_inputs = []
        for slot, (name, (io_type, src, src_slot)) in enumerate(inputs.items()):
            link_id += 1
            links.append([link_id, src, src_slot, node_id, slot, io_type])
            consumers.setdefault((src, src_slot), []).append(link_id)
            node_inputs.append({"name": name, "type": io_type, "link": link_id})
        nodes.append({
            "id": node_id, "type": node_type, "pos": [40 + 360 * order, 80 + 40 * (order % 2)], "size": [320, 240],
            "flags": {}, "order": order, "mode": 0, "inputs": node_inputs,
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type}, "widgets_values": widgets,
        })
    for node in nodes:
        for slot, output in enumerate(node["outputs"]):
            output["links"] = consumers.get((node["id"], slot), [])
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"layert2v": "generated by tools/make_workflows.py"}, "version": 0.4}


def main() -> None:
    for name, spec in SPECS.items():
        path = WORKFLOWS / f"{name}.json"
        path.write_text(json.dumps(to_ui(spec), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
