"""RGB video <-> normalized Wan latent, one layer clip at a time (the Wan VAE is causal in time).

Decoding long or large clips (the "VAE decode OOM at the end of the run" users report):
- in time, the Wan decoder already runs one latent frame at a time with its causal frame cache
  (`feat_cache`); `decode_latent` drives that same loop itself, keeping the cache, and writes each
  decoded chunk straight into a preallocated (F, H, W, 3) output in [0, 1]. diffusers instead grows
  the clip with torch.cat per latent frame (quadratic copying, 2x the clip at the end) and then
  converts it with three full-size temporaries; here the clip exists once.
- in space, diffusers' own `AutoencoderKLWan` tiling (`enable_tiling`, overlapping tiles blended
  linearly, each tile run through time with its own cache) is switched on for the call through
  `VaeTiling`, and the previous setting restored afterwards. "auto" tiles frames larger than
  AUTO_TILE_PIXELS (Wan2.1's 480x832), so default-sized outputs are bit-identical to untiled ones.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch
from diffusers import AutoencoderKLWan

from .layout import pixel_frames
from .model_geometry import vae_strides

AUTO_TILE_PIXELS = 480 * 832


@dataclass(frozen=True)
class VaeTiling:
    """Spatial tiles in pixels (diffusers' defaults: 256 tiles every 192 px, 64 px blended)."""
    tile_height: int = 256
    tile_width: int = 256
    stride_height: int = 192
    stride_width: int = 192

    def __post_init__(self):
        for name in ("tile_height", "tile_width", "stride_height", "stride_width"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 8 or value % 8:
                raise ValueError(f"{name}={value!r} is not valid: use a positive multiple of 8 pixels")
        if self.stride_height > self.tile_height or self.stride_width > self.tile_width:
            raise ValueError("tile strides must not exceed the tile size (tiles must overlap or touch)")


TilingArg = Union[None, bool, str, VaeTiling]


def resolve_tiling(tiling: TilingArg, height: int, width: int) -> Optional[VaeTiling]:
    """None/False: never; True: default tiles; "auto": default tiles above AUTO_TILE_PIXELS; a VaeTiling."""
    if tiling is None or tiling is False:
        return None
    if tiling is True:
        return VaeTiling()
    if tiling == "auto":
        return VaeTiling() if height * width > AUTO_TILE_PIXELS else None
    if isinstance(tiling, VaeTiling):
        return tiling
    raise ValueError(f"vae_tiling={tiling!r} is not valid: use None, True, 'auto' or a VaeTiling")


@contextlib.contextmanager
def vae_tiling(vae: AutoencoderKLWan, tiling: Optional[VaeTiling]):
    """Temporarily switch diffusers' spatial tiling on for `vae` (restored on exit)."""
    if tiling is None or not hasattr(vae, "tile_sample_min_height"):
        yield vae
        return
    names = ("use_tiling", "tile_sample_min_height", "tile_sample_min_width",
             "tile_sample_stride_height", "tile_sample_stride_width")
    saved = {n: getattr(vae, n) for n in names}
    vae.use_tiling = True
    vae.tile_sample_min_height, vae.tile_sample_min_width = tiling.tile_height, tiling.tile_width
    vae.tile_sample_stride_height, vae.tile_sample_stride_width = tiling.stride_height, tiling.stride_width
    try:
        yield vae
    finally:
        for n, v in saved.items():
            setattr(vae, n, v)


def latent_stats(vae: AutoencoderKLWan, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the Wan latent channels from the VAE config, shaped (1, C, 1, 1, 1), float32."""
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
    return mean, std


def normalize_latent(z: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    """Raw VAE latent -> the normalized latent the DiT sees (same for RGB and mask segments)."""
    mean, std = latent_stats(vae, z.device)
    return ((z.float() - mean) / std).to(z.dtype)


def denormalize_latent(z: torch.Tensor, vae: AutoencoderKLWan) -> torch.Tensor:
    mean, std = latent_stats(vae, z.device)
    return (z.float() * std + mean).to(z.dtype)


def frames_to_vae_input(frames: torch.Tensor) -> torch.Tensor:
    """(F, H, W, C) in [0, 1] (ComfyUI IMAGE layout) -> (1, C, F, H, W) in [-1, 1]."""
    return frames.permute(3, 0, 1, 2).unsqueeze(0) * 2.0 - 1.0


def vae_output_to_frames(video: torch.Tensor) -> torch.Tensor:
    """(1, C, F, H, W) in [-1, 1] -> (F, H, W, C) in [0, 1]."""
    return ((video[0].permute(1, 2, 3, 0).float() + 1.0) / 2.0).clamp(0.0, 1.0)


@torch.no_grad()
def encode_frames(vae: AutoencoderKLWan, frames: torch.Tensor) -> torch.Tensor:
    """RGB frames (F, H, W, 3) in [0, 1] -> normalized latent (1, z_dim, T', H/s, W/s) at the VAE's own strides,
    deterministic (mode)."""
    x = frames_to_vae_input(frames).to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(x).latent_dist.mode()
    return normalize_latent(z.float(), vae)


def _write_frames(out: torch.Tensor, video: torch.Tensor, start: int) -> int:
    """Decoder output (1, C, f, H, W) in [-1, 1] -> out[start:start+f] as (f, H, W, C) in [0, 1]; returns f."""
    f = video.shape[2]
    dst = out[start:start + f]
    dst.copy_(video[0].permute(1, 2, 3, 0))
    dst.add_(1.0).mul_(0.5).clamp_(0.0, 1.0)
    return f


def _streamable(vae) -> bool:
    """The frame-cache loop below mirrors diffusers 0.42's AutoencoderKLWan._decode (Wan2.1: no patchify)."""
    return (getattr(vae.config, "patch_size", None) is None and hasattr(vae, "clear_cache")
            and hasattr(vae, "decoder") and hasattr(vae, "post_quant_conv"))


def decoder_chunks(vae: AutoencoderKLWan, raw: torch.Tensor) -> Iterator[torch.Tensor]:
    """Raw latent (B, 16, T', h, w) -> decoder outputs (B, C, f, H, W), one latent frame at a time with
    the causal cache carried over, before any clamp: diffusers 0.42's AutoencoderKLWan._decode loop.
    Gradients flow when the caller allows them (the stage-0 VAE trains through it)."""
    vae.clear_cache()
    try:
        x = vae.post_quant_conv(raw)
        for i in range(x.shape[2]):
            vae._conv_idx = [0]
            yield vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                              first_chunk=(i == 0))
    finally:
        vae.clear_cache()


@torch.no_grad()
def decode_latent(vae: AutoencoderKLWan, z: torch.Tensor, tiling: TilingArg = None,
                  out_device=None) -> torch.Tensor:
    """Normalized latent (1, 16, T', h, w) -> RGB frames (F, H, W, 3) in [0, 1], float32.

    Chunked in time (one latent frame per decoder call, the causal cache carried over) into a
    preallocated output; `tiling` adds diffusers' spatial tiles (see module docstring)."""
    raw = denormalize_latent(z.float(), vae).to(device=vae.device, dtype=vae.dtype)
    strides = vae_strides(vae)
    height, width = raw.shape[3] * strides["space_stride"], raw.shape[4] * strides["space_stride"]
    tiles = resolve_tiling(tiling, height, width)
    if tiles is not None or not _streamable(vae) or raw.shape[0] != 1:
        with vae_tiling(vae, tiles):
            return vae_output_to_frames(vae.decode(raw).sample).to(out_device or raw.device)
    frames = pixel_frames(raw.shape[2], strides["time_stride"])
    out = torch.empty(frames, height, width, 3, dtype=torch.float32, device=out_device or raw.device)
    written = 0
    for chunk in decoder_chunks(vae, raw):
        written += _write_frames(out, chunk, written)
        del chunk
    if written != frames:
        raise RuntimeError(f"VAE decoded {written} frames, expected {frames}")
    return out


@torch.no_grad()
def decode_alpha(mask_vae, z: torch.Tensor, tiling: TilingArg = None) -> torch.Tensor:
    """MaskVAE.decode_alpha with the same spatial tiling option (the decode itself stays MaskVAE's)."""
    stride = vae_strides(mask_vae.decoder_vae)["space_stride"]
    height, width = z.shape[3] * stride, z.shape[4] * stride
    with vae_tiling(mask_vae.decoder_vae, resolve_tiling(tiling, height, width)):
        return mask_vae.decode_alpha(z)
