"""Generation end to end: seconds and peak memory, layered (K=1, K=2) vs a vanilla single-video run.

CPU, small model (tiny random models from layert2v_core/tiny.py, loaded from files like a user's):
    nice -n 10 .venv/bin/python bench/generation.py --model tiny
Full-size Wan2.1-1.3B architecture, random bf16 weights (speed does not depend on the weights), on GPU:
    .venv/bin/python bench/generation.py --model full --device cuda --steps 3
    .venv/bin/python bench/generation.py --model full --device cuda --steps 3 --compile
  384x672, 41 frames per layer, K=1 and K=2, CFG 5 (cond/uncond batched), UniPC; a warm-up step,
  then --steps timed steps extrapolated to 50; VAE (and MaskVAE) decode timed for real. The vanilla
  reference samples one 41-frame video with the same DiT weights (diffusers WanTransformer3DModel
  forward, one 512-token prompt, same CFG batching and scheduler) and decodes it. Text encoding is
  not timed (UMT5 runs once per prompt, is cached, and is offloaded before the DiT).
  Peak = torch.cuda.max_memory_allocated over the whole generation (weights included; the text encoder
  is not loaded: bench/gpu_generation.py measures it resident). Sampling time is the sampler's steps
  only (StepTimer): the DiT's offload to the CPU after sampling and its move back before are not in it.
CPU proof that the full-size path runs (full architecture, 30 blocks, tiny frame):
    nice -n 10 .venv/bin/python bench/generation.py --model full --dry-run
"""

from __future__ import annotations

import argparse
import tempfile
import time

import _common  # noqa: F401
import torch
from _common import GIB, StepTimer, header, peak_meter, sync, table

from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.layout import LayerLayout
from layert2v_core.mask_vae import MaskVAE
from layert2v_core.pipeline import LayerConditioning, LayerPrompts, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig, initial_noise, make_scheduler
from layert2v_core.vae_io import decode_latent

PAPER_STEPS = 50


def tiny_run(args) -> None:
    from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
    from layert2v_core.tiny import TINY_TEXT_LEN, write_tiny_model_files

    folder = tempfile.mkdtemp(prefix="layert2v_bench_")
    paths = write_tiny_model_files(folder, max_foregrounds=2)
    rows = []
    prompts = {1: LayerPrompts("a red cat on grass", "green grass field", ["a red cat walking"]),
               2: LayerPrompts("a dog and a bird at the beach", "empty beach", ["a brown dog running", "a white bird flying"])}
    config = SamplerConfig(steps=args.steps, cfg=5.0, sampler="unipc", seed=0)
    for k in (1, 2):
        with peak_meter("cpu") as whole:
            t0 = time.perf_counter()
            dit = load_layered_dit(paths["dit"], paths["adapter"], dtype="fp32")
            layer_vae = load_layer_vae(paths["vae"], paths["adapter"])
            text = load_text_encoder(paths["text_encoder"], text_len=TINY_TEXT_LEN, dtype="fp32")
            t_load = time.perf_counter() - t0
            pipe = LayerT2VPipeline(dit, layer_vae.vae, layer_vae.mask_vae, text, compile_dit=args.compile)
            layout = pipe.layout(k, args.frames, args.height, args.width)
            t1 = time.perf_counter()
            cond = pipe.encode_prompts(prompts[k])
            t_text = time.perf_counter() - t1
            t1 = time.perf_counter()
            pipe.encode_prompts(prompts[k])
            t_text_cached = time.perf_counter() - t1
            t1 = time.perf_counter()
            latent = pipe.sample_latent(layout, cond, config)
            t_sample = time.perf_counter() - t1
            t1 = time.perf_counter()
            pipe.decode(latent, layout)
            t_decode = time.perf_counter() - t1
            total = time.perf_counter() - t0
        rows.append([f"K={k}", layout.num_tokens, t_load, t_text * 1e3, t_text_cached * 1e3, t_sample,
                     t_sample / args.steps, t_decode, total, whole.peak / 2**20, whole.delta / 2**20])
    header("Generation end to end, tiny random models on CPU")
    print(f"{args.width}x{args.height}, {args.frames} frames/layer, {args.steps} UniPC steps, CFG 5, fp32")
    table(["layers", "tokens", "load s", "text ms (cold)", "text ms (cached)", "sampling s", "s/step",
           "decode s", "total s", "peak RSS MiB", "peak - start MiB"], rows)


# ---- full-size architecture ------------------------------------------------------------------------
def build_full(device, dtype, vae_dtype, max_foregrounds=2):
    from layert2v_core.weights.wan_single_file import build_transformer_from_config, build_vae_from_config, shipped_config

    torch.manual_seed(0)
    base = build_transformer_from_config(shipped_config("transformer"), device=device, dtype=dtype).eval()
    dit = LayeredWanTransformer(base, LayerT2VConfig(max_foregrounds=max_foregrounds, text_len=512))
    vae = build_vae_from_config(shipped_config("vae"), device=device, dtype=vae_dtype).eval()
    mask_vae = MaskVAE(vae, lora_rank=128, lora_alpha=128.0).eval()
    return dit, vae, mask_vae


def vanilla_generation(base, vae, frames, height, width, steps, warmup, device, text_dim=4096, text_len=512):
    """One plain video: WanPipeline-style sampling (CFG batched) with diffusers' forward, then decode."""
    layout = LayerLayout(1, frames, height, width)  # only its latent geometry: one segment
    shape = layout.segment_latent_shape(1)
    context = torch.randn(2, text_len, text_dim, device=device, dtype=base.dtype)
    generator = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(shape, generator=generator).to(device)

    def run(n):
        nonlocal x
        scheduler = make_scheduler("unipc", 5.0)
        scheduler.set_timesteps(n, device=device)
        for t in scheduler.timesteps:
            with torch.no_grad():
                v = base(torch.cat([x, x]).to(base.dtype), t.expand(2), context, return_dict=False)[0].float()
            v_c, v_u = v.chunk(2)
            x = scheduler.step(v_u + 5.0 * (v_c - v_u), t, x, return_dict=False)[0]
        return x

    if warmup:
        run(1)
    sync(device)
    start = time.perf_counter()
    latent = run(steps)
    sync(device)
    t_sample = time.perf_counter() - start
    start = time.perf_counter()
    decode_latent(vae, latent)
    sync(device)
    return layout_tokens(layout) // 4, t_sample, time.perf_counter() - start


def layout_tokens(layout):
    return layout.num_tokens


def timed_sample(pipe, layout, cond, config, device):
    """(latent, seconds of the sampler's steps): the DiT's move back from the offload device happens before
    the clock starts, its offload after the last step is not counted."""
    pipe.dit.to(device)
    timer = StepTimer(device)
    timer.start()
    latent = pipe.sample_latent(layout, cond, config, callback=timer)
    return latent, timer.total


def full_run(args) -> None:
    device = torch.device(args.device)
    dtype = torch.bfloat16
    vae_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.dry_run:
        args.height, args.width, args.frames, args.steps, args.warmup = 32, 32, 5, 1, False
    dit, vae, mask_vae = build_full(device, dtype, vae_dtype)
    pipe = LayerT2VPipeline(dit, vae, mask_vae, device=device, compile_dit=args.compile,
                            dit_offload_device="cpu" if device.type == "cuda" and args.offload else None)
    rows = []
    for k in args.foregrounds:
        layout = pipe.layout(k, args.frames, args.height, args.width)
        p = len(layout.prompt_names)
        g = torch.Generator("cpu").manual_seed(1)
        cond = LayerConditioning(torch.randn(1, p, 512, 4096, generator=g).to(dtype),
                                 torch.randn(1, p, 512, 4096, generator=g).to(dtype))
        if args.warmup:
            pipe.sample_latent(layout, cond, SamplerConfig(steps=1, cfg=5.0))
        config = SamplerConfig(steps=args.steps, cfg=5.0, sampler="unipc")
        with peak_meter(device) as meter:
            latent, t_sample = timed_sample(pipe, layout, cond, config, device)
            sync(device)
            start = time.perf_counter()
            pipe.decode(latent, layout)
            sync(device)
            t_decode = time.perf_counter() - start
        est = pipe.last_memory_estimate
        per_step = t_sample / args.steps
        rows.append([f"layered K={k} ({layout.num_segments} layers)", layout.num_tokens, per_step,
                     per_step * PAPER_STEPS, t_decode, per_step * PAPER_STEPS + t_decode,
                     meter.peak / GIB, est.total / GIB if est else "-"])
    if args.vanilla:
        with peak_meter(device) as meter:
            tokens, t_sample, t_decode = vanilla_generation(dit.base, vae, args.frames, args.height, args.width,
                                                            args.steps, args.warmup, device)
        per_step = t_sample / args.steps
        rows.append(["vanilla Wan, one video", tokens, per_step, per_step * PAPER_STEPS, t_decode,
                     per_step * PAPER_STEPS + t_decode, meter.peak / GIB, "-"])
    header("Generation, full-size Wan2.1-1.3B architecture (random weights)", device)
    print(f"{args.width}x{args.height}, {args.frames} frames/layer, CFG 5 batched, UniPC, DiT bf16, VAE {vae_dtype}; "
          f"{args.steps} timed step(s) {'after 1 warm-up step ' if args.warmup else ''}extrapolated to {PAPER_STEPS}; "
          f"compile={args.compile}{'; DRY RUN (reduced frame size: proves the code path only)' if args.dry_run else ''}")
    peak_name = "peak GiB (max_memory_allocated)" if device.type == "cuda" else "peak RSS GiB"
    table(["run", "tokens", "s/step", f"sampling s ({PAPER_STEPS} steps)", "decode s", "total s", peak_name,
           "estimate GiB"], rows)
    print("text encoder: not loaded in these rows (UMT5-XXL, ~11 GiB bf16, is offloaded before sampling); "
          "bench/gpu_generation.py reports the peak with it resident")
    print("paper (H200, K=1, 50 steps): 151 s, 24 GB peak; goal: < 80 s, < 12 GB")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (tiny: 10, full: 3)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--foregrounds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-vanilla", dest="vanilla", action="store_false")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false")
    parser.add_argument("--no-offload", dest="offload", action="store_false", help="full: keep the DiT on the GPU for decode")
    parser.add_argument("--compile", action="store_true", help="torch.compile the DiT (first call compiles)")
    parser.add_argument("--dry-run", action="store_true", help="full model on CPU at 32x32, 5 frames, 1 step")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tiny = args.model == "tiny"
    args.steps = args.steps or (10 if tiny else 3)
    args.frames = args.frames or (17 if tiny else 41)
    args.height = args.height or (128 if tiny else 384)
    args.width = args.width or (128 if tiny else 672)
    (tiny_run if tiny else full_run)(args)


if __name__ == "__main__":
    main()
