"""Layered sampler: one joint denoising pass over every layer -> one serialized LATENT with its layout."""

from __future__ import annotations

import time

import comfy.latent_formats
import comfy.model_management as mm
import comfy.utils
from comfy_api.latest import io
from PIL import Image

from ..layert2v_core.job_time import time_limit
from ..layert2v_core.layout import LayerLayout
from ..layert2v_core.pipeline import LayerT2VPipeline
from ..layert2v_core.preview import latent_preview
from ..layert2v_core.recommended import AUTO, SamplingSettings
from ..layert2v_core.sampler import CFG_OUTSIDE, SAMPLERS, SamplerConfig, speed_summary
from ..layert2v_core.variants import sample_layers

from . import model_management as models
from .errors import LayerT2VInputError, readable_errors
from .conditional import LayerGiven, LayerTrajectory
from .types import CATEGORY, LayerConditioning, LayerModel

LAYOUT_KEY = "layert2v_layout"   # stored in the LATENT dict next to "samples"
GENERATION_KEY = "layert2v_generation"  # prompts and settings, carried to the export manifest
PREVIEW_MAX_SIZE = 512
MODEL_DEFAULT = "0 = the loaded model's own (its checkpoint config)"
BLOCK_PROGRESS_SECONDS = 0.25  # at most this often a progress message between step previews


class SamplerProgress:
    """The progress bar of one run, counted in DiT blocks so a slow step still moves it; a preview of
    every segment after each step. Cancel is checked after every block and every step."""

    def __init__(self, layout: LayerLayout, steps: int, blocks: int):
        self.layout, self.blocks = layout, blocks
        self.total = steps * blocks
        self.pbar = comfy.utils.ProgressBar(self.total)
        self.step_start = 0     # blocks of the finished steps
        self.in_step = 0        # blocks run in the current step
        self.last_sent = time.monotonic()
        self.wan = comfy.latent_formats.Wan21()

    def start(self) -> None:
        self.pbar.update_absolute(0, self.total)  # the bar shows before the first block finishes

    def after_block(self) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.in_step = min(self.in_step + 1, self.blocks - 1)  # the step's end is the preview's to report
        now = time.monotonic()
        if now - self.last_sent >= BLOCK_PROGRESS_SECONDS:
            self.last_sent = now
            self.pbar.update_absolute(self.step_start + self.in_step, self.total)

    def after_step(self, state) -> None:
        mm.throw_exception_if_processing_interrupted()
        self.step_start, self.in_step = state.step * self.blocks, 0
        image = Image.fromarray(latent_preview(state.denoised, self.layout, self.wan.latent_rgb_factors,
                                               self.wan.latent_rgb_factors_bias))
        self.pbar.update_absolute(self.step_start, self.total, ("JPEG", image, PREVIEW_MAX_SIZE))
        self.last_sent = time.monotonic()


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
                # AUTO (0): the model's recommended value (layert2v_core/recommended.py)
                io.Int.Input("width", default=AUTO, min=0, max=4096, step=16, tooltip=MODEL_DEFAULT),
                io.Int.Input("height", default=AUTO, min=0, max=4096, step=16, tooltip=MODEL_DEFAULT),
                io.Int.Input("frames", default=AUTO, min=0, max=1025,
                             tooltip="frames per layer, 4k+1 (17, 41, 81, ...); " + MODEL_DEFAULT),
                io.Int.Input("steps", default=AUTO, min=0, max=1000, tooltip=MODEL_DEFAULT),
                io.Float.Input("cfg", default=AUTO, min=0.0, max=100.0, step=0.1,
                               tooltip="guidance scale, 1 = off; " + MODEL_DEFAULT),
                io.Float.Input("shift", default=AUTO, min=0.0, max=100.0, step=0.1, tooltip=MODEL_DEFAULT),
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
            chosen = SamplingSettings.of(dit.config).fill(width=width, height=height, frames=frames, steps=steps,
                                                          cfg=cfg, shift=shift)
            width, height, frames, steps, cfg, shift = (chosen[k] for k in ("width", "height", "frames", "steps",
                                                                            "cfg", "shift"))
            source = given if given is not None else trajectory  # both carry the VAE that encodes them
            layer_vae = source.layer_vae if source is not None else None
            pipe = LayerT2VPipeline(dit, vae=getattr(layer_vae, "vae", None), mask_vae=getattr(layer_vae, "mask_vae", None),
                                    device=layert2v_model.device, time_limit=time_limit())
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
        progress = SamplerProgress(layout, steps, len(dit.base.blocks))
        models.load_for_sampling(pipe, layout, layer_conditioning, config, layert2v_model, layer_vae)
        try:
            # A refusal raised before the first step (memory or time estimate, conditioning mismatch) is bad
            # input: one readable line. A cancel (InterruptProcessingException) passes through untouched.
            with readable_errors("LayerT2V Layered Sampler"):
                progress.start()
                latent = sample_layers(
                    pipe, layout, layer_conditioning, config, given=given.layers if given else None,
                    trajectories=trajectory.keyframes if trajectory else None,
                    trajectory_strength=trajectory.strength if trajectory else 0.0,
                    trajectory_end_step=trajectory.end_step if trajectory else 0,
                    callback=progress.after_step, after_block=progress.after_block)
        finally:
            if layer_vae is not None:
                models.unload(layer_vae)  # it only encoded the given layers
        samples = layert2v_model.to_raw(latent).to(mm.intermediate_device())
        generation = {"prompts": {**layer_conditioning.prompts, "negative": layer_conditioning.negative},
                      "seed": seed, "steps": steps, "cfg": cfg, "shift": shift, "sampler": sampler,
                      "dtype": str(dit.dtype).removeprefix("torch."), "model": layert2v_model.name,
                      **speed_summary(config, pipe.last_sampling_stats)}
        return io.NodeOutput({"samples": samples, LAYOUT_KEY: layout.to_dict(), GENERATION_KEY: generation})
