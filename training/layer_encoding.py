"""Frozen encoders: a decoded layered clip -> the serialized latent, per-slot text, and GT alpha.

Used on the fly during training and by the latent cache, so both paths produce identical tensors.
RGB layers go through the Wan VAE (each clip on its own: the VAE is causal in time), masks through
the mask VAE's encoder + head, prompts through the text encoder one slot at a time.
"""

from __future__ import annotations

import torch

from layert2v_core.config import LayerT2VConfig
from layert2v_core.layout import BACKGROUND, FULL, WAN21_PATCH_SIZE, LayerLayout
from layert2v_core.model_geometry import vae_strides
from layert2v_core.text import encode_layer_prompts
from layert2v_core.vae_io import encode_frames


class LayerEncoder:
    def __init__(self, vae, mask_vae, text_encoder, config: LayerT2VConfig, patch_size=WAN21_PATCH_SIZE):
        self.vae = vae
        self.mask_vae = mask_vae
        self.text_encoder = text_encoder
        self.config = config
        self.patch_size = tuple(patch_size)
        self._uncond = None

    def layout(self, num_foregrounds: int, num_frames: int, height: int, width: int) -> LayerLayout:
        """A clip's layout at the frozen VAE's strides and the DiT's patch."""
        return LayerLayout(num_foregrounds, num_frames, height, width, routing=self.config.routing,
                           patch_size=self.patch_size, **vae_strides(self.vae))

    @torch.no_grad()
    def latent(self, item: dict, layout: LayerLayout) -> torch.Tensor:
        """One sample (unbatched dataset item) -> (16, L*T', h, w) in layout order (h = H / the VAE's stride)."""
        device = self.vae.device
        parts = {FULL: encode_frames(self.vae, item["full"].to(device)),
                 BACKGROUND: encode_frames(self.vae, item["background"].to(device))}
        for k in range(1, layout.num_foregrounds + 1):
            parts[f"foreground_{k}"] = encode_frames(self.vae, item["foreground"][k - 1].to(device))
            alpha = item["alpha"][k - 1].to(device)[None, None]                     # (1, 1, F, H, W)
            parts[f"mask_{k}"] = self.mask_vae.encode_alpha(alpha).float()
        return layout.join({k: v.float() for k, v in parts.items()})[0]

    @torch.no_grad()
    def context(self, prompts: dict[str, str], layout: LayerLayout) -> torch.Tensor:
        """(P, text_len, dim) prompt embeddings in layout.prompt_names order."""
        cond, _ = encode_layer_prompts({k: prompts[k] for k in layout.prompt_names}, layout.prompt_names,
                                       negative="", encoder=self.text_encoder)
        return cond.float()

    @torch.no_grad()
    def uncond_row(self) -> torch.Tensor:
        """(text_len, dim): the empty negative prompt the sampler puts in every slot for CFG."""
        if self._uncond is None:
            self._uncond = self.text_encoder.encode("").float()
        return self._uncond
