"""Tiny random models for tests and the offline demo: same classes as the real ones, CPU-sized.

Nothing here downloads anything. Each builder seeds its own RNG (the global one is left as it was),
so the same seed always gives the same weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

TINY_TEXT_DIM = 32  # tiny UMT5 d_model == tiny DiT text_dim

TINY_TRANSFORMER_CONFIG = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": TINY_TEXT_DIM,
    "freq_dim": 32,
    "ffn_dim": 64,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

# Smallest VAE that runs (DESIGN.md): 1 res block per level, 8 base channels.
TINY_VAE_CONFIG = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 2, 2, 2],
    "num_res_blocks": 1,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}

# The demo model's VAE layout (4x space, 4x time: training/configs/demo_stage0_vae.yaml) at tiny width. diffusers
# sizes latents by scale_factor_spatial, not by dim_mult: it must say 4.
TINY_VAE_4X_CONFIG = {**TINY_VAE_CONFIG, "dim_mult": [1, 2, 2], "temperal_downsample": [True, True],
                      "scale_factor_spatial": 4}

# The real Wan2.1 VAE layout (2 res blocks, dims x[1,2,4,4]) at 1/12 of its width. diffusers' single-file
# converter hard-codes that layout, so this is the smallest VAE a ComfyUI-format file can hold.
NARROW_WAN21_VAE_CONFIG = {"base_dim": 8}

TINY_WORDS = (
    "a an the of on in at with and is are background foreground video scene "
    "cat dog bird fish horse man woman child person car boat tree flower house city street "
    "beach forest mountain river sea sky cloud sun moon snow rain grass field road room table "
    "red green blue yellow white black orange purple pink brown small big old young "
    "walking running flying swimming sitting standing jumping dancing playing sleeping "
    "sunset night day morning light dark empty quiet busy"
).split()

_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5/UMT5
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()-"


def build_tiny_transformer(seed: int = 0, **overrides) -> WanTransformer3DModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**{**TINY_TRANSFORMER_CONFIG, **overrides}).eval()


def build_tiny_vae(seed: int = 0, narrow_wan21: bool = False, config: dict | None = None) -> AutoencoderKLWan:
    """narrow_wan21=True gives the real block layout (loadable from a ComfyUI-format file), slower;
    `config` another AutoencoderKLWan config (e.g. TINY_VAE_4X_CONFIG)."""
    config = config or (NARROW_WAN21_VAE_CONFIG if narrow_wan21 else TINY_VAE_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKLWan(**config).eval()


def build_tiny_tokenizer(words=TINY_WORDS):
    """A T5-style Unigram tokenizer (pad=0, eos=1, unk=2, Metaspace, '</s>' appended), in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = [(tok, 0.0) for tok in _SPECIALS]
    vocab += [("\u2581" + w, -5.0) for w in dict.fromkeys(words)]
    vocab += [("\u2581", -8.0)] + [(c, -10.0) for c in _CHARS]  # characters: unknown words still tokenize
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_umt5(vocab_size: int, seed: int = 0, d_model: int = TINY_TEXT_DIM):
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UMT5EncoderModel(config).eval()


def save_tiny_text_encoder(folder: str | Path, seed: int = 0) -> Path:
    """Write tokenizer + UMT5 encoder into `folder`, laid out like a real local text-encoder folder."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_umt5(len(tokenizer), seed=seed)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


TINY_TEXT_LEN = 16


def write_tiny_model_files(folder: str | Path, max_foregrounds: int = 2, routing: str = "paper", seed: int = 0,
                           vae_config: dict | None = None, stem: str = "tiny") -> dict:
    """Every file a generation needs, with random tiny weights, laid out as a user would have them:
    DiT and VAE single files (config in the header), a LayerT2V adapter folder (recording the VAE's
    strides, as training does), a text-encoder folder. LayerAdaLN and LoRA get small random values so
    the layers differ as in a trained model. vae_config: another tiny VAE (e.g. TINY_VAE_4X_CONFIG);
    stem: the files' name prefix."""
    from .weights.layert2v_adapter import save_layert2v_adapter
    from .config import LayerT2VConfig
    from .dit import LayeredWanTransformer
    from .mask_vae import MaskVAE
    from .model_geometry import trained_vae_record
    from .weights.wan_single_file import save_with_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base, vae = build_tiny_transformer(seed), build_tiny_vae(seed, config=vae_config)
    config = LayerT2VConfig(max_foregrounds=max_foregrounds, routing=routing, text_len=TINY_TEXT_LEN,
                            dit_lora_rank=4, dit_lora_alpha=4.0, mask_vae_lora_rank=2, mask_vae_lora_alpha=2.0,
                            extra=trained_vae_record(vae))
    dit = LayeredWanTransformer(base, config)
    dit.add_lora()
    mask_vae = MaskVAE.from_config(vae, config)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed + 1)
        dit.layer_adaln.normal_(std=0.5)
        for p in dit.trainable_parameters()[1:] + mask_vae.trainable_parameters():
            p.normal_(std=0.02)
    paths = {
        "dit": folder / f"{stem}_wan_dit.safetensors",
        "vae": folder / f"{stem}_wan_vae.safetensors",
        "adapter": folder / f"{stem}_layert2v",
        "text_encoder": folder / f"{stem}_umt5",
    }
    save_with_config(_without_lora(base), paths["dit"])
    save_with_config(vae, paths["vae"])
    save_layert2v_adapter(paths["adapter"], dit, mask_vae)
    save_tiny_text_encoder(paths["text_encoder"], seed=seed)
    return paths


def _without_lora(model: WanTransformer3DModel) -> WanTransformer3DModel:
    """A copy of a peft-wrapped diffusers model with its base weights only (the adapter goes elsewhere)."""
    clean = WanTransformer3DModel.from_config(model.config)
    state = {k.replace(".base_layer", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    clean.load_state_dict(state)
    return clean
