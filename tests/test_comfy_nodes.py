"""The pack's nodes and workflows inside a real ComfyUI server, through HTTP only."""

from __future__ import annotations

import io
import json
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfyhost.client import PromptRejected
from comfyhost.workflow import ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
NODES = ["LayerT2VLoadModel", "LayerT2VLoadVAE", "LayerT2VLoadTextEncoder", "LayerT2VPrompts", "LayerT2VSampler",
         "LayerT2VSplitLayers", "LayerT2VDecodeLayers", "LayerT2VGetForeground", "LayerT2VDecodeAlpha",
         "LayerT2VComposeRGBA", "LayerT2VRecomposite", "LayerT2VSaveLayers"]


def api_workflow(server, name: str, **sampler_overrides) -> dict:
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = ui_to_api(ui, server.object_info())
    sampler = next(n for n in api.values() if n["class_type"] == "LayerT2VSampler")
    sampler["inputs"].update({"width": 32, "height": 32, "frames": 5, "steps": 2, **sampler_overrides})
    return api


def run(server, api, timeout=300):
    entry = server.wait(server.queue_prompt(api), timeout=timeout)
    return entry, entry["status"]["status_str"]


def error_message(entry) -> str:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data["exception_message"]
    return ""


def new_sets(server, before: set) -> set:
    return {p for p in (server.output_dir / "LayerT2V").glob("*") if p.is_dir()} - before if \
        (server.output_dir / "LayerT2V").exists() else set()


def test_object_info_lists_every_node_with_inputs(comfy_server):
    info = comfy_server.object_info()
    missing = [n for n in NODES if n not in info]
    assert not missing
    for name in NODES:
        assert info[name]["category"] == "LayerT2V"
    sampler = info["LayerT2VSampler"]["input"]["required"]
    assert {"layert2v_model", "layer_conditioning", "width", "height", "frames", "steps", "cfg", "shift",
            "sampler", "seed"} <= set(sampler)
    assert "tiny_wan_dit.safetensors" in json.dumps(info["LayerT2VLoadModel"]["input"]["required"]["dit_name"])
    assert "tiny_layert2v" in json.dumps(info["LayerT2VLoadModel"]["input"]["required"]["adapter_name"])


@pytest.mark.parametrize("name, k", [("layered_t2v", 1), ("layered_t2v_two_foregrounds", 2)])
def test_workflow_runs_and_writes_a_layer_set(comfy_server, name, k):
    before = new_sets(comfy_server, set())
    start = time.monotonic()
    entry, status = run(comfy_server, api_workflow(comfy_server, name))
    elapsed = time.monotonic() - start
    assert status == "success", error_message(entry)
    print(f"\n[{name}] tiny workflow end to end through /prompt: {elapsed:.1f} s")
    created = new_sets(comfy_server, before)
    assert len(created) == 1
    folder = created.pop()
    manifest = json.loads((folder / "layers.json").read_text())
    assert {l["name"] for l in manifest["layers"]} >= {"full", "background"} | {f"foreground_{i}" for i in range(1, k + 1)}
    assert list(folder.glob("prores/foreground_1.mov"))
    assert manifest["seed"] == 42 and manifest["prompts"]["background"]
    ui = next(iter(entry["outputs"].values()))
    assert "images" not in ui  # the frontend's own gallery would show the film strips as broken stills
    check_viewer_files(comfy_server, ui["layert2v_viewer"], manifest, k)


def check_viewer_files(server, entries, manifest, k):
    """Every film strip the viewer will ask for: served by /view, a WebP a browser decodes, holding
    every frame of the generation at the right size."""
    kinds = [(e["layer"], e["kind"]) for e in entries]
    assert kinds == [("full", "opaque"), ("recomposite", "recomposite"), ("background", "opaque")] + [
        (f"foreground_{i}", kind) for i in range(1, k + 1) for kind in ("foreground", "matte")]
    for e in entries:
        query = urllib.parse.urlencode({"filename": e["filename"], "subfolder": e["subfolder"], "type": e["type"]})
        with Image.open(io.BytesIO(server.get_bytes(f"/view?{query}"))) as sheet:
            assert sheet.format == "WEBP"
            assert sheet.mode == ("RGBA" if e["kind"] == "foreground" else "RGB")  # WebP has no grey mode
            if e["kind"] == "matte":
                r, g, b = (np.asarray(c, dtype=np.int16) for c in sheet.split())
                assert np.array_equal(r, g) and np.array_equal(g, b)  # lossless: exactly grey
            rows = -(-e["frames"] // e["columns"])
            assert sheet.size == (e["columns"] * e["frame_width"], rows * e["frame_height"])
        assert e["frames"] == manifest["frame_count"] and e["fps"] == 16.0
        assert (e["frame_width"], e["frame_height"]) == (manifest["width"], manifest["height"])  # small: not scaled


def test_split_decode_alpha_compose_chain(comfy_server):
    api = api_workflow(comfy_server, "layered_t2v")
    api["10"] = {"class_type": "LayerT2VSplitLayers", "inputs": {"layered_latent": ["5", 0], "foreground_index": 1}}
    api["11"] = {"class_type": "LayerT2VDecodeAlpha", "inputs": {"layert2v_vae": ["2", 0], "mask_latent": ["10", 3]}}
    api["12"] = {"class_type": "LayerT2VGetForeground",
                 "inputs": {"layers": ["6", 0], "foreground_index": 1, "alpha_mode": "premultiplied"}}
    api["13"] = {"class_type": "LayerT2VComposeRGBA",
                 "inputs": {"foreground": ["12", 0], "alpha": ["11", 0], "input_is": "premultiplied"}}
    api["14"] = {"class_type": "LayerT2VRecomposite",
                 "inputs": {"background": ["6", 2], "foreground": ["12", 0], "alpha": ["12", 1]}}
    api["15"] = {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "rgba_check"}}
    api["16"] = {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}}
    del api["7"]  # no layer-set export needed here
    entry, status = run(comfy_server, api)
    assert status == "success", error_message(entry)
    saved = entry["outputs"]["15"]["images"]
    img = Image.open(comfy_server.output_dir / saved[0]["subfolder"] / saved[0]["filename"])
    assert img.mode == "RGBA" and img.size == (32, 32)


def test_bad_input_is_readable_and_server_keeps_serving(comfy_server):
    before = new_sets(comfy_server, set())
    bad = api_workflow(comfy_server, "layered_t2v", frames=5)
    bad["5"]["inputs"]["width"] = 40  # not a multiple of 16
    try:
        entry, status = run(comfy_server, bad)
        message = error_message(entry)
        assert status == "error" and "width=40" in message, message
    except PromptRejected as rejected:  # validation at /prompt is fine too, if it names the input
        assert "width" in json.dumps(rejected.body)
    assert new_sets(comfy_server, before) == set()  # nothing left by a failed run

    wrong = api_workflow(comfy_server, "layered_t2v")
    wrong["7"]["inputs"]["filename_prefix"] = "../../x"
    entry, status = run(comfy_server, wrong)
    assert status == "error" and "filename_prefix" in error_message(entry)

    entry, status = run(comfy_server, api_workflow(comfy_server, "layered_t2v"))
    assert status == "success", error_message(entry)


def test_interrupt_during_sampling_stops_and_leaves_nothing(comfy_server):
    before = new_sets(comfy_server, set())
    slow = api_workflow(comfy_server, "layered_t2v", steps=400, width=64, height=64, frames=17)
    prompt_id = comfy_server.queue_prompt(slow)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until sampling is under way
        queue = comfy_server.get("/queue")
        if queue.get("queue_running"):
            time.sleep(3.0)
            break
        time.sleep(0.2)
    started = time.monotonic()
    comfy_server.interrupt()
    entry = comfy_server.wait(prompt_id, timeout=120)
    stopped_after = time.monotonic() - started
    assert entry["status"]["status_str"] == "error"
    assert any(kind == "execution_interrupted" for kind, _ in entry["status"]["messages"])
    assert stopped_after < 30, f"took {stopped_after:.1f} s to stop"
    assert new_sets(comfy_server, before) == set()
    entry, status = run(comfy_server, api_workflow(comfy_server, "layered_t2v"))
    assert status == "success", error_message(entry)


def test_filename_tokens_expand_as_for_comfyuis_own_save_nodes(comfy_server):
    """%year%, %width% ... as ComfyUI's SaveImage expands them (side by side in one prompt), and
    %date:...% and %Node.widget%, which ComfyUI's frontend expands for its own save nodes, also
    when the prompt comes through the API."""
    api = api_workflow(comfy_server, "layered_t2v", seed=31)
    tokens = "tok_%year%-%month%-%day%_%width%x%height%"
    api["7"]["inputs"]["filename_prefix"] = f"%date:yyyy-MM-dd%/{tokens}_s%LayerT2VSampler.seed%"
    api["20"] = {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0}}
    api["21"] = {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": tokens}}
    day_before = time.strftime("%Y-%m-%d")
    entry, status = run(comfy_server, api)
    days = {day_before, time.strftime("%Y-%m-%d")}
    assert status == "success", error_message(entry)
    comfy_name = entry["outputs"]["21"]["images"][0]["filename"]  # e.g. tok_2026-12-01_32x32_00001_.png
    expanded = comfy_name.rsplit("_", 2)[0]
    assert "%" not in expanded and "32x32" in expanded
    folder = entry["outputs"]["7"]["layert2v_folder"][0]
    day, name = folder.split("/")
    assert day in days
    assert name.startswith(f"{expanded}_s31_"), (name, expanded)
    assert (comfy_server.output_dir / folder / "layers.json").is_file()
