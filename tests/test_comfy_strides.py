"""A model whose VAE downsamples space by 4 (issue 24) in a real ComfyUI 0.30.0 server: the layers come out
at the requested size, and a VAE of other strides is refused in one line naming its file."""

from __future__ import annotations

import io
import json
import urllib.parse

import pytest
from PIL import Image

from comfyhost.models import install_tiny_models
from layert2v_core.tiny import TINY_VAE_4X_CONFIG
from test_comfy_nodes import api_workflow, error_message, new_sets, run

NO_ADAPTER = "none (untrained layers)"  # nodes/loaders.py


@pytest.fixture(scope="module")
def model_4x(comfy_server):
    """Placed while the server runs: its loaders list model folders afresh when they change."""
    return install_tiny_models(comfy_server.base_dir / "models", stem="tiny4x", max_foregrounds=1,
                               vae_config=TINY_VAE_4X_CONFIG)


def workflow_4x(server, model, vae_name=None, vae_adapter=None, size=64) -> dict:
    api = api_workflow(server, "layered_t2v", width=size, height=size, frames=5, steps=2)
    api["1"]["inputs"].update(dit_name=model["dit"].name, adapter_name=model["adapter"].name, dtype="fp32")
    api["2"]["inputs"].update(vae_name=vae_name or model["vae"].name, adapter_name=vae_adapter or model["adapter"].name)
    api["3"]["inputs"].update(folder=model["text_encoder"].name)
    api["20"] = {"class_type": "SaveImage", "inputs": {"images": ["6", 1], "filename_prefix": "strides_full"}}
    return api


def view(server, entry: dict) -> Image.Image:
    query = urllib.parse.urlencode({k: entry[k] for k in ("filename", "subfolder", "type")})
    return Image.open(io.BytesIO(server.get_bytes(f"/view?{query}")))


def test_4x_vae_model_makes_layers_of_the_requested_size(comfy_server, model_4x):
    before = new_sets(comfy_server, set())
    entry, status = run(comfy_server, workflow_4x(comfy_server, model_4x))
    assert status == "success", error_message(entry)
    full = entry["outputs"]["20"]["images"]
    assert len(full) == 5 and all(view(comfy_server, image).size == (64, 64) for image in full)
    (folder,) = new_sets(comfy_server, before)
    manifest = json.loads((folder / "layers.json").read_text())
    assert (manifest["width"], manifest["height"], manifest["frame_count"]) == (64, 64, 5)
    for strip in next(o for o in entry["outputs"].values() if "layert2v_viewer" in o)["layert2v_viewer"]:
        assert (strip["frame_width"], strip["frame_height"]) == (64, 64), strip["layer"]
        columns, rows = strip["columns"], -(-strip["frames"] // strip["columns"])
        assert view(comfy_server, strip).size == (columns * 64, rows * 64), strip["layer"]


def test_a_vae_of_other_strides_is_refused_in_one_line(comfy_server, model_4x):
    entry, status = run(comfy_server, workflow_4x(comfy_server, model_4x, vae_name="tiny_wan_vae.safetensors",
                                                  vae_adapter=NO_ADAPTER))
    assert status == "error"
    assert error_message(entry).strip() == (
        "LayerT2V Decode Layers: the layered latent was made for a VAE that downsamples space by 4 and time by 4, "
        "but the VAE 'models/vae/tiny_wan_vae.safetensors' downsamples space by 8 and time by 4: decode with the VAE "
        "the model was trained with (its adapter names the strides)")
