"""Speed options through a real ComfyUI server: the sampler's step cache and guidance range, the loader's
attention kernel."""

from __future__ import annotations

import json

from test_comfy_nodes import api_workflow, error_message, new_sets, run


def manifest_of(server, before):
    created = new_sets(server, before)
    assert len(created) == 1
    return json.loads((created.pop() / "layers.json").read_text())


def test_sampler_speed_options_run_fewer_forwards(comfy_server):
    forwards = {}
    for name, options in {"off": {}, "on": {"step_cache": 5.0, "cfg_end": 0.5, "cfg_after_end": "reuse"}}.items():
        before = new_sets(comfy_server, set())
        entry, status = run(comfy_server, api_workflow(comfy_server, "layered_t2v", steps=6, **options))
        assert status == "success", error_message(entry)
        meta = manifest_of(comfy_server, before)["metadata"]
        forwards[name] = meta["dit_forwards"]
        if name == "on":
            assert meta["step_cache"] == 5.0 and meta["cfg_range"] == [0.0, 0.5] and meta["cfg_outside"] == "reuse"
    assert forwards["off"] == 12 and forwards["on"] < 8


def test_loader_refuses_a_missing_attention_kernel_in_one_line(comfy_server):
    api = api_workflow(comfy_server, "layered_t2v")
    loader = next(n for n in api.values() if n["class_type"] == "LayerT2VLoadModel")
    loader["inputs"]["attention"] = "flash"
    entry, status = run(comfy_server, api)
    assert status == "error"
    message = error_message(entry)
    assert message.startswith("LayerT2V Load Model: attention='flash'") and "\n" not in message.strip()
    assert "use 'sdpa'" in message
