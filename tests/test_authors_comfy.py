"""The authors' checkpoint folder as a ComfyUI user meets it: dropped into models/, offered by the
LayerT2V Load Model / Load VAE + Mask VAE dropdowns of the real server, and run through a whole workflow."""

from __future__ import annotations

import json
import shutil

import pytest
from test_authors_folder import write_user_files, write_vae_and_mask_lora
from test_comfy_nodes import api_workflow, error_message, new_sets, run


@pytest.mark.parametrize("blocks", [2, 30])
def test_authors_folder_loads_and_runs_in_the_real_server(comfy_server, tmp_path, blocks):
    folder_name = f"layert2v-authors-{blocks}-blocks"
    dit_name = f"authors_wan_{blocks}blocks.safetensors"
    dit_file, folder, _, _ = write_user_files(tmp_path, blocks)
    _, vae_file, _ = write_vae_and_mask_lora(tmp_path, folder)
    models = comfy_server.base_dir / "models"
    shutil.copyfile(dit_file, models / "diffusion_models" / dit_name)
    shutil.copyfile(vae_file, models / "vae" / "authors_wan_vae.safetensors")
    shutil.copytree(folder, models / "layert2v" / folder_name)

    info = comfy_server.object_info()
    load_model = info["LayerT2VLoadModel"]["input"]
    offered = json.dumps(load_model["required"]["adapter_name"])
    assert f'"{folder_name}"' in offered                       # the folder, by name
    assert "adapter_model.safetensors" not in offered           # not its files one by one
    assert f'"{folder_name} (EMA weights)"' in offered        # and again for its ema/ema_model.pt
    assert folder_name in json.dumps(info["LayerT2VLoadVAE"]["input"]["required"]["adapter_name"])

    tiny_encoder = "tiny_umt5"   # the test host's tiny UMT5 (tests/comfyhost/models.py): width 32, this DiT's text_dim
    assert tiny_encoder in json.dumps(info["LayerT2VLoadTextEncoder"]["input"]["required"]["folder"])
    api = api_workflow(comfy_server, "layered_t2v")
    for node in api.values():
        if node["class_type"] == "LayerT2VLoadModel":
            node["inputs"].update(dit_name=dit_name, adapter_name=f"{folder_name} (EMA weights)",
                                  dtype="fp32")
        if node["class_type"] == "LayerT2VLoadTextEncoder":
            node["inputs"].update(folder=tiny_encoder)
        if node["class_type"] == "LayerT2VLoadVAE":
            node["inputs"].update(vae_name="authors_wan_vae.safetensors", adapter_name=folder_name)
    before = new_sets(comfy_server, set())
    entry, status = run(comfy_server, api)
    assert status == "success", error_message(entry)
    created = new_sets(comfy_server, before)
    assert len(created) == 1
    manifest = json.loads((created.pop() / "layers.json").read_text())
    assert {l["name"] for l in manifest["layers"]} >= {"full", "background", "foreground_1"}
    assert "project_in not imported" in comfy_server.log_text()  # the logged reason reaches the user's console
