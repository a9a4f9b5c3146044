"""Test-only ComfyUI pack (tests/test_comfy_memory.py links it into a server of its own): lets a test see
the server's model management from inside, over HTTP. No nodes.

    GET  /layert2v_test/loaded_models   comfy.model_management.current_loaded_models, entry by entry,
                                        and the device policy and reserve of this server's launch flags
    POST /layert2v_test/watch           weak references to every LayerT2V model object alive now
    GET  /layert2v_test/watch           which of them are still alive after a garbage collection
"""

import gc
import weakref

import comfy.model_management as mm
from aiohttp import web
from server import PromptServer

# The pack's models, its ComfyUI wrappers and their patchers: the objects "Free model and node cache" must free.
WATCHED_TYPES = {"LayeredWanTransformer", "MaskVAE", "UMT5EncoderModel", "LayerT2VDiT", "LayerT2VVAE",
                 "LayerT2VTextEncoder", "PlacedModelPatcher"}
_watched: list[tuple[str, weakref.ref]] = []

routes = PromptServer.instance.routes


def _entry(loaded) -> dict:
    patcher = loaded.model
    return {"patcher": type(patcher).__name__, "model": type(patcher.model).__name__,
            "load_device": str(patcher.load_device), "offload_device": str(patcher.offload_device),
            "current_device": str(patcher.current_loaded_device()), "loaded_bytes": int(patcher.loaded_size()),
            "size": int(patcher.model_size())}


@routes.get("/layert2v_test/loaded_models")
async def loaded_models(request):
    policy = {"torch_device": mm.get_torch_device(), "unet_offload_device": mm.unet_offload_device(),
              "vae_device": mm.vae_device(), "vae_offload_device": mm.vae_offload_device(),
              "text_encoder_device": mm.text_encoder_device(),
              "text_encoder_offload_device": mm.text_encoder_offload_device()}
    return web.json_response({"models": [_entry(m) for m in mm.current_loaded_models if m.model is not None],
                              "policy": {k: str(v) for k, v in policy.items()},
                              "vram_state": mm.vram_state.name, "extra_reserved_memory": mm.extra_reserved_memory()})


@routes.post("/layert2v_test/watch")
async def watch(request):
    _watched.clear()
    for obj in gc.get_objects():
        name = type(obj).__name__
        if name in WATCHED_TYPES:
            _watched.append((name, weakref.ref(obj)))
    return web.json_response(sorted(name for name, _ in _watched))


@routes.get("/layert2v_test/watch")
async def alive(request):
    gc.collect()
    return web.json_response(sorted(name for name, ref in _watched if ref() is not None))


NODE_CLASS_MAPPINGS = {}
