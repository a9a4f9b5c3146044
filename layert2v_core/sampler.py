"""Rectified-flow sampling over the serialized multi-layer latent: one shared noise, one ODE trajectory.

x_sigma = sigma * noise + (1 - sigma) * x0, the model predicts v = noise - x0, timestep = sigma * 1000.
Steps come from diffusers' flow-matching schedulers; classifier-free guidance runs cond and uncond
in one batched forward. Segments can be given (clean latents for conditional generation):
- "replace": before every step the given segment is set to its noised version at the current sigma
  (works with any checkpoint);
- "native": the given segment stays clean with its own timestep 0 (checkpoints trained with
  conditional stage 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from .layout import LayerLayout, LayoutError

SAMPLERS = ("euler", "unipc")
GIVEN_MODES = ("replace", "native")
NUM_TRAIN_TIMESTEPS = 1000


@dataclass
class SamplerConfig:
    steps: int = 50
    cfg: float = 5.0
    shift: float = 5.0
    sampler: str = "unipc"
    seed: int = 0
    given_mode: str = "replace"

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
) -> torch.Tensor:
    """Integrate the flow ODE from shared noise to a clean serialized latent (B=1, float32).

    cond / uncond: (1, P, text_len, dim) prompt embeddings in layout.prompt_names order. A callback may
    raise to cancel; the exception propagates before any further model call.
    """
    config.validate()
    guided = uncond is not None and float(config.cfg) != 1.0
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

    scheduler = make_scheduler(config.sampler, config.shift)
    scheduler.set_timesteps(config.steps, device=device)
    timesteps = scheduler.timesteps
    sigmas = scheduler.sigmas

    for i, t in enumerate(timesteps):
        sigma = float(sigmas[i])
        if given:
            given_now = clean if native else sigma * noise + (1.0 - sigma) * clean
            x = torch.where(given_mask, given_now, x)

        t_segments = torch.full((1, segments), float(t), device=device)
        if native:
            t_segments[:, given_segments] = 0.0
        x_in = torch.cat([x, x]) if guided else x
        t_in = t_segments.expand(x_in.shape[0], segments)
        v = denoiser(x_in, t_in, context).float()
        if guided:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + float(config.cfg) * (v_cond - v_uncond)
        if guidance is not None:
            v = guidance(i, sigma, x, v)

        denoised = x - sigma * v
        x = scheduler.step(v, t, x, return_dict=False)[0]
        if callback is not None:
            callback(StepState(step=i + 1, total=len(timesteps), sigma=float(sigmas[i + 1]), latent=x, denoised=denoised))

    if given:
        x = torch.where(given_mask, clean, x)
    return x
