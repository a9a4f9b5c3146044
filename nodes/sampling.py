"""Layered sampler: one joint denoising pass over every layer -> one serialized LATENT with its layout."""

from __future__ import annotations

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io
from PIL import Image

from ..layert2v_core.layout import LayerLayout
from ..layert2v_core.pipeline import LayerT2VPipeline
from ..layert2v_core.preview import latent_preview
from ..layert2v_core.sampler import CFG_OUTSIDE, SAMPLERS, SamplerConfig, speed_summary
from ..layert2v_core.variants import sample_layers

from . import model_management as models
from .errors import LayerT2VInputError, readable_errors
from .conditional import LayerGiven, LayerTrajectory
from .types import CATEGORY, LayerConditioning, LayerModel

LAYOUT_KEY = "layert2v_layout"   # stored in the LATENT dict next to "samples"
GENERATION_KEY = "layert2v_generation"  # prompts and settings, carried to the export manifest
PREVIEW_MAX_SIZE = 512


def preview_callback(pbar, layout: LayerLayout):
    """Progress + a per-step preview of every segment; stops promptly when the user cancels."""
    wan = comfy.latent_formats.Wan21()

    def on_step(state):
        mm.throw_exception_if_processing_interrupted()
        image = Image.fromarray(latent_preview(state.denoised, layout, wan.latent_rgb_factors, wan.latent_rgb_factors_bias))
        pbar.update_absolute(state.step, state.total, ("JPEG", image, PREVIEW_MAX_SIZE))
    return on_step


class LayeredSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VSampler",
            display_name="LayerT2V Layered Sampler",
            category=CATEGORY,
            description="Denoises full, background, foreground and mask layers jointly from one shared noise.",
            inputs=[
                LayerModel.Input("layert2v_model"),
                LayerConditioning.Input("layer_conditioning"),
                io.Int.Input("width", default=672, min=16, max=4096, step=16),
                io.Int.Input("height", default=384, min=16, max=4096, step=16),
                io.Int.Input("frames", default=41, min=1, max=1025, step=4, tooltip="frames per layer, 4k+1"),
                io.Int.Input("steps", default=50, min=1, max=1000),
                io.Float.Input("cfg", default=5.0, min=0.0, max=100.0, step=0.1),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.1),
                io.Combo.Input("sampler", options=list(SAMPLERS), default="unipc"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                LayerGiven.Input("given", optional=True, tooltip="layers to keep (LayerT2V Given Layers)"),
                LayerTrajectory.Input("trajectory", optional=True, tooltip="boxes per foreground (LayerT2V Trajectories)"),
                io.Float.Input("step_cache", default=0.0, min=0.0, max=10.0, step=0.01, optional=True,
                               tooltip="0 = off. Reuse the model's residual on steps whose input barely changed "
                                       "(TeaCache); higher = fewer model runs, more drift (README: speed)"),
                io.Float.Input("cfg_end", default=1.0, min=0.0, max=1.0, step=0.05, optional=True,
                               tooltip="fraction of the steps that run the negative prompt (1 = all); later steps "
                                       "cost half"),
                io.Combo.Input("cfg_after_end", options=list(CFG_OUTSIDE), default="skip", optional=True,
                               tooltip="after cfg_end: no guidance (skip) or reuse the last guided difference"),
            ],
            outputs=[io.Latent.Output(display_name="layered_latent")],
        )

    @classmethod
    def execute(cls, layert2v_model, layer_conditioning, width, height, frames, steps, cfg, shift, sampler, seed,
                given=None, trajectory=None, step_cache=0.0, cfg_end=1.0, cfg_after_end="skip"):
        with readable_errors("LayerT2V Layered Sampler"):
            dit = layert2v_model.dit
            source = given if given is not None else trajectory  # both carry the VAE that encodes them
            layer_vae = source.layer_vae if source is not None else None
            pipe = LayerT2VPipeline(dit, vae=getattr(layer_vae, "vae", None), mask_vae=getattr(layer_vae, "mask_vae", None),
                                    device=layert2v_model.device)
            layout = pipe.layout(layer_conditioning.num_foregrounds, frames, height, width)
            config = SamplerConfig(steps=steps, cfg=cfg, shift=shift, sampler=sampler, seed=seed,
                                   given_mode=given.mode if given is not None else "replace",
                                   cache_threshold=step_cache, cfg_end=cfg_end, cfg_outside=cfg_after_end)
            config.validate()
            if layer_conditioning.cond.shape[-1] != dit.text_dim:
                raise LayerT2VInputError(
                    f"LayerT2V Layered Sampler: layer_conditioning has text width {layer_conditioning.cond.shape[-1]} "
                    f"but this model expects {dit.text_dim}; use the text encoder that matches the model"
                )
        pbar = comfy.utils.ProgressBar(steps)
        models.load_for_sampling(pipe, layout, layer_conditioning, config, layert2v_model, layer_vae)
        try:
            # A refusal raised before the first step (memory estimate, conditioning mismatch) is bad
            # input: one readable line. A cancel (InterruptProcessingException) passes through untouched.
            with readable_errors("LayerT2V Layered Sampler"):
                latent = sample_layers(
                    pipe, layout, layer_conditioning, config, given=given.layers if given else None,
                    trajectories=trajectory.keyframes if trajectory else None,
                    trajectory_strength=trajectory.strength if trajectory else 0.0,
                    trajectory_end_step=trajectory.end_step if trajectory else 0,
                    callback=preview_callback(pbar, layout))
        finally:
            if layer_vae is not None:
                models.unload(layer_vae)  # it only encoded the given layers
        samples = layert2v_model.to_raw(latent).to(mm.intermediate_device())
        generation = {"prompts": {**layer_conditioning.prompts, "negative": layer_conditioning.negative},
                      "seed": seed, "steps": steps, "cfg": cfg, "shift": shift, "sampler": sampler,
                      "model": layert2v_model.name,
                      **speed_summary(config, pipe.last_sampling_stats)}
        return io.NodeOutput({"samples": samples, LAYOUT_KEY: layout.to_dict(), GENERATION_KEY: generation})
