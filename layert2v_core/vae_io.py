"""RGB video <-> normalized Wan latent, one layer clip at a time (the Wan VAE is causal in time)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan


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
    """RGB frames (F, H, W, 3) in [0, 1] -> normalized latent (1, 16, T', H/8, W/8), deterministic (mode)."""
    x = frames_to_vae_input(frames).to(device=vae.device, dtype=vae.dtype)
    z = vae.encode(x).latent_dist.mode()
    return normalize_latent(z.float(), vae)


@torch.no_grad()
def decode_latent(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """Normalized latent (1, 16, T', h, w) -> RGB frames (F, H, W, 3) in [0, 1]."""
    video = vae.decode(denormalize_latent(z.float(), vae).to(device=vae.device, dtype=vae.dtype)).sample
    return vae_output_to_frames(video)
