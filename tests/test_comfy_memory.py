"""The pack's models under ComfyUI's model management, in real ComfyUI 0.30.0 and 0.3.75 servers (--cpu).

Seen from inside the server (tests/memory_probe_pack): after our workflow our DiT and text encoder sit
in current_loaded_models beside a stock model (ComfyUI 0.30.0's own upscale-model nodes on a tiny file), with
the devices ComfyUI's policy gives that kind of model under the server's flags; the VAE went through
load_models_gpu and left after decoding; "Unload Models" (POST /free unload_models) takes ours out as it
takes the stock one out, and the next run loads them again; "Free model and node cache" lets every
model object of ours be collected; --disable-smart-memory unloads ours after each prompt, as ComfyUI does
its own. ComfyUI's partial loads (the budgets --lowvram / --novram give on a GPU) are driven through
each version's own LoadedModel in tests/comfy_patcher_probe.py. ComfyUI never evicts anything under
--cpu: eviction and VRAM are measured by bench/gpu_comfy_memory.py on a GPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyhost.install import HOSTS, ensure_installed
from comfyhost.models import install_tiny_models
from comfyhost.server import ComfyServer
from comfyhost.workflow import ui_to_api

ROOT = Path(__file__).resolve().parents[1]
OURS = {"LayerT2VDiT", "LayerT2VTextEncoder", "LayerT2VVAE"}
STOCK_UPSCALER = "tiny_compact.safetensors"


def write_stock_upscaler(path: Path) -> None:
    """A 2-conv RealESRGAN Compact net (spandrel's own class): what ComfyUI's Load Upscale Model reads."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in Compact(num_feat=4, num_conv=1, upscale=1).state_dict().items()},
              str(path))


def start_server(tmp_path_factory, version: str, *flags: str) -> ComfyServer:
    ensure_installed()
    server = ComfyServer(HOSTS[version].comfy_dir, tmp_path_factory.mktemp(f"comfy-memory-{version}"),
                         extra_args=flags)
    (server.base_dir / "custom_nodes").mkdir(parents=True)
    (server.base_dir / "custom_nodes" / "memory_probe_pack").symlink_to(Path(__file__).with_name("memory_probe_pack"))
    install_tiny_models(server.base_dir / "models")
    write_stock_upscaler(server.base_dir / "models" / "upscale_models" / STOCK_UPSCALER)
    return server.start()


@pytest.fixture(scope="module", params=["0.30.0", "0.3.75"])
def server(request, tmp_path_factory, test_output_dir):
    server = start_server(tmp_path_factory, request.param)
    server.version = request.param
    try:
        yield server
    finally:
        server.stop()
        (test_output_dir / f"comfyui-memory-{request.param}.log").write_text(server.log_text())


def our_workflow(server, seed=42) -> dict:
    ui = json.loads((ROOT / "workflows" / "layered_t2v.json").read_text())
    api = ui_to_api(ui, server.object_info())
    for node in api.values():
        if node["class_type"] == "LayerT2VSampler":
            node["inputs"].update({"width": 32, "height": 32, "frames": 5, "steps": 2, "seed": seed})
    return api


def with_stock_model(api: dict) -> dict:
    """The same prompt also runs ComfyUI's own Load Upscale Model + Upscale Image (using Model): a model
    only stays cached (and loaded) while the graph that loaded it is the one that runs."""
    return {**api,
            "101": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": STOCK_UPSCALER}},
            "102": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
            "103": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["101", 0], "image": ["102", 0]}},
            "104": {"class_type": "PreviewImage", "inputs": {"images": ["103", 0]}}}


def run(server, api) -> None:
    entry = server.wait(server.queue_prompt(api), timeout=600)
    messages = [data.get("exception_message") for kind, data in entry["status"].get("messages", [])
                if kind == "execution_error"]
    assert entry["status"]["status_str"] == "success", messages


def loaded(server) -> dict:
    return server.get("/layert2v_test/loaded_models")


def free(server, flags: dict, done, timeout=300.0) -> bool:
    """POST /free and poll `done()` until it holds. The prompt worker reads the flags only when it wakes:
    a POST that lands while it is still busy after a prompt (its garbage collection) finds nobody
    waiting and sits until the next prompt or 1000 s (ComfyUI's own race, 0.30.0 and 0.3.75), so the
    POST is repeated, as a user clicks "Unload Models" again."""
    deadline = time.monotonic() + timeout
    while True:
        server.post("/free", flags)
        for _ in range(20):
            if done():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.25)


def by_model(state) -> dict:
    return {m["model"]: m for m in state["models"]}


def test_our_models_are_managed_as_stock_ones_and_unload_models_releases_them(server):
    run(server, with_stock_model(our_workflow(server)))
    state = loaded(server)
    models = by_model(state)
    assert {"LayerT2VDiT", "LayerT2VTextEncoder"} <= set(models), state["models"]
    if server.version != "0.3.75":  # 0.3.75's upscale node still moved its model itself, unlisted
        stock = models["SRVGGNetCompact"]
        assert stock["patcher"] == "ModelPatcher" and stock["loaded_bytes"] == stock["size"] > 0
    policy = state["policy"]
    dit, text_encoder = models["LayerT2VDiT"], models["LayerT2VTextEncoder"]
    assert (dit["load_device"], dit["offload_device"]) == (policy["torch_device"], policy["unet_offload_device"])
    assert (text_encoder["load_device"], text_encoder["offload_device"]) == (
        policy["text_encoder_device"], policy["text_encoder_offload_device"])
    for ours in (dit, text_encoder):
        # the demo model's weights, held whole (no budget under --cpu); our patcher class, ComfyUI's bookkeeping
        assert ours["patcher"] == "PlacedModelPatcher" and ours["loaded_bytes"] == ours["size"] > 100_000
    assert dit["size"] > 5 * 2 ** 20   # the demo DiT (fp32): most of the pack's 13 MiB of weights
    # The VAE was loaded through ComfyUI for the decode and left after it.
    assert "LayerT2VVAE" not in models
    assert "Requested to load LayerT2VVAE" in server.log_text()

    # the frontend's "Unload Models" button
    assert free(server, {"unload_models": True}, lambda: not loaded(server)["models"]), loaded(server)["models"]

    run(server, our_workflow(server, seed=43))  # a new seed: the Sampler runs again and ComfyUI reloads the DiT
    assert "LayerT2VDiT" in by_model(loaded(server))


def test_free_model_and_node_cache_lets_every_model_of_ours_be_collected(server):
    run(server, our_workflow(server, seed=44))
    watched = server.post("/layert2v_test/watch")
    for name in ("LayeredWanTransformer", "MaskVAE", "UMT5EncoderModel", "LayerT2VDiT", "LayerT2VVAE",
                 "LayerT2VTextEncoder", "PlacedModelPatcher"):
        assert name in watched, watched
    # "Free model and node cache"
    assert free(server, {"unload_models": True, "free_memory": True}, lambda: not server.get("/layert2v_test/watch")), \
        f"still alive after the node cache was freed: {server.get('/layert2v_test/watch')}"
    run(server, our_workflow(server, seed=45))  # and everything loads again from the files


def test_disable_smart_memory_unloads_ours_after_each_prompt(tmp_path_factory, test_output_dir):
    server = start_server(tmp_path_factory, "0.30.0", "--disable-smart-memory")
    try:
        run(server, our_workflow(server))
        log = server.log_text()
        assert "Requested to load LayerT2VDiT" in log and "Requested to load LayerT2VTextEncoder" in log
        assert loaded(server)["models"] == []
    finally:
        server.stop()
        (test_output_dir / "comfyui-memory-disable-smart-memory.log").write_text(server.log_text())


@pytest.mark.parametrize("version", ["0.30.0", "0.3.75"])
def test_comfyuis_partial_loads_drive_our_placement(version, tmp_path):
    """What --lowvram / --novram budgets do on a GPU, through that version's own LoadedModel (on the CPU)."""
    out = tmp_path / "probe.json"
    ensure_installed()
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("comfy_patcher_probe.py")),
                             str(HOSTS[version].comfy_dir), str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    base, block, size = report["base"], report["block"], report["size"]
    steps = {s["state"]: s for s in report["steps"]}
    assert report["blocks"] == 4 and all(s["same_output"] for s in steps.values()), report["steps"]

    budget = steps["budget: base + 1 block + room"]
    assert (budget["loaded"], budget["streamed"], budget["lowvram"]) == (base + block, 3, True)
    assert budget["hooks"] == 2 * 3                         # a fetch and a drop hook per streamed block
    more = steps["room for one block more"]
    assert (more["loaded"], more["streamed"]) == (base + 2 * block, 2)
    assert report["partial_unload_returned"] is False       # one block freed was enough: still loaded
    assert (steps["partial unload of one block"]["loaded"], steps["partial unload of one block"]["streamed"]) == (
        base + block, 3)
    assert report["full_unload_returned"] is True
    unloaded = steps["full unload"]
    assert (unloaded["loaded"], unloaded["hooks"], unloaded["device"]) == (0, 0, report["offload_device"])
    novram = steps["novram budget"]
    assert (novram["loaded"], novram["streamed"]) == (base, 4)  # only the base stays: every block streams
    full = steps["load_models_gpu"]
    assert (full["loaded"], full["streamed"], full["lowvram"], full["hooks"]) == (size, 0, False, 0)
    assert report["listed"] == ["LayerT2VDiT"] and report["listed_after_unload"] == []
    assert steps["unload_all_models"]["loaded"] == 0
