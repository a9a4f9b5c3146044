"""Any LayerT2V adapter path -> LayerT2VAdapter: our format (folder or one file) or the authors'
training folder, told apart by the files in it."""

from __future__ import annotations

from pathlib import Path

from .authors_folder import ADAPTER_CONFIG, import_authors_checkpoint, is_authors_checkpoint
from .layert2v_adapter import CONFIG_FILE, DIT_FILE, LayerT2VAdapter, load_layert2v_adapter


def is_checkpoint_folder(folder: str | Path) -> bool:
    """A folder a loader can offer: ours (layert2v_config.json) or the authors' (PEFT adapter)."""
    folder = Path(folder)
    return (folder / CONFIG_FILE).is_file() or is_authors_checkpoint(folder)


def load_checkpoint(path: str | Path, use_ema: bool = False) -> LayerT2VAdapter:
    """use_ema: the authors' EMA weights instead of the adapter's (their inference default: off).
    Our own format has no EMA file, so the option only matters for the authors' folders."""
    path = Path(path)
    if path.is_dir() and not (path / CONFIG_FILE).exists():
        if is_authors_checkpoint(path):
            return import_authors_checkpoint(path, use_ema=use_ema)
        raise FileNotFoundError(
            f"{str(path)!r} is not a LayerT2V checkpoint folder: expected {CONFIG_FILE} + {DIT_FILE} (ours) or "
            f"{ADAPTER_CONFIG} + adapter_model.safetensors (the authors' training layout)"
        )
    return load_layert2v_adapter(path)
