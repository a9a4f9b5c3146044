"""The pack's models under ComfyUI's model management (comfy.model_management + a ModelPatcher each).

ComfyUI then treats them as its own: `load_models_gpu` evicts other models to make room for their
weights plus our working-memory estimate, `current_loaded_models` lists them, "Unload Models" (POST
/free) and any other model's need for room take them off the device, and the launch flags decide where
they run and how much of them stays on the GPU: --cpu, --lowvram / --novram (a weight budget; what
does not fit streams in block by block, see layert2v_core/offload.py), --reserve-vram (ComfyUI keeps
it free; our sampler's memory check leaves it too), --gpu-only / --highvram (nothing goes back to the
CPU), --cpu-vae, --disable-smart-memory (everything unloaded after each prompt).

Each kind of model takes ComfyUI's device policy for that kind: the DiT that of diffusion models
(get_torch_device / unet_offload_device), the VAE that of VAEs (vae_device / vae_offload_device), our
text encoder that of text encoders (text_encoder_device: the CPU under --lowvram / --novram).

No module-level state: a patcher hangs off the object a loader returns, so it lives and dies with
ComfyUI's node cache, and "Free model and node cache" lets the models be collected.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.model_management as mm
import comfy.model_patcher
import torch

from ..layert2v_core.memory import estimate_vae_memory
from ..layert2v_core.offload import WeightPlacement

PATCHER_ATTR = "comfy_patcher"   # where a loaded model object carries its patcher
logger = logging.getLogger("layert2v")


class ManagedModel(torch.nn.Module):
    """What a patcher holds: our model as a child module (so ComfyUI's size and state_dict cover it), its
    placement, and a plain `device` attribute that ComfyUI writes (diffusers and transformers models
    have a read-only one). The subclass name is what ComfyUI logs ("Requested to load LayerT2VDiT")."""

    def __init__(self, model: torch.nn.Module, placement: WeightPlacement):
        super().__init__()
        self.inner = model
        self.placement = placement
        self.device = placement.offload_device

    def get_dtype(self) -> torch.dtype:
        return next(self.inner.parameters()).dtype


class LayerT2VDiT(ManagedModel):
    pass


class LayerT2VVAE(ManagedModel):
    pass


class LayerT2VTextEncoder(ManagedModel):
    pass


class PlacedModelPatcher(comfy.model_patcher.ModelPatcher):
    """ComfyUI's ModelPatcher with the weight moves done by the model's WeightPlacement. ComfyUI's own
    partial loading casts weights inside comfy.ops layers, which diffusers and transformers models do
    not have; its bookkeeping (sizes, loaded bytes, lowvram state) is kept as it expects."""

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False, **kwargs):
        placement = self.model.placement
        budget = None if full_load or not lowvram_model_memory else lowvram_model_memory
        loaded = placement.place(device_to if device_to is not None else self.load_device, budget)
        self.model.device = placement.device
        self.model.model_loaded_weight_memory = loaded
        self.model.model_lowvram = placement.streamed_blocks > 0
        self.model.current_weight_patches_uuid = self.patches_uuid
        if placement.streamed_blocks:
            logger.info("LayerT2V: %s: %.0f MB on %s, %d blocks streamed from %s", type(self.model).__name__,
                        loaded / 2 ** 20, placement.device, placement.streamed_blocks, placement.offload_device)

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False, **kwargs):
        placement = self.model.placement
        freed = placement.release(memory_to_free)
        self.model.model_loaded_weight_memory = placement.loaded_bytes
        self.model.model_lowvram = placement.streamed_blocks > 0
        return freed

    def unpatch_model(self, device_to=None, unpatch_weights=True, **kwargs):
        if unpatch_weights:
            self.model.placement.offload()
        super().unpatch_model(device_to, unpatch_weights)


def _manage(owner, wrapper_class, model: torch.nn.Module, blocks, load_device, offload_device):
    placement = WeightPlacement(model, blocks, offload_device)
    placement.offload()  # the loaders build on the CPU; --gpu-only's offload device is the GPU itself
    patcher = PlacedModelPatcher(wrapper_class(model, placement), load_device=torch.device(load_device),
                                 offload_device=torch.device(offload_device), size=placement.size)
    setattr(owner, PATCHER_ATTR, patcher)
    return patcher


def patcher_of(owner) -> PlacedModelPatcher:
    return getattr(owner, PATCHER_ATTR)


def _devices(device_choice: str, load, offload) -> tuple[torch.device, torch.device]:
    """The loader's `device` widget: "auto" follows ComfyUI; "cpu" keeps the model on the CPU."""
    if device_choice == "cpu":
        return torch.device("cpu"), torch.device("cpu")
    return torch.device(load()), torch.device(offload())


def manage_dit(model, device_choice: str = "auto") -> None:
    """A LayerT2VModel (layered DiT) as a diffusion model; sampling runs on its load device."""
    load, offload = _devices(device_choice, mm.get_torch_device, mm.unet_offload_device)
    _manage(model, LayerT2VDiT, model.dit, model.dit.streamable_blocks(), load, offload)
    model.device = str(load)


def manage_vae(layer_vae, device_choice: str = "auto") -> None:
    """A LayerVAE as a VAE: the mask VAE module holds the RGB VAE too, so one patcher moves both."""
    load, offload = _devices(device_choice, mm.vae_device, mm.vae_offload_device)
    _manage(layer_vae, LayerT2VVAE, layer_vae.mask_vae, (), load, offload)


def manage_text_encoder(encoder) -> None:
    """Our TextEncoder as a text encoder: it encodes on the load device; cached embeddings stay on the CPU
    (ComfyUI does not count them)."""
    load, offload = _devices("auto", mm.text_encoder_device, mm.text_encoder_offload_device)
    _manage(encoder, LayerT2VTextEncoder, encoder.model, encoder.streamable_blocks(), load, offload)
    encoder.device = load
    encoder.cache_device = torch.device("cpu")


def load(owners, memory_required: float = 0) -> None:
    """Our models onto their devices through ComfyUI: it evicts other models until their weights (or the
    share its flags allow) plus `memory_required` bytes of working memory fit."""
    mm.load_models_gpu([patcher_of(o) for o in owners], memory_required=memory_required)


def load_for_sampling(pipe, layout, conditioning, config, model, layer_vae=None) -> None:
    """The DiT (and the VAE that encodes given layers first) loaded with room for the sampler's working
    memory, and the pipeline's own check told what ComfyUI keeps in reserve. The DiT stays loaded
    afterwards, as ComfyUI's models do, until something else needs the room."""
    estimate = pipe.sampling_memory(layout, conditioning, config)
    working = estimate.activations + estimate.latents
    owners = [model]
    if layer_vae is not None:  # encoding runs before the first step: the larger of the two must fit
        owners.append(layer_vae)
        working = max(working, estimate_vae_memory(layer_vae.vae, layout.num_frames, layout.height, layout.width))
    load(owners, working)
    pipe.memory_reserve = reserved_memory(pipe.device)


def unload(owner) -> None:
    """One of our models off its device through ComfyUI (and out of current_loaded_models)."""
    patcher = patcher_of(owner)
    others = [m for m in mm.current_loaded_models if m.model is not patcher]
    mm.free_memory(1e30, patcher.load_device, keep_loaded=others)


@contextlib.contextmanager
def vae_loaded_during(layer_vae, frames: int, height: int, width: int):
    """The VAE loaded for the block with room to code one (frames, height, width) layer clip, and
    unloaded after it (also on error or cancel): its few hundred MB leave the GPU after decoding."""
    load([layer_vae], estimate_vae_memory(layer_vae.vae, frames, height, width))
    try:
        yield
    finally:
        unload(layer_vae)


def reserved_memory(device) -> int:
    """Bytes ComfyUI keeps free on `device` for other programs (--reserve-vram; nothing on the CPU)."""
    return 0 if torch.device(device).type == "cpu" else int(mm.extra_reserved_memory())
