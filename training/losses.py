"""Losses of the three stages (pure functions of tensors; weights live in LossConfig).

Stage 1: SmoothL1 + Sobel edge L1 + perceptual distance in frozen Wan-encoder features.
Stages 2/3: flow matching on the non-given segments, latent compositing consistency, and the mask
loss through the mask VAE decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from layert2v_core.layout import BACKGROUND, FOREGROUND, FULL, MASK, LayerLayout, pixel_frames


# ---- image-space terms on alpha videos (B, 1, F, H, W) --------------------------------------------
def _frames(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B*F, C, H, W)."""
    return x.transpose(1, 2).flatten(0, 1)


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame Sobel gradients of (B, 1, F, H, W) -> two (B*F, 1, H, W) maps (replicate padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=torch.float32) / 8
    frames = F.pad(_frames(x.float()), (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(frames, kx.view(1, 1, 3, 3))
    gy = F.conv2d(frames, kx.t().contiguous().view(1, 1, 3, 3))
    return gx, gy


def gradient_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sobel-gradient L1: the stage-1 edge loss and the stage-2 gradient-consistency term."""
    px, py = sobel(pred)
    tx, ty = sobel(target)
    return (px - tx).abs().mean() + (py - ty).abs().mean()


def reconstruction(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred.float(), target.float(), beta=0.1)  # beta < 1: alpha errors are small
    if kind == "l1":
        return F.l1_loss(pred.float(), target.float())
    raise ValueError(f"reconstruction loss {kind!r}: choose smooth_l1 or l1")


class WanEncoderFeatures:
    """Perceptual features of a frozen Wan VAE encoder: outputs of its down blocks and mid block.

    No download: the encoder is the one the mask VAE already holds. The chunked causal encoder calls
    each block once per time chunk; the hooks collect every call, so both inputs yield aligned lists.
    """

    def __init__(self, vae):
        self.vae = vae
        self.modules = list(vae.encoder.down_blocks) + [vae.encoder.mid_block]
        self._store: list[torch.Tensor] | None = None
        for m in self.modules:
            m.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self._store is not None:
            self._store.append(output)

    def __call__(self, alpha: torch.Tensor) -> list[torch.Tensor]:
        rgb = (alpha.float() * 2 - 1).expand(-1, 3, -1, -1, -1).to(self.vae.dtype)
        self._store = []
        try:
            self.vae.encode(rgb)
            return self._store
        finally:
            self._store = None


def perceptual(features: WanEncoderFeatures, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LPIPS-style: channel-normalised features, mean squared difference, averaged over layers."""
    with torch.no_grad():
        ref = features(target)
    out = features(pred)
    total = pred.new_zeros((), dtype=torch.float32)
    for a, b in zip(out, ref):
        a = a.float() / (a.float().norm(dim=1, keepdim=True) + 1e-6)
        b = b.float() / (b.float().norm(dim=1, keepdim=True) + 1e-6)
        total = total + (a - b).pow(2).sum(dim=1).mean()
    return total / max(1, len(out))


# ---- latent-space terms over the serialized latent ---------------------------------------------
def alpha_to_latent_grid(alpha: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """GT alpha (B, K, F, H, W) -> A~ (B, K, T', h, w): the Wan VAE's causal grouping in time (frame 0
    alone, then groups of the layout's time stride) and average pooling over each latent pixel's
    space_stride x space_stride block."""
    b, k, f, h, w = alpha.shape
    s = layout.time_stride
    first = alpha[:, :, :1]
    rest = alpha[:, :, 1:].reshape(b, k, (f - 1) // s, s, h, w).mean(dim=3) if f > 1 else alpha[:, :, :0]
    grouped = torch.cat([first, rest], dim=2)                                    # (B, K, T', H, W)
    pooled = F.adaptive_avg_pool2d(grouped.flatten(0, 2), (layout.latent_height, layout.latent_width))
    return pooled.view(b, k, layout.latent_frames, layout.latent_height, layout.latent_width)


def flow_matching(v_pred: torch.Tensor, v_target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MSE over elements whose frame weight (B, 1, L*T', 1, 1) is 1 (given segments have weight 0)."""
    err = (v_pred.float() - v_target.float()).pow(2) * weight
    denom = (weight.expand_as(err)).sum().clamp_min(1.0)
    return err.sum() / denom


def compositing_consistency(
    x0_hat: torch.Tensor,
    x0: torch.Tensor,
    alpha_latent: torch.Tensor,
    layout: LayerLayout,
    latent_mean: torch.Tensor | None = None,
    latent_std: torch.Tensor | None = None,
) -> torch.Tensor:
    """|| sum_k x0^_fg_k + x0^_bg * (1 - sum_k A~_k) - z_full ||^2 (mean).

    With K = 1 this is the paper's L_cons. For K > 1 the masks are visible (disjoint) mattes, so the
    background weight is 1 - sum_k A~_k, clamped to [0, 1]. With latent_mean/std given the composite
    is taken on raw VAE latents (denormalised) instead of the DiT's normalised ones.
    """
    pred = layout.split(x0_hat.float())
    gt_full = layout.split(x0.float())[FULL]
    if latent_mean is not None:
        pred = {k: v * latent_std + latent_mean for k, v in pred.items()}
        gt_full = gt_full * latent_std + latent_mean
    a = alpha_latent.float()
    bg_weight = (1.0 - a.sum(dim=1, keepdim=True)).clamp(0.0, 1.0)               # (B, 1, T', h, w)
    composite = pred[BACKGROUND] * bg_weight
    for seg in layout.segments_of_kind(FOREGROUND):
        composite = composite + pred[seg.name]
    return (composite - gt_full).pow(2).mean()


def mask_decoding(
    decode_alpha,
    x0_hat: torch.Tensor,
    alpha: torch.Tensor,
    layout: LayerLayout,
    weight: torch.Tensor,
    gradient_weight: float = 0.1,
    kind: str = "smooth_l1",
    latent_frames: int | None = None,
    crop: tuple[int, int, int, int] | None = None,
    early_backward: bool = False,
) -> torch.Tensor:
    """L_mask = rec(A^, A) + gradient_weight * Sobel-gradient L1, A^ decoded from each x0^ mask latent.

    weight (B, L): 1 where the mask segment was generated (given segments are skipped).
    latent_frames: decode only the first n latent frames (frames 0..time_stride*(n-1) of the clip).
    crop: (top, left, size, margin) in latent pixels: decode that square of each mask latent and score
    the decoded pixels at least `margin` latent pixels away from a cut edge (image borders are kept).
    early_backward: run each (sample, mask layer) decode's backward at once, keep only its gradient on
    the latent, and free its graph: the same value and gradient, with one decode's activations alive at
    a time instead of B * K of them (the decoder is frozen, so nothing else receives gradients there).
    """
    n = layout.latent_frames if latent_frames is None else max(1, min(latent_frames, layout.latent_frames))
    frames = pixel_frames(n, layout.time_stride)
    parts = layout.split(x0_hat)
    total = x0_hat.new_zeros((), dtype=torch.float32)
    count = 0
    for seg in layout.segments_of_kind(MASK):
        keep = weight[:, seg.position] > 0
        if not bool(keep.any()):
            continue
        latent = parts[seg.name][keep][:, :, :n]
        target = alpha[keep, seg.foreground - 1, :frames].unsqueeze(1)

        def term(z, a):
            if crop is not None:
                z, a, inner = _crop(z, a, crop)
                pred = decode_alpha(z)[..., inner[0], inner[1]]                  # (b, 1, frames, h, w)
                a = a[..., inner[0], inner[1]]
            else:
                pred = decode_alpha(z)                                           # (b, 1, frames, H, W)
            return reconstruction(pred, a, kind) + gradient_weight * gradient_l1(pred, a)

        if early_backward and latent.requires_grad and torch.is_grad_enabled():
            total = total + _term_with_early_backward(term, latent, target)
        else:
            total = total + term(latent, target)
        count += 1
    return total / max(1, count)


def _term_with_early_backward(term, latent: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_b term(latent[b], target[b]) with each sample's decoder graph freed before the next one:
    the returned tensor has the mean's value and passes the exact gradient d(mean)/d(latent) back."""
    values, grads = [], []
    for b in range(latent.shape[0]):
        leaf = latent[b:b + 1].detach().requires_grad_(True)
        value = term(leaf, target[b:b + 1])
        grads.append(torch.autograd.grad(value, leaf)[0])
        values.append(value.detach())
    grad = torch.cat(grads) / latent.shape[0]
    link = (latent * grad).sum()                     # value 0 after the subtraction, gradient `grad`
    return torch.stack(values).mean() + link - link.detach()


def _crop(latent: torch.Tensor, target: torch.Tensor, crop: tuple[int, int, int, int]):
    """Cut a (size x size) latent square at (top, left) and the matching pixels of the target (scale: the VAE's stride);
    returns them and the pixel slices (rows, cols) of the scored interior."""
    top, left, size, margin = crop
    h, w = latent.shape[-2:]
    scale = target.shape[-1] // w
    bottom, right = min(h, top + size), min(w, left + size)
    latent = latent[..., top:bottom, left:right]
    target = target[..., top * scale:bottom * scale, left * scale:right * scale]

    def inner(start, stop, full):
        lo = 0 if start == 0 else margin * scale
        hi = (stop - start) * scale - (0 if stop == full else margin * scale)
        return slice(lo, hi)

    return latent, target, (inner(top, bottom, h), inner(left, right, w))


def draw_mask_crop(layout: LayerLayout, size: int | None, margin: int, generator: torch.Generator):
    """(top, left, size, margin) of a random latent crop, or None when the crop covers the frame."""
    h, w = layout.latent_height, layout.latent_width
    if not size or (size >= h and size >= w):
        return None
    if size <= 2 * margin:
        raise ValueError(f"loss.mask_crop={size} must be more than twice loss.mask_crop_margin={margin}")
    top = int(torch.randint(0, max(1, h - size + 1), (1,), generator=generator))
    left = int(torch.randint(0, max(1, w - size + 1), (1,), generator=generator))
    return top, left, size, margin
