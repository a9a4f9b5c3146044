"""MaskVAE: alpha mattes in and out of the Wan latent space (LayerT2V stage 1).

    alpha (B,1,F,H,W) in [0,1] -> 3 channels in [-1,1] -> frozen Wan encoder -> posterior mode
      -> + head(mode)  (1x1x1 conv, zero-init residual) -> (z - latents_mean) / latents_std
    latent -> * latents_std + latents_mean -> Wan decoder with LoRA on its causal convs
      -> mean of the 3 channels -> alpha in [0,1]

The RGB VAE passed in is shared for encoding and never modified: the decoder is copied before LoRA
is added, so the same VAE keeps decoding RGB layers unchanged. Only the head and the decoder LoRA
train; they are also the only tensors in `mask_adapter_state_dict()`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from diffusers import AutoencoderKLWan

from .config import LayerT2VConfig
from .layout import LayoutError, validate_frames
from .lora_conv import add_causal_conv_lora, causal_conv_lora_layers
from .model_geometry import vae_strides
from .vae_io import denormalize_latent, latent_stats, normalize_latent  # noqa: F401 (re-exported)

HEAD_PREFIX = "head."
DECODER_PREFIX = "decoder."


class MaskVAE(nn.Module):
    def __init__(self, vae: AutoencoderKLWan, lora_rank: int = 128, lora_alpha: float = 128.0):
        super().__init__()
        self.vae = vae.requires_grad_(False)  # shared with the RGB path, frozen
        # Copy everything but the encoder side (the memo maps them to None), then add LoRA to the copy.
        self.decoder_vae = copy.deepcopy(vae, memo={id(vae.encoder): None, id(vae.quant_conv): None})
        self.decoder_vae.requires_grad_(False)
        self.lora_layers = add_causal_conv_lora(self.decoder_vae.decoder, lora_rank, lora_alpha)
        self.lora_rank, self.lora_alpha = int(lora_rank), float(lora_alpha)

        z_dim = vae.config.z_dim
        self.head = nn.Conv3d(z_dim, z_dim, kernel_size=1, device=_device_of(vae), dtype=torch.float32)
        nn.init.zeros_(self.head.weight)  # zero residual: identity at init, training starts from the plain VAE
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, vae: AutoencoderKLWan, config: LayerT2VConfig) -> "MaskVAE":
        return cls(vae, lora_rank=config.mask_vae_lora_rank, lora_alpha=config.mask_vae_lora_alpha)

    @property
    def z_dim(self) -> int:
        return self.vae.config.z_dim

    # ---- encode / decode -------------------------------------------------------------------
    def encode_alpha(self, alpha: torch.Tensor) -> torch.Tensor:
        """(B,1,F,H,W) alpha in [0,1], F = 4k+1 -> normalised latent (B,16,T',H/s,W/s) at the VAE's strides, float32.

        The frozen encoder runs without autograd; gradients reach the head only.
        """
        _check_alpha(alpha, vae_strides(self.vae)["space_stride"])
        weight = next(self.vae.encoder.parameters())  # inputs follow the weights (a host may have moved them)
        rgb = (alpha.float() * 2 - 1).expand(-1, 3, -1, -1, -1).to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            mode = self.vae.encode(rgb).latent_dist.mode().float()
        z = mode + self.head(mode.to(self.head.weight.dtype)).float()
        return normalize_latent(z, self.vae)

    def decode_alpha(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B,16,T',h,w) -> alpha (B,1,F,sh,sw) in [0,1] at the VAE's strides, float32."""
        if latent.ndim != 5 or latent.shape[1] != self.z_dim:
            raise ValueError(
                f"mask latent has shape {tuple(latent.shape)}; expected (batch, {self.z_dim}, frames, height, width)"
            )
        weight = self.decoder_vae.post_quant_conv.weight
        z = denormalize_latent(latent.float().to(weight.device), self.vae).to(weight.dtype)
        rgb = self.decoder_vae.decode(z).sample  # already clamped to [-1, 1] by diffusers
        return ((rgb.float().mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        """Round trip, the stage-1 training forward."""
        return self.decode_alpha(self.encode_alpha(alpha))

    # ---- training / adapter ------------------------------------------------------------------
    def named_trainable_parameters(self) -> dict[str, nn.Parameter]:
        return self._adapter_tensors()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._adapter_tensors().values())

    def mask_adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: p.detach() for k, p in self._adapter_tensors().items()}

    def load_mask_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load head + decoder LoRA tensors; every key must be known and every known key present."""
        own = self._adapter_tensors()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong_shape = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ]
        if missing or unexpected or wrong_shape:
            raise ValueError(
                "mask adapter does not fit this MaskVAE "
                f"(rank {self.lora_rank}, {len(self.lora_layers)} decoder convs): "
                f"missing {missing[:4]}{'...' if len(missing) > 4 else ''} ({len(missing)}), "
                f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''} ({len(unexpected)}), "
                f"wrong shape {wrong_shape[:4]}"
            )
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(state[k].to(device=p.device, dtype=p.dtype))

    def _adapter_tensors(self) -> dict[str, nn.Parameter]:
        out = {f"{HEAD_PREFIX}weight": self.head.weight, f"{HEAD_PREFIX}bias": self.head.bias}
        for path, layer in causal_conv_lora_layers(self.decoder_vae.decoder).items():
            out[f"{DECODER_PREFIX}{path}.lora_A.weight"] = layer.lora_A.weight
            out[f"{DECODER_PREFIX}{path}.lora_B.weight"] = layer.lora_B.weight
        return out


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _check_alpha(alpha: torch.Tensor, space_stride: int) -> None:
    if not torch.is_tensor(alpha) or alpha.ndim != 5 or alpha.shape[1] != 1:
        shape = tuple(alpha.shape) if torch.is_tensor(alpha) else type(alpha).__name__
        raise ValueError(f"alpha has shape {shape}; expected (batch, 1, frames, height, width) with values in [0, 1]")
    try:
        validate_frames(int(alpha.shape[2]))
    except LayoutError as err:
        raise ValueError(f"alpha {err}") from None
    for name, size in (("height", alpha.shape[3]), ("width", alpha.shape[4])):
        if size % space_stride:
            raise ValueError(f"alpha {name}={size} is not valid: this VAE needs a multiple of {space_stride}")
    lo, hi = float(alpha.detach().min()), float(alpha.detach().max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(
            f"alpha values span [{lo:.3g}, {hi:.3g}]; expected [0, 1] (divide 8-bit masks by 255, 16-bit by 65535)"
        )
