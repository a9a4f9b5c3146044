"""Import a checkpoint in the LayerT2V authors' training layout into our adapter format.

    <folder>/adapter_model.safetensors | adapter_model.bin   PEFT LoRA of the DiT (+ layer_adaln via modules_to_save)
    <folder>/adapter_config.json                             PEFT LoraConfig (r, lora_alpha, ...)
    <folder>/ema/ema_model.pt                                EMA of the trained tensors (optional)
    <folder>/mask_vae_lora.pt                                {"project_in", "decoder_lora", "config"} (optional)

No such checkpoint is public yet, so the exact key names are ASSUMED. Every assumption is one of
the constants or small functions below, to be adjusted when the real files appear:

  DiT LoRA key        strip DIT_PREFIXES; `lora_down/lora_up` -> `lora_A/lora_B`; drop the adapter name
                      (`lora_A.default.weight`); module path converted from original Wan names
                      (`blocks.0.self_attn.q`) to diffusers names (`blocks.0.attn1.to_q`) by diffusers'
                      own converter -> our `lora.<path>.lora_A.weight`
  layer_adaln         the one 3-D tensor (rows, 6, dim) whose path has a `layer_adaln` component
                      (PEFT saves modules_to_save as `base_model.model.layer_adaln.<param>`)
  LoRA rank / alpha   adapter_config.json `r` / `lora_alpha`; targets = the modules that have LoRA tensors
  routing             "official" (their code lets every layer also see the full prompt)
  EMA                 a dict of tensors named like the adapter's (extra base-model tensors are ignored)
  project_in          the mask head: a 16->16 weight ((16,16) or (16,16,1,1,1)) + optional bias
  decoder_lora        `<path>.lora_A|lora_down.weight` / `lora_B|lora_up` on the VAE decoder's causal
                      convs, path in original (`decoder.upsamples.0.residual.2`) or diffusers names
  mask rank / alpha   config `r`|`rank`|`lora_rank` / `lora_alpha`|`alpha` (alpha defaults to rank)

Pickles (`.pt`, `.bin`) are opened only with torch.load(weights_only=True).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

from ..config import LayerT2VConfig
from ..dit import LAYER_ADALN_KEY
from .layert2v_adapter import LayerT2VAdapter
from .files import WeightsError, load_pickle_weights, load_safetensors

logger = logging.getLogger(__name__)

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_CONFIG = "adapter_config.json"
EMA_FILE = "ema/ema_model.pt"
MASK_FILE = "mask_vae_lora.pt"

DIT_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.", "model.")
MASK_PREFIXES = ("vae.", "model.", "module.")
AUTHORS_ROUTING = "official"
_WRAPPER_KEYS = ("state_dict", "ema", "ema_model", "model", "module", "params")
_LORA_KEY = re.compile(r"^(?P<path>.+)\.(?P<role>lora_A|lora_B|lora_down|lora_up)(?:\.[^.]+)?\.weight$")
_ROLE = {"lora_A": "lora_A", "lora_down": "lora_A", "lora_B": "lora_B", "lora_up": "lora_B"}


def is_authors_checkpoint(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and any((folder / f).is_file() for f in ADAPTER_FILES)


def import_authors_checkpoint(folder: str | Path, use_ema: bool | None = None) -> LayerT2VAdapter:
    """use_ema: None = EMA weights when present and readable, True = require them, False = ignore."""
    folder = Path(folder)
    if not is_authors_checkpoint(folder):
        raise WeightsError(
            f"{str(folder)!r} is not an authors' LayerT2V checkpoint: expected {ADAPTER_CONFIG} and one of "
            f"{', '.join(ADAPTER_FILES)}"
        )
    peft_config = _read_peft_config(folder / ADAPTER_CONFIG)
    adapter_path = next(folder / f for f in ADAPTER_FILES if (folder / f).is_file())
    raw = _load_tensor_dict(adapter_path)
    dit_state = dit_state_from_authors(raw, str(adapter_path))
    weights_from = "adapter"

    ema_path = folder / EMA_FILE
    if use_ema is not False and ema_path.is_file():
        try:
            ema = dit_state_from_authors(_load_tensor_dict(ema_path), str(ema_path), need_adaln=False)
            _overlay(dit_state, ema, str(ema_path))
            weights_from = "ema"
        except WeightsError as err:
            if use_ema:
                raise
            logger.warning("EMA weights in %s not used (%s); using the adapter weights", ema_path, err)
    elif use_ema:
        raise FileNotFoundError(f"use_ema=True but {str(ema_path)!r} does not exist")

    rank, alpha = int(peft_config["r"]), float(peft_config.get("lora_alpha", peft_config["r"]))
    _check_lora_rank(dit_state, rank, str(adapter_path))
    rows = dit_state[LAYER_ADALN_KEY].shape[0]
    if rows < 4 or rows % 2:
        raise WeightsError(f"{str(adapter_path)!r}: layer_adaln has {rows} rows; expected 2 + 2K (K foregrounds)")

    mask_state, mask_rank, mask_alpha = {}, LayerT2VConfig.mask_vae_lora_rank, LayerT2VConfig.mask_vae_lora_alpha
    if (folder / MASK_FILE).is_file():
        mask_state, mask_rank, mask_alpha = mask_state_from_authors(folder / MASK_FILE)

    config = LayerT2VConfig(
        max_foregrounds=(rows - 2) // 2,
        routing=AUTHORS_ROUTING,
        dit_lora_rank=rank,
        dit_lora_alpha=alpha,
        dit_lora_targets=lora_targets(dit_state) or LayerT2VConfig.dit_lora_targets,
        mask_vae_lora_rank=mask_rank,
        mask_vae_lora_alpha=mask_alpha,
        extra={"imported_from": str(folder), "weights": weights_from},
    )
    return LayerT2VAdapter(config, dit_state, mask_state, source=str(folder))


# ---- DiT ---------------------------------------------------------------------------------------
def dit_state_from_authors(raw: dict, where: str, need_adaln: bool = True) -> dict[str, torch.Tensor]:
    """Their tensor names -> LayeredWanTransformer.adapter_state_dict() names (`layer_adaln`, `lora.*`)."""
    out, adaln = {}, []
    for key, tensor in raw.items():
        name = _strip(key, DIT_PREFIXES)
        if ".original_module." in name:
            continue  # PEFT's frozen copy of a modules_to_save module, not the trained one
        name = re.sub(r"\.(modules_to_save|original_module)\.[^.]+(?=\.|$)", "", name)
        if match := _LORA_KEY.match(name):
            path = _dit_module_to_diffusers(match["path"])
            out[f"lora.{path}.{_ROLE[match['role']]}.weight"] = tensor
        elif "layer_adaln" in name.split("."):
            adaln.append((key, tensor))
    candidates = [(k, t) for k, t in adaln if t.ndim == 3 and t.shape[1] == 6]
    if len(candidates) > 1:
        raise WeightsError(f"{where}: several layer_adaln tensors {[k for k, _ in candidates]}; expected one")
    if candidates:
        out[LAYER_ADALN_KEY] = candidates[0][1]
    elif need_adaln:
        found = f" (found {[(k, tuple(t.shape)) for k, t in adaln]})" if adaln else ""
        raise WeightsError(f"{where}: no layer_adaln tensor of shape (rows, 6, dim){found}")
    if not out:
        raise WeightsError(f"{where}: no LoRA or layer_adaln tensors found (first keys: {sorted(raw)[:3]})")
    return out


def _dit_module_to_diffusers(path: str) -> str:
    """`blocks.0.self_attn.q` (original Wan) or `blocks.0.attn1.to_q` (diffusers) -> diffusers name."""
    converted = convert_wan_transformer_to_diffusers({f"{path}.weight": None})
    return next(iter(converted))[: -len(".weight")]


def lora_targets(dit_state: dict) -> tuple[str, ...]:
    """peft target_modules that reproduce exactly the modules carrying LoRA tensors."""
    paths = {k[len("lora."):].rsplit(".", 2)[0] for k in dit_state if k.startswith("lora.")}
    return tuple(sorted({re.sub(r"^blocks\.\d+\.", "", p) for p in paths}))


def _check_lora_rank(dit_state: dict, rank: int, where: str) -> None:
    ranks = {t.shape[0] for k, t in dit_state.items() if k.endswith(".lora_A.weight")}
    if ranks - {rank}:
        raise WeightsError(
            f"{where}: LoRA tensors have rank(s) {sorted(ranks)} but adapter_config.json says r={rank} "
            f"(per-module rank_pattern is not supported)"
        )


def _overlay(state: dict, ema: dict, where: str) -> None:
    unknown = sorted(set(ema) - set(state))
    if unknown:
        raise WeightsError(f"{where}: EMA tensors not in the adapter: {unknown[:3]}")
    for k, t in ema.items():
        if tuple(t.shape) != tuple(state[k].shape):
            raise WeightsError(f"{where}: EMA {k} has shape {tuple(t.shape)}, adapter {tuple(state[k].shape)}")
        state[k] = t


# ---- mask VAE ----------------------------------------------------------------------------------
def mask_state_from_authors(path: str | Path) -> tuple[dict[str, torch.Tensor], int, float]:
    """mask_vae_lora.pt -> (MaskVAE.mask_adapter_state_dict() names, rank, alpha)."""
    path = Path(path)
    blob = load_pickle_weights(path)
    if not isinstance(blob, dict) or "decoder_lora" not in blob:
        keys = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise WeightsError(f"{str(path)!r}: expected a dict with 'project_in', 'decoder_lora', 'config'; found {keys}")
    state = {}
    if blob.get("project_in") is not None:
        state.update(_head_from(blob["project_in"], str(path)))
    for key, tensor in _flatten(blob["decoder_lora"]).items():
        match = _LORA_KEY.match(_strip(key, MASK_PREFIXES))
        if not match:
            continue  # e.g. per-module alpha scalars: the rank/alpha come from the config
        module = match["path"] if match["path"].startswith("decoder.") else f"decoder.{match['path']}"
        converted = next(iter(convert_wan_vae_to_diffusers({f"{module}.weight": None})))[: -len(".weight")]
        state[f"{converted}.{_ROLE[match['role']]}.weight"] = tensor
    if not any(k.endswith(".lora_A.weight") for k in state):
        raise WeightsError(f"{str(path)!r}: 'decoder_lora' holds no LoRA tensors (<module>.lora_A.weight, ...)")
    config = blob.get("config") or {}
    ranks = {t.shape[0] for k, t in state.items() if k.endswith(".lora_A.weight")}
    rank = int(next((config[k] for k in ("r", "rank", "lora_rank") if k in config), max(ranks)))
    alpha = float(next((config[k] for k in ("lora_alpha", "alpha") if k in config), rank))
    return state, rank, alpha


def _head_from(project_in, where: str) -> dict[str, torch.Tensor]:
    tensors = {"weight": project_in} if torch.is_tensor(project_in) else _flatten(project_in)
    weights = [t for k, t in tensors.items() if k.endswith("weight")]
    biases = [t for k, t in tensors.items() if k.endswith("bias")]
    if len(weights) != 1 or len(biases) > 1:
        raise WeightsError(
            f"{where}: 'project_in' should hold one weight and at most one bias; found {sorted(tensors)}"
        )
    weight = weights[0]
    out_ch, in_ch = weight.shape[:2] if weight.ndim >= 2 else (0, 0)
    if weight.ndim < 2 or weight[0, 0].numel() != 1 or out_ch != in_ch:
        raise WeightsError(
            f"{where}: 'project_in' weight has shape {tuple(weight.shape)}; this importer maps it to the "
            f"C->C 1x1x1 head after the encoder (adjust _head_from in authors_import.py if it is something else)"
        )
    bias = biases[0] if biases else torch.zeros(out_ch, dtype=weight.dtype)
    return {"head.weight": weight.reshape(out_ch, in_ch, 1, 1, 1), "head.bias": bias}


# ---- helpers -----------------------------------------------------------------------------------
def _read_peft_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise WeightsError(f"{str(path)!r} is not valid JSON: {err}") from None
    if "r" not in config:
        raise WeightsError(f"{str(path)!r} has no LoRA rank 'r'; is it a PEFT LoraConfig?")
    for unsupported in ("use_dora", "use_rslora"):
        if config.get(unsupported):
            raise WeightsError(f"{str(path)!r}: {unsupported}=true is not supported (plain LoRA only)")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise WeightsError(f"{str(path)!r}: per-module rank_pattern/alpha_pattern are not supported")
    return config


def _load_tensor_dict(path: Path) -> dict[str, torch.Tensor]:
    blob = load_safetensors(path) if path.suffix == ".safetensors" else load_pickle_weights(path)
    while isinstance(blob, dict) and len(blob) == 1 and next(iter(blob)) in _WRAPPER_KEYS:
        blob = next(iter(blob.values()))
    if isinstance(blob, dict):
        for wrapper in _WRAPPER_KEYS:  # {"state_dict": {...}, "step": 10}
            if isinstance(blob.get(wrapper), dict):
                blob = blob[wrapper]
                break
    flat = _flatten(blob) if isinstance(blob, dict) else {}
    if not flat:
        raise WeightsError(f"{str(path)!r}: expected a dict of named tensors, found {type(blob).__name__}")
    return flat


def _flatten(tree, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    if torch.is_tensor(tree):
        return {prefix.rstrip("."): tree}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    return out


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key
