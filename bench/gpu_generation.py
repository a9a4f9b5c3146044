"""One GPU benchmark, ready for a lent machine: the paper's job (384x672, 41 frames per layer, CFG) on the
full-size Wan2.1-1.3B architecture with random bf16 weights (speed does not depend on the weights).

    python bench/gpu_generation.py --json $OUT/gpu_generation.json     # lent GPU machine, project root, < 8 min
    .venv/bin/python bench/gpu_generation.py --dry-run                   # CPU: every code path at toy size

Needs no registry: bench/gpu_vendor.py unpacks the wheels carried in bench/wheels/ when the machine lacks
them (it has torch, transformers, peft, accelerate; not diffusers). Prints one table:
- per-step and 50-step sampling time, K=1 and K=2 (CFG batched, UniPC), timed by the sampler's own step
  callback: no offload transfer is inside (the DiT stays on the GPU; the text encoder is never moved
  inside a timed region);
- peak memory (torch.cuda.max_memory_allocated) with the text encoder (UMT5-XXL, random bf16) resident
  and without it;
- the vanilla single-video forward (diffusers' own WanTransformer3DModel, one 41-frame video) and the
  layered / vanilla ratio;
- VAE decode of one RGB layer and mask-VAE decode of one alpha layer, and the per-generation totals;
- one K=1 step per attention backend that runs here (attention_backend.py);
- the three step kinds (CFG-batched, cond-only, cached) and, for each speed setting measured on the demo
  model (bench/results/quality_vs_forwards*.json), the 50-step time those step counts give;
- FLOP utilisation: analytic DiT FLOPs per step over the step time, against the H200's 989 TFLOP/s dense
  bf16 and against a bf16 matmul measured on this machine.
Sections that fail print their one-line error in the table and the rest still run; sections that would
overrun --budget seconds are skipped and say so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_vendor  # noqa: E402

VENDOR = gpu_vendor.ensure_imports()

import torch  # noqa: E402
from _common import GIB, CudaPeak, PeakRSS, StepTimer, machine, sync, table  # noqa: E402

from layert2v_core.attention_backend import (BACKENDS, AttentionBackendError, check_backend,  # noqa: E402
                                             set_attention_backend)
from layert2v_core.config import LayerT2VConfig  # noqa: E402
from layert2v_core.dit import LayeredWanTransformer  # noqa: E402
from layert2v_core.job_time import dit_flops, vanilla_flops  # noqa: E402  (the sampler's own FLOP count)
from layert2v_core.layout import LayerLayout  # noqa: E402
from layert2v_core.mask_vae import MaskVAE  # noqa: E402
from layert2v_core.pipeline import LayerConditioning, LayerT2VPipeline  # noqa: E402
from layert2v_core.sampler import SamplerConfig, initial_noise, make_scheduler  # noqa: E402
from layert2v_core.vae_io import decode_alpha, decode_latent  # noqa: E402
from layert2v_core.weights.wan_single_file import (build_transformer_from_config,  # noqa: E402
                                                   build_vae_from_config, shipped_config)

PAPER = {"seconds": 151.0, "peak_gb": 24.0, "steps": 50}
H200_DENSE_BF16_TFLOPS = 989.0
RESULTS = Path(__file__).resolve().parent / "results"  # quality_vs_forwards*.json

# UMT5-XXL encoder (Wan2.1's text encoder), for the resident-memory row; weights random.
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
TINY_DIT = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
                text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads")
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True])
TINY_UMT5 = dict(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu")


@dataclass
class Scale:
    """What is measured. The dry run keeps every code path and shrinks every size."""
    height: int = 384
    width: int = 672
    frames: int = 41
    text_len: int = 512
    timed_steps: int = 3
    dit: dict | None = None       # None: the shipped Wan2.1-1.3B config
    vae: dict | None = None
    umt5: dict | None = None

    @classmethod
    def dry(cls) -> "Scale":
        return cls(height=32, width=32, frames=5, text_len=16, timed_steps=2, dit=TINY_DIT, vae=TINY_VAE, umt5=TINY_UMT5)


class Bench:
    def __init__(self, args, scale: Scale):
        self.args, self.scale = args, scale
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16  # also in the dry run: the GPU's dtype path is what it proves
        self.deadline = time.monotonic() + args.budget
        self.rows: list[list] = []
        self.results: dict = {"vendor": VENDOR}
        self.matmul_tflops = None

    # ---- helpers -------------------------------------------------------------------------------------
    def meter(self):
        return CudaPeak(self.device) if self.cuda else PeakRSS()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def section(self, name: str, needs_s: float, fn) -> None:
        """Run one section; a failure or a lack of time becomes a row, never the end of the benchmark."""
        if self.left() < needs_s:
            self.rows.append([name, "-", "-", "-", "-", f"skipped: {self.left():.0f} s of the budget left, needs ~{needs_s:.0f}"])
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001 -- report and go on
            line = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            self.rows.append([name, "-", "-", "-", "-", f"FAILED: {type(err).__name__}: {line}"])
        finally:
            if self.cuda:
                torch.cuda.empty_cache()

    def tflops(self, flops: float, seconds: float) -> str:
        if not seconds:
            return "-"
        rate = flops / seconds / 1e12
        text = f"{rate:.0f} ({100 * rate / H200_DENSE_BF16_TFLOPS:.0f} % of 989"
        if self.matmul_tflops:
            text += f", {100 * rate / self.matmul_tflops:.0f} % of matmul"
        return text + ")"

    # ---- models ----------------------------------------------------------------------------------------
    def build(self) -> None:
        torch.manual_seed(0)
        base = build_transformer_from_config(self.scale.dit or shipped_config("transformer"), device=self.device,
                                             dtype=self.dtype).eval()
        self.dit = LayeredWanTransformer(base, LayerT2VConfig(max_foregrounds=2, text_len=self.scale.text_len))
        self.vae = build_vae_from_config(self.scale.vae or shipped_config("vae"), device=self.device,
                                         dtype=self.dtype).eval()
        self.mask_vae = MaskVAE(self.vae, lora_rank=128 if not self.scale.vae else 4, lora_alpha=128.0).eval()
        self.pipe = LayerT2VPipeline(self.dit, self.vae, self.mask_vae, device=self.device, memory_check=False)

    def conditioning(self, layout: LayerLayout) -> LayerConditioning:
        g = torch.Generator("cpu").manual_seed(1)
        shape = (1, len(layout.prompt_names), self.scale.text_len, self.dit.text_dim)
        return LayerConditioning(torch.randn(shape, generator=g).to(self.dtype), torch.randn(shape, generator=g).to(self.dtype))

    def layout(self, k: int) -> LayerLayout:
        return self.pipe.layout(k, self.scale.frames, self.scale.height, self.scale.width)

    def timed_sampling(self, layout, steps: int, **options) -> tuple[list[float], float, torch.Tensor]:
        """(seconds per step, peak bytes, latent) of one sample_latent; steps timed by the callback only."""
        timer = StepTimer(self.device)
        config = SamplerConfig(steps=steps, cfg=5.0, sampler="unipc", **options)
        with self.meter() as meter:
            timer.start()
            latent = self.pipe.sample_latent(layout, self.conditioning(layout), config, callback=timer)
        return timer.step_seconds, meter.peak, latent

    # ---- sections ------------------------------------------------------------------------------------
    def matmul_peak(self) -> None:
        n = 8192 if self.cuda else 256
        a = torch.randn(n, n, device=self.device, dtype=self.dtype)
        b = torch.randn(n, n, device=self.device, dtype=self.dtype)
        for _ in range(3):
            a @ b
        reps = 50 if self.cuda else 3
        sync(self.device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(self.device)
        self.matmul_tflops = 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e12
        self.rows.append([f"bf16 matmul {n}^3 (this machine's reachable peak)", "-", "-", "-",
                          f"{self.matmul_tflops:.0f}", "the utilisation reference next to the 989 spec"])

    def layered(self, k: int) -> None:
        layout = self.layout(k)
        self.timed_sampling(layout, 1)  # warm-up: kernels chosen, allocator grown
        seconds, peak, latent = self.timed_sampling(layout, self.scale.timed_steps + 1)
        per_step = sum(seconds[1:]) / len(seconds[1:])
        flops = dit_flops(layout, self.dit, self.scale.text_len, batch=2)
        self.results[f"K={k}"] = {"s_per_step": per_step, "peak_bytes": peak, "tokens": layout.num_tokens,
                                  "step_flops": flops, "latent": list(latent.shape)}
        self.rows.append([f"layered K={k} ({layout.num_segments} layers, {layout.num_tokens} tokens), CFG batched, sdpa",
                          f"{per_step:.3f}", f"{per_step * PAPER['steps']:.1f}", f"{peak / GIB:.1f}",
                          self.tflops(flops, per_step), "text encoder not resident"])

    def text_encoder_resident(self) -> None:
        from transformers import UMT5Config, UMT5EncoderModel

        default = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                encoder = UMT5EncoderModel(UMT5Config(**(self.scale.umt5 or UMT5_XXL))).eval()
        finally:
            torch.set_default_dtype(default)
        weights = sum(p.numel() * p.element_size() for p in encoder.parameters())
        layout = self.layout(1)
        with self.meter() as meter:
            ids = torch.randint(3, encoder.config.vocab_size, (len(layout.prompt_names) + 1, self.scale.text_len),
                                device=self.device)
            with torch.no_grad():
                encoder(input_ids=ids)
            self.pipe.sample_latent(layout, self.conditioning(layout), SamplerConfig(steps=1, cfg=5.0))
        self.results["text_encoder"] = {"weights_bytes": weights, "peak_bytes_resident": meter.peak}
        self.rows.append([f"layered K=1, text encoder resident (UMT5-XXL, encode {ids.shape[0]} x {ids.shape[1]} tokens, "
                          "then 1 step)", "-", "-",
                          f"{meter.peak / GIB:.1f}", "-", f"encoder weights {weights / GIB:.1f} GiB"])
        del encoder

    def vanilla(self) -> None:
        base = self.dit.base
        layout = LayerLayout(1, self.scale.frames, self.scale.height, self.scale.width)
        context = torch.randn(2, self.scale.text_len, base.config.text_dim, device=self.device, dtype=self.dtype)
        x = initial_noise(layout, 0)[:, :, : layout.latent_frames].to(self.device)
        scheduler = make_scheduler("unipc", 5.0)
        scheduler.set_timesteps(self.scale.timed_steps + 1, device=self.device)
        stamps = []
        for t in scheduler.timesteps:
            sync(self.device)
            stamps.append(time.perf_counter())
            with torch.no_grad():
                v = base(torch.cat([x, x]).to(self.dtype), t.expand(2), context, return_dict=False)[0].float()
            x = scheduler.step(v[1:] + 5.0 * (v[:1] - v[1:]), t, x, return_dict=False)[0]
        sync(self.device)
        stamps.append(time.perf_counter())
        steps = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # the first is the warm-up
        per_step = sum(steps) / len(steps)
        tokens = layout.tokens_per_segment
        flops = vanilla_flops(tokens, base.config, self.scale.text_len, batch=2)
        layered = self.results.get("K=1", {}).get("s_per_step")
        layered_tokens = self.layout(1).num_tokens
        ratio = f"layered K=1 / vanilla = {layered / per_step:.2f}x ({layered_tokens // tokens}x the tokens)" if layered else ""
        self.results["vanilla"] = {"s_per_step": per_step, "tokens": tokens}
        self.rows.append([f"vanilla Wan2.1 forward, one {self.scale.frames}-frame video ({tokens} tokens), CFG batched",
                          f"{per_step:.3f}", f"{per_step * PAPER['steps']:.1f}", "-", self.tflops(flops, per_step), ratio])

    def decode(self) -> None:
        layout = self.layout(1)
        z = torch.randn(layout.segment_latent_shape(), generator=torch.Generator().manual_seed(0)).to(self.device)
        timings = {}
        for name, fn in (("rgb", lambda: decode_latent(self.vae, z)), ("alpha", lambda: decode_alpha(self.mask_vae, z))):
            with torch.no_grad():
                fn()  # warm-up
                with self.meter() as meter:
                    sync(self.device)
                    start = time.perf_counter()
                    fn()
                    sync(self.device)
            timings[name] = (time.perf_counter() - start, meter.peak)
        rgb, alpha = timings["rgb"][0], timings["alpha"][0]
        self.results["decode"] = {"rgb_s": rgb, "alpha_s": alpha, "rgb_peak": timings["rgb"][1], "alpha_peak": timings["alpha"][1]}
        self.rows.append([f"VAE decode, one RGB layer ({self.scale.frames} frames)", "-", f"{rgb:.2f}",
                          f"{timings['rgb'][1] / GIB:.1f}", "-", f"K=1: 3 RGB + 1 alpha = {3 * rgb + alpha:.1f} s; "
                          f"K=2: 4 + 2 = {4 * rgb + 2 * alpha:.1f} s"])
        self.rows.append([f"mask VAE decode, one alpha layer ({self.scale.frames} frames)", "-", f"{alpha:.2f}",
                          f"{timings['alpha'][1] / GIB:.1f}", "-", "LoRA decoder, alpha head"])
        k1 = self.results.get("K=1")
        if k1:
            total = k1["s_per_step"] * PAPER["steps"] + 3 * rgb + alpha
            self.rows.append(["K=1 generation: 50 CFG steps + decode (paper: 151 s, 24 GB on one H200)", "-",
                              f"{total:.1f}", f"{k1['peak_bytes'] / GIB:.1f}", "-",
                              f"paper's 151 s / this = {PAPER['seconds'] / total:.2f}"])

    def attention_backends(self) -> None:
        layout = self.layout(1)
        flops = dit_flops(layout, self.dit, self.scale.text_len, batch=2)
        try:
            for name in BACKENDS:
                if name == "math" and self.cuda:
                    self.rows.append([f"attention {name}", "-", "-", "-", "-", "skipped: materialises the full "
                                      "attention matrix (~94 GB at K=1)"])
                    continue
                try:
                    check_backend(name, self.device, self.dtype)
                except AttentionBackendError as err:
                    self.rows.append([f"attention {name}", "-", "-", "-", "-", f"not usable here: {err}"[:220]])
                    continue
                if self.left() < 60:
                    self.rows.append([f"attention {name}", "-", "-", "-", "-", "skipped: time budget"])
                    continue
                set_attention_backend(self.dit, name, self.device)
                seconds, peak, _ = self.timed_sampling(layout, 2)  # first step warms the kernel up
                self.results.setdefault("attention", {})[name] = seconds[1]
                self.rows.append([f"attention {name}, layered K=1", f"{seconds[1]:.3f}", f"{seconds[1] * 50:.1f}",
                                  f"{peak / GIB:.1f}", self.tflops(flops, seconds[1]), BACKENDS[name][1]])
        finally:
            set_attention_backend(self.dit, "sdpa", self.device)

    def step_kinds_and_cache(self) -> None:
        layout = self.layout(1)
        guided, _, _ = self.timed_sampling(layout, 4, cfg_end=0.5)                     # 2 batched, 2 cond-only
        cached, _, _ = self.timed_sampling(layout, 4, cache_threshold=10.0, cache_max_skips=4)  # run, skip, skip, run
        kinds = {"batched": min(guided[1], cached[3]), "cond_only": guided[3], "cached": min(cached[1:3])}
        self.results["step_kinds"] = kinds
        self.rows.append(["step kinds, K=1: CFG-batched / cond-only / cached", "/".join(f"{v:.3f}" for v in kinds.values()),
                          "-", "-", "-", "cached = embeddings + output head only"])
        files = sorted(RESULTS.glob("quality_vs_forwards*.json"))
        if not files:
            self.rows.append(["speed settings", "-", "-", "-", "-", "no results: run bench/quality_vs_forwards.py"])
            return
        measured = {}
        for path in files:
            measured.update(json.loads(path.read_text())["settings"])
        for name, row in measured.items():
            stats = row.get("stats") or []
            if not stats:
                continue
            mean = {key: sum(s[key] for s in stats) / len(stats) for key in ("steps", "forwards", "cached_steps")}
            computed = mean["steps"] - mean["cached_steps"]
            batched = mean["forwards"] - computed           # computed steps with the uncond pass
            cond_only = computed - batched
            per_gen = batched * kinds["batched"] + cond_only * kinds["cond_only"] + mean["cached_steps"] * kinds["cached"]
            scale = PAPER["steps"] / 20  # settings were measured at the demo's 20 steps; same fractions at 50
            self.rows.append([f"setting {name} (demo-measured step mix, scaled to 50 steps)", "-",
                              f"{per_gen * scale:.1f}", "-", "-",
                              f"{mean['forwards'] * scale:.0f} forwards per generation (baseline 100)"])

    # ---- run -----------------------------------------------------------------------------------------
    def run(self) -> None:
        start = time.monotonic()
        self.section("matmul peak", 10, self.matmul_peak)
        self.section("build models", 30, self.build)
        if not hasattr(self, "pipe"):
            return self.report(start)
        self.section("layered K=1", 30, lambda: self.layered(1))
        self.section("layered K=2", 60, lambda: self.layered(2))
        self.section("vanilla", 20, self.vanilla)
        self.section("decode", 40, self.decode)
        self.section("attention backends", 60, self.attention_backends)
        self.section("step kinds and cache settings", 40, self.step_kinds_and_cache)
        self.section("text encoder resident", 40, self.text_encoder_resident)
        self.report(start)

    def report(self, start: float) -> None:
        s = self.scale
        print("## LayerT2V generation on the full-size Wan2.1-1.3B architecture (random weights)")
        print("command: python " + " ".join(sys.argv))
        print(f"machine: {machine(self.device)}")
        print(f"{s.width}x{s.height}, {s.frames} frames per layer, text {s.text_len} tokens per prompt, CFG 5 (batched), "
              f"UniPC, DiT/VAE {self.dtype}; {s.timed_steps} timed steps after a warm-up, x50 for the 50-step column; "
              f"vendor: {VENDOR}; wall {time.monotonic() - start:.0f} s"
              + ("; DRY RUN on CPU (toy sizes, tiny configs: proves the code paths only, no number is meaningful)"
                 if self.args.dry_run else ""))
        table(["measurement", "s / step", "s (50 steps or one decode)", "peak GiB", "TFLOP/s (utilisation)", "note"], self.rows)
        if self.args.json:
            Path(self.args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.json).write_text(json.dumps({"rows": self.rows, "results": self.results}, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --dry-run)")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: proves every code path")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later sections are skipped past it")
    parser.add_argument("--json", default=None, help="also write rows and raw results here")
    args = parser.parse_args()
    args.device = args.device or ("cpu" if args.dry_run else "cuda")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run with --dry-run on a CPU machine")
    Bench(args, Scale.dry() if args.dry_run else Scale()).run()


if __name__ == "__main__":
    main()
