"""LayerT2VPipeline: prompts -> one joint denoising pass -> decoded full, background, foregrounds, alphas.

The API the CLI, the ComfyUI nodes, training evaluation and tests all use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .dit import LayeredWanTransformer
from .layout import BACKGROUND, FOREGROUND, FULL, MASK, LayerLayout
from .sampler import SamplerConfig, StepState, sample
from .vae_io import decode_latent, encode_frames


@dataclass
class LayerPrompts:
    full: str
    background: str
    foregrounds: list[str]
    negative: str = ""

    @property
    def num_foregrounds(self) -> int:
        return len(self.foregrounds)

    def slots(self) -> dict[str, str]:
        """Prompt text per prompt slot, keyed as LayerLayout.prompt_names."""
        out = {FULL: self.full, BACKGROUND: self.background}
        out.update({f"{FOREGROUND}_{k}": p for k, p in enumerate(self.foregrounds, start=1)})
        return out

    def validate(self) -> None:
        if not self.foregrounds:
            raise ValueError("foregrounds: at least one foreground prompt is needed")
        for slot, text in self.slots().items():
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"prompt {slot!r} is empty: every layer needs a prompt describing it")


@dataclass
class LayerConditioning:
    """Per-slot text embeddings, whichever encoder produced them (ours or ComfyUI's CLIP)."""
    cond: torch.Tensor                      # (1, P, text_len, text_dim) in prompt-slot order
    uncond: Optional[torch.Tensor]          # same shape, negative prompt in every slot; None = no CFG
    prompts: dict[str, str] = field(default_factory=dict)
    negative: str = ""

    @property
    def num_foregrounds(self) -> int:
        return self.cond.shape[1] - 2


@dataclass
class LayerFrames:
    """Decoded layers. RGB (F, H, W, 3) in [0, 1]; foregrounds premultiplied (fg = full * alpha).
    Alpha (F, H, W) in [0, 1], 1 = opaque, keyed by the mask segment name (mask_1, ...)."""
    layout: LayerLayout
    rgb: dict[str, torch.Tensor]
    alpha: dict[str, torch.Tensor]
    generation: dict = field(default_factory=dict)  # prompts, seed, sampler settings: for the manifest

    def foreground(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rgb[f"{FOREGROUND}_{k}"], self.alpha[f"{MASK}_{k}"]

    def alpha_by_layer(self) -> dict[str, torch.Tensor]:
        """Alpha keyed by the RGB layer it belongs to (foreground_k), as the exporters take it."""
        return {f"{FOREGROUND}_{s.foreground}": self.alpha[s.name] for s in self.layout.segments_of_kind(MASK)}


def encode_conditioning(prompts: LayerPrompts, encoder=None, embeddings: Optional[dict] = None,
                        negative_embedding: Optional[torch.Tensor] = None, text_len: Optional[int] = None,
                        guided: bool = True) -> LayerConditioning:
    """Per-slot conditioning from our TextEncoder, or from precomputed (L, dim) embeddings per slot
    (e.g. ComfyUI's CLIP output); both are padded/trimmed the same way."""
    from .text import encode_layer_prompts

    prompts.validate()
    slots = prompts.slots()
    values = {slot: (embeddings or {}).get(slot, text) for slot, text in slots.items()}
    negative = negative_embedding if negative_embedding is not None else prompts.negative
    cond, uncond = encode_layer_prompts(values, list(slots), negative, encoder=encoder, text_len=text_len)
    return LayerConditioning(cond=cond[None], uncond=uncond[None] if guided else None,
                             prompts=slots, negative=prompts.negative)


class LayerT2VPipeline:
    def __init__(self, dit: LayeredWanTransformer, vae, mask_vae, text_encoder=None, device="cpu"):
        self.dit = dit
        self.vae = vae
        self.mask_vae = mask_vae
        self.text_encoder = text_encoder
        self.device = torch.device(device)

    @property
    def max_foregrounds(self) -> int:
        return self.dit.config.max_foregrounds

    def layout(self, num_foregrounds: int, num_frames: int, height: int, width: int) -> LayerLayout:
        layout = LayerLayout(num_foregrounds, num_frames, height, width, routing=self.dit.config.routing,
                             patch_size=tuple(self.dit.base.config.patch_size))
        self.dit.check_layout(layout)
        return layout

    # ---- text --------------------------------------------------------------------------------
    def encode_prompts(self, prompts: LayerPrompts, guided: bool = True) -> LayerConditioning:
        if self.text_encoder is None:
            raise ValueError("text_encoder: this pipeline has none; pass precomputed LayerConditioning instead")
        return encode_conditioning(prompts, encoder=self.text_encoder, guided=guided)

    # ---- denoising ---------------------------------------------------------------------------
    def denoiser(self, layout: LayerLayout):
        dit = self.dit

        def velocity(x, t, context):
            with torch.no_grad():
                return dit(x.to(dit.dtype), t, context.to(dit.dtype), layout)
        return velocity

    def sample_latent(
        self,
        layout: LayerLayout,
        conditioning: LayerConditioning,
        config: SamplerConfig,
        given: Optional[dict[str, torch.Tensor]] = None,
        callback: Optional[Callable[[StepState], None]] = None,
    ) -> torch.Tensor:
        if conditioning.num_foregrounds != layout.num_foregrounds:
            raise ValueError(
                f"conditioning has {conditioning.num_foregrounds} foreground prompt(s) but the layout has "
                f"{layout.num_foregrounds}; give one prompt per foreground"
            )
        uncond = conditioning.uncond if float(config.cfg) != 1.0 else None
        return sample(self.denoiser(layout), layout, conditioning.cond, uncond, config,
                      given=given, callback=callback, device=self.device)

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, latent: torch.Tensor, layout: LayerLayout) -> LayerFrames:
        parts = layout.split(latent)
        rgb, alpha = {}, {}
        for seg in layout.segments:
            if seg.kind == MASK:
                alpha[seg.name] = self.mask_vae.decode_alpha(parts[seg.name])[0, 0]
            else:
                rgb[seg.name] = decode_latent(self.vae, parts[seg.name])
        for seg in layout.segments_of_kind(MASK):
            # RGB and alpha decode separately; a valid premultiplied colour never exceeds its alpha.
            fg = f"{FOREGROUND}_{seg.foreground}"
            rgb[fg] = torch.minimum(rgb[fg], alpha[seg.name][..., None])
        return LayerFrames(layout=layout, rgb=rgb, alpha=alpha)

    def encode_layer(self, frames: torch.Tensor) -> torch.Tensor:
        """RGB frames (F, H, W, 3) in [0, 1] -> normalized latent of one segment."""
        return encode_frames(self.vae, frames)

    def encode_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """Alpha (F, H, W) in [0, 1] -> normalized latent of one mask segment."""
        return self.mask_vae.encode_alpha(alpha[None, None].to(self.device))

    # ---- one call ----------------------------------------------------------------------------
    def __call__(
        self,
        prompts: LayerPrompts,
        num_frames: int,
        height: int,
        width: int,
        config: SamplerConfig,
        callback: Optional[Callable[[StepState], None]] = None,
        conditioning: Optional[LayerConditioning] = None,
    ) -> LayerFrames:
        layout = self.layout(prompts.num_foregrounds, num_frames, height, width)
        config.validate()
        if conditioning is None:
            conditioning = self.encode_prompts(prompts, guided=float(config.cfg) != 1.0)
        latent = self.sample_latent(layout, conditioning, config, callback=callback)
        return self.decode(latent, layout)
