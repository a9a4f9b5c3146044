"""Run in a fresh process by tests/test_comfy_memory.py: ComfyUI's own model-management calls (a given
version's comfy.model_management.LoadedModel and load_models_gpu, under --cpu) driving the pack's
patcher (nodes/model_management.py) on a small layered DiT, through the partial loads that --lowvram /
--novram budgets cause on a GPU: the budget ComfyUI hands over, more room later, a partial unload when
another model needs room, the full unload.

    python comfy_patcher_probe.py COMFY_DIR OUT.json

On the CPU every move is a no-op copy, so this checks the bookkeeping ComfyUI relies on and that the
model computes the same in every state, not the transfers (bench/gpu_comfy_memory.py measures those).
"""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(comfy_dir: str, out_path: str) -> None:
    import torch

    sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.model_management as mm

    sys.path.insert(0, str(REPO))
    # By file: ComfyUI's own top-level `nodes` module is on the path, so our package name is taken.
    from tools.pack_module import load_node_module

    models = load_node_module("model_management", ("layert2v_core.memory", "layert2v_core.offload"))
    from layert2v_core.config import LayerT2VConfig
    from layert2v_core.dit import LayeredWanTransformer
    from layert2v_core.layout import LayerLayout
    from layert2v_core.tiny import build_tiny_transformer
    from layert2v_core.weights.loading import LayerT2VModel

    torch.manual_seed(0)
    dit = LayeredWanTransformer(build_tiny_transformer(num_layers=4), LayerT2VConfig(text_len=8)).eval()
    model = LayerT2VModel.from_dit(dit, name="probe")
    models.manage_dit(model)
    patcher = models.patcher_of(model)
    placement = patcher.model.placement
    block = max(placement.block_bytes)

    layout = LayerLayout(1, 5, 32, 32)
    x = torch.randn(1, 16, layout.num_segments * layout.latent_frames, 4, 4)
    context, t = torch.randn(1, 3, 8, 32), torch.tensor([500.0])

    def velocity():
        with torch.no_grad():
            return dit(x, t, context, layout)

    reference = velocity()

    def state(name):
        return {"state": name, "loaded": patcher.loaded_size(), "size": patcher.model_size(),
                "streamed": placement.streamed_blocks, "lowvram": bool(patcher.model.model_lowvram),
                "device": str(patcher.current_loaded_device()), "same_output": bool(torch.equal(velocity(), reference)),
                "hooks": sum(len(b._forward_pre_hooks) + len(b._forward_hooks) for b in dit.streamable_blocks())}

    report = {"base": placement.base_bytes, "block": block, "blocks": len(placement.block_bytes),
              "size": placement.size, "load_device": str(patcher.load_device),
              "offload_device": str(patcher.offload_device), "steps": []}
    steps = report["steps"]
    loaded = mm.LoadedModel(patcher)
    # A budget that holds the base, one block and one block's streaming room: what a short GPU gives.
    loaded.model_load(lowvram_model_memory=placement.base_bytes + 2 * block)
    steps.append(state("budget: base + 1 block + room"))
    loaded.model_use_more_vram(2 * block)  # as in ComfyUI's own loads, a block needs its size plus streaming room
    steps.append(state("room for one block more"))
    report["partial_unload_returned"] = loaded.model_unload(memory_to_free=block)
    steps.append(state("partial unload of one block"))
    report["full_unload_returned"] = loaded.model_unload()
    steps.append(state("full unload"))
    loaded.model_load(lowvram_model_memory=0.1)  # --novram: ComfyUI's budget of nothing
    steps.append(state("novram budget"))
    loaded.model_unload()

    mm.load_models_gpu([patcher])  # the loaders' path: no budget on the CPU, a full load
    steps.append(state("load_models_gpu"))
    report["listed"] = [type(m.model.model).__name__ for m in mm.current_loaded_models]
    mm.unload_all_models()  # what "Unload Models" (POST /free) calls
    steps.append(state("unload_all_models"))
    report["listed_after_unload"] = [type(m.model.model).__name__ for m in mm.current_loaded_models]
    Path(out_path).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
