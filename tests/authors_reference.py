"""The LayerT2V authors' model, written from their public definitions for tests: it writes checkpoint
folders exactly as their training does and computes what their inference computes. Nothing here
imports layert2v_core (an independent reference).

- `AuthorsWan`: their WanModel + LayeredWanModel parameter layout (original Wan names, the module
  registration order that fixes their EMA order), wrapped by real PEFT with their LoraConfig and
  unfrozen the way their `apply_lora` does; saved with PEFT's own `save_pretrained`, EMA with
  diffusers' own `EMAModel.state_dict()`.
- `reference_forward`: their layered forward (LayerAdaLN by token_idx // tokens_per_layer, the
  [full | fg | bg] real-token context with their visibility table as an SDPA mask, 3-D complex RoPE,
  Wan2.1 block math), in float64.
- `reference_mask_decode`: their vae-lora mask decode (LoRA merged into the decoder's causal convs and
  conv2, decode, clamp, channel mean) on diffusers' AutoencoderKLWan.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Their LayeredCrossAttention.LAYER_PROMPT_VISIBILITY: layers full, bg, fg, mask x prompts [full, fg, bg].
VISIBILITY = ((True, True, True), (True, False, True), (True, True, False), (True, True, False))
# Their get_lora_config(use_all_linear=True).
TARGET_MODULES = ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                  "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2", "head.head", "text_embedding.0",
                  "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1"]


class _Attention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = _RMSWeight(dim)
        self.norm_k = _RMSWeight(dim)


class _RMSWeight(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class _AffineNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))


class _Block(nn.Module):
    def __init__(self, dim, ffn_dim):
        super().__init__()
        self.self_attn = _Attention(dim)
        self.norm3 = _AffineNorm(dim)          # cross_attn_norm=True
        self.cross_attn = _Attention(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)


class _Head(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.head = nn.Linear(dim, out)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)


class _LayerAdaLN(nn.Module):
    def __init__(self, dim, rows):
        super().__init__()
        self.layer_modulation = nn.Parameter(torch.zeros(rows, 6, dim))


class AuthorsWan(nn.Module):
    """Parameters of their LayeredWanModel, registered in their order (norm1/norm2 have no weights)."""

    def __init__(self, dim=32, heads=2, ffn_dim=64, freq_dim=32, text_dim=32, in_dim=16, out_dim=16,
                 num_layers=2, patch=(1, 2, 2), eps=1e-6, rows=4):
        super().__init__()
        self.dim, self.heads, self.freq_dim, self.patch, self.eps, self.out_dim = dim, heads, freq_dim, patch, eps, out_dim
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch, stride=patch)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(_Block(dim, ffn_dim) for _ in range(num_layers))
        self.head = _Head(dim, out_dim * math.prod(patch))
        self.layer_adaln = _LayerAdaLN(dim, rows)

    def diffusers_config(self) -> dict:
        """The diffusers WanTransformer3DModel config of the same base model."""
        return {"patch_size": list(self.patch), "num_attention_heads": self.heads,
                "attention_head_dim": self.dim // self.heads, "in_channels": self.patch_embedding.in_channels,
                "out_channels": self.out_dim, "text_dim": self.text_embedding[0].in_features,
                "freq_dim": self.freq_dim, "ffn_dim": self.blocks[0].ffn[0].out_features,
                "num_layers": len(self.blocks), "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
                "eps": self.eps, "rope_max_seq_len": 1024}


def randomize(module: nn.Module, generator: torch.Generator, scale: float = 0.2) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def base_state(model: AuthorsWan) -> dict[str, torch.Tensor]:
    """The Wan2.1 base weights in original names, as in ComfyUI's split file (no layer_adaln)."""
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("layer_adaln")}


def write_authors_folder(folder: Path, model: AuthorsWan, rank=4, alpha=8, seed=1, ema=True,
                         ema_extra_frozen_copy=True):
    """Their training's checkpoint folder for `model` (base weights stay in `model`). Returns
    (peft_model merged copy for the reference, ema copy or None)."""
    import copy

    from diffusers.training_utils import EMAModel
    from peft import LoraConfig, get_peft_model

    g = torch.Generator().manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGET_MODULES, lora_dropout=0.05, bias="none",
                        modules_to_save=["layer_adaln"])
    peft_model = get_peft_model(copy.deepcopy(model), config)
    for p in peft_model.parameters():
        p.requires_grad = False
    for name, p in peft_model.named_parameters():   # their apply_lora: LoRA + everything under layer_adaln
        if "lora_" in name or ".layer_adaln." in name:
            p.requires_grad = True
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    trainable = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    if not ema_extra_frozen_copy:
        trainable = [(n, p) for n, p in trainable if "original_module" not in n]
    peft_model.save_pretrained(str(folder))

    ema_values = None
    if ema:
        ema_model = EMAModel([p for _, p in trainable], decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
        with torch.no_grad():
            for s in ema_model.shadow_params:
                s.copy_(torch.randn(s.shape, generator=g) * 0.2)
        ema_values = {n: s.clone() for (n, _), s in zip(trainable, ema_model.shadow_params)}
        (folder / "ema").mkdir()
        torch.save(ema_model.state_dict(), folder / "ema" / "ema_model.pt")
    torch.save({"global_step": 10, "optimizer": {}, "lr_scheduler": {}}, folder / "training_state.pt")
    return peft_model, ema_values


def merged_reference(peft_model, ema_values=None) -> AuthorsWan:
    """What their inference runs: EMA (by name) when given, then PEFT's merge_and_unload."""
    import copy

    peft_model = copy.deepcopy(peft_model)
    if ema_values:
        params = dict(peft_model.named_parameters())
        with torch.no_grad():
            for name, value in ema_values.items():
                if "original_module" not in name:
                    params[name].copy_(value)
    return peft_model.merge_and_unload().double().eval()


# ---- their forward ------------------------------------------------------------------------------
def _sinusoidal(dim, position):
    half = dim // 2
    position = position.double()
    sinusoid = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


def _rope_params(max_len, dim, theta=10000):
    freqs = torch.outer(torch.arange(max_len), 1.0 / torch.pow(theta, torch.arange(0, dim, 2).double().div(dim)))
    return torch.polar(torch.ones_like(freqs), freqs)


def _rope_apply(x, grid, freqs):
    n, c = x.size(2), x.size(3) // 2
    parts = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    seq = f * h * w
    xc = torch.view_as_complex(x.double().reshape(x.shape[0], seq, n, -1, 2))
    fr = torch.cat([parts[0][:f].view(f, 1, 1, -1).expand(f, h, w, -1),
                    parts[1][:h].view(1, h, 1, -1).expand(f, h, w, -1),
                    parts[2][:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(seq, 1, -1)
    return torch.view_as_real(xc * fr).flatten(3)


def _rms(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def reference_forward(model: AuthorsWan, x, t, prompts, text_len=512, mask_padding=True):
    """x (B, C, 4T', H, W) [full | bg | fg | mask]; t (B,) in 0..1000; prompts: per batch element the
    (full, fg, bg) real-token embeddings (L_i, text_dim). mask_padding=False attends to the padding
    (vanilla Wan); their code masks it."""
    model = model.double()
    x, t = x.double(), t.double()
    dim, heads, eps = model.dim, model.heads, model.eps
    head_dim = dim // heads
    d = head_dim
    freqs = torch.cat([_rope_params(1024, d - 4 * (d // 6)), _rope_params(1024, 2 * (d // 6)),
                       _rope_params(1024, 2 * (d // 6))], dim=1)
    x = model.patch_embedding(x)
    grid = tuple(x.shape[2:])
    x = x.flatten(2).transpose(1, 2)
    batch, seq = x.shape[:2]
    tokens_per_layer = seq // 4

    e = model.time_embedding(_sinusoidal(model.freq_dim, t))
    e0 = model.time_projection(e).unflatten(1, (6, dim))
    lens = [[p.shape[0] for p in row] for row in prompts]
    context = torch.stack([torch.cat([torch.cat(row).double(),
                                      torch.zeros(text_len - sum(lens[b]), row[0].shape[1], dtype=torch.double)])
                           for b, row in enumerate(prompts)])
    context = model.text_embedding(context)
    allowed = torch.zeros(batch, seq, text_len, dtype=torch.bool)
    for b in range(batch):
        for layer, visible in enumerate(VISIBILITY):
            pos = 0
            for p, length in enumerate(lens[b]):
                if visible[p]:
                    allowed[b, layer * tokens_per_layer:(layer + 1) * tokens_per_layer, pos:pos + length] = True
                pos += length
            if not mask_padding:
                allowed[b, layer * tokens_per_layer:(layer + 1) * tokens_per_layer, pos:] = True
    bias = torch.zeros(allowed.shape, dtype=torch.double).masked_fill(~allowed, float("-inf")).unsqueeze(1)
    layer_ids = (torch.arange(seq) // tokens_per_layer).clamp(max=model.layer_adaln.layer_modulation.shape[0] - 1)
    layer_mod = model.layer_adaln.layer_modulation[layer_ids]                          # (S, 6, dim)

    def heads_of(y):
        return y.view(batch, -1, heads, head_dim)

    for block in model.blocks:
        mod = [m + lm.squeeze(1).unsqueeze(0) for m, lm in zip((block.modulation + e0).chunk(6, dim=1), layer_mod.chunk(6, dim=1))]
        a = block.self_attn
        h = F.layer_norm(x, (dim,), eps=eps) * (1 + mod[1]) + mod[0]
        q = _rope_apply(heads_of(_rms(a.q(h), a.norm_q.weight, eps)), grid, freqs)
        k = _rope_apply(heads_of(_rms(a.k(h), a.norm_k.weight, eps)), grid, freqs)
        v = heads_of(a.v(h))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + a.o(y.transpose(1, 2).flatten(2)) * mod[2]
        c = block.cross_attn
        h = F.layer_norm(x, (dim,), block.norm3.weight, block.norm3.bias, eps=eps)
        q = heads_of(_rms(c.q(h), c.norm_q.weight, eps)).transpose(1, 2)
        k = heads_of(_rms(c.k(context), c.norm_k.weight, eps)).transpose(1, 2)
        v = heads_of(c.v(context)).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + c.o(y.transpose(1, 2).flatten(2))
        h = F.layer_norm(x, (dim,), eps=eps) * (1 + mod[4]) + mod[3]
        x = x + block.ffn(h) * mod[5]

    shift, scale = (model.head.modulation + e.unsqueeze(1)).chunk(2, dim=1)
    x = model.head.head(F.layer_norm(x, (dim,), eps=eps) * (1 + scale) + shift)
    f, h, w = grid
    u = x.view(batch, f, h, w, *model.patch, model.out_dim)
    u = torch.einsum("bfhwpqrc->bcfphqwr", u)
    return u.reshape(batch, model.out_dim, *[i * j for i, j in zip(grid, model.patch)])


# ---- their mask VAE ------------------------------------------------------------------------------
def write_mask_vae_lora(path: Path, decoder_lora: dict, rank: int, alpha: float, z_dim=16, hidden=8):
    """mask_vae_lora.pt as their save_mask_vae_lora writes it; project_in holds a merge block's state."""
    g = torch.Generator().manual_seed(7)
    project_in = {"in_conv.weight": torch.randn(hidden, z_dim, 3, 3, 3, generator=g),
                  "in_conv.bias": torch.zeros(hidden),
                  "blocks.0.residual.0.gamma": torch.ones(hidden, 1, 1, 1),
                  "out_conv.weight": torch.randn(z_dim, hidden, 3, 3, 3, generator=g),
                  "out_conv.bias": torch.zeros(z_dim), "gate": torch.tensor(0.3)}
    torch.save({"project_in": project_in, "decoder_lora": decoder_lora,
                "config": {"lora_rank": rank, "lora_alpha": alpha, "proj_hidden": hidden, "proj_res_blocks": 1,
                           "proj_use_attention": False, "proj_dropout": 0.0}}, path)


def reference_mask_decode(vae, decoder_lora: dict, rank: int, alpha: float, latent: torch.Tensor) -> torch.Tensor:
    """Their MaskVAELoRADecoder + layered_t2v: LoRA merged into each causal conv (conv2 = post_quant_conv),
    decode the normalized latent, clamp, mean of the 3 channels, to [0, 1]."""
    import copy

    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    vae = copy.deepcopy(vae).double()
    params = dict(vae.named_parameters())
    scale = alpha / rank
    for key, down in decoder_lora.items():
        if ".lora_down." not in key:
            continue
        module = key[len("model."):].split(".lora_down.")[0]
        up = decoder_lora[key.replace(".lora_down.", ".lora_up.")]
        name = "post_quant_conv" if module == "conv2" else next(iter(convert_wan_vae_to_diffusers({module + ".weight": None})))[:-7]
        weight = params[name + ".weight"]
        with torch.no_grad():
            weight += scale * (up.double().flatten(1) @ down.double().flatten(1)).view_as(weight)
    mean = torch.tensor(vae.config.latents_mean, dtype=torch.double).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=torch.double).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        rgb = vae.decode(latent.double() * std + mean).sample.clamp(-1, 1)
    return ((rgb.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)


def save_json(path: Path, data) -> None:
    path.write_text(json.dumps(data))
