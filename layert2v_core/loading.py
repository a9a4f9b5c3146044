"""From files on disk to ready models: the one place the CLI, the nodes and training eval build them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .adapter_format import load_checkpoint
from .config import LayerT2VConfig
from .dit import LayeredWanTransformer
from .mask_vae import MaskVAE
from .text import TextEncoder
from .vae_io import denormalize_latent, normalize_latent
from .weights import load_wan_transformer, load_wan_vae

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not valid: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


@dataclass
class LayerVAE:
    """The Wan VAE for RGB layers and the MaskVAE (same encoder) for alpha layers."""
    vae: torch.nn.Module
    mask_vae: MaskVAE

    def to_raw(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalized (DiT space) -> raw VAE latent, the convention of ComfyUI's LATENT."""
        return denormalize_latent(latent, self.vae)

    def to_normalized(self, latent: torch.Tensor) -> torch.Tensor:
        return normalize_latent(latent, self.vae)


def load_layered_dit(dit_path: str | Path, adapter_path: Optional[str | Path] = None, dtype: str = "bf16",
                     device: str = "cpu") -> LayeredWanTransformer:
    """Wan2.1 DiT file + LayerT2V adapter -> LayeredWanTransformer (eval mode)."""
    adapter = load_checkpoint(adapter_path) if adapter_path else None
    if adapter is None:
        warnings.warn("no LayerT2V adapter given: the DiT runs with zero LayerAdaLN and no LoRA (untrained layers)")
    base = load_wan_transformer(dit_path, dtype=parse_dtype(dtype), device=device)
    dit = LayeredWanTransformer(base, adapter.config if adapter else LayerT2VConfig())
    if adapter is not None:
        adapter.apply(dit)  # adds the LoRA layers itself when the adapter carries LoRA tensors
    return dit.to(device).eval()


def load_layer_vae(vae_path: str | Path, adapter_path: Optional[str | Path] = None, dtype: str = "fp32",
                   device: str = "cpu") -> LayerVAE:
    """Wan VAE file + the mask part of a LayerT2V adapter -> LayerVAE."""
    vae = load_wan_vae(vae_path, dtype=parse_dtype(dtype), device=device)
    adapter = load_checkpoint(adapter_path) if adapter_path else None
    config = adapter.config if adapter else LayerT2VConfig()
    mask_vae = MaskVAE.from_config(vae, config)
    if adapter is not None:
        adapter.apply_mask(mask_vae)
    else:
        warnings.warn("no mask adapter given: alpha is decoded by the plain Wan decoder (untrained)")
    return LayerVAE(vae=vae.eval(), mask_vae=mask_vae.eval())


def load_text_encoder(folder: str | Path, text_len: int = 512, dtype: str = "bf16", device: str = "cpu") -> TextEncoder:
    return TextEncoder.from_folder(folder, text_len=text_len, dtype=parse_dtype(dtype), device=device)
