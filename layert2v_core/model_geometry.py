"""The latent geometry of loaded models, for LayerLayout: the VAE's strides, the DiT's patch.

The VAE's strides come from its config: diffusers' AutoencoderKLWan takes its compression from
`scale_factor_spatial` / `scale_factor_temporal` (default 8 / 4), not from `dim_mult`; the header
schema refuses a file whose scale factors disagree with its blocks. The patch comes from the DiT's
config. An adapter records the strides of the VAE it was trained with (in its config's `extra`), so
a sampler with no VAE at hand (ComfyUI's, before decoding) still makes latents of the right size;
with neither, Wan2.1's 8 / 4 hold. A DiT and a VAE that cannot work together are refused in one line
naming their files.
"""

from __future__ import annotations

from typing import Optional

from .layout import WAN21_PATCH_SIZE, WAN21_SPACE_STRIDE, WAN21_TIME_STRIDE, LayerLayout
from .weights.header_schema import TRAINED_SPACE_KEY, TRAINED_TIME_KEY
WAN21_STRIDES = {"time_stride": WAN21_TIME_STRIDE, "space_stride": WAN21_SPACE_STRIDE}


class ModelMismatch(ValueError):
    """A DiT, adapter, VAE or latent that were not made for each other; the message names their files."""


def vae_strides(vae) -> dict:
    """{time_stride, space_stride} of a Wan VAE (AutoencoderKLWan), from its config."""
    config = vae.config
    return {"time_stride": int(getattr(config, "scale_factor_temporal", None) or WAN21_TIME_STRIDE),
            "space_stride": int(getattr(config, "scale_factor_spatial", None) or WAN21_SPACE_STRIDE)}


def trained_vae_record(vae) -> dict:
    """What an adapter trained with `vae` keeps in its config's `extra`."""
    strides = vae_strides(vae)
    return {TRAINED_SPACE_KEY: strides["space_stride"], TRAINED_TIME_KEY: strides["time_stride"]}


def trained_vae_strides(config) -> Optional[dict]:
    """The strides an adapter (its LayerT2VConfig) was trained with; None when it recorded none (older adapters)."""
    extra = config.extra
    if TRAINED_SPACE_KEY not in extra and TRAINED_TIME_KEY not in extra:
        return None
    return {"time_stride": extra.get(TRAINED_TIME_KEY, WAN21_TIME_STRIDE),
            "space_stride": extra.get(TRAINED_SPACE_KEY, WAN21_SPACE_STRIDE)}


def layout_geometry(dit=None, vae=None) -> dict:
    """LayerLayout's model fields: the VAE's strides (without a VAE, those the adapter was trained with;
    without either, Wan2.1's) and the DiT's patch (Wan2.1's without a DiT). Refuses a mismatched pair."""
    check_pair(dit, vae)
    if vae is not None:
        strides = vae_strides(vae)
    else:
        strides = (trained_vae_strides(dit.config) if dit is not None else None) or WAN21_STRIDES
    patch = tuple(dit.base.config.patch_size) if dit is not None else WAN21_PATCH_SIZE
    return {**strides, "patch_size": patch}


def check_pair(dit, vae) -> None:
    """One line when `vae` cannot serve `dit`: other latent channels, or other strides than the adapter's."""
    if dit is None or vae is None:
        return
    z_dim, in_channels = vae.config.z_dim, dit.base.config.in_channels
    if z_dim != in_channels:
        raise ModelMismatch(f"{source(vae, 'vae')} makes {z_dim}-channel latents but {source(dit, 'dit')} "
                            f"takes {in_channels}-channel ones: load the VAE this DiT was trained with")
    trained, own = trained_vae_strides(dit.config), vae_strides(vae)
    if trained is not None and trained != own:
        raise ModelMismatch(f"{source(dit, 'adapter')} was trained with a VAE that {_strides(trained)}, but "
                            f"{source(vae, 'vae')} {_strides(own)}: load the VAE the adapter was trained with")


def check_latent_vae(layout: LayerLayout, vae) -> None:
    """One line when a layered latent was made for a VAE with other strides than the one decoding it."""
    made_for = {"time_stride": layout.time_stride, "space_stride": layout.space_stride}
    own = vae_strides(vae)
    if made_for != own:
        raise ModelMismatch(f"the layered latent was made for a VAE that {_strides(made_for)}, but "
                            f"{source(vae, 'vae')} {_strides(own)}: decode with the VAE the model was "
                            "trained with (its adapter names the strides)")


def _strides(strides: dict) -> str:
    return f"downsamples space by {strides['space_stride']} and time by {strides['time_stride']}"


# ---- where a model came from: set by the loaders (weights/loading.py), read by the messages above -----
LABELS = {"dit": "DiT", "adapter": "adapter", "vae": "VAE"}


def set_source(model, **files) -> None:
    """Remember the files a loaded model came from (dit=..., adapter=... or vae=...)."""
    model.source_files = {k: str(v) for k, v in files.items() if v}


def source(model, part: str) -> str:
    """"the VAE 'x.safetensors'": the file a loaded model's `part` came from (just "the VAE" when unknown)."""
    path = (getattr(model, "source_files", None) or {}).get(part)
    return f"the {LABELS[part]} {path!r}" if path else f"the {LABELS[part]}"
