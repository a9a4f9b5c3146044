"""The built-in demo model: a miniature LayerT2V (tiny Wan VAE + T2V DiT pretrained from scratch, then
stages 1-3) trained on synthetic shapes by `python -m training.demo_recipe`. 64x64, 17 frames, up to
3 foregrounds. The CLI, the ComfyUI loaders, the workflows and `make demo` use it when no other weights
are given. See README.md and manifest.json in this folder."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_NAME = "layert2v-demo (built-in)"     # the entry the ComfyUI loaders list
FILES = {"dit": "dit.safetensors", "vae": "vae.safetensors", "adapter": "adapter", "text_encoder": "text_encoder"}


def demo_model_paths(required: bool = True) -> dict[str, str]:
    """{dit, vae, adapter, text_encoder} -> path; {} (or an error when required) if the files are missing."""
    paths = {k: DEMO_DIR / name for k, name in FILES.items()}
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        if required:
            raise FileNotFoundError(f"the built-in demo model is incomplete (missing {', '.join(missing)}); "
                                    f"rebuild it with `make demo-model`")
        return {}
    return {k: str(p) for k, p in paths.items()}


def checkpoint_config():
    """The demo adapter's LayerT2VConfig: its text_len and the settings it is sampled at (`sampling`)."""
    from ..config import LayerT2VConfig
    from ..weights.layert2v_adapter import CONFIG_FILE

    path = DEMO_DIR / FILES["adapter"] / CONFIG_FILE
    return LayerT2VConfig.from_json(path.read_text(encoding="utf-8"), path.name)


def is_available() -> bool:
    return bool(demo_model_paths(required=False))
