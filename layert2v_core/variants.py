"""Conditional layer generation from one model: decompose a video, background for a foreground,
foregrounds for a background, and trajectory-guided generation.

Given layers are encoded into their segments (RGB through the Wan VAE, alpha through the mask VAE's
encoder path) and handed to the sampler as clean latents; the sampler keeps them by replacement
(any checkpoint) or native conditioning at t = 0 (checkpoints trained with conditional stage 2).
Cross-layer attention still sees them, so the generated layers fit the given ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .layout import BACKGROUND, FOREGROUND, FULL, MASK, LayerLayout, LayoutError
from .pipeline import LayerConditioning, LayerFrames, LayerT2VPipeline
from .sampler import SamplerConfig, StepState
from .trajectory import Keyframe, TrajectoryGuidance, check_foregrounds, trajectory_targets

VARIANTS = {
    "decompose": "a given full video -> background, foreground(s) and alpha",
    "background_for_foreground": "given foreground(s) + alpha (RGBA) -> background and full",
    "foreground_for_background": "a given background -> foreground(s), alpha and full",
}


@dataclass
class GivenLayers:
    """Layers supplied by the user. RGB (F, H, W, 3) in [0, 1]; foregrounds straight or premultiplied
    as `foreground_is` says; alpha (F, H, W) in [0, 1], 1 = opaque, keyed by foreground index."""
    full: Optional[torch.Tensor] = None
    background: Optional[torch.Tensor] = None
    foregrounds: dict[int, torch.Tensor] = field(default_factory=dict)
    alphas: dict[int, torch.Tensor] = field(default_factory=dict)
    foreground_is: str = "straight"

    def is_empty(self) -> bool:
        return self.full is None and self.background is None and not self.foregrounds and not self.alphas

    def segment_frames(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(RGB frames by segment name, alpha by mask segment name), foregrounds premultiplied."""
        if self.foreground_is not in ("straight", "premultiplied"):
            raise ValueError(f"foreground_is={self.foreground_is!r}: use 'straight' or 'premultiplied'")
        rgb = {}
        if self.full is not None:
            rgb[FULL] = self.full
        if self.background is not None:
            rgb[BACKGROUND] = self.background
        for k, frames in self.foregrounds.items():
            if k not in self.alphas:
                raise ValueError(f"foreground {k} is given without its alpha; give both (an RGBA clip)")
            if tuple(frames.shape[:3]) != tuple(self.alphas[k].shape):
                raise ValueError(f"given foreground {k} is {frames_text(frames.shape[:3])} but its alpha is "
                                 f"{frames_text(self.alphas[k].shape)}; give a foreground and alpha of the same "
                                 "frame count and size")
            premult = frames if self.foreground_is == "premultiplied" else frames * self.alphas[k][..., None]
            rgb[f"{FOREGROUND}_{k}"] = premult
        alpha = {f"{MASK}_{k}": a for k, a in self.alphas.items()}
        return rgb, alpha


def frames_text(shape) -> str:
    """(frames, height, width, ...) -> '17 frame(s) of 64x48', for messages."""
    frames, height, width = tuple(shape)[:3]
    return f"{frames} frame(s) of {width}x{height}"


def check_frames(name: str, frames: torch.Tensor, layout: LayerLayout, channels: Optional[int]) -> None:
    expected = (layout.num_frames, layout.height, layout.width) + ((channels,) if channels else ())
    if tuple(frames.shape) != expected:
        raise LayoutError(f"given {name} has shape {tuple(frames.shape)}; this generation needs {expected} "
                          "(frames, height, width[, channels]): resize or trim it first")
    if not torch.isfinite(frames).all():
        raise ValueError(f"given {name} contains NaN or infinite values")
    if frames.min() < 0 or frames.max() > 1:
        raise ValueError(f"given {name} has values outside [0, 1] ({frames.min():.3g}..{frames.max():.3g})")


def encode_given(pipe: LayerT2VPipeline, layout: LayerLayout, given: GivenLayers) -> dict[str, torch.Tensor]:
    """Clean latents per given segment, ready for the sampler."""
    rgb, alpha = given.segment_frames()
    extra = sorted({k for k in list(given.foregrounds) + list(given.alphas) if k > layout.num_foregrounds})
    if extra:
        raise ValueError(f"given input has foreground {', '.join(map(str, extra))} but this generation has "
                         f"{layout.num_foregrounds} foreground(s); give foreground_index 1..{layout.num_foregrounds}, "
                         "or generate more foregrounds")
    latents = {}
    for name, frames in rgb.items():
        layout.segment(name)  # names a foreground index the layout does not have
        check_frames(name, frames, layout, 3)
        latents[name] = pipe.encode_layer(frames.float())
    for name, a in alpha.items():
        layout.segment(name)
        check_frames(name, a, layout, None)
        latents[name] = pipe.encode_alpha(a.float())
    return latents


def sample_layers(
    pipe: LayerT2VPipeline,
    layout: LayerLayout,
    conditioning: LayerConditioning,
    config: SamplerConfig,
    given: Optional[GivenLayers] = None,
    trajectories: Optional[dict[int, list[Keyframe]]] = None,
    trajectory_strength: float = 0.8,
    trajectory_end_step: int = 10,
    callback: Optional[Callable[[StepState], None]] = None,
    after_block: Optional[Callable[[], None]] = None,
) -> torch.Tensor:
    """One joint pass with optional given layers and per-foreground trajectories -> normalized latent.
    after_block: called after every DiT block (LayerT2VPipeline.sample_latent)."""
    if trajectories:  # before any encoding: a cheap refusal first
        check_foregrounds(trajectories, layout)
    given_latents = encode_given(pipe, layout, given) if given is not None and not given.is_empty() else None
    guidance = None
    if trajectories:
        targets, _ = trajectory_targets(pipe.mask_vae, trajectories, layout)
        guidance = TrajectoryGuidance(layout, targets, trajectory_strength, trajectory_end_step)
    return pipe.sample_latent(layout, conditioning, config, given=given_latents, callback=callback, guidance=guidance,
                              after_block=after_block)


def generate_layers(pipe: LayerT2VPipeline, layout: LayerLayout, conditioning: LayerConditioning,
                    config: SamplerConfig, **options) -> LayerFrames:
    """sample_layers, then decode every layer."""
    return pipe.decode(sample_layers(pipe, layout, conditioning, config, **options), layout)
