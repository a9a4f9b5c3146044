"""The authors' EMA file: `ema/ema_model.pt`, a diffusers `EMAModel.state_dict()`.

Its `shadow_params` is a bare LIST of tensors, in the order their training passed the trainable
parameters to EMAModel: `model.parameters()` of the PEFT-wrapped LayeredWanModel, filtered by
requires_grad. That is module registration order of their WanModel (text_embedding, time_embedding,
time_projection, blocks 0..N-1 with self_attn q k v o, cross_attn q k v o, ffn.0, ffn.2, then
head.head, then layer_adaln), lora_A before lora_B inside each layer. Their `apply_lora` unfreezes
every parameter under `layer_adaln`, which after PEFT wrapping includes the frozen original copy
(`layer_adaln.original_module`) registered just before the trained one, so the list may hold one
tensor more than the adapter file; that extra entry is skipped here. (Their own inference loader
filters names by "lora_"/"modules_to_save" and pairs by position, so with that extra entry it
would load the frozen copy's average into layer_adaln; we take the trained one.)
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from ..dit import LAYER_ADALN_KEY
from .files import WeightsError, load_pickle_weights

logger = logging.getLogger("layert2v")

# Registration order of the modules their LoRA targets (diffusers names), outside and inside a block.
_TOP_ORDER = (
    "condition_embedder.text_embedder.linear_1",
    "condition_embedder.text_embedder.linear_2",
    "condition_embedder.time_embedder.linear_1",
    "condition_embedder.time_embedder.linear_2",
    "condition_embedder.time_proj",
    "blocks",
    "proj_out",
)
_BLOCK_ORDER = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ffn.net.0.proj", "ffn.net.2",
)
_LORA = re.compile(r"^lora\.(?P<path>.+)\.(?P<role>lora_A|lora_B)\.weight$")


def training_order(keys) -> list[str]:
    """Adapter keys (our names) in the order their training registered the parameters."""
    def position(key: str):
        if key == LAYER_ADALN_KEY:
            return (len(_TOP_ORDER), 0, 0, 0)
        match = _LORA.match(key)
        if not match:
            raise WeightsError(f"cannot place {key!r} in the authors' parameter order")
        path, role = match["path"], 0 if match["role"] == "lora_A" else 1
        if block := re.match(r"^blocks\.(\d+)\.(.+)$", path):
            if block[2] not in _BLOCK_ORDER:
                raise WeightsError(f"cannot place {key!r} in the authors' parameter order")
            return (_TOP_ORDER.index("blocks"), int(block[1]), _BLOCK_ORDER.index(block[2]), role)
        if path not in _TOP_ORDER:
            raise WeightsError(f"cannot place {key!r} in the authors' parameter order")
        return (_TOP_ORDER.index(path), 0, 0, role)

    return sorted(keys, key=position)


def read_shadow_params(path: Path) -> list[torch.Tensor]:
    blob = load_pickle_weights(path)
    shadow = blob.get("shadow_params") if isinstance(blob, dict) else None
    if not isinstance(shadow, (list, tuple)) or not all(torch.is_tensor(t) for t in shadow):
        found = sorted(blob)[:6] if isinstance(blob, dict) else type(blob).__name__
        raise WeightsError(
            f"{str(path)!r} is not a diffusers EMAModel state (no 'shadow_params' list of tensors; found {found})"
        )
    return list(shadow)


def ema_dit_state(path: Path, adapter_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter's tensors replaced by their EMA averages, matched by training order and shape."""
    shadow = read_shadow_params(path)
    order = training_order(adapter_state)
    if len(shadow) == len(order) + 1 and order[-1] == LAYER_ADALN_KEY:
        frozen, trained = shadow[-2], shadow[-1]
        if frozen.shape == trained.shape == adapter_state[LAYER_ADALN_KEY].shape:
            logger.info("LayerT2V: %s: skipping the EMA of PEFT's frozen layer_adaln copy", path)
            shadow = shadow[:-2] + [trained]
    if len(shadow) != len(order):
        raise WeightsError(
            f"{str(path)!r} holds {len(shadow)} EMA tensors but the adapter has {len(order)} trainable tensors; "
            f"the EMA file belongs to another run or LoRA setup (load without EMA)"
        )
    out = {}
    for index, (key, tensor) in enumerate(zip(order, shadow)):
        if tuple(tensor.shape) != tuple(adapter_state[key].shape):
            raise WeightsError(
                f"{str(path)!r}: EMA tensor {index} has shape {tuple(tensor.shape)} but the adapter's {key} is "
                f"{tuple(adapter_state[key].shape)}; the EMA file belongs to another run (load without EMA)"
            )
        out[key] = tensor.to(adapter_state[key].dtype)
    return out
