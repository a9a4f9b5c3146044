"""From files on disk to ready models: the one place the CLI, the nodes and training eval build them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..config import LayerT2VConfig
from ..dit import LayeredWanTransformer
from ..mask_vae import MaskVAE
from ..model_geometry import check_pair, set_source
from ..recommended import SamplingSettings
from ..text import TextEncoder
from ..vae_io import denormalize_latent, normalize_latent
from .checkpoint import load_checkpoint
from .header_schema import check_latent_stats
from .wan_single_file import load_wan_transformer, load_wan_vae

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not valid: choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def model_dtype(name: str, config: LayerT2VConfig) -> str:
    """`name`, or for "auto" the dtype the checkpoint is meant to run in (recommended.py)."""
    return SamplingSettings.of(config).fill(dtype=name)["dtype"]


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


def load_layered_dit(dit_path: str | Path, adapter_path: Optional[str | Path] = None, dtype: str = "auto",
                     device: str = "cpu", use_ema: bool = False) -> LayeredWanTransformer:
    """Wan2.1 DiT file + LayerT2V adapter -> LayeredWanTransformer (eval mode). use_ema: the EMA
    weights of an authors' checkpoint folder instead of its adapter weights. dtype "auto": the
    adapter config's recommended one (the base model's bf16 when it names none)."""
    adapter = load_checkpoint(adapter_path, use_ema=use_ema) if adapter_path else None
    if adapter is None:
        warnings.warn("no LayerT2V adapter given: the DiT runs with zero LayerAdaLN and no LoRA (untrained layers)")
    config = adapter.config if adapter else LayerT2VConfig()
    base = load_wan_transformer(dit_path, dtype=parse_dtype(model_dtype(dtype, config)), device=device)
    dit = LayeredWanTransformer(base, config)
    if adapter is not None:
        adapter.apply(dit)  # adds the LoRA layers itself when the adapter carries LoRA tensors
    set_source(dit, dit=dit_path, adapter=adapter_path)
    return dit.to(device).eval()


def load_layer_vae(vae_path: str | Path, adapter_path: Optional[str | Path] = None, dtype: str = "fp32",
                   device: str = "cpu", dit: Optional[LayeredWanTransformer] = None) -> LayerVAE:
    """Wan VAE file + the mask part of a LayerT2V adapter -> LayerVAE. With the `dit` it will serve, a VAE
    that cannot (other latent channels or strides) is refused first, naming both files."""
    vae = load_wan_vae(vae_path, dtype=parse_dtype(dtype), device=device)
    set_source(vae, vae=vae_path)
    check_pair(dit, vae)
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


@dataclass
class LayerT2VModel:
    """A layered DiT plus the latent statistics of the VAE it was trained with: what the ComfyUI
    model socket carries, so a sampler can hand out raw latents (ComfyUI's LATENT convention)."""
    dit: LayeredWanTransformer
    latents_mean: list[float]
    latents_std: list[float]
    name: str = ""
    device: str = "cpu"   # where sampling runs; the DiT waits on the CPU in between

    @classmethod
    def from_dit(cls, dit: LayeredWanTransformer, name: str = "") -> "LayerT2VModel":
        from .wan_single_file import shipped_config

        stats = dit.config.extra.get("latents_mean"), dit.config.extra.get("latents_std")
        if None in stats:  # Wan2.1's own VAE statistics, from the shipped config
            vae_config = shipped_config("vae")
            stats = vae_config["latents_mean"], vae_config["latents_std"]
        check_latent_stats(*stats, where=name or "LayerT2V model", channels=dit.base.config.in_channels)
        return cls(dit=dit, latents_mean=list(stats[0]), latents_std=list(stats[1]), name=name)

    def to_raw(self, latent: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.latents_mean, device=latent.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.latents_std, device=latent.device).view(1, -1, 1, 1, 1)
        return latent.float() * std + mean
