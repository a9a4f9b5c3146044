"""Memory estimate before sampling: refuse a job that cannot fit, with the numbers, before any step runs.

The estimate counts the tensors alive at the worst moment of one DiT forward (inference, no autograd),
from the layout's token count and the model config, and adds the sampler's latents and, when the DiT
still has to be moved onto the device, its weights:

    B = 2 with classifier-free guidance (cond and uncond run batched), S = layout.num_tokens,
    d = heads * head_dim, F = ffn_dim, e = bytes per element of the DiT dtype, 4 = float32

    resident over the whole forward:  the tokens (B S d e) and the float32 residual stream the layered
                                      block keeps between its sub-layers (B S d 4), the projected text
    FFN phase:                        hidden and GELU output (2 B S F e) + its input (B S d e)
    self-attention phase:             q, k, v, output (4 B S d e) + float32 RMS-norm / RoPE copies of q, k
                                      (2 B S d 4); with the "math" attention kernel also the score and
                                      softmax matrices (2 B H S S e); SDPA's flash / memory-efficient
                                      kernels (the default everywhere) keep no S x S matrix.
    peak = resident + max(FFN phase, self-attention phase) + a float32 working copy (B S d 4)

Measured against the real peak (bench/generation.py, tests/test_memory.py) the estimate lands within
[0.6, 1.6] x of the measured peak RSS delta on CPU; it is a guard against requests that are off by
orders of magnitude, not an allocator model. The VAE decode runs after the DiT is offloaded and is
tiled (vae_io.py), so it is not part of this estimate; `estimate_vae_memory` sizes it on its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch

from .layout import LATENT_CHANNELS, LayerLayout

GIB = 1024 ** 3
ATTENTION_KINDS = ("sdpa", "math")
SKIP_ENV = "LAYERT2V_SKIP_MEMORY_CHECK"   # "1": never refuse (the estimate is still computed)


class InsufficientMemoryError(ValueError, MemoryError):
    """A sampling job whose estimated peak exceeds the memory available on its device.

    A ValueError (bad request: the CLI prints it and ComfyUI shows it as one line) and a MemoryError."""


@dataclass(frozen=True)
class DiTShape:
    """The numbers of a Wan DiT config that decide its activation memory."""
    dim: int
    heads: int
    layers: int
    ffn_dim: int
    text_dim: int
    params: int = 0          # parameter count (0 = unknown); LoRA included when taken from a model

    @classmethod
    def from_config(cls, config) -> "DiTShape":
        get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
        heads, head_dim = int(get("num_attention_heads")), int(get("attention_head_dim"))
        dim, ffn = heads * head_dim, int(get("ffn_dim"))
        layers, text_dim = int(get("num_layers")), int(get("text_dim"))
        freq_dim = int(get("freq_dim"))
        in_ch = int(get("in_channels"))
        patch = 1
        for p in get("patch_size"):
            patch *= int(p)
        # Wan block: self-attn 4 d^2, cross-attn 4 d^2, FFN 2 d F, modulation 6 d, norms; plus embedders.
        per_block = 8 * dim * dim + 2 * dim * ffn + 10 * dim + ffn
        embed = in_ch * patch * dim + text_dim * dim + dim * dim + freq_dim * dim + dim * dim + 6 * dim * dim
        return cls(dim=dim, heads=heads, layers=layers, ffn_dim=ffn, text_dim=text_dim,
                   params=layers * per_block + embed + dim * in_ch * patch)

    @classmethod
    def of(cls, model) -> "DiTShape":
        """A DiTShape, a DiT module (LayeredWanTransformer, WanTransformer3DModel) or a DiT config
        (dict or object, also as `model.base.config`)."""
        if isinstance(model, DiTShape):
            return model
        if hasattr(model, "parameters"):
            return cls.from_model(model)
        base = getattr(model, "base", model)
        return cls.from_config(getattr(base, "config", base))

    @classmethod
    def from_model(cls, dit) -> "DiTShape":
        """A LayeredWanTransformer or a diffusers WanTransformer3DModel: config + real parameter count."""
        base = getattr(dit, "base", dit)
        shape = cls.from_config(base.config)
        params = sum(p.numel() for p in dit.parameters())
        return DiTShape(shape.dim, shape.heads, shape.layers, shape.ffn_dim, shape.text_dim, params)


@dataclass
class MemoryEstimate:
    layout: LayerLayout
    batch: int
    dtype: torch.dtype
    attention: str
    weights: int                   # bytes of the DiT weights (counted in `needed` only if they still move)
    activations: int               # peak of one forward on top of the weights
    latents: int                   # sampler state: noise, x, CFG input, velocity, scheduler history
    weights_to_load: int = 0       # weight bytes not yet on the device
    parts: dict = field(default_factory=dict)

    @property
    def needed(self) -> int:
        """Bytes that must still fit on the device when sampling starts."""
        return self.activations + self.latents + self.weights_to_load

    @property
    def total(self) -> int:
        """Peak including the (resident) weights."""
        return self.activations + self.latents + self.weights

    def describe(self) -> str:
        lay = self.layout
        return (f"width={lay.width} height={lay.height} frames={lay.num_frames} K={lay.num_foregrounds} "
                f"({lay.num_segments} layers, {lay.num_tokens} tokens, batch {self.batch})")

    def summary(self) -> str:
        return (f"{self.describe()}: activations {self.activations / GIB:.2f} GiB + latents "
                f"{self.latents / GIB:.3f} GiB + weights {self.weights / GIB:.2f} GiB "
                f"({'to load' if self.weights_to_load else 'resident'}), {self.attention} attention, {self.dtype}")


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def estimate_sampling_memory(
    layout: LayerLayout,
    model,
    dtype: torch.dtype = torch.bfloat16,
    cfg: bool = True,
    text_len: int = 512,
    attention: str = "sdpa",
    weights_loaded: bool = True,
) -> MemoryEstimate:
    """Peak bytes of sampling `layout` with `model` (a DiT module, a config dict/object, or a DiTShape).

    cfg: cond and uncond batched (batch 2). attention: "sdpa" (flash / memory-efficient kernels, no
    S x S matrix) or "math" (materialised scores). weights_loaded=False adds the weights to `needed`.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention={attention!r} is not valid: choose one of {', '.join(ATTENTION_KINDS)}")
    shape = DiTShape.of(model)
    e, f = element_size(dtype), 4
    B, S, d, F, H = (2 if cfg else 1), layout.num_tokens, shape.dim, shape.ffn_dim, shape.heads
    prompts = len(layout.prompt_names)
    text_tokens = prompts * text_len

    resident = B * S * d * (e + f) + B * text_tokens * (shape.text_dim + d) * e
    ffn_phase = B * S * (2 * F * e + d * e)
    attn_phase = B * S * d * (4 * e + 2 * f)
    if attention == "math":
        attn_phase += 2 * B * H * S * S * e
    working = B * S * d * f
    activations = resident + max(ffn_phase, attn_phase) + working

    latent_numel = 1
    for n in layout.latent_shape(1, LATENT_CHANNELS):
        latent_numel *= n
    latents = latent_numel * f * (6 + 3 * B)   # noise, x, clean, denoised, scheduler history; CFG in/out
    weights = shape.params * e
    return MemoryEstimate(
        layout=layout, batch=B, dtype=dtype, attention=attention, weights=weights, activations=activations,
        latents=latents, weights_to_load=0 if weights_loaded else weights,
        parts={"resident": resident, "ffn_phase": ffn_phase, "attention_phase": attn_phase, "working": working},
    )


VAE_WORKING_TENSORS = 16
"""Tensors the size of the VAE's full-resolution activation (one time chunk of scale_factor_temporal
frames at base_dim x dim_mult[0] channels) alive at the peak of a decode: a block's input, residual,
normalised copy and convolution output, and the two frames each causal convolution caches. The real
Wan2.1 VAE (fp32, CPU, 128x128) measured 0.83x of the resulting estimate (tests/test_memory.py)."""


def estimate_vae_memory(vae, frames: int, height: int, width: int, tiling="auto") -> int:
    """Working bytes of decoding or encoding one layer clip with the Wan VAE on its device: one time chunk
    at full resolution (spatial tiles bound height and width, see vae_io.resolve_tiling) plus the clip
    itself in float32 (the encoder's input, the mask decoder's output). A host frees this much before
    loading the VAE; like the sampling estimate it is a guide, not an allocator model."""
    from .vae_io import resolve_tiling

    tiles = resolve_tiling(tiling, height, width)
    tile_h, tile_w = (min(height, tiles.tile_height), min(width, tiles.tile_width)) if tiles else (height, width)
    config = vae.config
    chunk = int(getattr(config, "scale_factor_temporal", None) or 4)
    channels = int(getattr(config, "decoder_base_dim", None) or config.base_dim) * int(config.dim_mult[0])
    working = VAE_WORKING_TENSORS * chunk * channels * tile_h * tile_w * element_size(vae.dtype)
    return working + frames * height * width * 3 * 4


def available_memory(device) -> Optional[int]:
    """Bytes free for new tensors: CUDA free memory plus torch's reusable cache; CPU available RAM
    (psutil, else /proc/meminfo MemAvailable). None when it cannot be known (e.g. mps, meta)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(estimate: MemoryEstimate, device, available: Optional[int] = None, reserve: int = 0) -> MemoryEstimate:
    """Raise InsufficientMemoryError when `estimate.needed` exceeds what `device` has free, less `reserve`
    bytes kept for others (a host's reserve, e.g. ComfyUI's --reserve-vram)."""
    device = torch.device(device)
    if available is None:
        available = available_memory(device)
    if available is None or os.environ.get(SKIP_ENV) == "1":
        return estimate
    available -= reserve
    if estimate.needed > available:
        lay = estimate.layout
        raise InsufficientMemoryError(
            f"not enough memory to sample width={lay.width} height={lay.height} frames={lay.num_frames} "
            f"K={lay.num_foregrounds} ({lay.num_segments} layers, {lay.num_tokens} tokens, batch {estimate.batch}): "
            f"estimated {estimate.needed / GIB:.1f} GiB needed vs {available / GIB:.1f} GiB available on {device}"
            f"{f' ({reserve / GIB:.1f} GiB kept free for other programs)' if reserve else ''}. "
            f"Lower width/height/frames or the number of foregrounds (tokens grow with width x height x frames x "
            f"layers), or set {SKIP_ENV}=1 to try anyway"
        )
    return estimate
