"""Fewer DiT forwards: the step cache and the guidance range. Off = the same numbers as a plain sampling
loop written here; on = fewer forwards, counted by a hook on the model's own first block."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from layert2v_core.layout import LayerLayout
from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig, initial_noise, sample
from layert2v_core.step_cache import StepCache, StepCacheConfig
from layert2v_core.tiny import TINY_TEXT_LEN, write_tiny_model_files
from layert2v_core.variants import GivenLayers, sample_layers
from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder

PROMPT = LayerPrompts("a red cat on grass", "green grass field", ["a red cat walking"], negative="dark")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    paths = write_tiny_model_files(tmp_path_factory.mktemp("tiny"), max_foregrounds=1)
    vae = load_layer_vae(paths["vae"], paths["adapter"])
    return LayerT2VPipeline(load_layered_dit(paths["dit"], paths["adapter"], dtype="fp32"), vae.vae, vae.mask_vae,
                            load_text_encoder(paths["text_encoder"], text_len=TINY_TEXT_LEN, dtype="fp32"))


@pytest.fixture(scope="module")
def job(pipe):
    return pipe.layout(1, 9, 32, 32), pipe.encode_prompts(PROMPT)


class BlockCalls:
    """Counts the batches that go through the DiT's first block (= computed forwards)."""

    def __init__(self, dit):
        self.batches = []
        self.handle = dit.base.blocks[0].register_forward_hook(lambda m, args, out: self.batches.append(out.shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def reference_sampling(dit, layout, cond, uncond, steps, cfg, shift, seed):
    """Plain UniPC + batched CFG, straight from diffusers and the DiT: what sampling was before any option."""
    scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                        use_flow_sigmas=True, flow_shift=shift)
    scheduler.set_timesteps(steps)
    x = initial_noise(layout, seed)
    context = torch.cat([cond, uncond])
    for t in scheduler.timesteps:
        with torch.no_grad():
            v = dit(torch.cat([x, x]), torch.full((2, layout.num_segments), float(t)), context, layout).float()
        v_cond, v_uncond = v.chunk(2)
        x = scheduler.step(v_uncond + cfg * (v_cond - v_uncond), t, x, return_dict=False)[0]
    return x


def test_options_off_are_bit_identical_to_plain_sampling(pipe, job):
    layout, conditioning = job
    config = SamplerConfig(steps=5, cfg=4.0, shift=3.0, seed=2)
    with BlockCalls(pipe.dit) as calls:
        latent = pipe.sample_latent(layout, conditioning, config)
    expected = reference_sampling(pipe.dit, layout, conditioning.cond, conditioning.uncond, 5, 4.0, 3.0, 2)
    assert torch.equal(latent, expected)
    assert calls.batches == [2] * 5 and pipe.last_sampling_stats.forwards == 10


def test_cache_that_never_fires_changes_nothing(pipe, job):
    layout, conditioning = job
    off = pipe.sample_latent(layout, conditioning, SamplerConfig(steps=5, cfg=4.0, seed=2))
    never = pipe.sample_latent(layout, conditioning, SamplerConfig(steps=5, cfg=4.0, seed=2, cache_threshold=1e-9))
    assert torch.equal(off, never) and pipe.last_sampling_stats.cached_steps == 0


def test_cache_on_runs_fewer_forwards_and_counts_them(pipe, job):
    layout, conditioning = job
    config = SamplerConfig(steps=10, cfg=4.0, seed=2, cache_threshold=5.0, cache_max_skips=2)
    computed_steps = []
    with BlockCalls(pipe.dit) as calls:
        latent = pipe.sample_latent(layout, conditioning, config,
                                    callback=lambda s: computed_steps.append(len(calls.batches)))
    stats = pipe.last_sampling_stats
    # first and last steps always compute, at most two cached steps in a row: steps 0, 3, 6, 9 compute
    ran = [i for i, n in enumerate(computed_steps) if n > (computed_steps[i - 1] if i else 0)]
    assert ran == [0, 3, 6, 9]
    assert calls.batches == [2] * 4
    assert (stats.forwards, stats.cached_steps, stats.steps) == (8, 6, 10)
    off = pipe.sample_latent(layout, conditioning, SamplerConfig(steps=10, cfg=4.0, seed=2))
    assert torch.isfinite(latent).all() and not torch.equal(latent, off)


def test_reused_residual_reproduces_the_computed_output(pipe, job):
    """Same input twice: the second call reuses the first call's residual and must give the same velocity."""
    layout, conditioning = job
    dit = pipe.dit
    x = initial_noise(layout, 5)
    t = torch.full((1, layout.num_segments), 700.0)
    cache = StepCache(StepCacheConfig(threshold=0.5))
    with torch.no_grad(), BlockCalls(dit) as calls:
        computed = dit(x, t, conditioning.cond, layout, blocks=cache.runner())
        reused = dit(x, t, conditioning.cond, layout, blocks=cache.runner())
    assert calls.batches == [1] and (cache.computed, cache.skipped) == (1, 1)
    torch.testing.assert_close(reused, computed, rtol=1e-5, atol=1e-5)


def test_cache_with_given_layers_keeps_them_and_skips(pipe, job):
    layout, conditioning = job
    given = GivenLayers(full=torch.rand(9, 32, 32, 3, generator=torch.Generator().manual_seed(1)))
    for mode in ("replace", "native"):
        config = SamplerConfig(steps=8, cfg=4.0, seed=1, given_mode=mode, cache_threshold=5.0)
        latent = sample_layers(pipe, layout, conditioning, config, given=given)
        kept = pipe.encode_layer(given.full)
        assert torch.equal(latent[:, :, layout.time_slice("full")], kept)
        assert pipe.last_sampling_stats.cached_steps > 0


def test_cache_with_trajectories_runs(pipe, job):
    layout, conditioning = job
    from layert2v_core.trajectory import Keyframe

    boxes = {1: [Keyframe(0, (0.1, 0.1, 0.4, 0.4)), Keyframe(8, (0.5, 0.5, 0.9, 0.9))]}
    config = SamplerConfig(steps=8, cfg=4.0, seed=1, cache_threshold=5.0)
    latent = sample_layers(pipe, layout, conditioning, config, trajectories=boxes, trajectory_end_step=4)
    assert torch.isfinite(latent).all() and pipe.last_sampling_stats.forwards < 16


def test_cache_recomputes_when_guidance_stops(pipe, job):
    """The cached residual is for a CFG batch of two; the first cond-only step must run the blocks."""
    layout, conditioning = job
    config = SamplerConfig(steps=8, cfg=4.0, seed=1, cache_threshold=5.0, cache_max_skips=8, cfg_end=0.5)
    with BlockCalls(pipe.dit) as calls:
        pipe.sample_latent(layout, conditioning, config)
    assert calls.batches == [2, 1, 1]  # step 0, step 4 (batch changed), step 7 (last)
    assert pipe.last_sampling_stats.forwards == 4


# ---- guidance range, against closed-form Euler integration -------------------------------------------
LAYOUT = LayerLayout(1, 5, 32, 32)


def constant_model(cond):
    """v = noise - x0 with x0 fixed per context: Euler then lands on a known weighted sum of the x0s."""
    g = torch.Generator().manual_seed(2)
    x0_c, x0_u = torch.randn(LAYOUT.latent_shape(), generator=g)[0], torch.randn(LAYOUT.latent_shape(), generator=g)[0]
    noise = initial_noise(LAYOUT, seed=1)[0]
    calls = []

    def den(x, t, c):
        calls.append(x.shape[0])
        return noise - torch.stack([x0_c if torch.equal(ci, cond[0]) else x0_u for ci in c])
    return den, calls, x0_c, x0_u


@pytest.mark.parametrize("outside", ["skip", "reuse"])
def test_guidance_only_in_the_first_half(outside):
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(1, 3, 4, 8, generator=g), torch.randn(1, 3, 4, 8, generator=g)
    den, calls, x0_c, x0_u = constant_model(cond)
    config = SamplerConfig(steps=6, cfg=3.0, sampler="euler", seed=1, cfg_end=0.5, cfg_outside=outside)
    out = sample(den, LAYOUT, cond, uncond, config)
    assert calls == [2, 2, 2, 1, 1, 1]
    guided = x0_u + 3.0 * (x0_c - x0_u)
    if outside == "reuse":  # the difference is constant here, so reusing it is exact guidance
        expected = guided
    else:  # Euler: x_end = sum over steps of (sigma_i - sigma_i+1) * x0_i
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.shift)
        scheduler.set_timesteps(6)
        sigma_mid = float(scheduler.sigmas[3])
        expected = (1 - sigma_mid) * guided + sigma_mid * x0_c
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-4)


def test_guidance_range_in_the_middle():
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(1, 3, 4, 8, generator=g), torch.randn(1, 3, 4, 8, generator=g)
    den, calls, _, _ = constant_model(cond)
    sample(den, LAYOUT, cond, uncond, SamplerConfig(steps=10, cfg=3.0, seed=1, cfg_start=0.2, cfg_end=0.6))
    assert calls == [1, 1, 2, 2, 2, 2, 1, 1, 1, 1]


@pytest.mark.parametrize("bad, match", [
    (dict(cfg_start=0.6, cfg_end=0.4), "cfg_start=0.6"), (dict(cfg_end=1.5), "cfg_end=1.5"),
    (dict(cfg_outside="half"), "cfg_outside='half'"), (dict(cache_threshold=-1.0), "step_cache=-1.0"),
    (dict(cache_max_skips=0), "cache_max_skips=0"),
])
def test_bad_speed_options_name_the_parameter(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplerConfig(**bad).validate()


# ---- attention backend -------------------------------------------------------------------------------
def test_attention_backends_agree_on_the_routed_forward(pipe):
    """Routed cross-attention (K=1: three routing groups): each kernel that runs here gives the same velocity."""
    from layert2v_core.attention_backend import BACKENDS, available_backends, set_attention_backend
    from layert2v_core.pipeline import encode_conditioning

    dit = pipe.dit
    layout = pipe.layout(1, 5, 32, 32)
    cond = encode_conditioning(PROMPT, encoder=pipe.text_encoder).cond
    x, t = initial_noise(layout, 3), torch.full((1, layout.num_segments), 500.0)
    usable = available_backends("cpu")
    assert {"sdpa", "math"} <= set(usable) and set(usable) <= set(BACKENDS)
    outputs = {}
    try:
        for name in usable:
            set_attention_backend(dit, name)
            with torch.no_grad():
                outputs[name] = dit(x, t, cond, layout)
    finally:
        set_attention_backend(dit, "sdpa")
    for name, out in outputs.items():
        torch.testing.assert_close(out, outputs["math"], rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("name", ["flash", "flash3", "sage", "cudnn"])
def test_missing_attention_kernel_is_one_clear_line(pipe, name):
    from layert2v_core.attention_backend import AttentionBackendError, set_attention_backend

    with pytest.raises(AttentionBackendError) as err:
        set_attention_backend(pipe.dit, name)
    message = str(err.value)
    assert "\n" not in message and f"attention={name!r}" in message and "use 'sdpa'" in message
    assert pipe.dit.base.blocks[0].attn1.processor._attention_backend in (None, "native")  # left as it was


# ---- command line ------------------------------------------------------------------------------------
def cli(*args):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "layert2v_core", "generate", "--prompt", "a red circle over blue stripes",
                           "--bg-prompt", "blue stripes", "--fg-prompt", "a red circle", "--steps", "8",
                           "--formats", "png8", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def test_cli_speed_options_land_in_the_manifest(tmp_path):
    import json
    from pathlib import Path

    res = cli("--step-cache", "5", "--cfg-end", "0.5", "--cfg-outside", "reuse", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((Path(res.stdout.strip().split("wrote ", 1)[1]) / "layers.json").read_text())
    meta = manifest["metadata"]
    assert meta["step_cache"] == 5.0 and meta["cfg_range"] == [0.0, 0.5] and meta["cfg_outside"] == "reuse"
    assert 0 < meta["dit_forwards"] < 16  # 8 steps with CFG would be 16


def test_cli_missing_attention_kernel_exits_with_one_line(tmp_path):
    res = cli("--attention", "flash", "--out", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: attention='flash'")
    assert "Traceback" not in res.stderr and not any(tmp_path.iterdir())
