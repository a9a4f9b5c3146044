"""The LayerT2V authors' training output (`checkpoints/step-N/` of their public code), imported as a
LayerT2VAdapter. Facts below are read from their training and inference code:

    adapter_config.json          PEFT LoraConfig: r, lora_alpha (196 / 392 by default), target modules in
                                 original Wan names, modules_to_save=["layer_adaln"]
    adapter_model.safetensors    `base_model.model.<original path>.lora_A|lora_B.weight` on q/k/v/o of both
      (or .bin)                  attentions, ffn.0/2, text_embedding.0/2, time_embedding.0/2,
                                 time_projection.1, head.head; `base_model.model.layer_adaln.layer_modulation`
                                 (rows, 6, dim), rows full | background | foreground | mask
    ema/ema_model.pt             diffusers EMAModel state (ema.py); their inference uses it only on request
    mask_vae_lora.pt             {"project_in": state of their 3-D merge block, "decoder_lora":
                                 `model.<original VAE path>.lora_down|lora_up.weight` on the decoder's
                                 causal convs plus `model.conv2` (the post-quant conv), "config": {lora_rank,
                                 lora_alpha, proj_*}}
    training_state.pt            optimizer state: not read

What changes the math, and is stored in the imported config:
- routing "official": their visibility table lets every layer also see the full prompt;
- text_padding "mask": their layered cross-attention attends only to each prompt's real tokens;
- rope_mode "continuous": their 3-D RoPE over the serialized time axis. Their code also has a 4-D RoPE
  (a layer axis); the folder does not record which one ran (their shipped train.yaml: 3-D). A 4-D
  checkpoint is not supported;
- LoRA rank/alpha/targets from adapter_config.json and the tensors; mask LoRA rank/alpha from its config.

`project_in` is NOT imported: their inference decodes the DiT's mask latent with the decoder LoRA only
(`_load_vae_lora` builds the decoder from `decoder_lora`); project_in maps VAE-encoded masks into the
DiT's mask space during training. Here it would only matter for encoding a given alpha (conditional
variants), which then runs with the identity head; the importer logs this.

Pickles (`.pt`, `.bin`) are opened only with torch.load(weights_only=True).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

from ..config import LayerT2VConfig
from ..dit import LAYER_ADALN_KEY
from .ema import ema_dit_state
from .files import WeightsError, load_pickle_weights, load_safetensors
from .header_schema import check_mask_lora_config, check_peft_config, parse_json
from .layert2v_adapter import POST_QUANT_PREFIX, LayerT2VAdapter

logger = logging.getLogger("layert2v")

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_CONFIG = "adapter_config.json"
EMA_FILE = "ema/ema_model.pt"
MASK_FILE = "mask_vae_lora.pt"

AUTHORS_ROUTING = "official"
AUTHORS_TEXT_PADDING = "mask"
AUTHORS_TEXT_LEN = 512
AUTHORS_MASK_LORA_DEFAULTS = (4, 1.0)   # their build_decoder_from_state defaults when config lacks them
# The paper's training and inference size (384x672, 41 frames per layer); steps, CFG and shift are
# Wan2.1's (UniPC, shift 5, CFG 5 in their code too).
AUTHORS_SAMPLING = {"width": 672, "height": 384, "frames": 41}

_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<path>.+)\.(?P<role>lora_A|lora_B|lora_down|lora_up)(?:\.[^.]+)?\.weight$")
_ROLE = {"lora_A": "lora_A", "lora_down": "lora_A", "lora_B": "lora_B", "lora_up": "lora_B"}


def is_authors_checkpoint(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / ADAPTER_CONFIG).is_file() and any((folder / f).is_file() for f in ADAPTER_FILES)


def import_authors_checkpoint(folder: str | Path, use_ema: bool = False) -> LayerT2VAdapter:
    """use_ema: the EMA averages from ema/ema_model.pt instead of the adapter's weights (their
    inference's `use_ema`, off by default)."""
    folder = Path(folder)
    if not is_authors_checkpoint(folder):
        raise WeightsError(
            f"{str(folder)!r} is not an authors' LayerT2V checkpoint: expected {ADAPTER_CONFIG} and one of "
            f"{', '.join(ADAPTER_FILES)}"
        )
    peft_config = _read_json(folder / ADAPTER_CONFIG)
    check_peft_config(peft_config, str(folder / ADAPTER_CONFIG))
    adapter_path = next(folder / f for f in ADAPTER_FILES if (folder / f).is_file())
    dit_state = dit_state_from_authors(_load_flat(adapter_path), str(adapter_path))

    weights_from = "adapter"
    if use_ema:
        ema_path = folder / EMA_FILE
        if not ema_path.is_file():
            raise FileNotFoundError(f"EMA weights were asked for but {str(ema_path)!r} does not exist")
        dit_state = ema_dit_state(ema_path, dit_state)
        weights_from = "ema"

    rank, alpha = peft_config["r"], float(peft_config.get("lora_alpha", peft_config["r"]))
    _check_lora_rank(dit_state, rank, str(adapter_path))
    rows = dit_state[LAYER_ADALN_KEY].shape[0]
    if rows < 4 or rows % 2:
        raise WeightsError(f"{str(adapter_path)!r}: layer_adaln has {rows} rows; expected 2 + 2K (K foregrounds)")

    mask_state, (mask_rank, mask_alpha) = {}, (LayerT2VConfig.mask_vae_lora_rank, LayerT2VConfig.mask_vae_lora_alpha)
    if (folder / MASK_FILE).is_file():
        mask_state, mask_rank, mask_alpha = mask_state_from_authors(folder / MASK_FILE)

    config = LayerT2VConfig(
        max_foregrounds=(rows - 2) // 2,
        routing=AUTHORS_ROUTING,
        rope_mode="continuous",
        text_len=AUTHORS_TEXT_LEN,
        text_padding=AUTHORS_TEXT_PADDING,
        dit_lora_rank=rank,
        dit_lora_alpha=alpha,
        dit_lora_targets=lora_targets(dit_state) or LayerT2VConfig.dit_lora_targets,
        mask_vae_lora_rank=mask_rank,
        mask_vae_lora_alpha=mask_alpha,
        sampling=dict(AUTHORS_SAMPLING),
        extra={"imported_from": "authors' checkpoint folder", "folder": folder.name, "weights": weights_from},
    )
    return LayerT2VAdapter(config, dit_state, mask_state, source=str(folder))


# ---- DiT ---------------------------------------------------------------------------------------
def dit_state_from_authors(raw: dict, where: str) -> dict[str, torch.Tensor]:
    """Their PEFT tensor names -> LayeredWanTransformer.adapter_state_dict() names (`layer_adaln`, `lora.*`)."""
    out, adaln = {}, []
    for key, tensor in raw.items():
        name = key[len(_PEFT_PREFIX):] if key.startswith(_PEFT_PREFIX) else key
        if ".original_module." in name:
            continue  # PEFT's frozen copy of a modules_to_save module, not the trained one
        name = re.sub(r"\.modules_to_save\.[^.]+(?=\.|$)", "", name)
        if match := _LORA_KEY.match(name):
            out[f"lora.{_dit_module_to_diffusers(match['path'])}.{_ROLE[match['role']]}.weight"] = tensor
        elif name.split(".")[0] == "layer_adaln":
            adaln.append((key, tensor))
        else:
            raise WeightsError(f"{where}: unexpected tensor {key!r} (neither a LoRA weight nor layer_adaln)")
    shaped = [(k, t) for k, t in adaln if t.ndim == 3 and t.shape[1] == 6]
    if len(shaped) != 1:
        found = [(k, tuple(t.shape)) for k, t in adaln]
        raise WeightsError(f"{where}: expected one layer_adaln tensor of shape (rows, 6, dim); found {found}")
    out[LAYER_ADALN_KEY] = shaped[0][1]
    return out


def _dit_module_to_diffusers(path: str) -> str:
    """`blocks.0.self_attn.q` (original Wan) -> `blocks.0.attn1.to_q`, by diffusers' own converter."""
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


# ---- mask VAE ----------------------------------------------------------------------------------
def mask_state_from_authors(path: str | Path) -> tuple[dict[str, torch.Tensor], int, float]:
    """mask_vae_lora.pt -> (MaskVAE adapter names, rank, alpha). The head stays the identity (zeros):
    project_in is not used by their inference (module docstring)."""
    path = Path(path)
    blob = load_pickle_weights(path)
    if not isinstance(blob, dict) or not isinstance(blob.get("decoder_lora"), dict):
        keys = sorted(blob) if isinstance(blob, dict) else type(blob).__name__
        raise WeightsError(f"{str(path)!r}: expected a dict with 'project_in', 'decoder_lora', 'config'; found {keys}")
    config = check_mask_lora_config(blob.get("config") or {}, str(path))
    if blob.get("project_in"):
        logger.info("LayerT2V: %s: project_in not imported (their inference decodes masks with the decoder LoRA "
                    "only); encoding a given alpha uses the identity head", path.name)
    state = {}
    for key, tensor in blob["decoder_lora"].items():
        if not torch.is_tensor(tensor):
            raise WeightsError(f"{str(path)!r}: decoder_lora[{key!r}] is not a tensor")
        name = key[len("model."):] if key.startswith("model.") else key
        match = _LORA_KEY.match(name)
        if not match:
            raise WeightsError(f"{str(path)!r}: unexpected decoder_lora tensor {key!r} (expected <conv>.lora_down/lora_up.weight)")
        state[f"{_vae_module_to_ours(match['path'], path)}.{_ROLE[match['role']]}.weight"] = tensor
    if not any(k.endswith(".lora_A.weight") for k in state):
        raise WeightsError(f"{str(path)!r}: 'decoder_lora' holds no LoRA tensors (<conv>.lora_down.weight, ...)")
    z_dim = _latent_channels(state, path)
    state["head.weight"] = torch.zeros(z_dim, z_dim, 1, 1, 1)
    state["head.bias"] = torch.zeros(z_dim)
    default_rank, default_alpha = AUTHORS_MASK_LORA_DEFAULTS
    rank = int(config.get("lora_rank", default_rank))
    alpha = float(config.get("lora_alpha", default_alpha))
    ranks = {t.shape[0] for k, t in state.items() if k.endswith(".lora_A.weight")}
    if ranks != {rank}:
        raise WeightsError(f"{str(path)!r}: decoder LoRA tensors have rank(s) {sorted(ranks)} but its config says {rank}")
    return state, rank, alpha


def _vae_module_to_ours(module: str, path: Path) -> str:
    """`conv2` -> post_quant_conv; `decoder.<original>` -> `decoder.<diffusers>` (diffusers' converter)."""
    if module == "conv2":
        return POST_QUANT_PREFIX.rstrip(".")
    if not module.startswith("decoder."):
        raise WeightsError(f"{str(path)!r}: decoder_lora has a LoRA on {module!r}, outside the decoder")
    converted = convert_wan_vae_to_diffusers({f"{module}.weight": None})
    return next(iter(converted))[: -len(".weight")]


def _latent_channels(state: dict, path: Path) -> int:
    """The VAE's z_dim, from the input width of the first conv the latent meets."""
    for key in (f"{POST_QUANT_PREFIX}lora_A.weight", "decoder.conv_in.lora_A.weight"):
        if key in state:
            return int(state[key].shape[1])
    raise WeightsError(f"{str(path)!r}: decoder_lora has no LoRA on conv2 or the decoder's first conv")


# ---- helpers -----------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return parse_json(path.read_bytes(), str(path), ADAPTER_CONFIG)


def _load_flat(path: Path) -> dict[str, torch.Tensor]:
    blob = load_safetensors(path) if path.suffix == ".safetensors" else load_pickle_weights(path)
    if not isinstance(blob, dict) or not blob or not all(torch.is_tensor(v) for v in blob.values()):
        raise WeightsError(f"{str(path)!r}: expected a flat dict of named tensors (a PEFT adapter file)")
    return blob
