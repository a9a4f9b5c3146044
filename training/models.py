"""Build the frozen and trainable parts of a run from ModelConfig: tiny (in code) or real Wan2.1 files.

Both kinds return the same classes (LayeredWanTransformer, AutoencoderKLWan, MaskVAE, TextEncoder), so
every stage runs the same code at both scales.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from layert2v_core.weights.layert2v_adapter import MASK_FILE, load_layert2v_adapter
from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.mask_vae import MaskVAE
from layert2v_core.text import TextEncoder
from layert2v_core.weights.files import load_safetensors

from .config import ModelConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Words of the synthetic captions, added to the tiny tokenizer's vocabulary so a caption is a few
# word tokens rather than dozens of character tokens.
SYNTHETIC_WORDS = (
    "circle square triangle ring diamond striped plain moving right left up down over stripes checkers "
    "waves dots gradient to cyan and a an"
).split()


@dataclass
class Components:
    layert2v: LayerT2VConfig
    vae: object
    text_encoder: Optional[TextEncoder] = None
    mask_vae: Optional[MaskVAE] = None
    dit: Optional[LayeredWanTransformer] = None


def layert2v_config(cfg: ModelConfig, **changes) -> LayerT2VConfig:
    return LayerT2VConfig.from_dict({**cfg.layert2v, **changes})


def build_vae(cfg: ModelConfig, device):
    if cfg.kind == "tiny":
        from layert2v_core.tiny import build_tiny_vae

        vae = build_tiny_vae(seed=cfg.seed)
    elif cfg.kind == "wan":
        from layert2v_core.weights.wan_single_file import load_wan_vae

        vae = load_wan_vae(_required(cfg.vae_path, "model.vae_path"), dtype=DTYPES[cfg.dtype])
    else:
        raise ValueError(f"model.kind={cfg.kind!r}: choose tiny or wan")
    return vae.to(device).eval().requires_grad_(False)


def build_text_encoder(cfg: ModelConfig, text_len: int, device) -> TextEncoder:
    if cfg.kind == "tiny":
        from layert2v_core.tiny import TINY_WORDS, build_tiny_tokenizer, build_tiny_umt5

        tokenizer = build_tiny_tokenizer(tuple(TINY_WORDS) + tuple(SYNTHETIC_WORDS))
        model = build_tiny_umt5(len(tokenizer), seed=cfg.seed).to(device)
        return TextEncoder(model, tokenizer, text_len=text_len, device=device, cache_size=4096)
    return TextEncoder.from_folder(_required(cfg.text_encoder_path, "model.text_encoder_path"), text_len=text_len,
                                   dtype=DTYPES[cfg.text_dtype], device=device, cache_size=4096)


def save_text_encoder(encoder: TextEncoder, folder: str | Path) -> None:
    """The tiny run's text encoder is built in code; save it so the demo and pipeline use the same one."""
    encoder.tokenizer.save_pretrained(folder)
    encoder.model.save_pretrained(folder)


def build_dit(cfg: ModelConfig, config: LayerT2VConfig, device) -> LayeredWanTransformer:
    if cfg.kind == "tiny":
        from layert2v_core.tiny import build_tiny_transformer

        base = build_tiny_transformer(seed=cfg.seed)
    else:
        from layert2v_core.weights.wan_single_file import load_wan_transformer

        base = load_wan_transformer(_required(cfg.dit_path, "model.dit_path"), dtype=DTYPES[cfg.dtype])
    base = base.to(device).requires_grad_(False)
    dit = LayeredWanTransformer(base, config)
    dit.gradient_checkpointing = cfg.gradient_checkpointing
    return dit


def build_mask_vae(vae, config: LayerT2VConfig) -> MaskVAE:
    return MaskVAE.from_config(vae, config)


def load_mask_part(mask_vae: MaskVAE, folder: str | Path) -> None:
    """The mask adapter of a previous stage: a full adapter folder, or stage 1's mask-only folder."""
    path = Path(folder) / MASK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MASK_FILE}; run stage 1 first or point model.init_adapter at its output")
    mask_vae.load_mask_adapter_state_dict(load_safetensors(path))


def load_dit_part(dit: LayeredWanTransformer, folder: str | Path) -> LayerT2VConfig:
    """DiT adapter of a previous stage (rows beyond its LayerAdaLN table stay as they are)."""
    adapter = load_layert2v_adapter(folder)
    dit.load_adapter_state_dict(adapter.dit_state)
    return adapter.config


def _required(value, name: str):
    if not value:
        raise ValueError(f"{name} is required for model.kind=wan")
    return value
