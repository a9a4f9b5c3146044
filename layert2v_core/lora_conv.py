"""LoRA for the Wan VAE's causal 3-D convolutions.

peft cannot wrap diffusers' `WanCausalConv3d`: it rebuilds the layer with a `bias` keyword and loses
the causal time padding and the `cache_x` argument the chunked decoder passes. This wrapper keeps the
original layer and its `forward(x, cache_x=None)`, and adds a low-rank weight delta:

    W' = W + (alpha / rank) * B @ A,  A: (rank, in, kt, kh, kw),  B: (out, rank, 1, 1, 1)

which is exactly peft's conv LoRA (down conv with the layer's kernel, then a 1x1x1 up conv), computed
as one convolution with the merged weight. B starts at zero, so a fresh wrapper is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

LORA_A = "lora_A"
LORA_B = "lora_B"


class CausalConvLoRA(nn.Module):
    def __init__(self, base: WanCausalConv3d, rank: int, alpha: float):
        super().__init__()
        if not isinstance(base, WanCausalConv3d):
            raise TypeError(f"CausalConvLoRA wraps WanCausalConv3d, got {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"mask_vae_lora_rank={rank} is not valid: it must be 1 or more")
        self.base = base
        self.rank = int(rank)
        self.alpha = float(alpha)
        kernel = base.weight.shape[2:]
        factory = {"device": base.weight.device, "dtype": torch.float32}
        # Registered as sub-modules holding `.weight` so state-dict keys read `<path>.lora_A.weight`, as peft's.
        self.lora_A = _Weight(torch.empty(rank, base.in_channels, *kernel, **factory))
        self.lora_B = _Weight(torch.zeros(base.out_channels, rank, 1, 1, 1, **factory))
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's default for lora_A

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta_weight(self) -> torch.Tensor:
        a = self.lora_A.weight.flatten(1)                         # (rank, in * k)
        b = self.lora_B.weight.flatten(1)                         # (out, rank)
        return (b @ a).view_as(self.base.weight) * self.scale

    def forward(self, x: torch.Tensor, cache_x: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.base.weight + self.delta_weight().to(self.base.weight.dtype)
        # Run the original layer with the merged weight: its causal padding and cache logic stay untouched.
        return torch.func.functional_call(self.base, {"weight": weight}, (x, cache_x))

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


class _Weight(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)


def add_causal_conv_lora(module: nn.Module, rank: int, alpha: float) -> dict[str, CausalConvLoRA]:
    """Replace every WanCausalConv3d under `module` by a CausalConvLoRA; returns {path: wrapper}."""
    targets = [(name, m) for name, m in module.named_modules() if isinstance(m, WanCausalConv3d)]
    wrapped = {}
    for name, conv in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        if isinstance(parent, CausalConvLoRA):
            continue  # already wrapped: this is a wrapper's own base layer
        wrapper = CausalConvLoRA(conv, rank, alpha)
        setattr(parent, attr, wrapper)
        wrapped[name] = wrapper
    return wrapped


def causal_conv_lora_layers(module: nn.Module) -> dict[str, CausalConvLoRA]:
    return {name: m for name, m in module.named_modules() if isinstance(m, CausalConvLoRA)}
