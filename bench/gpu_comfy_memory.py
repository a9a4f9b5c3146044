"""GPU check of issue 22: the pack's models under ComfyUI 0.30.0's model management, next to a stock model.

    python bench/gpu_comfy_memory.py --json $OUT/gpu_comfy_memory.json   # lent GPU, project root, ~2 minutes
    .venv/bin/python bench/gpu_comfy_memory.py --dry-run                  # CPU: every step at toy size

Needs ComfyUI's tree (--comfy; default .cache/comfyui/0.30.0/ComfyUI, of which only comfy/ is imported:
carry `.cache/comfyui/0.30.0/ComfyUI/comfy`, about 35 MB) and, like bench/gpu_generation.py, the wheels
of bench/wheels (gpu_vendor.py). Packages ComfyUI imports at start-up but that no step here uses (Pillow,
einops, scipy, comfy-aimdo, torchvision) get inert placeholders when the machine lacks them, and a
missing comfy-kitchen takes ComfyUI's own no-kitchen path; each scenario's header names them.

Each scenario is a fresh process, because ComfyUI reads its launch flags once, at import:
- stock-first: a stock model (8.6 GB; ComfyUI's own ModelPatcher over comfy.ops layers, as its loaders
  build) is loaded first, with --reserve-vram set from this GPU's free memory so that ours cannot fit
  beside it (any card size, no 80 GB stock model); then our workflow, through the same
  calls the nodes make (nodes/model_management.py, the core pipeline): our text encoder encodes, the
  DiT samples, the VAE decodes. ComfyUI must evict (part of) the stock model for our DiT; the VAE
  must leave after decoding; "Unload Models" (unload_all_models) must give the VRAM back.
- reserve: --reserve-vram set (from this GPU's free memory) so that only part of our DiT fits: it must
  run with blocks streamed (layert2v_core/offload.py).
- novram: --novram: every DiT block streams.
Our models are the full-size Wan2.1-1.3B DiT architecture (random bf16 weights), the Wan2.1 VAE and
mask VAE (fp32, as the VAE loader loads them) and a 2-block UMT5 of the DiT's text width.
Printed: one row per step with VRAM allocated and peak, and every model in current_loaded_models with
its bytes on the GPU and streamed blocks; then the checks. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import gpu_vendor  # noqa: E402

VENDOR = gpu_vendor.ensure_imports()
# Imported by ComfyUI's comfy/ at start-up, never called on the model-management path measured here.
COMFY_UNUSED_IMPORTS = ("PIL", "einops", "scipy", "comfy_aimdo", "torchvision")

import torch  # noqa: E402
from _common import GIB, machine, table  # noqa: E402

SCENARIOS = ("stock-first", "reserve", "novram")
PROMPTS = dict(full="a red circle moving right over blue stripes", background="blue stripes",
               foregrounds=["a red circle moving right"])
STOCK_LAYERS, STOCK_WIDTH = 64, 8192   # the stock model: 8.6 GB of bf16 weights
TEXT_LEN = 64  # the tiny tokenizer spells unknown words letter by letter: room for the prompts above
SIZE = dict(frames=17, height=256, width=448, steps=4)
DRY_SIZE = dict(frames=5, height=32, width=32, steps=2)
TINY_DIT = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=32, ffn_dim=64, num_layers=3, cross_attn_norm=True, qk_norm="rms_norm_across_heads")
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True])


# ---- the worker: one scenario in this process ---------------------------------------------------------
def random_weights(build):
    """build() with its parameters created empty (accelerate) and then filled: seconds for 1.3 B parameters,
    not minutes of initialisers. Buffers (RoPE tables) are built for real."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = build()
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            filled = torch.empty(p.shape, dtype=p.dtype).normal_(0.0, 0.02)
            module._parameters[name] = torch.nn.Parameter(filled, requires_grad=False)
    return model


def build_ours(dry: bool):
    from layert2v_core.config import LayerT2VConfig
    from layert2v_core.dit import LayeredWanTransformer
    from layert2v_core.mask_vae import MaskVAE
    from layert2v_core.text import TextEncoder
    from layert2v_core.tiny import build_tiny_tokenizer
    from layert2v_core.weights.loading import LayerT2VModel, LayerVAE
    from layert2v_core.weights.wan_single_file import build_transformer_from_config, build_vae_from_config, shipped_config
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    base = random_weights(lambda: build_transformer_from_config(TINY_DIT if dry else shipped_config("transformer"),
                                                                dtype=torch.bfloat16))
    dit = LayeredWanTransformer(base, LayerT2VConfig(max_foregrounds=1, text_len=TEXT_LEN)).eval()
    model = LayerT2VModel.from_dit(dit, name="Wan2.1-1.3B architecture, random bf16")
    vae = build_vae_from_config(TINY_VAE if dry else shipped_config("vae"), dtype=torch.float32).eval()
    layer_vae = LayerVAE(vae=vae, mask_vae=MaskVAE(vae, lora_rank=4 if dry else 128).eval())
    tokenizer = build_tiny_tokenizer()
    width = dit.text_dim
    config = UMT5Config(vocab_size=len(tokenizer), d_model=width, d_kv=64, d_ff=2 * width, num_layers=2,
                        num_heads=max(1, width // 64), feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1)
    umt5 = random_weights(lambda: UMT5EncoderModel(config).to(torch.bfloat16))
    encoder = TextEncoder(umt5.eval(), tokenizer, text_len=TEXT_LEN, device="cpu")
    return model, layer_vae, encoder


class _KitchenFallback(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """comfy-kitchen (166 MB of CUDA kernels) absent: an empty top-level module, and ImportError for its
    submodules, which is the case ComfyUI's quant_ops and float.py handle themselves (no fp8/fp4 ops).
    Only comfy/ldm/joyimage imports the package bare, for a forward that never runs here."""

    def find_spec(self, name, path=None, target=None):
        if name == "comfy_kitchen":
            return importlib.machinery.ModuleSpec(name, self)
        if name.startswith("comfy_kitchen."):
            raise ImportError(f"{name}: comfy-kitchen is not installed on this machine")
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        pass


def import_comfy(comfy_dir: Path, flags: dict):
    """ComfyUI's model management with these launch flags (set before comfy.model_management reads them)."""
    placeholders = gpu_vendor.add_placeholders(COMFY_UNUSED_IMPORTS)
    if importlib.util.find_spec("comfy_kitchen") is None:
        sys.meta_path.append(_KitchenFallback())
        placeholders.append("comfy_kitchen (ComfyUI's own fallback)")
    sys.path.insert(0, str(comfy_dir))
    import comfy.cli_args

    for name, value in flags.items():
        setattr(comfy.cli_args.args, name, value)
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops

    from tools.pack_module import load_node_module

    models = load_node_module("model_management", ("layert2v_core.memory", "layert2v_core.offload"))
    return mm, comfy, models, placeholders


class Stock(torch.nn.Module):
    """A stock-looking model: comfy.ops layers (castable, so ComfyUI can unload part of it)."""

    def __init__(self, comfy_ops, layers: int, width: int):
        super().__init__()
        self.layers = torch.nn.ModuleList(comfy_ops.disable_weight_init.Linear(width, width, dtype=torch.bfloat16)
                                          for _ in range(layers))


def worker(scenario: str, comfy_dir: Path, dry: bool) -> dict:
    from layert2v_core.layout import LayerLayout
    from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline, encode_conditioning
    from layert2v_core.sampler import SamplerConfig
    from layert2v_core.variants import sample_layers

    size = DRY_SIZE if dry else SIZE
    started = time.monotonic()
    model, layer_vae, encoder = build_ours(dry)
    cuda = torch.cuda.is_available() and not dry
    free_at_start = torch.cuda.mem_get_info()[0] if cuda else 0
    pipe = LayerT2VPipeline(model.dit, None, None, device="cuda" if cuda else "cpu")
    layout = pipe.layout(1, size["frames"], size["height"], size["width"])
    config = SamplerConfig(steps=size["steps"], cfg=5.0, sampler="unipc", seed=0)
    prompts = LayerPrompts(**PROMPTS)
    probe = encode_conditioning(prompts, encoder=encoder)  # CPU, before anything is managed: for the estimate
    estimate = pipe.sampling_memory(layout, probe, config)
    working = estimate.activations + estimate.latents
    dit_bytes = sum(p.numel() * p.element_size() for p in model.dit.parameters())

    stock_layers, stock_width = (2, 64) if dry else (STOCK_LAYERS, STOCK_WIDTH)
    stock_bytes = stock_layers * stock_width ** 2 * 2
    flags = {"cpu": dry}
    if scenario == "novram":
        flags["novram"] = True
    if cuda and scenario == "reserve":  # what is left holds about half the DiT beside the working memory
        flags["reserve_vram"] = max(0.0, (free_at_start - working - dit_bytes // 2) / GIB)
    if cuda and scenario == "stock-first":  # the same, with the stock model in it too: it must make room
        flags["reserve_vram"] = max(0.0, (free_at_start - stock_bytes - working - dit_bytes // 2) / GIB)
    mm, comfy, models, placeholders = import_comfy(comfy_dir, flags)
    models.manage_dit(model)
    models.manage_vae(layer_vae)
    models.manage_text_encoder(encoder)
    device = mm.get_torch_device()
    rows, result = [], {"scenario": scenario, "flags": flags, "placeholders": placeholders,
                        "working_gb": working / GIB, "dit_gb": dit_bytes / GIB, "vram_state": mm.vram_state.name}

    def snapshot(step: str) -> dict:
        if cuda:
            torch.cuda.synchronize()
        listed = []
        for loaded in mm.current_loaded_models:
            patcher = loaded.model
            placement = getattr(patcher.model, "placement", None)
            listed.append({"name": type(patcher.model).__name__, "gpu_gb": patcher.loaded_size() / GIB,
                           "size_gb": patcher.model_size() / GIB,
                           "streamed": placement.streamed_blocks if placement is not None else None})
        row = {"step": step, "allocated_gb": torch.cuda.memory_allocated() / GIB if cuda else None,
               "peak_gb": torch.cuda.max_memory_allocated() / GIB if cuda else None, "models": listed}
        rows.append(row)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        return row

    baseline = stock_loaded = snapshot("start")
    if scenario == "stock-first":
        stock = comfy.model_patcher.ModelPatcher(Stock(comfy.ops, stock_layers, stock_width), load_device=device,
                                                 offload_device=mm.unet_offload_device())
        mm.load_models_gpu([stock])
        stock_loaded = snapshot(f"stock model loaded ({stock_layers} x {stock_width}^2 bf16)")

    models.load([encoder])
    conditioning = encode_conditioning(prompts, encoder=encoder)
    snapshot("text encoder loaded, prompts encoded")
    models.load_for_sampling(pipe, layout, conditioning, config, model)
    dit_loaded = snapshot("DiT loaded for sampling")
    latent = sample_layers(pipe, layout, conditioning, config)
    sampled = snapshot(f"sampled {layout.num_tokens} tokens x {size['steps']} steps")
    decoder = LayerT2VPipeline(dit=None, vae=layer_vae.vae, mask_vae=layer_vae.mask_vae)
    with models.vae_loaded_during(layer_vae, layout.num_frames, layout.height, layout.width):
        frames = decoder.decode(latent.float().cpu(), layout, out_device="cpu")
        decoding = snapshot("VAE loaded, every layer decoded")
    decoded = snapshot("after the decode")
    mm.unload_all_models()  # "Unload Models" (POST /free unload_models)
    unloaded = snapshot("after unload_all_models")

    def named(row, name):
        return next((m for m in row["models"] if m["name"] == name), None)

    dit_row = named(dit_loaded, "LayerT2VDiT")
    shape = (layout.num_frames, layout.height, layout.width)
    checks = {"DiT listed while sampling": dit_row is not None,
              "decoded every layer": all(tuple(v.shape[:3]) == shape for v in frames.rgb.values())
              and len(frames.rgb) == 3 and len(frames.alpha) == 1,
              "VAE listed while decoding": named(decoding, "LayerT2VVAE") is not None,
              "VAE left after decoding": named(decoded, "LayerT2VVAE") is None,
              "unload_all_models lists nothing": unloaded["models"] == []}
    if cuda:
        checks["VRAM back to the start after unload (+64 MB)"] = unloaded["allocated_gb"] <= baseline["allocated_gb"] + 1 / 16
        checks["VAE's VRAM returned after decoding (+64 MB)"] = decoded["allocated_gb"] <= sampled["allocated_gb"] + 1 / 16
        if scenario == "stock-first":
            stock_before = named(stock_loaded, "Stock")
            stock_after = named(dit_loaded, "Stock")
            checks["stock model evicted (fully or in part) for our DiT"] = (
                stock_after is None or stock_after["gpu_gb"] < stock_before["gpu_gb"] - 0.01)
            checks["our DiT whole on the GPU"] = dit_row is not None and dit_row["streamed"] == 0
        if scenario == "reserve":
            checks["DiT runs with some blocks streamed"] = dit_row is not None and 0 < dit_row["streamed"]
        if scenario == "novram":
            checks["DiT runs with every block streamed"] = dit_row is not None and dit_row["streamed"] == len(
                model.dit.streamable_blocks())
    result.update(rows=rows, checks=checks, seconds=time.monotonic() - started)
    return result


# ---- the parent: every scenario in its own process, one table ------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfy", type=Path, default=ROOT / ".cache" / "comfyui" / "0.30.0" / "ComfyUI")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes (ComfyUI under --cpu)")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="run only these scenarios")
    parser.add_argument("--worker-timeout", type=float, default=300.0, help="seconds per scenario process")
    parser.add_argument("--scenario", choices=SCENARIOS, help=argparse.SUPPRESS)  # the worker process
    args = parser.parse_args()
    if not (args.comfy / "comfy" / "model_management.py").is_file():
        print(f"error: no ComfyUI tree at {args.comfy}; give --comfy (carry its comfy/ folder)", file=sys.stderr)
        return 2
    if args.scenario:
        print(json.dumps(worker(args.scenario, args.comfy, args.dry_run)))
        return 0

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    print(f"gpu_comfy_memory: {machine(device)}; vendor {VENDOR}" + ("; DRY RUN (CPU, toy sizes)" if args.dry_run else ""))
    results, failed = [], []
    for scenario in args.only or SCENARIOS:
        command = [sys.executable, *(["-S"] if sys.flags.no_site else []), __file__, "--scenario", scenario,
                   "--comfy", str(args.comfy)] + (["--dry-run"] if args.dry_run else [])
        run = subprocess.run(command, capture_output=True, text=True, timeout=args.worker_timeout)
        if run.returncode != 0:
            failed.append(f"{scenario}: the worker failed: {run.stderr.strip().splitlines()[-1:]}")
            print(run.stderr[-3000:], file=sys.stderr)
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"\n## {scenario}: flags {result['flags']}, vram state {result['vram_state']}, our DiT "
              f"{result['dit_gb']:.2f} GB, sampling working memory {result['working_gb']:.2f} GB, "
              f"{result['seconds']:.0f} s; placeholders {result['placeholders']}")
        table(["step", "allocated GB", "peak GB since the last row", "current_loaded_models: GB on the GPU / size (streamed blocks)"],
              [[r["step"], _gb(r["allocated_gb"]), _gb(r["peak_gb"]),
                "; ".join(f"{m['name']} {m['gpu_gb']:.2f}/{m['size_gb']:.2f}"
                          + (f" ({m['streamed']})" if m["streamed"] else "") for m in r["models"]) or "-"]
               for r in result["rows"]])
        for check, ok in result["checks"].items():
            print(f"- {'ok  ' if ok else 'FAIL'} {check}")
            if not ok:
                failed.append(f"{scenario}: {check}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(device), "vendor": VENDOR, "results": results,
                                         "failed": failed}, indent=1))
    print("\n" + ("all checks passed" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


def _gb(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
