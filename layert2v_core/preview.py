"""Cheap per-step previews: every segment's middle latent frame, projected to RGB, side by side."""

from __future__ import annotations

import numpy as np
import torch

from .layout import LayerLayout


def latent_preview(latent: torch.Tensor, layout: LayerLayout, rgb_factors, rgb_bias=None) -> np.ndarray:
    """(1, C, L*T', h, w) latent -> uint8 (h, L*w, 3): segments left to right in layout order.

    rgb_factors: (C, 3) linear map from latent channels to RGB in [-1, 1] (the host's table for Wan).
    """
    factors = torch.as_tensor(rgb_factors, dtype=torch.float32, device=latent.device)
    bias = torch.zeros(3) if rgb_bias is None else torch.as_tensor(rgb_bias, dtype=torch.float32)
    middle = layout.latent_frames // 2
    tiles = []
    for part in layout.split(latent.float()).values():
        frame = part[0, :, middle]                                   # (C, h, w)
        rgb = torch.einsum("chw,cr->hwr", frame, factors) + bias.to(frame.device)
        tiles.append(((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(tiles, dim=1).numpy()
