"""Conditional variants and trajectories through the real server (tiny models, API form)."""

from __future__ import annotations

import json

import pytest

from test_comfy_nodes import error_message
from test_reliability_server import base, first_of

FRAMES, SIZE = 5, 32


def clip_nodes(prefix: str, color: int, alpha_value: float | None = None) -> dict:
    """Stock nodes making a FRAMES-long IMAGE (and MASK) clip, as a user's LoadVideo would."""
    nodes = {f"{prefix}img": {"class_type": "EmptyImage",
                              "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES, "color": color}}}
    if alpha_value is not None:
        nodes[f"{prefix}m1"] = {"class_type": "SolidMask", "inputs": {"value": alpha_value, "width": SIZE, "height": SIZE}}
        nodes[f"{prefix}mi"] = {"class_type": "MaskToImage", "inputs": {"mask": [f"{prefix}m1", 0]}}
        nodes[f"{prefix}mr"] = {"class_type": "RepeatImageBatch", "inputs": {"image": [f"{prefix}mi", 0], "amount": FRAMES}}
        nodes[f"{prefix}mask"] = {"class_type": "ImageToMask", "inputs": {"image": [f"{prefix}mr", 0], "channel": "red"}}
    return nodes


def variant_workflow(server, variant: str) -> dict:
    api = base(server, frames=FRAMES, width=SIZE, height=SIZE)
    sampler, vae = first_of(api, "LayerT2VSampler"), first_of(api, "LayerT2VLoadVAE")
    given_inputs = {"layert2v_vae": [vae, 0], "foreground_index": 1, "foreground_is": "straight", "mode": "replace"}
    if variant == "decompose":
        api.update(clip_nodes("c", 0x3366CC))
        given_inputs["full"] = ["cimg", 0]
    elif variant == "foreground_for_background":
        api.update(clip_nodes("c", 0x22AA44))
        given_inputs["background"] = ["cimg", 0]
    elif variant == "background_for_foreground":
        api.update(clip_nodes("c", 0xCC2222, alpha_value=0.75))
        given_inputs.update(foreground=["cimg", 0], alpha=["cmask", 0])
    if variant == "trajectory":
        api["traj"] = {"class_type": "LayerT2VTrajectory", "inputs": {
            "layert2v_vae": [vae, 0], "strength": 0.9, "end_step": 2,
            "boxes_json": json.dumps({"1": [[0, 0.0, 0.2, 0.4, 0.6], [4, 0.6, 0.2, 1.0, 0.6]]})}}
        api[sampler]["inputs"]["trajectory"] = ["traj", 0]
    else:
        api["given"] = {"class_type": "LayerT2VGivenLayers", "inputs": given_inputs}
        api[sampler]["inputs"]["given"] = ["given", 0]
    return api


@pytest.mark.parametrize("variant", ["decompose", "foreground_for_background", "background_for_foreground", "trajectory"])
def test_variant_runs_through_the_server(comfy_server, variant):
    entry = comfy_server.wait(comfy_server.queue_prompt(variant_workflow(comfy_server, variant)), timeout=300)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    folder = next(o["layert2v_folder"][0] for o in entry["outputs"].values() if "layert2v_folder" in o)
    manifest = json.loads((comfy_server.output_dir / folder / "layers.json").read_text())
    assert {"full", "background", "foreground_1"} <= {layer["name"] for layer in manifest["layers"]}


def test_given_clip_of_wrong_length_is_refused_readably(comfy_server):
    api = variant_workflow(comfy_server, "decompose")
    api["cimg"]["inputs"]["batch_size"] = 3
    entry = comfy_server.wait(comfy_server.queue_prompt(api), timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert "given full has shape" in error_message(entry)


def test_foreground_without_alpha_is_refused(comfy_server):
    api = variant_workflow(comfy_server, "background_for_foreground")
    del api["given"]["inputs"]["alpha"]
    entry = comfy_server.wait(comfy_server.queue_prompt(api), timeout=300)
    assert entry["status"]["status_str"] == "error"
    assert "together" in error_message(entry)


@pytest.mark.parametrize("name", ["decompose_video", "background_for_foreground", "foreground_for_background",
                                  "trajectory_two_objects"])
def test_shipped_variant_workflow_runs(comfy_server, name):
    """The drag-and-drop file itself (demo model), every sampler shrunk to test size."""
    from pathlib import Path

    from comfyhost.workflow import ui_to_api

    ui = json.loads((Path(__file__).resolve().parents[1] / "workflows" / f"{name}.json").read_text())
    api = ui_to_api(ui, comfy_server.object_info())
    for node in api.values():
        if node["class_type"] == "LayerT2VSampler":
            node["inputs"].update(width=SIZE, height=SIZE, frames=FRAMES, steps=2)
    entry = comfy_server.wait(comfy_server.queue_prompt(api), timeout=300)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    saved = [o["layert2v_folder"][0] for o in entry["outputs"].values() if "layert2v_folder" in o]
    assert len(saved) == sum(n["class_type"] == "LayerT2VSaveLayers" for n in api.values())
