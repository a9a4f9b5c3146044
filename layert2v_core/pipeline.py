"""LayerT2VPipeline: prompts -> one joint denoising pass -> decoded full, background, foregrounds, alphas.

The API the CLI, the ComfyUI nodes, training evaluation and tests all use.

Memory and speed options (keyword-only, all off or automatic by default so existing callers see the
same results):
- memory_check: before sampling, estimate the peak (memory.py) and refuse a job that cannot fit,
  naming width/height/frames/K and the estimated vs available GiB.
- time_limit: seconds; before sampling, estimate the run time on this device (job_time.py) and refuse
  a job estimated longer, with its estimate (None: no estimate; math.inf: estimate, never refuse).
- offload_text_encoder: after encoding, move an accelerator-resident text encoder to the CPU so the
  DiT has the device to itself (the embedding cache in text.py keeps repeated prompts free).
- dit_offload_device: after sampling (also when cancelled), move the DiT there (e.g. "cpu") so the
  VAE decode has the memory; the next sample_latent moves it back to `device`.
- memory_reserve: bytes of the device the check leaves to others (a host's reserve, e.g. ComfyUI's
  --reserve-vram).
- compile_dit: run the DiT forward through torch.compile (compiled once per pipeline).
- vae_tiling: spatial tiling of the RGB and alpha decodes: "auto" (tiles above 480x832), True,
  None, or a VaeTiling. Decoding is always chunked in time (vae_io.decode_latent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .dit import LayeredWanTransformer
from .layout import BACKGROUND, FOREGROUND, FULL, MASK, LayerLayout
from .job_time import TimeEstimate, check_time, estimate_sampling_time
from .model_geometry import check_latent_vae, layout_geometry
from .memory import MemoryEstimate, check_memory, estimate_sampling_memory
from .sampler import Guidance, SamplerConfig, SamplingStats, StepState, sample
from .text import encode_layer_prompts, fit_text_len
from .vae_io import TilingArg, decode_alpha, decode_latent, encode_frames

logger = logging.getLogger("layert2v")  # hosts such as ComfyUI show logging, not prints


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
    prompts.validate()
    slots = prompts.slots()
    values = {slot: (embeddings or {}).get(slot, text) for slot, text in slots.items()}
    negative = negative_embedding if negative_embedding is not None else prompts.negative
    cond, uncond = encode_layer_prompts(values, list(slots), negative, encoder=encoder, text_len=text_len)
    return LayerConditioning(cond=cond[None], uncond=uncond[None] if guided else None,
                             prompts=slots, negative=prompts.negative)


class LayerT2VPipeline:
    def __init__(self, dit: LayeredWanTransformer, vae, mask_vae, text_encoder=None, device="cpu", *,
                 memory_check: bool = True, offload_text_encoder: bool = True, dit_offload_device=None,
                 compile_dit: bool = False, vae_tiling: TilingArg = "auto", attention: str = "sdpa",
                 memory_reserve: int = 0, time_limit: Optional[float] = None):
        self.dit = dit
        self.vae = vae
        self.mask_vae = mask_vae
        self.text_encoder = text_encoder
        self.device = torch.device(device)
        self.memory_check = memory_check
        self.memory_reserve = int(memory_reserve)
        self.offload_text_encoder = offload_text_encoder
        self.dit_offload_device = torch.device(dit_offload_device) if dit_offload_device is not None else None
        self.compile_dit = compile_dit
        self.vae_tiling = vae_tiling
        self.attention = attention              # what the memory estimate assumes: "sdpa" or "math"
        self.time_limit = time_limit
        self.last_memory_estimate: Optional[MemoryEstimate] = None
        self.last_time_estimate: Optional[TimeEstimate] = None
        self.last_sampling_stats: Optional[SamplingStats] = None  # forwards run by the last sample_latent
        self._compiled = None

    @property
    def max_foregrounds(self) -> int:
        return self.dit.config.max_foregrounds

    def layout(self, num_foregrounds: int, num_frames: int, height: int, width: int) -> LayerLayout:
        """The layout of one generation, with this pipeline's VAE strides and DiT patch (model_geometry.py)."""
        layout = LayerLayout(num_foregrounds, num_frames, height, width, routing=self.dit.config.routing,
                             **layout_geometry(self.dit, self.vae))
        self.dit.check_layout(layout)
        return layout

    # ---- text --------------------------------------------------------------------------------
    def encode_prompts(self, prompts: LayerPrompts, guided: bool = True) -> LayerConditioning:
        if self.text_encoder is None:
            raise ValueError("text_encoder: this pipeline has none; pass precomputed LayerConditioning instead")
        conditioning = encode_conditioning(prompts, encoder=self.text_encoder, guided=guided)
        if self.offload_text_encoder:
            self.offload_text()
        return conditioning

    def offload_text(self) -> None:
        """Text encoder off the accelerator (no-op when it already lives on the CPU)."""
        encoder = self.text_encoder
        model = getattr(encoder, "model", None)
        if model is None or not hasattr(encoder, "offload"):
            return
        if next(model.parameters()).device.type != "cpu":
            encoder.offload()
            _empty_cache(self.device)

    # ---- denoising ---------------------------------------------------------------------------
    def denoiser(self, layout: LayerLayout):
        dit = self.dit
        forward = self._compiled_dit() if self.compile_dit else dit

        def velocity(x, t, context, blocks=None, after_block=None):
            with torch.no_grad():
                return forward(x.to(dit.dtype), t, context.to(dit.dtype), layout, blocks=blocks,
                               after_block=after_block)
        return velocity

    def _compiled_dit(self):
        if self._compiled is None or self._compiled[0] is not self.dit:
            self._compiled = (self.dit, torch.compile(self.dit, dynamic=False))
        return self._compiled[1]

    def estimate_memory(self, layout: LayerLayout, text_len: int, guided: bool = True) -> MemoryEstimate:
        """Peak-memory estimate of sampling `layout` on this pipeline's device (see memory.py)."""
        return estimate_sampling_memory(layout, self.dit, dtype=self.dit.dtype, cfg=guided, text_len=text_len,
                                        attention=self.attention,
                                        weights_loaded=self.dit.device.type == self.device.type)

    def sampling_memory(self, layout: LayerLayout, conditioning: LayerConditioning,
                        config: SamplerConfig) -> MemoryEstimate:
        """The estimate sample_latent checks, for a host that wants to make room before it runs."""
        guided = conditioning.uncond is not None and float(config.cfg) != 1.0
        return self.estimate_memory(layout, self.dit.config.text_len, guided=guided)

    def sample_latent(
        self,
        layout: LayerLayout,
        conditioning: LayerConditioning,
        config: SamplerConfig,
        given: Optional[dict[str, torch.Tensor]] = None,
        callback: Optional[Callable[[StepState], None]] = None,
        guidance: Optional[Guidance] = None,
        after_block: Optional[Callable[[], None]] = None,
    ) -> torch.Tensor:
        """after_block: called after every DiT block (a host's interrupt check may raise there)."""
        if conditioning.num_foregrounds != layout.num_foregrounds:
            raise ValueError(
                f"conditioning has {conditioning.num_foregrounds} foreground prompt(s) but the layout has "
                f"{layout.num_foregrounds}; give one prompt per foreground"
            )
        text_len = self.dit.config.text_len
        cond = fit_text_len(conditioning.cond, text_len)
        uncond = fit_text_len(conditioning.uncond, text_len) \
            if conditioning.uncond is not None and float(config.cfg) != 1.0 else None
        if self.memory_check:
            estimate = self.sampling_memory(layout, conditioning, config)
            self.last_memory_estimate = check_memory(estimate, self.device, reserve=self.memory_reserve)
        if self.time_limit is not None:
            estimate = estimate_sampling_time(layout, self.dit, config, text_len, uncond is not None, self.device,
                                              self.dit.dtype)
            logger.info("LayerT2V: sampling %dx%d, %d frames, K=%d, %d steps, CFG %g, shift %g: %s", layout.width,
                        layout.height, layout.num_frames, layout.num_foregrounds, config.steps, config.cfg,
                        config.shift, estimate.describe())
            self.last_time_estimate = check_time(estimate, self.time_limit)
        if self.dit_offload_device is not None and self.dit.device.type != self.device.type:
            self.dit.to(self.device)  # back from the offload device of the previous call
        self.last_sampling_stats = SamplingStats()
        try:
            return sample(self.denoiser(layout), layout, cond, uncond, config, given=given, callback=callback,
                          device=self.device, guidance=guidance, stats=self.last_sampling_stats,
                          after_block=after_block)
        finally:
            if self.dit_offload_device is not None:
                self.dit.to(self.dit_offload_device)
                _empty_cache(self.device)

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, latent: torch.Tensor, layout: LayerLayout, out_device=None) -> LayerFrames:
        """Every layer decoded; the frames land on `out_device` (default: the VAE's device)."""
        check_latent_vae(layout, self.vae)
        parts = layout.split(latent)
        rgb, alpha = {}, {}
        for seg in layout.segments:
            if seg.kind == MASK:
                decoded = decode_alpha(self.mask_vae, parts[seg.name], tiling=self.vae_tiling)[0, 0]
                alpha[seg.name] = decoded.to(out_device) if out_device is not None else decoded
            else:
                rgb[seg.name] = decode_latent(self.vae, parts[seg.name], tiling=self.vae_tiling, out_device=out_device)
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


def _empty_cache(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
