"""Model files for a test or demo host, placed where a user would put real ones."""

from __future__ import annotations

import shutil
from pathlib import Path

from layert2v_core.tiny import write_tiny_model_files

MODEL_FOLDERS = {"dit": "diffusion_models", "vae": "vae", "adapter": "layert2v", "text_encoder": "text_encoders"}


def install_tiny_models(models_dir: Path, stem: str = "tiny", **options) -> dict:
    """Tiny random LayerT2V files under the names the bundled workflows use (stem "tiny"); other stems and
    write_tiny_model_files options (e.g. vae_config) give other model sets beside them."""
    staged = write_tiny_model_files(models_dir / f"_staging_{stem}", **{"max_foregrounds": 2, **options}, stem=stem)
    placed = {}
    for key, folder in MODEL_FOLDERS.items():
        (models_dir / folder).mkdir(parents=True, exist_ok=True)
        placed[key] = models_dir / folder / staged[key].name
        staged[key].rename(placed[key])
    shutil.rmtree(models_dir / f"_staging_{stem}")
    return placed
