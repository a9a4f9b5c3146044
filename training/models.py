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

        from diffusers import AutoencoderKLWan

        arch = cfg.architecture.get("vae")  # a random VAE of that config (memory plans at real sizes)
        vae = build_tiny_vae(seed=cfg.seed) if arch is None else _random(lambda: AutoencoderKLWan(**arch), cfg.dtype,
                                                                          cfg.seed)
    elif cfg.kind == "wan":
        from layert2v_core.weights.wan_single_file import load_wan_vae

        vae = load_wan_vae(_required(cfg.vae_path, "model.vae_path"), dtype=DTYPES[cfg.dtype])
    else:
        raise ValueError(f"model.kind={cfg.kind!r}: choose tiny or wan")
    return vae.to(device).eval().requires_grad_(False)


def build_text_encoder(cfg: ModelConfig, text_len: int, device, cache_gib: float = 1.0) -> TextEncoder:
    # The embedding cache lives in CPU RAM, bounded in bytes (a 512 x 4096 bf16 prompt is 4 MiB): on the
    # GPU a 4096-prompt cache would take 16 GiB of every process.
    cache = {"cache_size": 1 << 20, "cache_bytes": int(cache_gib * 2 ** 30), "cache_device": "cpu"}
    if cfg.kind == "tiny":
        from layert2v_core.tiny import TINY_WORDS, build_tiny_tokenizer, build_tiny_umt5

        tokenizer = build_tiny_tokenizer(tuple(TINY_WORDS) + tuple(SYNTHETIC_WORDS))
        model = build_tiny_umt5(len(tokenizer), seed=cfg.seed).to(device)
        return TextEncoder(model, tokenizer, text_len=text_len, device=device, **cache)
    return TextEncoder.from_folder(_required(cfg.text_encoder_path, "model.text_encoder_path"), text_len=text_len,
                                   dtype=DTYPES[cfg.text_dtype], device=device, **cache)


def save_text_encoder(encoder: TextEncoder, folder: str | Path) -> None:
    """The tiny run's text encoder is built in code; save it so the demo and pipeline use the same one."""
    encoder.tokenizer.save_pretrained(folder)
    encoder.model.save_pretrained(folder)


def build_dit(cfg: ModelConfig, config: LayerT2VConfig, device) -> LayeredWanTransformer:
    if cfg.kind == "tiny":
        from layert2v_core.tiny import build_tiny_transformer

        arch = dict(cfg.architecture.get("dit") or {})  # a random DiT of that size (memory plans at real sizes)
        # plan_only_blocks: N: blocks after the first N stay on the meta device (counted, never run)
        real_blocks = arch.pop("plan_only_blocks", None)
        if not arch:
            base = build_tiny_transformer(seed=cfg.seed).to(DTYPES[cfg.dtype])
        else:
            keep = (lambda name: True) if real_blocks is None else (
                lambda name: not name.startswith("blocks.") or int(name.split(".")[1]) < real_blocks)
            base = _random(lambda: build_tiny_transformer(seed=cfg.seed, **arch), cfg.dtype, cfg.seed, keep)
            if real_blocks is not None:
                base = base.requires_grad_(False)
                dit = LayeredWanTransformer(base, config)
                dit.gradient_checkpointing = cfg.gradient_checkpointing
                return dit
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


def _random(build, dtype: str, seed: int, materialize=lambda name: True) -> torch.nn.Module:
    """A model of real size with N(0, 0.02) weights made directly in `dtype` (buffers such as RoPE tables
    are built normally): the 1.3B DiT's own initialisation would take 5.6 GB in fp32 and minutes."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = build()
    generator = torch.Generator().manual_seed(seed)
    for path, module in model.named_modules():
        for name, p in list(module._parameters.items()):
            if p is not None and p.device.type == "meta":
                data = (torch.empty(p.shape, dtype=DTYPES[dtype]).normal_(0, 0.02, generator=generator)
                        if materialize(path) else torch.empty(p.shape, dtype=DTYPES[dtype], device="meta"))
                module._parameters[name] = torch.nn.Parameter(data, requires_grad=p.requires_grad)
    return model


def _required(value, name: str):
    if not value:
        raise ValueError(f"{name} is required for model.kind=wan")
    return value
