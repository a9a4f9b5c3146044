"""Rectified-flow sampling over the serialized multi-layer latent: one shared noise, one ODE trajectory.

x_sigma = sigma * noise + (1 - sigma) * x0, the model predicts v = noise - x0, timestep = sigma * 1000.
Steps come from diffusers' flow-matching schedulers; classifier-free guidance runs cond and uncond
in one batched forward. Segments can be given (clean latents for conditional generation):
- "replace": before every step the given segment is set to its noised version at the current sigma
  (works with any checkpoint);
- "native": the given segment stays clean with its own timestep 0 (checkpoints trained with
  conditional stage 2).

Fewer DiT forwards (both off by default; off = the same arithmetic as without them):
- guidance range (cfg_start, cfg_end, fractions of the steps): the unconditional pass runs only there;
  outside it the step is cond-only ("skip": plain conditional velocity) or reuses the last guided
  step's (cond - uncond) difference ("reuse"), so guidance strength carries on at half the cost.
- step cache (cache_threshold > 0): TeaCache-style reuse of the block stack's residual (step_cache.py).
SamplingStats counts what ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .layout import LayerLayout, LayoutError
from .step_cache import StepCache, StepCacheConfig

SAMPLERS = ("euler", "unipc")
GIVEN_MODES = ("replace", "native")
CFG_OUTSIDE = ("skip", "reuse")
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class SamplerConfig:
    steps: int = 50
    cfg: float = 5.0
    shift: float = 5.0
    sampler: str = "unipc"
    seed: int = 0
    given_mode: str = "replace"
    cfg_start: float = 0.0           # the unconditional pass runs on steps in [cfg_start, cfg_end) * steps
    cfg_end: float = 1.0
    cfg_outside: str = "skip"        # other steps: "skip" guidance or "reuse" the last guided difference
    cache_threshold: float = 0.0     # step cache (step_cache.py); 0 = off
    cache_max_skips: int = 2

    @property
    def step_cache(self) -> StepCacheConfig:
        return StepCacheConfig(self.cache_threshold, self.cache_max_skips)

    def guided_step(self, index: int) -> bool:
        """Whether step `index` (from 0) runs the unconditional pass (given an uncond at all)."""
        return round(float(self.cfg_start) * self.steps) <= index < round(float(self.cfg_end) * self.steps)

    def validate(self) -> None:
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 1000:
            raise ValueError(f"steps={self.steps!r} is not valid: use an integer in 1..1000")
        if not (0.0 <= float(self.cfg) <= 100.0):
            raise ValueError(f"cfg={self.cfg!r} is not valid: use 0..100 (1 disables guidance)")
        if not (0.0 < float(self.shift) <= 100.0):
            raise ValueError(f"shift={self.shift!r} is not valid: use a value in (0, 100]")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler={self.sampler!r} is not valid: choose one of {', '.join(SAMPLERS)}")
        if self.given_mode not in GIVEN_MODES:
            raise ValueError(f"given_mode={self.given_mode!r} is not valid: choose one of {', '.join(GIVEN_MODES)}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed={self.seed!r} is not valid: use an integer in 0..2**64-1")
        if not 0.0 <= float(self.cfg_start) <= float(self.cfg_end) <= 1.0:
            raise ValueError(f"cfg_start={self.cfg_start!r}, cfg_end={self.cfg_end!r} are not valid: use "
                             "0 <= cfg_start <= cfg_end <= 1 (fractions of the steps that run guidance)")
        if self.cfg_outside not in CFG_OUTSIDE:
            raise ValueError(f"cfg_outside={self.cfg_outside!r} is not valid: choose one of {', '.join(CFG_OUTSIDE)}")
        self.step_cache.validate()


@dataclass
class SamplingStats:
    """What one sample() call ran. A forward = one sample through the block stack (a CFG-batched step
    computes two); a cached step runs only the embeddings and the output head."""
    steps: int = 0
    model_calls: int = 0
    forwards: int = 0
    guided_steps: int = 0
    cached_steps: int = 0


@dataclass
class StepState:
    """What a per-step callback sees (progress bars, previews, cancellation)."""
    step: int             # 1-based index of the step just finished
    total: int
    sigma: float
    latent: torch.Tensor  # x after the step
    denoised: torch.Tensor  # the model's x0 estimate at this step (cheap preview)


Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t (B, L), context) -> v
# (step index from 0, sigma, x, guided v) -> v: steers the trajectory (e.g. toward a target alpha)
Guidance = Callable[[int, float, torch.Tensor, torch.Tensor], torch.Tensor]


def speed_summary(config: SamplerConfig, stats: Optional[SamplingStats]) -> dict:
    """The speed options that change the result and the DiT forwards they left (for export manifests)."""
    out = {"dit_forwards": stats.forwards if stats is not None else None}
    if config.step_cache.enabled:
        out["step_cache"] = config.cache_threshold
    if (config.cfg_start, config.cfg_end) != (0.0, 1.0):
        out.update(cfg_range=[config.cfg_start, config.cfg_end], cfg_outside=config.cfg_outside)
    return out


def make_scheduler(name: str, shift: float):
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)
    if name == "unipc":
        return UniPCMultistepScheduler(
            num_train_timesteps=NUM_TRAIN_TIMESTEPS,
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
        )
    raise ValueError(f"sampler={name!r} is not valid: choose one of {', '.join(SAMPLERS)}")


def initial_noise(layout: LayerLayout, seed: int, batch: int = 1) -> torch.Tensor:
    """Seeded on a CPU generator so the same seed gives the same noise on every device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(layout.latent_shape(batch), generator=generator, dtype=torch.float32)


def given_latents(layout: LayerLayout, given: dict[str, torch.Tensor], like: torch.Tensor):
    """(clean latent with given segments filled in, bool mask over the serialized time axis)."""
    clean = torch.zeros_like(like)
    time_mask = torch.zeros(like.shape[2], dtype=torch.bool, device=like.device)
    for name, value in given.items():
        sl = layout.time_slice(name)
        expected = layout.segment_latent_shape(like.shape[0], like.shape[1])
        if tuple(value.shape) != expected:
            raise LayoutError(f"given segment {name!r} has shape {tuple(value.shape)}, expected {expected}")
        clean[:, :, sl] = value.to(like)
        time_mask[sl] = True
    return clean, time_mask.view(1, 1, -1, 1, 1)


def sample(
    denoiser: Denoiser,
    layout: LayerLayout,
    cond: torch.Tensor,
    uncond: Optional[torch.Tensor],
    config: SamplerConfig,
    given: Optional[dict[str, torch.Tensor]] = None,
    callback: Optional[Callable[[StepState], None]] = None,
    device: torch.device | str = "cpu",
    guidance: Optional[Guidance] = None,
    stats: Optional[SamplingStats] = None,
    after_block: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """Integrate the flow ODE from shared noise to a clean serialized latent (B=1, float32).

    cond / uncond: (1, P, text_len, dim) prompt embeddings in layout.prompt_names order. A callback may
    raise to cancel; the exception propagates before any further model call. With the step cache on,
    the denoiser is called as denoiser(x, t, context, blocks=...) (see LayeredWanTransformer.forward);
    with `after_block` (called after every DiT block, e.g. a host's interrupt check that raises) as
    denoiser(..., after_block=after_block).
    """
    config.validate()
    guided = uncond is not None and float(config.cfg) != 1.0
    stats = stats if stats is not None else SamplingStats()
    cache = StepCache(config.step_cache) if config.step_cache.enabled else None
    last_difference = None  # (cond - uncond) velocity of the last guided step, for cfg_outside="reuse"
    noise = initial_noise(layout, config.seed).to(device)
    x = noise.clone()
    segments = layout.num_segments

    given = given or {}
    clean, given_mask = given_latents(layout, given, noise)
    given_segments = torch.tensor(
        [s.name in given for s in layout.segments], device=device, dtype=torch.bool
    )
    native = config.given_mode == "native" and bool(given)

    context = torch.cat([cond, uncond]) if guided else cond
    context = context.to(device)
    cond_only = cond.to(device)

    scheduler = make_scheduler(config.sampler, config.shift)
    scheduler.set_timesteps(config.steps, device=device)
    timesteps = scheduler.timesteps
    sigmas = scheduler.sigmas

    options = {"after_block": after_block} if after_block is not None else {}
    for i, t in enumerate(timesteps):
        sigma = float(sigmas[i])
        if given:
            given_now = clean if native else sigma * noise + (1.0 - sigma) * clean
            x = torch.where(given_mask, given_now, x)

        t_segments = torch.full((1, segments), float(t), device=device)
        if native:
            t_segments[:, given_segments] = 0.0
        guided_now = guided and config.guided_step(i)
        x_in = torch.cat([x, x]) if guided_now else x
        t_in = t_segments.expand(x_in.shape[0], segments)
        context_now = context if guided_now or not guided else cond_only
        if cache is None:
            v = denoiser(x_in, t_in, context_now, **options).float()
        else:
            skipped_before = cache.skipped
            v = denoiser(x_in, t_in, context_now, blocks=cache.runner(force=i in (0, len(timesteps) - 1)),
                         **options).float()
            stats.cached_steps += cache.skipped - skipped_before
        stats.steps += 1
        stats.model_calls += 1
        stats.guided_steps += int(guided_now)
        stats.forwards += x_in.shape[0] if cache is None or cache.skipped == skipped_before else 0
        if guided_now:
            v_cond, v_uncond = v.chunk(2)
            last_difference = v_cond - v_uncond
            v = v_uncond + float(config.cfg) * last_difference
        elif guided and config.cfg_outside == "reuse" and last_difference is not None:
            v = v + (float(config.cfg) - 1.0) * last_difference
        if guidance is not None:
            v = guidance(i, sigma, x, v)

        denoised = x - sigma * v
        x = scheduler.step(v, t, x, return_dict=False)[0]
        if callback is not None:
            callback(StepState(step=i + 1, total=len(timesteps), sigma=float(sigmas[i + 1]), latent=x, denoised=denoised))

    if given:
        x = torch.where(given_mask, clean, x)
    return x
