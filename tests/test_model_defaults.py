"""Defaults that fit the loaded model (issue 22 item 3): the settings a checkpoint recommends, the time
estimate that refuses a job this machine cannot finish, and a cancel that waits one DiT block."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest
import torch
import yaml

from layert2v_core import demo_model, job_time
from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.layout import LayerLayout
from layert2v_core.pipeline import LayerConditioning, LayerT2VPipeline
from layert2v_core.recommended import SamplingSettings
from layert2v_core.sampler import SamplerConfig
from layert2v_core.tiny import build_tiny_transformer
from layert2v_core.weights.header_schema import SAMPLING_DTYPES, SchemaError
from layert2v_core.weights.loading import DTYPES, load_layered_dit

ROOT = Path(__file__).resolve().parents[1]


def demo_settings() -> SamplingSettings:
    return SamplingSettings.of(demo_model.checkpoint_config())


def test_the_demo_recommends_what_it_was_trained_and_evaluated_at():
    """Size and frames: its training data (demo_stage3.yaml's last phase); steps, CFG, shift: what its
    README says it was evaluated at; fp32: what it was trained in."""
    stage3 = yaml.safe_load((ROOT / "training/configs/demo_stage3.yaml").read_text())
    phase = stage3["phases"][-1]
    readme = (ROOT / "layert2v_core/demo_model/README.md").read_text()
    steps, cfg, shift = map(float, re.search(r"steps (\d+), cfg ([\d.]+), shift ([\d.]+)", readme).groups())
    settings = demo_settings()
    assert (settings.width, settings.height, settings.frames) == (phase["width"], phase["height"], phase["num_frames"])
    assert (settings.steps, settings.cfg, settings.shift) == (steps, cfg, shift)
    assert settings.dtype == {"float32": "fp32"}[stage3["model"]["dtype"]]
    # the training config writes the same block, so a rebuilt demo model keeps it
    assert LayerT2VConfig.from_dict(stage3["model"]["layert2v"]).sampling == settings.to_dict()


def test_a_checkpoint_without_settings_gets_wan21_1_3b_defaults():
    """Wan2.1 generate.py, task t2v-1.3B: size 832*480, frame_num 81, sample_steps 50, guide scale 5, shift 5."""
    wan = SamplingSettings.of(LayerT2VConfig())
    assert wan == SamplingSettings.base_model()
    assert (wan.width, wan.height, wan.frames, wan.steps, wan.cfg, wan.shift, wan.dtype) == (832, 480, 81, 50, 5.0, 5.0, "bf16")
    partial = SamplingSettings.of(LayerT2VConfig(sampling={"width": 672, "height": 384, "frames": 41}))
    assert (partial.width, partial.frames, partial.steps, partial.cfg) == (672, 41, 50, 5.0)


def test_fill_keeps_what_the_user_set_and_takes_the_models_for_zero_and_auto():
    demo = demo_settings()
    chosen = demo.fill(width=0, height=32, frames=0, steps=7, cfg=0.0, shift=0, dtype="auto")
    assert chosen == {"width": demo.width, "height": 32, "frames": demo.frames, "steps": 7, "cfg": demo.cfg,
                      "shift": demo.shift, "dtype": demo.dtype}
    with pytest.raises(ValueError, match="unknown sampling setting"):
        demo.fill(fps=16)


@pytest.mark.parametrize("sampling, message", [
    ({"steps": 0}, r"sampling setting steps = 0 is not valid"),
    ({"dtype": "fp8"}, r"sampling setting dtype = 'fp8' is not valid"),
    ({"fps": 16}, r"unknown sampling setting key"),
    ([64, 64], r"sampling = \[64, 64\] is not valid"),
])
def test_a_bad_sampling_block_in_a_config_file_is_one_line(sampling, message):
    with pytest.raises(SchemaError, match=message):
        LayerT2VConfig.from_dict({"sampling": sampling}, "layert2v_config.json")


def test_sampling_block_round_trips_and_its_dtypes_are_the_loaders():
    config = LayerT2VConfig(sampling={"steps": 12, "dtype": "fp16"})
    assert LayerT2VConfig.from_json(config.to_json()).sampling == {"steps": 12, "dtype": "fp16"}
    assert SAMPLING_DTYPES == tuple(DTYPES)


def test_load_model_dtype_auto_follows_the_adapter():
    paths = demo_model.demo_model_paths()
    assert load_layered_dit(paths["dit"], paths["adapter"], dtype="auto").dtype == torch.float32
    assert load_layered_dit(paths["dit"], paths["adapter"], dtype="bf16").dtype == torch.bfloat16
    with pytest.warns(UserWarning, match="no LayerT2V adapter"):  # no config: the base model's bf16
        assert load_layered_dit(paths["dit"], None, dtype="auto").dtype == torch.bfloat16


# ---- cancel within one block --------------------------------------------------------------------
class Cancelled(Exception):
    pass


def tiny_pipeline(layers: int = 4, **options) -> LayerT2VPipeline:
    dit = LayeredWanTransformer(build_tiny_transformer(num_layers=layers), LayerT2VConfig(text_len=8))
    return LayerT2VPipeline(dit, None, None, **options)


def conditioning(pipe, layout) -> LayerConditioning:
    cond = torch.randn(1, len(layout.prompt_names), 8, pipe.dit.text_dim, generator=torch.Generator().manual_seed(0))
    return LayerConditioning(cond=cond, uncond=torch.zeros_like(cond))


def test_a_cancel_raised_after_a_block_stops_before_the_next_block():
    pipe = tiny_pipeline(layers=4)
    layout = pipe.layout(1, 5, 32, 32)
    ran, steps_done = [], []
    for i, block in enumerate(pipe.dit.base.blocks):
        block.register_forward_hook(lambda module, args, out, i=i: ran.append(i))

    def after_block():
        if len(ran) == 6:  # in the second step, after its second block
            raise Cancelled

    with pytest.raises(Cancelled):
        pipe.sample_latent(layout, conditioning(pipe, layout), SamplerConfig(steps=5, cfg=4.0),
                           callback=steps_done.append, after_block=after_block)
    assert ran == [0, 1, 2, 3, 0, 1] and len(steps_done) == 1


def test_after_block_is_called_once_per_block_also_with_the_step_cache():
    pipe = tiny_pipeline(layers=3)
    layout = pipe.layout(1, 5, 32, 32)
    calls = []
    config = SamplerConfig(steps=6, cfg=4.0, cache_threshold=10.0)  # every middle step may reuse
    pipe.sample_latent(layout, conditioning(pipe, layout), config, after_block=lambda: calls.append(1))
    computed = pipe.last_sampling_stats.steps - pipe.last_sampling_stats.cached_steps
    assert pipe.last_sampling_stats.cached_steps > 0 and len(calls) == 3 * computed


# ---- time estimate ------------------------------------------------------------------------------
def test_flops_of_the_papers_job():
    """480.5 TFLOP per forward at 384x672x41, K=1 on Wan2.1-1.3B (DESIGN.md; bench/gpu_generation.py)."""
    from layert2v_core.weights.wan_single_file import shipped_config

    flops = job_time.dit_flops(LayerLayout(1, 41, 384, 672), shipped_config("transformer"), text_len=512)
    assert flops == pytest.approx(480.5e12, rel=0.01)


def test_forwards_count_guided_steps_twice():
    assert job_time.planned_forwards(SamplerConfig(steps=10, cfg=5.0), guided=True) == 20
    assert job_time.planned_forwards(SamplerConfig(steps=10, cfg=5.0, cfg_end=0.5), guided=True) == 15
    assert job_time.planned_forwards(SamplerConfig(steps=10, cfg=5.0), guided=False) == 10


def test_the_estimate_is_near_the_measured_time_of_a_real_step(one_torch_thread):
    """The demo DiT at 256x256x17 (5120 tokens, where FLOPs, not per-kernel overhead, dominate): one
    CFG-batched step against the estimate, both in this process's CPU seconds (other jobs share this
    machine's cores; the nodes estimate in wall time, which is what the user waits)."""
    paths = demo_model.demo_model_paths()
    pipe = LayerT2VPipeline(load_layered_dit(paths["dit"], paths["adapter"]), None, None)
    layout = pipe.layout(1, 17, 256, 256)
    config = SamplerConfig(steps=1, cfg=4.0)
    estimate = job_time.estimate_sampling_time(layout, pipe.dit, config, text_len=pipe.dit.config.text_len,
                                               guided=True, device="cpu", dtype=pipe.dit.dtype,
                                               clock=time.process_time)
    start = time.process_time()
    pipe.sample_latent(layout, conditioning(pipe, layout), config)
    measured = time.process_time() - start
    print(f"\nestimate {estimate.describe()}; measured {measured:.2f} CPU s")
    assert estimate.forwards == 2 == pipe.last_sampling_stats.forwards and estimate.tokens == layout.num_tokens
    assert 0.5 <= measured / estimate.seconds <= 4.0


def test_a_job_over_the_limit_is_refused_before_any_block_with_its_estimate():
    pipe = tiny_pipeline(layers=2, time_limit=1e-6)
    layout = pipe.layout(1, 5, 32, 32)
    blocks = []
    with pytest.raises(job_time.TooSlowError) as refused:
        pipe.sample_latent(layout, conditioning(pipe, layout), SamplerConfig(steps=20, cfg=4.0),
                           after_block=lambda: blocks.append(1))
    message = str(refused.value)
    assert not blocks and "\n" not in message
    assert re.search(r"would take about .+ \(20 steps, 40 DiT forwards", message)
    assert "lower steps, width/height or frames" in message and f"{job_time.LIMIT_ENV}=0" in message


@pytest.mark.parametrize("value, limit", [("", 3600.0), ("90", 5400.0), ("0", math.inf), ("0.5", 30.0)])
def test_the_limit_comes_from_the_environment(monkeypatch, value, limit):
    monkeypatch.setenv(job_time.LIMIT_ENV, value)
    assert job_time.time_limit() == limit


@pytest.mark.parametrize("value", ["abc", "-5", "nan", "inf"])
def test_a_bad_limit_is_one_line_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv(job_time.LIMIT_ENV, value)
    with pytest.raises(ValueError, match=f"{job_time.LIMIT_ENV}='{value}' is not valid"):
        job_time.time_limit()
