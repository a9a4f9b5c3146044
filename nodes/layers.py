"""Latent splitting, decoding and alpha compositing nodes."""

from __future__ import annotations

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..layert2v_core.export import composite_over, to_premultiplied, to_straight
from ..layert2v_core.layout import BACKGROUND, FOREGROUND, FULL, LATENT_CHANNELS, MASK, LayerLayout, LayoutError
from ..layert2v_core.pipeline import LayerT2VPipeline

from . import model_management as models
from .errors import LayerT2VInputError, check_finite, readable_errors, refuse
from .sampling import GENERATION_KEY, LAYOUT_KEY
from .types import CATEGORY, LayerSet, LayerVAE

ALPHA_POLARITY = "MASK outputs are alpha: 1 = opaque foreground, 0 = transparent (not ComfyUI's inverted LoadImage mask)."


def layout_of(latent: dict, node: str) -> LayerLayout:
    if not isinstance(latent, dict) or LAYOUT_KEY not in latent:
        raise LayerT2VInputError(f"{node}: layered_latent has no layer layout (it is a plain LATENT); connect the "
                                 "output of LayerT2V Layered Sampler")
    try:
        layout = LayerLayout.from_dict(latent[LAYOUT_KEY])
        samples = latent["samples"]
        # The whole shape, not only the time axis: a stock node (upscale, crop, trim) keeps the
        # layout entry of the dict it copies while changing the tensor.
        expected = layout.latent_shape(batch=1, channels=LATENT_CHANNELS)
        shape = tuple(getattr(samples, "shape", ()))
        if len(shape) != 5 or shape[1:] != expected[1:]:
            raise LayoutError(f"the tensor is {shape} but its layout ({layout.num_foregrounds} foreground(s), "
                              f"{layout.num_frames} frames, {layout.width}x{layout.height}) needs "
                              f"(batch, {', '.join(str(n) for n in expected[1:])}); connect the LATENT of "
                              "LayerT2V Layered Sampler without resizing, trimming or batching it")
        layout.split(samples)  # checks that the tensor really has this layout
    except (LayoutError, KeyError, TypeError, ValueError) as exc:
        raise LayerT2VInputError(f"{node}: layered_latent does not match its layout: {exc}") from None
    return layout


class SplitLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VSplitLayers",
            display_name="LayerT2V Split Layers",
            category=CATEGORY,
            description="Serialized latent -> per-layer LATENTs. RGB layers decode with ComfyUI's VAE Decode; "
                        "the mask latent decodes with LayerT2V Decode Alpha.",
            inputs=[io.Latent.Input("layered_latent"),
                    io.Int.Input("foreground_index", default=1, min=1, max=16, tooltip="which foreground k")],
            outputs=[io.Latent.Output(display_name="full"), io.Latent.Output(display_name="background"),
                     io.Latent.Output(display_name="foreground"), io.Latent.Output(display_name="mask")],
        )

    @classmethod
    def execute(cls, layered_latent, foreground_index) -> io.NodeOutput:
        layout = layout_of(layered_latent, "LayerT2V Split Layers")
        if foreground_index > layout.num_foregrounds:
            raise LayerT2VInputError(
                f"LayerT2V Split Layers: foreground_index={foreground_index} but the latent has "
                f"{layout.num_foregrounds} foreground(s); use 1..{layout.num_foregrounds}")
        parts = layout.split(layered_latent["samples"])
        names = (FULL, BACKGROUND, f"{FOREGROUND}_{foreground_index}", f"{MASK}_{foreground_index}")
        return io.NodeOutput(*({"samples": parts[n].contiguous()} for n in names))


def decode_all(layer_vae, latent: dict, node: str):
    layout = layout_of(latent, node)
    batch = latent["samples"].shape[0]
    if batch != 1:  # one LayerFrames holds one generation: refuse rather than keep only the first
        raise refuse(node, "layered_latent", f"holds a batch of {batch} generations (e.g. from Latent Batch)",
                     "decode each generation with its own Decode Layers node, or use Split Layers + VAE Decode, "
                     "which decode whole batches")
    pipe = LayerT2VPipeline(dit=None, vae=layer_vae.vae, mask_vae=layer_vae.mask_vae)
    with models.vae_loaded_during(layer_vae, layout.num_frames, layout.height, layout.width), torch.no_grad(), \
            readable_errors(node):
        layers = pipe.decode(layer_vae.to_normalized(latent["samples"].float()), layout,
                             out_device=mm.intermediate_device())
    layers.generation = dict(latent.get(GENERATION_KEY, {}))
    return layers


class DecodeLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VDecodeLayers",
            display_name="LayerT2V Decode Layers",
            category=CATEGORY,
            description="Decodes every layer: RGB through the Wan VAE, alpha through the mask VAE. " + ALPHA_POLARITY,
            inputs=[io.Latent.Input("layered_latent"), LayerVAE.Input("layert2v_vae")],
            outputs=[LayerSet.Output(display_name="layers"), io.Image.Output(display_name="full"),
                     io.Image.Output(display_name="background"), io.Image.Output(display_name="recomposite")],
        )

    @classmethod
    def execute(cls, layered_latent, layert2v_vae) -> io.NodeOutput:
        layers = decode_all(layert2v_vae, layered_latent, "LayerT2V Decode Layers")
        recomposite = layers.rgb[BACKGROUND]
        for name, alpha in layers.alpha_by_layer().items():
            recomposite = composite_over(layers.rgb[name], alpha, recomposite)
        return io.NodeOutput(layers, layers.rgb[FULL], layers.rgb[BACKGROUND], recomposite)


class GetForeground(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VGetForeground",
            display_name="LayerT2V Get Foreground",
            category=CATEGORY,
            description="One decoded foreground as IMAGE (straight or premultiplied) and its alpha. " + ALPHA_POLARITY,
            inputs=[LayerSet.Input("layers"), io.Int.Input("foreground_index", default=1, min=1, max=16),
                    io.Combo.Input("alpha_mode", options=["straight", "premultiplied"], default="straight")],
            outputs=[io.Image.Output(display_name="foreground"), io.Mask.Output(display_name="alpha")],
        )

    @classmethod
    def execute(cls, layers, foreground_index, alpha_mode) -> io.NodeOutput:
        if not 1 <= foreground_index <= layers.layout.num_foregrounds:
            raise LayerT2VInputError(
                f"LayerT2V Get Foreground: foreground_index={foreground_index}; these layers have "
                f"1..{layers.layout.num_foregrounds}")
        rgb, alpha = layers.foreground(foreground_index)
        return io.NodeOutput(to_straight(rgb, alpha) if alpha_mode == "straight" else rgb, alpha)


class DecodeAlpha(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VDecodeAlpha",
            display_name="LayerT2V Decode Alpha",
            category=CATEGORY,
            description="Mask latent (from Split Layers) -> alpha MASK through the mask VAE. " + ALPHA_POLARITY,
            inputs=[LayerVAE.Input("layert2v_vae"), io.Latent.Input("mask_latent")],
            outputs=[io.Mask.Output(display_name="alpha")],
        )

    @classmethod
    def execute(cls, layert2v_vae, mask_latent) -> io.NodeOutput:
        if isinstance(mask_latent, dict) and LAYOUT_KEY in mask_latent:
            raise LayerT2VInputError("LayerT2V Decode Alpha: mask_latent is the whole layered latent; connect the "
                                     "`mask` output of LayerT2V Split Layers instead")
        samples = mask_latent.get("samples") if isinstance(mask_latent, dict) else None
        if samples is None or samples.ndim != 5 or samples.shape[1] != layert2v_vae.mask_vae.z_dim:
            shape = None if samples is None else tuple(samples.shape)
            raise LayerT2VInputError(f"LayerT2V Decode Alpha: mask_latent must be one video latent "
                                     f"(1, {layert2v_vae.mask_vae.z_dim}, T, h, w) from Split Layers; got {shape}")
        frames, height, width = 4 * (samples.shape[2] - 1) + 1, 8 * samples.shape[3], 8 * samples.shape[4]
        with models.vae_loaded_during(layert2v_vae, frames * samples.shape[0], height, width), torch.no_grad(), \
                readable_errors("LayerT2V Decode Alpha"):
            alpha = layert2v_vae.mask_vae.decode_alpha(layert2v_vae.to_normalized(samples.float()))
        alpha = alpha.to(mm.intermediate_device())
        # A batch comes back whole, generation after generation along the frames (as VAE Decode does).
        return io.NodeOutput(alpha.reshape(-1, *alpha.shape[-2:]))


def check_image_and_mask(node: str, image: torch.Tensor, mask: torch.Tensor, image_name: str = "foreground",
                         mask_name: str = "alpha") -> None:
    if mask.ndim != 3 or tuple(image.shape[:3]) != tuple(mask.shape):
        raise LayerT2VInputError(f"{node}: {image_name} {tuple(image.shape)} and {mask_name} {tuple(mask.shape)} "
                                 "differ in frames/height/width; they must match")
    check_finite(node, image_name, image)
    check_finite(node, mask_name, mask)


class ComposeRGBA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VComposeRGBA",
            display_name="LayerT2V Compose RGBA",
            category=CATEGORY,
            description="Foreground IMAGE + alpha -> straight RGBA IMAGE (4 channels) and premultiplied RGB. " + ALPHA_POLARITY,
            inputs=[io.Image.Input("foreground"), io.Mask.Input("alpha"),
                    io.Combo.Input("input_is", options=["premultiplied", "straight"], default="premultiplied",
                                   tooltip="LayerT2V foregrounds are premultiplied (fg = full x alpha)")],
            outputs=[io.Image.Output(display_name="rgba_straight"), io.Image.Output(display_name="premultiplied")],
        )

    @classmethod
    def execute(cls, foreground, alpha, input_is) -> io.NodeOutput:
        check_image_and_mask("LayerT2V Compose RGBA", foreground, alpha)
        rgb = foreground[..., :3]
        straight = to_straight(rgb, alpha) if input_is == "premultiplied" else rgb
        premult = rgb if input_is == "premultiplied" else to_premultiplied(rgb, alpha)
        return io.NodeOutput(torch.cat([straight, alpha[..., None]], dim=-1), premult)


class Recomposite(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VRecomposite",
            display_name="LayerT2V Recomposite",
            category=CATEGORY,
            description="Premultiplied foreground over a background (or any IMAGE): fg + bg x (1 - alpha). Chain for K > 1.",
            inputs=[io.Image.Input("background"), io.Image.Input("foreground"), io.Mask.Input("alpha")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, background, foreground, alpha) -> io.NodeOutput:
        check_image_and_mask("LayerT2V Recomposite", foreground, alpha)
        check_finite("LayerT2V Recomposite", "background", background)
        if background.shape[:3] != foreground.shape[:3]:
            raise LayerT2VInputError(f"LayerT2V Recomposite: background {tuple(background.shape)} and foreground "
                                     f"{tuple(foreground.shape)} must have the same frames and size")
        return io.NodeOutput(composite_over(foreground[..., :3], alpha, background[..., :3]))
