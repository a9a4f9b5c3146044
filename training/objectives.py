"""The trainable modules the engine wraps in DDP: forward(batch tensors) -> {"loss", terms...}.

All randomness (noise, t, given segments) arrives as inputs, drawn by the stage from the checkpointed
step generator, so a forward is a pure function and DDP ranks never need to agree on RNG state.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from layert2v_core.layout import LayerLayout
from layert2v_core.mask_vae import MaskVAE, latent_stats

from . import losses
from .config import LossConfig
from .metrics import alpha_metrics
from .timesteps import per_frame, segment_timesteps


class MaskVAEObjective(nn.Module):
    """Stage 1: round-trip alpha through the mask VAE (head and decoder LoRA train)."""

    def __init__(self, mask_vae: MaskVAE, weights: LossConfig):
        super().__init__()
        self.mask_vae = mask_vae
        self.weights = weights
        self.features = losses.WanEncoderFeatures(mask_vae.vae) if weights.perceptual > 0 else None

    def forward(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        pred = self.mask_vae(alpha)
        rec = losses.reconstruction(pred, alpha, "smooth_l1")
        edge = losses.gradient_l1(pred, alpha)
        out = {"rec": rec, "edge": edge}
        loss = self.weights.reconstruction * rec + self.weights.edge * edge
        if self.features is not None:
            out["perceptual"] = losses.perceptual(self.features, pred, alpha)
            loss = loss + self.weights.perceptual * out["perceptual"]
        out["loss"] = loss
        out.update({k: torch.tensor(v) for k, v in alpha_metrics(pred.detach(), alpha).items()})
        return out


class JointObjective(nn.Module):
    """Stages 2 and 3: L = L_FM + w_cons * L_cons + w_mask * L_mask over the serialized latent."""

    def __init__(self, dit, mask_vae: MaskVAE, weights: LossConfig):
        super().__init__()
        self.dit = dit
        self.mask_vae = mask_vae.requires_grad_(False)
        self.weights = weights
        mean, std = latent_stats(mask_vae.vae)
        self.register_buffer("latent_mean", mean, persistent=False)
        self.register_buffer("latent_std", std, persistent=False)

    def forward(self, latent, noise, t, given, context, alpha, layout: LayerLayout,
                mask_crop=None) -> dict[str, torch.Tensor]:
        """latent/noise (B, 16, L*T', h, w); t (B,) in (0, 1); given (B, L) bool; context (B, P, n, d);
        alpha (B, K, F, H, W) GT mattes; mask_crop: the L_mask decode crop (losses.draw_mask_crop) or None."""
        w = self.weights
        t_seg = segment_timesteps(t, given)                                   # (B, L), 0 where given
        t_frames = per_frame(t_seg, layout).to(latent)
        x_t = t_frames * noise + (1 - t_frames) * latent
        v = self.dit(x_t.to(self.dit.dtype), t_seg * 1000.0, context.to(self.dit.dtype), layout).float()
        generated = per_frame((~given).float(), layout).to(latent)
        fm = losses.flow_matching(v, noise - latent, generated)
        x0_hat = x_t - t_frames * v
        out = {"flow": fm}
        loss = w.flow * fm
        if w.consistency > 0:
            a_lat = losses.alpha_to_latent_grid(alpha, layout)
            raw = w.consistency_space == "raw"
            out["consistency"] = losses.compositing_consistency(
                x0_hat, latent, a_lat, layout,
                self.latent_mean if raw else None, self.latent_std if raw else None)
            loss = loss + w.consistency * out["consistency"]
        if w.mask > 0:
            out["mask"] = losses.mask_decoding(self.mask_vae.decode_alpha, x0_hat, alpha, layout, (~given).float(),
                                               w.mask_gradient, w.mask_reconstruction, w.mask_latent_frames,
                                               mask_crop, w.mask_early_backward)
            loss = loss + w.mask * out["mask"]
        out["loss"] = loss
        out["foregrounds"] = torch.tensor(float(layout.num_foregrounds))  # logged: this batch's bucket
        return out
