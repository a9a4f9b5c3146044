"""The pack inside a real ComfyUI 0.30.0 server: loading, HTTP API, and the real frontend in chromium;
and, as a compatibility check, inside ComfyUI 0.3.75 (loads, one workflow runs).

The server (fixture `comfy_server`, tests/conftest.py) starts once per session; see tests/comfyhost.
"""

from __future__ import annotations

import random
import re

import pytest
from PIL import Image, ImageStat

from comfyhost.browser import capture_page, find_chromium, frontend_url
from comfyhost.client import PromptRejected
from comfyhost.server import PACK_NAME
from test_comfy_nodes import api_workflow

MARKER_JS = f"/extensions/{PACK_NAME}/layert2v.js"


def smallest_workflow(color: int) -> dict:
    """API form of the smallest runnable workflow of the pack, no model needed: a stock solid image and
    mask through LayerT2V Compose RGBA into a stock Preview Image."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 8, "height": 8}},
        "3": {"class_type": "LayerT2VComposeRGBA",
              "inputs": {"foreground": ["1", 0], "alpha": ["2", 0], "input_is": "straight"}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }


def run_smallest_workflow(server) -> None:
    color = random.randrange(0xFFFFFF)  # a new input each time, so ComfyUI cannot answer from its cache
    entry = server.wait(server.queue_prompt(smallest_workflow(color)), timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    assert len(entry["outputs"]["4"]["images"]) == 1


def test_server_runs_comfyui_0_30_0(comfy_server):
    assert comfy_server.running
    stats = comfy_server.get("/system_stats")
    assert stats["system"]["comfyui_version"] == "0.30.0"
    assert comfy_server.get("/settings/Comfy.TutorialCompleted") is True  # no first-run dialog in the browser


def test_object_info_lists_save_layers_in_layert2v_category(comfy_server):
    save = comfy_server.object_info()["LayerT2VSaveLayers"]
    assert save["category"] == "LayerT2V"
    assert save["output_node"] is True
    assert save["input"]["required"]["filename_prefix"][0] == "STRING"


def test_server_log_shows_pack_imported_without_error(comfy_server):
    our_lines = [line for line in comfy_server.log_text().splitlines() if f"custom_nodes/{PACK_NAME}" in line]
    assert our_lines, "the server log never mentions the pack: was it linked into custom_nodes?"
    failures = [line for line in our_lines
                if "IMPORT FAILED" in line or "Cannot import" in line or "comfy_entrypoint" in line]
    assert not failures, "\n".join(failures)


def test_extensions_lists_and_serves_our_js(comfy_server):
    assert MARKER_JS in comfy_server.get("/extensions")
    assert "app.registerExtension" in comfy_server.get(MARKER_JS)


def test_smallest_workflow_runs(comfy_server):
    run_smallest_workflow(comfy_server)


def test_unknown_node_is_rejected_readably_and_server_keeps_serving(comfy_server):
    with pytest.raises(PromptRejected) as rejected:
        comfy_server.queue_prompt({"1": {"class_type": "NoSuchLayerT2VNode", "inputs": {}}})
    assert rejected.value.status == 400
    error = rejected.value.body["error"]
    assert error["type"] == "missing_node_type"  # ComfyUI 0.3.75 said "invalid_prompt"
    assert "NoSuchLayerT2VNode" in error["message"]
    run_smallest_workflow(comfy_server)


def test_interrupt_when_idle_is_harmless(comfy_server):
    comfy_server.interrupt()
    run_smallest_workflow(comfy_server)


def test_frontend_loads_and_runs_our_extension(comfy_server, test_output_dir):
    if find_chromium() is None:
        pytest.skip("chromium is not installed (make system-deps installs it as root)")
    screenshot = test_output_dir / "frontend.png"
    page = capture_page(frontend_url(comfy_server.base_url), screenshot)

    assert 'data-layert2v-loaded="true"' in page.dom, "the pack's JS did not run in the frontend"
    registered = re.search(r'data-layert2v-nodes="([^"]*)"', page.dom)
    assert registered and "LayerT2VSampler" in registered.group(1).split(","), "the frontend did not register our node"
    assert any("LayerT2V extension loaded" in message for message in page.console), page.console
    # Anything else from or about our JS (a load error names its URL) is a problem.
    ours = [m for m in page.console if f"/extensions/{PACK_NAME}/" in m and "LayerT2V extension loaded" not in m]
    assert not ours, "console messages about the pack's JS:\n" + "\n".join(ours)

    with Image.open(screenshot) as image:
        assert image.size == (1400, 900)
        # A blank or single-colour page means the frontend did not render.
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 10



@pytest.mark.parametrize("template, boxes", [("layered_t2v", "1"), ("layered_t2v_two_foregrounds", "2")])
def test_pack_workflow_opens_in_frontend_with_prompt_boxes(comfy_server, test_output_dir, template, boxes):
    """The workflow loads from the pack's templates, its nodes exist, and our widget logic ran on it."""
    if find_chromium() is None:
        pytest.skip("chromium is not installed (make system-deps installs it as root)")
    screenshot = test_output_dir / f"workflow_{template}.png"
    page = capture_page(frontend_url(comfy_server.base_url, template=template), screenshot)
    shown = re.search(r'data-layert2v-prompt-boxes="([^"]*)"', page.dom)
    assert shown and shown.group(1) == boxes, "the Layer Prompts node did not load or our JS did not run on it"
    missing = [m for m in page.console if "missing" in m.lower() and "LayerT2V" in m]
    assert not missing, missing


def test_pack_loads_and_runs_in_comfyui_0_3_75(comfy_server_0_3_75):
    server = comfy_server_0_3_75
    assert server.get("/system_stats")["system"]["comfyui_version"] == "0.3.75"
    ours = sorted(name for name, info in server.object_info().items() if info["category"].startswith("LayerT2V"))
    assert len(ours) == 14, ours
    test_server_log_shows_pack_imported_without_error(server)
    entry = server.wait(server.queue_prompt(api_workflow(server, "layered_t2v")), timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    viewer = entry["outputs"]["7"]["layert2v_viewer"]
    assert [e["layer"] for e in viewer][:3] == ["full", "recomposite", "background"]
