"""The LayerT2V adapter format: everything a trained LayerT2V adds to Wan2.1, as safetensors + JSON.

Folder form (what training writes):
    layert2v_config.json        LayerT2VConfig.to_json(): routing preset, layout limits, LoRA ranks
    dit_adapter.safetensors     LayeredWanTransformer.adapter_state_dict(): `layer_adaln`, `lora.*`
    mask_adapter.safetensors    MaskVAE.mask_adapter_state_dict(): `head.*`, `decoder.*` (optional)

Single-file form (what a ComfyUI user drops in a models folder): one .safetensors with tensors
prefixed `dit.` / `mask.` and the config JSON in the header metadata, so no sidecar can go missing.

Writes are atomic (temporary file or folder, then rename); reads use safetensors only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import LayerT2VConfig
from ..dit import LAYER_ADALN_KEY
from .header_schema import SchemaError, parse_json
from .files import (
    WeightsError,
    tensor_set_diff,
    atomic_save_safetensors,
    atomic_write_text,
    load_safetensors,
    read_safetensors_index,
)

CONFIG_FILE = "layert2v_config.json"
DIT_FILE = "dit_adapter.safetensors"
MASK_FILE = "mask_adapter.safetensors"
FORMAT_NAME = "layert2v-adapter"
FORMAT_VERSION = "1"
_DIT_PREFIX, _MASK_PREFIX = "dit.", "mask."


@dataclass
class LayerT2VAdapter:
    config: LayerT2VConfig
    dit_state: dict[str, torch.Tensor]
    mask_state: dict[str, torch.Tensor] = field(default_factory=dict)  # empty: no mask-VAE part
    source: str = ""

    def apply(self, dit, mask_vae=None) -> None:
        """Load into a LayeredWanTransformer (built with `self.config`) and optionally a MaskVAE.
        Every tensor must find its place and every place its tensor: a partial adapter is refused."""
        _check_same_lora(dit.config, self.config, self.source)
        if any(k.startswith("lora.") for k in self.dit_state):
            if not dit.has_lora:
                dit.add_lora()
            check_tensor_set(_shapes(dit.adapter_state_dict()), self.dit_state, self.source, "DiT adapter",
                             _dit_mismatch_cause)
        dit.load_adapter_state_dict(self.dit_state)
        if mask_vae is not None:
            self.apply_mask(mask_vae)

    def apply_mask(self, mask_vae) -> None:
        """Load the head + decoder LoRA (+ the post-quant conv's LoRA when the adapter has one)."""
        if not self.mask_state:
            raise WeightsError(f"{self.source!r} has no mask-VAE adapter (head + decoder LoRA) to load")
        _check_mask_lora(mask_vae, self.config, self.source)
        state = dict(self.mask_state)
        post_quant = {k[len(POST_QUANT_PREFIX):]: state.pop(k) for k in list(state) if k.startswith(POST_QUANT_PREFIX)}
        check_tensor_set(_shapes(mask_vae.mask_adapter_state_dict()), state, self.source, "mask-VAE adapter",
                         lambda expected, found: "it was trained for another VAE (other widths or block counts)")
        mask_vae.load_mask_adapter_state_dict(state)
        if post_quant:
            _merge_post_quant_lora(mask_vae, post_quant, self.source)


# The authors also put a LoRA on the mask decoder's post-quant conv (their `conv2`). MaskVAE decodes with
# its own copy of that 1x1x1 conv (decoder_vae), so the LoRA is merged into the copy's weight (exact for
# a 1x1x1 conv) and the RGB VAE is untouched. It is not part of MaskVAE.mask_adapter_state_dict().
POST_QUANT_PREFIX = "post_quant_conv."


def _merge_post_quant_lora(mask_vae, state: dict, where: str) -> None:
    conv = mask_vae.decoder_vae.post_quant_conv
    out_ch, in_ch = conv.weight.shape[:2]
    rank = mask_vae.lora_rank
    expected = {"lora_A.weight": (rank, in_ch, 1, 1, 1), "lora_B.weight": (out_ch, rank, 1, 1, 1)}
    check_tensor_set(expected, state, where, "mask-VAE post-quant LoRA",
                     lambda expected, found: "it was trained for a VAE with another latent width or LoRA rank")
    delta = state["lora_B.weight"].flatten(1).double() @ state["lora_A.weight"].flatten(1).double()
    with torch.no_grad():
        conv.weight += (delta * (mask_vae.lora_alpha / rank)).view_as(conv.weight).to(conv.weight)


def _shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def check_tensor_set(expected: dict[str, tuple], found: dict[str, torch.Tensor], where: str, what: str,
                     cause) -> None:
    """One line with counts of missing / unexpected / other-shape tensors and the likely cause."""
    missing, unexpected, wrong = tensor_set_diff(expected, _shapes(found))
    wrong = [f"{k} {tuple(found[k].shape)} vs model {expected[k]}" for k in wrong]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} of the model's {len(expected)} tensors missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if wrong:
        parts.append(f"{len(wrong)} of another shape (e.g. {wrong[0]})")
    raise WeightsError(f"{where!r}: the {what} does not fit this model: {', '.join(parts)}; "
                       f"{cause(expected, found)}")


def _dit_mismatch_cause(expected: dict, found: dict) -> str:
    def blocks(keys):
        return {int(k.split(".")[2]) for k in keys if k.startswith("lora.blocks.")}

    theirs, ours = blocks(found), blocks(expected)
    if theirs and ours and max(theirs) != max(ours):
        return (f"the adapter covers {max(theirs) + 1} blocks and this DiT has {max(ours) + 1}: "
                f"it was trained for another base model (or saved incompletely)")
    ranks = {v.shape[0] for k, v in found.items() if k.endswith("lora_A.weight")}
    model_ranks = {s[0] for k, s in expected.items() if k.endswith("lora_A.weight")}
    if ranks and model_ranks and ranks != model_ranks:
        return f"LoRA rank {sorted(ranks)} in the file vs {sorted(model_ranks)} in the config"
    return "it was trained for a DiT of another width or with other LoRA target modules"


def _check_same_lora(model_config: LayerT2VConfig, config: LayerT2VConfig, where: str) -> None:
    """A LoRA loaded under another rank/alpha/targets would fail late or, for alpha, silently rescale."""
    fields = ("dit_lora_rank", "dit_lora_alpha", "dit_lora_targets", "max_foregrounds")
    diff = [f"{f}: model {getattr(model_config, f)!r} vs adapter {getattr(config, f)!r}"
            for f in fields if getattr(model_config, f) != getattr(config, f)]
    if diff:
        raise WeightsError(
            f"{where!r} was saved for another DiT setup ({'; '.join(diff)}); build the LayeredWanTransformer "
            f"with the adapter's config (adapter.config)"
        )


def _check_mask_lora(mask_vae, config: LayerT2VConfig, where: str) -> None:
    ours = (mask_vae.lora_rank, mask_vae.lora_alpha)
    theirs = (config.mask_vae_lora_rank, config.mask_vae_lora_alpha)
    if ours != theirs:
        raise WeightsError(
            f"{where!r}: mask-VAE LoRA rank/alpha {theirs} but the MaskVAE has {ours}; "
            f"build it with MaskVAE.from_config(vae, adapter.config)"
        )


# ---- save ---------------------------------------------------------------------------------------
def save_layert2v_adapter(path: str | Path, dit, mask_vae=None, config: LayerT2VConfig | None = None) -> Path:
    """Save to a folder, or to one file when `path` ends with .safetensors. Returns the path."""
    path = Path(path)
    config = config or dit.config
    dit_state = dit.adapter_state_dict()
    mask_state = mask_vae.mask_adapter_state_dict() if mask_vae is not None else {}
    _check_adaln(dit_state, config, str(path))
    _check_same_lora(dit.config, config, str(path))
    if mask_vae is not None:
        _check_mask_lora(mask_vae, config, str(path))
    if path.suffix == ".safetensors":
        tensors = {_DIT_PREFIX + k: v for k, v in dit_state.items()}
        tensors.update({_MASK_PREFIX + k: v for k, v in mask_state.items()})
        metadata = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "layert2v_config": config.to_json()}
        atomic_save_safetensors(tensors, path, metadata=metadata)
        return path
    _save_folder(path, config, dit_state, mask_state)
    return path


def _save_folder(path: Path, config: LayerT2VConfig, dit_state: dict, mask_state: dict) -> None:
    ours = {CONFIG_FILE, DIT_FILE, MASK_FILE}
    if path.exists():
        if not path.is_dir():
            raise WeightsError(f"{str(path)!r} exists and is a file; give a folder path or a .safetensors file name")
        foreign = sorted(p.name for p in path.iterdir() if p.name not in ours)
        if foreign:
            raise WeightsError(
                f"refusing to replace {str(path)!r}: it holds other files ({', '.join(foreign[:5])}); "
                f"save the adapter into a new or empty folder"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        atomic_write_text(staging / CONFIG_FILE, config.to_json())
        atomic_save_safetensors(dit_state, staging / DIT_FILE, metadata={"format": FORMAT_NAME})
        if mask_state:
            atomic_save_safetensors(mask_state, staging / MASK_FILE, metadata={"format": FORMAT_NAME})
        os.chmod(staging, 0o755)
        if path.exists():  # swap folders: the old one is only removed once the new one is in place
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# ---- load ---------------------------------------------------------------------------------------
def load_layert2v_adapter(path: str | Path) -> LayerT2VAdapter:
    """Read a LayerT2V adapter folder or single file (the authors' layout: authors_folder.py)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"LayerT2V adapter {str(path)!r} does not exist")
    if path.is_dir():
        return _load_folder(path)
    if path.suffix != ".safetensors":
        raise WeightsError(f"{str(path)!r}: a LayerT2V adapter is a folder or a .safetensors file")
    index = read_safetensors_index(path)
    if index.metadata.get("format") != FORMAT_NAME or "layert2v_config" not in index.metadata:
        from .wan_keys import describe_keys

        raise WeightsError(
            f"{str(path)!r} is not a LayerT2V adapter (no {FORMAT_NAME!r} metadata); it looks like "
            f"{describe_keys(index.shapes, index.shapes)}"
        )
    config = _parse_config(index.metadata["layert2v_config"], f"{path} (metadata)")
    tensors = load_safetensors(path)
    dit_state = {k[len(_DIT_PREFIX):]: v for k, v in tensors.items() if k.startswith(_DIT_PREFIX)}
    mask_state = {k[len(_MASK_PREFIX):]: v for k, v in tensors.items() if k.startswith(_MASK_PREFIX)}
    _check_adaln(dit_state, config, str(path))
    return LayerT2VAdapter(config, dit_state, mask_state, source=str(path))


def _load_folder(folder: Path) -> LayerT2VAdapter:
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"{str(folder)!r} is not a LayerT2V adapter folder: {CONFIG_FILE} is missing "
            f"(expected {CONFIG_FILE}, {DIT_FILE} and optionally {MASK_FILE})"
        )
    config = _parse_config(config_path.read_text(encoding="utf-8"), str(config_path))
    dit_path = folder / DIT_FILE
    if not dit_path.is_file():
        raise FileNotFoundError(f"LayerT2V adapter folder {str(folder)!r} has no {DIT_FILE}")
    dit_state = load_safetensors(dit_path)
    mask_path = folder / MASK_FILE
    mask_state = load_safetensors(mask_path) if mask_path.is_file() else {}
    _check_adaln(dit_state, config, str(dit_path))
    return LayerT2VAdapter(config, dit_state, mask_state, source=str(folder))


def _parse_config(text: str, where: str) -> LayerT2VConfig:
    data = parse_json(text, where, "LayerT2V config")
    try:
        return LayerT2VConfig.from_dict(data, where)
    except SchemaError:
        raise
    except (TypeError, ValueError) as err:
        raise WeightsError(f"{where} is not a valid LayerT2V config: {err}") from None


def _check_adaln(dit_state: dict, config: LayerT2VConfig, where: str) -> None:
    adaln = dit_state.get(LAYER_ADALN_KEY)
    if adaln is None:
        raise WeightsError(f"{where} has no {LAYER_ADALN_KEY!r} tensor; every LayerT2V adapter carries one")
    if adaln.ndim != 3 or adaln.shape[0] != config.adaln_rows or adaln.shape[1] != 6:
        raise WeightsError(
            f"{where}: {LAYER_ADALN_KEY} has shape {tuple(adaln.shape)}; the config "
            f"(max_foregrounds={config.max_foregrounds}) needs ({config.adaln_rows}, 6, dim)"
        )
