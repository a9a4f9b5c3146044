"""Typed, bounded schemas for every config LayerT2V reads out of a file, checked before anything is built.

A config read from a file is untrusted: a DiT safetensors whose header says `num_layers: 10000000`
would otherwise build for minutes (or until memory runs out) before failing. Every check here is
pure Python on the parsed JSON, so a bad value is refused in microseconds with ONE line:

    SchemaError: <where>: <field> = <value!r> is not valid: <what is allowed>

Entry points (each returns the dict unchanged when it is valid, raises SchemaError otherwise):

    parse_json(text, where, what)          json.loads; invalid or too deeply nested JSON -> one line

    check_dit_config(config, where)        Wan DiT config (the `diffusers_config` in a single file's
                                           header, or a diffusers folder's config.json)
    check_vae_config(config, where)        Wan VAE config (same places)
    check_layert2v_config(config, where)   our layert2v_config.json / the adapter file's header
    check_sampling_settings(config, where) its `sampling` block, or the base model's sampling.json
    check_peft_config(config, where)       the authors' adapter_config.json (PEFT LoraConfig)
    check_mask_lora_config(config, where)  the `config` dict inside the authors' mask_vae_lora.pt

Rules, for readers and fuzzers (issue #17):
- Integers must be real ints: a bool, a float or a string ("32") is refused, never coerced.
- Numbers must be finite; bounds are inclusive and listed in the field tables below.
- Lists have a fixed or bounded length and typed items (patch_size: 3 ints; latents_mean: z_dim
  finite floats; latents_std: z_dim finite floats, each > 0).
- Keys a schema does not know are refused for the DiT, VAE and LayerT2V configs (a typo must not
  silently fall back to a default); the PEFT and mask configs are written by other code and only
  their known keys are checked.
- A DiT whose size would exceed MAX_DIT_PARAMETERS (estimated from the widths) is refused, so
  in-bounds fields cannot multiply into an impossible model.
- `where` is the file the config came from; it is the only path in the message.

SchemaError subclasses WeightsError (and so ValueError): callers that already report weight
problems as one line need no new handler.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

from .files import WeightsError

MAX_DIT_PARAMETERS = 60_000_000_000   # Wan2.2 A14B is ~14B per expert; far above anything real
MAX_LORA_RANK = 4096
MAX_TEXT_LEN = 4096
MAX_FOREGROUNDS = 8
MAX_LIST = 64                         # latents_mean/std, dim_mult, ...: Wan's longest is 48 (Wan2.2 VAE)


class SchemaError(WeightsError):
    """A config value read from a file is outside what any Wan/LayerT2V model uses."""


# ---- field kinds ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    check: Callable[[Any], str | None]   # None when valid, else what is allowed
    optional: bool = False               # may be None


def _int(lo: int, hi: int, even: bool = False):
    def check(v):
        if type(v) is not int:
            return f"an integer in [{lo}, {hi}]"
        if not lo <= v <= hi:
            return f"an integer in [{lo}, {hi}]"
        if even and v % 2:
            return f"an even integer in [{lo}, {hi}]"
        return None
    return check


def _number(lo: float, hi: float, lo_open: bool = False):
    def check(v):
        ok = type(v) in (int, float) and math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi
        return None if ok else f"a finite number in {'(' if lo_open else '['}{lo}, {hi}]"
    return check


def _bool(v):
    return None if type(v) is bool else "true or false"


def _choice(*options):
    def check(v):
        return None if v in options and type(v) is type(options[0]) else f"one of {', '.join(map(repr, options))}"
    return check


def _str(max_len: int = 200):
    def check(v):
        return None if isinstance(v, str) and 0 < len(v) <= max_len else f"a non-empty string of at most {max_len} characters"
    return check


def _list(item: Callable, min_len: int = 1, max_len: int = MAX_LIST, what: str = "item"):
    def check(v):
        if not isinstance(v, (list, tuple)) or not min_len <= len(v) <= max_len:
            return f"a list of {min_len}..{max_len} {what}s"
        for x in v:
            if item(x) is not None:
                return f"a list of {min_len}..{max_len} {what}s ({item(x)} each)"
        return None
    return check


def _any_dict(v):
    return None if isinstance(v, dict) else "a JSON object"


def _anything(v):
    return None


# ---- schemas ----------------------------------------------------------------------------------
DIT_FIELDS = {
    "patch_size": Field(_list(_int(1, 16), 3, 3, "integer")),
    "num_attention_heads": Field(_int(1, 256)),
    "attention_head_dim": Field(_int(2, 1024, even=True)),
    "in_channels": Field(_int(1, 1024)),
    "out_channels": Field(_int(1, 1024)),
    "text_dim": Field(_int(1, 65536)),
    "freq_dim": Field(_int(2, 65536, even=True)),
    "ffn_dim": Field(_int(1, 262144)),
    "num_layers": Field(_int(1, 256)),
    "cross_attn_norm": Field(_bool),
    "qk_norm": Field(_choice("rms_norm_across_heads", "rms_norm", "layer_norm"), optional=True),
    "eps": Field(_number(0.0, 0.1, lo_open=True)),
    "image_dim": Field(_int(1, 65536), optional=True),
    "added_kv_proj_dim": Field(_int(1, 65536), optional=True),
    "rope_max_seq_len": Field(_int(1, 1 << 20)),
    "pos_embed_seq_len": Field(_int(1, 1 << 20), optional=True),
}

VAE_FIELDS = {
    "base_dim": Field(_int(1, 1024)),
    "decoder_base_dim": Field(_int(1, 1024), optional=True),
    "z_dim": Field(_int(1, MAX_LIST)),
    "dim_mult": Field(_list(_int(1, 64), 1, 8, "integer")),
    "num_res_blocks": Field(_int(1, 16)),
    "attn_scales": Field(_list(_number(0.0, 1.0), 0, 8, "number")),
    "temperal_downsample": Field(_list(_bool, 0, 8, "boolean")),
    "dropout": Field(_number(0.0, 1.0)),
    "latents_mean": Field(_list(_number(-1e4, 1e4), 1, MAX_LIST, "number")),
    "latents_std": Field(_list(_number(0.0, 1e4, lo_open=True), 1, MAX_LIST, "number > 0")),
    "is_residual": Field(_bool),
    "in_channels": Field(_int(1, 64)),
    "out_channels": Field(_int(1, 64)),
    "patch_size": Field(_int(1, 16), optional=True),
    "scale_factor_temporal": Field(_int(1, 64)),
    "scale_factor_spatial": Field(_int(1, 64)),
    "clip_output": Field(_bool),
}

VAE_DEFAULT_SCALE_FACTORS = {"scale_factor_spatial": 8, "scale_factor_temporal": 4}  # AutoencoderKLWan's

# The strides of the VAE an adapter was trained with, in its config's extra (read by model_geometry.py).
TRAINED_SPACE_KEY = "vae_scale_factor_spatial"
TRAINED_TIME_KEY = "vae_scale_factor_temporal"
TRAINED_VAE_FIELDS = {TRAINED_SPACE_KEY: Field(_int(1, 64)), TRAINED_TIME_KEY: Field(_int(1, 64))}

ROUTING_PRESETS = ("paper", "official", "all")        # layout.ROUTING_PRESETS (checked by a test)
ROPE_MODES = ("continuous", "per_segment")            # config.ROPE_MODES
TEXT_PADDING_MODES = ("attend", "mask")               # config.TEXT_PADDING_MODES
SAMPLING_DTYPES = ("bf16", "fp16", "fp32")            # weights.loading.DTYPES

# The settings a model is sampled at (recommended.SamplingSettings); every key optional in a checkpoint.
SAMPLING_FIELDS = {
    "width": Field(_int(16, 4096)),
    "height": Field(_int(16, 4096)),
    "frames": Field(_int(1, 1025)),
    "steps": Field(_int(1, 1000)),
    "cfg": Field(_number(0.0, 100.0, lo_open=True)),
    "shift": Field(_number(0.0, 100.0, lo_open=True)),
    "dtype": Field(_choice(*SAMPLING_DTYPES)),
}

LAYERT2V_FIELDS = {
    "max_foregrounds": Field(_int(1, MAX_FOREGROUNDS)),
    "routing": Field(_choice(*ROUTING_PRESETS)),
    "rope_mode": Field(_choice(*ROPE_MODES)),
    "text_len": Field(_int(1, MAX_TEXT_LEN)),
    "text_padding": Field(_choice(*TEXT_PADDING_MODES)),
    "dit_lora_rank": Field(_int(1, MAX_LORA_RANK)),
    "dit_lora_alpha": Field(_number(0.0, 1e6, lo_open=True)),
    "dit_lora_targets": Field(_list(_str(), 1, 64, "module name")),
    "mask_vae_lora_rank": Field(_int(1, MAX_LORA_RANK)),
    "mask_vae_lora_alpha": Field(_number(0.0, 1e6, lo_open=True)),
    "sampling": Field(lambda v: None if isinstance(v, dict) else "a JSON object of sampling settings"),
    "extra": Field(_any_dict),
}

PEFT_FIELDS = {
    "r": Field(_int(1, MAX_LORA_RANK)),
    "lora_alpha": Field(_number(0.0, 1e6, lo_open=True)),
    "use_dora": Field(_choice(False), optional=True),
    "use_rslora": Field(_choice(False), optional=True),
    "rank_pattern": Field(lambda v: None if not v else "empty (per-module ranks are not supported)", optional=True),
    "alpha_pattern": Field(lambda v: None if not v else "empty (per-module alphas are not supported)", optional=True),
    "modules_to_save": Field(_list(_str(), 0, 64, "module name"), optional=True),
    "target_modules": Field(lambda v: None if isinstance(v, str) or _list(_str(), 1, 256, "module name")(v) is None
                            else "a module name or a list of 1..256 module names", optional=True),
}

MASK_LORA_FIELDS = {
    "lora_rank": Field(_int(1, MAX_LORA_RANK)),
    "lora_alpha": Field(_number(0.0, 1e6, lo_open=True)),
    "proj_hidden": Field(_int(1, 4096)),
    "proj_res_blocks": Field(_int(0, 64)),
    "proj_use_attention": Field(_bool),
    "proj_dropout": Field(_number(0.0, 1.0)),
}


def parse_json(text: str | bytes, where: str, what: str = "config") -> Any:
    """json.loads with every failure as one SchemaError line: invalid JSON, bad encoding, or nesting so
    deep that the parser recurses out (a hostile file, e.g. 100,000 nested brackets)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SchemaError(f"{where!r}: the {what} is not valid JSON ({err})") from None
    except RecursionError:
        raise SchemaError(f"{where!r}: the {what} is nested too deeply to be a config") from None


def _check(config: Any, fields: dict[str, Field], where: str, what: str, closed: bool) -> dict:
    if not isinstance(config, dict):
        raise SchemaError(f"{where!r}: the {what} is {type(config).__name__}, expected a JSON object")
    if closed:
        unknown = sorted(k for k in config if k not in fields and not str(k).startswith("_"))
        if unknown:
            raise SchemaError(f"{where!r}: unknown {what} key(s) {unknown[:5]}; known keys: {sorted(fields)}")
    for name, field in fields.items():
        if name not in config:
            continue
        value = config[name]
        if value is None and field.optional:
            continue
        allowed = field.check(value)
        if allowed is not None:
            raise SchemaError(f"{where!r}: {what} {name} = {_short(value)} is not valid: expected {allowed}")
    return config


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_dit_config(config: Any, where: str) -> dict:
    _check(config, DIT_FIELDS, where, "DiT config", closed=True)
    estimate = estimate_dit_parameters(config)
    if estimate > MAX_DIT_PARAMETERS:
        raise SchemaError(
            f"{where!r}: DiT config describes about {estimate / 1e9:.0f}B parameters, more than any Wan model "
            f"(limit {MAX_DIT_PARAMETERS / 1e9:.0f}B); the file's embedded config is damaged or not a Wan DiT"
        )
    return config


def estimate_dit_parameters(config: dict) -> int:
    """Linear-layer parameters of a Wan DiT from its widths (defaults: Wan2.1-1.3B)."""
    heads, head_dim = config.get("num_attention_heads", 12), config.get("attention_head_dim", 128)
    dim, ffn, layers = heads * head_dim, config.get("ffn_dim", 8960), config.get("num_layers", 30)
    text_dim = config.get("text_dim", 4096)
    per_block = 8 * dim * dim + 2 * dim * ffn
    return layers * per_block + text_dim * dim + dim * dim + 6 * dim * dim


def check_vae_config(config: Any, where: str) -> dict:
    _check(config, VAE_FIELDS, where, "VAE config", closed=True)
    z_dim = config.get("z_dim", 16)
    for name in ("latents_mean", "latents_std"):
        if name in config and config[name] is not None and len(config[name]) != z_dim:
            raise SchemaError(
                f"{where!r}: VAE config {name} has {len(config[name])} values; z_dim={z_dim} needs {z_dim}"
            )
    mult = config.get("dim_mult", [1, 2, 4, 4])
    down = config.get("temperal_downsample", [False, True, True])
    if len(down) != len(mult) - 1:
        raise SchemaError(
            f"{where!r}: VAE config temperal_downsample has {len(down)} entries; dim_mult with {len(mult)} "
            f"levels needs {len(mult) - 1}"
        )
    _check_vae_compression(config, mult, down, where)
    return config


def _check_vae_compression(config: dict, mult: list, down: list, where: str) -> None:
    """diffusers sizes latents by scale_factor_spatial / _temporal (defaults 8 / 4), whatever the blocks
    do: a VAE whose blocks downsample otherwise would make (and expect) latents of another size."""
    patch = config.get("patch_size") or 1
    blocks = {"scale_factor_spatial": (2 ** (len(mult) - 1) * patch, f"dim_mult with {len(mult)} levels"
                                       + (f" and patch_size {patch}" if patch > 1 else "")),
              "scale_factor_temporal": (2 ** sum(down), f"temperal_downsample {down}")}
    for name, (built, what) in blocks.items():
        declared = config.get(name, VAE_DEFAULT_SCALE_FACTORS[name])
        if declared != built:
            raise SchemaError(f"{where!r}: VAE config {name} = {declared} does not match its blocks: {what} "
                              f"downsample by {built}; set {name}: {built} in the config the file was saved with")


def check_layert2v_config(config: Any, where: str) -> dict:
    _check(config, LAYERT2V_FIELDS, where, "LayerT2V config", closed=True)
    check_sampling_settings(config.get("sampling", {}), where)
    extra = config.get("extra") or {}
    check_latent_stats(extra.get("latents_mean"), extra.get("latents_std"), where)
    _check(extra, TRAINED_VAE_FIELDS, where, "LayerT2V config extra", closed=False)
    return config


def check_sampling_settings(config: Any, where: str) -> dict:
    return _check(config, SAMPLING_FIELDS, where, "sampling setting", closed=True)


def check_latent_stats(mean: Any, std: Any, where: str, channels: int | None = None) -> None:
    """Optional latent statistics (both or neither), each a list of finite floats, std > 0."""
    if mean is None and std is None:
        return
    for name, value, item in (("latents_mean", mean, _number(-1e4, 1e4)),
                              ("latents_std", std, _number(0.0, 1e4, lo_open=True))):
        allowed = _list(item, 1, MAX_LIST, "number")(value)
        if allowed is not None:
            raise SchemaError(f"{where!r}: {name} = {_short(value)} is not valid: expected {allowed}")
    if len(mean) != len(std) or (channels is not None and len(mean) != channels):
        need = channels if channels is not None else len(mean)
        raise SchemaError(
            f"{where!r}: latents_mean has {len(mean)} values and latents_std {len(std)}; the model's latent "
            f"has {need} channels, so both need {need}"
        )


def check_peft_config(config: Any, where: str) -> dict:
    if isinstance(config, dict) and "r" not in config:
        raise SchemaError(f"{where!r}: no LoRA rank 'r'; is it a PEFT LoraConfig (adapter_config.json)?")
    return _check(config, PEFT_FIELDS, where, "PEFT config", closed=False)


def check_mask_lora_config(config: Any, where: str) -> dict:
    return _check(config, MASK_LORA_FIELDS, where, "mask VAE LoRA config", closed=False)


__all__ = [
    "SchemaError", "check_dit_config", "check_vae_config", "check_layert2v_config", "check_sampling_settings",
    "check_peft_config",
    "check_mask_lora_config", "check_latent_stats", "estimate_dit_parameters", "MAX_DIT_PARAMETERS",
]
