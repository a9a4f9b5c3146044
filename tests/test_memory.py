"""Memory estimate before sampling, offload options and the time-chunked / tiled VAE decode."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layert2v_core import memory
from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.layout import LayerLayout
from layert2v_core.memory import (DiTShape, InsufficientMemoryError, check_memory, estimate_sampling_memory)
from layert2v_core.pipeline import LayerConditioning, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig
from layert2v_core.tiny import build_tiny_transformer, build_tiny_vae
from layert2v_core.vae_io import VaeTiling, decode_latent, vae_output_to_frames, denormalize_latent
from layert2v_core.weights.wan_single_file import build_transformer_from_config, shipped_config

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024 ** 3


def tiny_pipeline(max_foregrounds=1, **kwargs):
    dit = LayeredWanTransformer(build_tiny_transformer(), LayerT2VConfig(max_foregrounds=max_foregrounds, text_len=8))
    return LayerT2VPipeline(dit, None, None, **kwargs)


def conditioning(layout, text_len=8, dim=32):
    p = len(layout.prompt_names)
    return LayerConditioning(torch.randn(1, p, text_len, dim), torch.randn(1, p, text_len, dim))


# ---- the estimate ---------------------------------------------------------------------------------
def test_parameter_count_of_the_1_3b_config_matches_the_real_model():
    config = shipped_config("transformer")
    model = build_transformer_from_config(config, device="meta")
    real = sum(p.numel() for p in model.parameters())
    assert abs(DiTShape.from_config(config).params - real) / real < 0.02
    assert 1.2e9 < real < 1.5e9


def test_estimate_grows_with_tokens_and_math_attention_is_quadratic():
    config = shipped_config("transformer")
    small = estimate_sampling_memory(LayerLayout(1, 41, 384, 672), config, torch.bfloat16)
    more_frames = estimate_sampling_memory(LayerLayout(1, 81, 384, 672), config, torch.bfloat16)
    more_layers = estimate_sampling_memory(LayerLayout(2, 41, 384, 672), config, torch.bfloat16)
    assert more_frames.activations > 1.8 * small.activations
    assert more_layers.activations > 1.4 * small.activations
    no_cfg = estimate_sampling_memory(LayerLayout(1, 41, 384, 672), config, torch.bfloat16, cfg=False)
    assert no_cfg.activations < 0.6 * small.activations
    math_small = estimate_sampling_memory(LayerLayout(1, 41, 384, 672), config, torch.bfloat16, attention="math")
    math_big = estimate_sampling_memory(LayerLayout(1, 81, 384, 672), config, torch.bfloat16, attention="math")
    assert math_small.activations > 10 * small.activations        # S x S scores dominate
    assert math_big.activations > 3.5 * math_small.activations     # ~quadratic in tokens
    # the paper's setting (384x672, 41 frames, K=1, CFG) with flash/SDPA: weights + activations
    assert 5 * GIB < small.total < 12 * GIB
    with pytest.raises(ValueError, match="attention='dense'"):
        estimate_sampling_memory(LayerLayout(1, 5, 32, 32), config, attention="dense")


MEASURE = r"""
import ctypes, json, sys, time, torch
ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD fixed: freed tensors leave RSS at once
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/bench")
from _common import PeakRSS
from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.layout import LayerLayout
from layert2v_core.pipeline import LayerConditioning, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig
from layert2v_core.tiny import build_tiny_transformer
torch.set_num_threads(2)
base = build_tiny_transformer(num_attention_heads=1, attention_head_dim=64, ffn_dim=4096, text_dim=64)
dit = LayeredWanTransformer(base, LayerT2VConfig(max_foregrounds=1, text_len=16))
pipe = LayerT2VPipeline(dit, None, None)
layout = LayerLayout(1, 21, 256, 256)
cond = LayerConditioning(torch.randn(1, 3, 16, 64), torch.randn(1, 3, 16, 64))
config = SamplerConfig(steps=1, cfg=5.0, sampler="euler")
pipe.sample_latent(layout, cond, config)  # warm-up
with PeakRSS() as m:
    pipe.sample_latent(layout, cond, config)
print(json.dumps({"measured": m.delta, "estimated": pipe.last_memory_estimate.needed, "exact": m.exact}))
"""


PEAK_RSS = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists() or sys.platform != "linux",
                              reason="peak RSS is measured through /proc (Linux)")


def measured(script: str, timeout: float) -> dict:
    """The numbers a measuring script prints as its last line, run in a fresh process."""
    result = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    if not numbers["exact"]:
        pytest.skip("this kernel does not let a process reset its peak RSS")
    return numbers


@PEAK_RSS
def test_estimate_matches_the_measured_peak_within_a_factor_1_5():
    numbers = measured(MEASURE, timeout=300)
    ratio = numbers["estimated"] / numbers["measured"]
    assert numbers["measured"] > 200 * 2 ** 20  # the activations dominate the noise of the allocator
    assert 1 / 1.5 <= ratio <= 1.5, numbers


# ---- refusal, wired into sample_latent ---------------------------------------------------------------
def test_absurd_request_is_refused_with_the_numbers_before_any_step():
    pipe = tiny_pipeline()
    calls = []
    pipe.dit.register_forward_pre_hook(lambda *a: calls.append(1))
    layout = pipe.layout(1, 1025, 4096, 4096)
    with pytest.raises(InsufficientMemoryError) as err:
        pipe.sample_latent(layout, conditioning(layout), SamplerConfig(steps=2, cfg=5.0))
    message = str(err.value)
    for part in ("width=4096", "height=4096", "frames=1025", "K=1"):
        assert part in message
    needed, available = map(float, re.search(r"estimated ([\d.]+) GiB needed vs ([\d.]+) GiB available", message).groups())
    assert needed > available and needed > 100
    assert isinstance(err.value, ValueError) and isinstance(err.value, MemoryError)
    assert calls == []


def test_check_uses_the_available_memory_and_can_be_switched_off(monkeypatch):
    pipe = tiny_pipeline()
    layout = pipe.layout(1, 5, 32, 32)
    cond, config = conditioning(layout), SamplerConfig(steps=1, cfg=5.0, sampler="euler")
    pipe.sample_latent(layout, cond, config)
    needed = pipe.last_memory_estimate.needed
    assert needed > 0
    monkeypatch.setattr(memory, "available_memory", lambda device: needed - 1)
    with pytest.raises(InsufficientMemoryError, match="width=32 height=32 frames=5 K=1"):
        pipe.sample_latent(layout, cond, config)
    monkeypatch.setattr(memory, "available_memory", lambda device: needed)
    pipe.sample_latent(layout, cond, config)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1)
    tiny_pipeline(memory_check=False).sample_latent(layout, cond, config)
    monkeypatch.setenv(memory.SKIP_ENV, "1")
    pipe.sample_latent(layout, cond, config)


def test_weights_still_to_load_count_against_the_device():
    dit = LayeredWanTransformer(build_tiny_transformer(), LayerT2VConfig(text_len=8))
    layout = LayerLayout(1, 5, 32, 32)
    loaded = estimate_sampling_memory(layout, dit, torch.float32, text_len=8)
    moving = estimate_sampling_memory(layout, dit, torch.float32, text_len=8, weights_loaded=False)
    params = sum(p.numel() for p in dit.parameters())
    assert loaded.weights == params * 4
    assert moving.needed - loaded.needed == params * 4
    with pytest.raises(InsufficientMemoryError, match=r"GiB available on cpu"):
        check_memory(moving, "cpu", available=moving.needed - 1)


# ---- offload options -------------------------------------------------------------------------------
def test_dit_is_offloaded_after_sampling_and_when_cancelled():
    pipe = tiny_pipeline(dit_offload_device="cpu")
    moves = []
    original = pipe.dit.to
    pipe.dit.to = lambda *a, **k: (moves.append(a[0] if a else k), original(*a, **k))[1]
    layout = pipe.layout(1, 5, 32, 32)
    pipe.sample_latent(layout, conditioning(layout), SamplerConfig(steps=1, sampler="euler"))
    assert moves == [torch.device("cpu")]

    def cancel(state):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        pipe.sample_latent(layout, conditioning(layout), SamplerConfig(steps=2, sampler="euler"), callback=cancel)
    assert moves == [torch.device("cpu")] * 2
    plain = tiny_pipeline()
    plain.dit.to = lambda *a, **k: pytest.fail("no offload device given: the DiT must stay where it is")
    plain.sample_latent(layout, conditioning(layout), SamplerConfig(steps=1, sampler="euler"))


def test_text_encoder_is_offloaded_only_from_an_accelerator():
    class FakeEncoder:
        def __init__(self, device):
            self.model = torch.nn.Linear(2, 2, device=device)
            self.offloaded = 0

        def offload(self):
            self.offloaded += 1

    on_cpu, on_accel = FakeEncoder("cpu"), FakeEncoder("meta")  # "meta" stands in for a GPU here
    LayerT2VPipeline(None, None, None, text_encoder=on_cpu).offload_text()
    LayerT2VPipeline(None, None, None, text_encoder=on_accel).offload_text()
    assert (on_cpu.offloaded, on_accel.offloaded) == (0, 1)


# ---- VAE decode: time chunks into a preallocated clip, spatial tiles -------------------------------
def test_chunked_decode_equals_diffusers_decode():
    vae = build_tiny_vae()
    z = torch.randn(1, 16, 4, 6, 8)
    with torch.no_grad():
        reference = vae_output_to_frames(vae.decode(denormalize_latent(z, vae)).sample)
    out = decode_latent(vae, z)
    assert out.shape == (13, 48, 64, 3) and out.dtype == torch.float32
    assert torch.equal(out, reference)
    again = decode_latent(vae, z)  # the frame cache is cleared between calls
    assert torch.equal(again, reference)


def test_tiled_decode_shape_range_and_restores_the_vae():
    vae = build_tiny_vae()
    z = torch.randn(1, 16, 2, 12, 12)
    untiled = decode_latent(vae, z, tiling=None)
    tiled = decode_latent(vae, z, tiling=VaeTiling(tile_height=64, tile_width=64, stride_height=48, stride_width=48))
    assert tiled.shape == untiled.shape == (5, 96, 96, 3)
    assert 0 <= tiled.min() and tiled.max() <= 1
    assert not torch.equal(tiled, untiled)          # tiles really ran
    assert (tiled - untiled).abs().mean() < 0.1    # same picture, seams blended
    assert vae.use_tiling is False and vae.tile_sample_min_height == 256
    assert torch.equal(decode_latent(vae, z, tiling="auto"), untiled)  # small frames: auto does not tile
    with pytest.raises(ValueError, match="tile_height=60"):
        VaeTiling(tile_height=60)


# ---- VAE working memory (what ComfyUI frees before loading the VAE) --------------------------------
VAE_MEASURE = r"""
import ctypes, json, sys, torch
ctypes.CDLL("libc.so.6").mallopt(-3, 65536)
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/bench")
from _common import PeakRSS
from diffusers import AutoencoderKLWan
from layert2v_core.memory import estimate_vae_memory
from layert2v_core.vae_io import decode_latent, encode_frames
torch.set_num_threads(2)
torch.manual_seed(0)
vae = AutoencoderKLWan().eval()  # the real Wan2.1 VAE's architecture (random weights)
z = torch.randn(1, 16, 2, 16, 16)
decode_latent(vae, z[..., :4, :4])  # warm-up
with PeakRSS() as decode:
    out = decode_latent(vae, z)
with PeakRSS() as encode:
    encode_frames(vae, out)
print(json.dumps({"decode": decode.delta, "encode": encode.delta, "exact": decode.exact,
                  "estimated": estimate_vae_memory(vae, *out.shape[:3])}))
"""


@PEAK_RSS
def test_vae_estimate_matches_the_measured_peak_of_the_wan21_vae():
    numbers = measured(VAE_MEASURE, timeout=600)
    assert numbers["decode"] > 100 * 2 ** 20   # 5 frames of 128x128: activations well above allocator noise
    assert 1 / 1.5 <= numbers["decode"] / numbers["estimated"] <= 1.5, numbers
    assert numbers["encode"] <= numbers["estimated"], numbers


def test_vae_estimate_scales_with_the_frame_and_is_bounded_by_tiles():
    vae = build_tiny_vae()
    small, double = memory.estimate_vae_memory(vae, 5, 64, 64), memory.estimate_vae_memory(vae, 5, 128, 64)
    clip = 5 * 64 * 64 * 3 * 4
    assert double - 2 * clip == 2 * (small - clip)           # working memory: linear in the frame's pixels
    assert memory.estimate_vae_memory(vae, 9, 64, 64) - small == 4 * 64 * 64 * 3 * 4  # frames only add the clip
    big = memory.estimate_vae_memory(vae, 1, 1024, 1024)            # "auto" tiles above 480x832: 256-pixel tiles
    untiled = memory.estimate_vae_memory(vae, 1, 1024, 1024, tiling=None)
    assert big - 1024 * 1024 * 12 == (untiled - 1024 * 1024 * 12) // 16
