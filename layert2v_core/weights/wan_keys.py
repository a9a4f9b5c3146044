"""Key names of Wan2.1 checkpoints: what a file holds, judged from its tensor names, and the original
(Wan / ComfyUI) names of diffusers parameters.

Loading goes the other way through diffusers' own converters; the reverse maps here exist to write
test files in the original layout and to recognise files, and tests check them against those converters.
"""

from __future__ import annotations

import re

COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")

WAN_DIT = "wan_dit"
WAN_VAE = "wan_vae"
TEXT_ENCODER = "text_encoder"
LORA = "lora"
UNKNOWN = "unknown"

# Width of the DiT (patch_embedding output channels) -> the Wan model it belongs to.
_DIT_WIDTHS = {1536: "Wan2.1 1.3B", 5120: "Wan2.1/2.2 14B", 3072: "Wan2.2 TI2V 5B"}


def strip_prefix(key: str) -> str:
    for prefix in COMFY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def classify_keys(keys) -> str:
    """One of WAN_DIT, WAN_VAE, TEXT_ENCODER, LORA, UNKNOWN, from tensor names alone."""
    names = {strip_prefix(k) for k in keys}

    def any_starts(*prefixes):
        return any(k.startswith(prefixes) for k in names)

    if any(part in k for k in names for part in (".lora_A.", ".lora_B.", ".lora_down.", ".lora_up.")):
        return LORA
    if {"head.modulation", "scale_shift_table"} & names or any_starts("blocks.0.self_attn.", "blocks.0.attn1."):
        return WAN_DIT
    vae_decoder = any_starts("decoder.middle.", "decoder.mid_block.", "decoder.conv1.", "decoder.conv_in.")
    if vae_decoder and any_starts("encoder."):
        return WAN_VAE
    if any_starts("encoder.block.", "shared.", "token_embedding.") or any(".SelfAttention." in k for k in names):
        return TEXT_ENCODER
    return UNKNOWN


def describe_keys(keys, shapes: dict | None = None) -> str:
    """A short human description of what a checkpoint looks like, for error messages."""
    kind = classify_keys(keys)
    names = {strip_prefix(k): k for k in keys}
    if kind == WAN_DIT:
        desc = "a Wan diffusion transformer (DiT)"
        patch = names.get("patch_embedding.weight")
        if shapes and patch in shapes:
            out_ch, in_ch = shapes[patch][0], shapes[patch][1]
            desc = f"a {_DIT_WIDTHS.get(out_ch, f'width-{out_ch}')} DiT with {in_ch} input channels"
            if in_ch != 16:
                desc += " (image-to-video or another variant, not text-to-video)"
        blocks = {int(m.group(1)) for k in names if (m := re.match(r"blocks\.(\d+)\.", k))}
        if blocks:
            desc += f", {max(blocks) + 1} blocks"
        return desc
    return {
        WAN_VAE: "a Wan VAE",
        TEXT_ENCODER: "a T5/UMT5 text encoder",
        LORA: "a LoRA (adapter weights only, no base model)",
        UNKNOWN: f"an unrecognised model (first keys: {sorted(keys)[:3]})",
    }[kind]


# ---- diffusers -> original names --------------------------------------------------------------
# Fragment renames applied in order; the inverse of diffusers' convert_wan_transformer_to_diffusers
# for the text-to-video model. norm2/norm3 are swapped between the two namings.
_DIT_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
    ("proj_out.", "head.head."),
    (".norm2.", ".norm__swap."),
    (".norm3.", ".norm2."),
    (".norm__swap.", ".norm3."),
)


def dit_key_to_original(key: str) -> str:
    if key == "scale_shift_table":
        return "head.modulation"
    if key.endswith(".scale_shift_table"):
        return key[: -len("scale_shift_table")] + "modulation"
    for new, old in _DIT_TO_ORIGINAL:
        key = key.replace(new, old)
    return key


_RESNET_PARTS = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.weight": "residual.2.weight",
    "conv1.bias": "residual.2.bias",
    "norm2.gamma": "residual.3.gamma",
    "conv2.weight": "residual.6.weight",
    "conv2.bias": "residual.6.bias",
    "conv_shortcut.weight": "shortcut.weight",
    "conv_shortcut.bias": "shortcut.bias",
}


def vae_key_to_original(key: str, num_res_blocks: int = 2) -> str:
    """Inverse of diffusers' convert_wan_vae_to_diffusers (Wan2.1 VAE, non-residual layout)."""
    top = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for new, old in top.items():
        if key.startswith(new):
            return old + key[len(new):]
    side, _, rest = key.partition(".")
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[len('conv_in.'):]}"
    if rest.startswith("norm_out."):
        return f"{side}.head.0.{rest[len('norm_out.'):]}"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{rest[len('conv_out.'):]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.+)", rest):
        return f"{side}.middle.{2 * int(m.group(1))}.{_RESNET_PARTS[m.group(2)]}"
    if m := re.match(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{side}.middle.1.{m.group(1)}"
    if m := re.match(r"down_blocks\.(\d+)\.(.+)", rest):
        part = _RESNET_PARTS.get(m.group(2), m.group(2))
        return f"{side}.downsamples.{m.group(1)}.{part}"
    per_block = num_res_blocks + 2  # resnets + 1 resample, flattened in the original
    if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", rest):
        index = int(m.group(1)) * per_block + int(m.group(2))
        return f"{side}.upsamples.{index}.{_RESNET_PARTS[m.group(3)]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.+)", rest):
        index = int(m.group(1)) * per_block + num_res_blocks + 1
        return f"{side}.upsamples.{index}.{m.group(2)}"
    return key
