"""Conditional generation inputs for the Layered Sampler: given layers and per-foreground trajectories."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from comfy_api.latest import io

from ..layert2v_core.sampler import GIVEN_MODES
from ..layert2v_core.trajectory import parse_trajectories
from ..layert2v_core.variants import GivenLayers, frames_text

from .errors import LayerT2VInputError, check_finite, readable_errors, refuse
from .types import CATEGORY, LayerVAE

LayerGiven = io.Custom("LAYERT2V_GIVEN")
LayerTrajectory = io.Custom("LAYERT2V_TRAJECTORY")
MAX_FOREGROUND_INDEX = 3


@dataclass
class GivenInput:
    """What travels to the sampler: the layers, how to keep them, and the VAE that encodes them."""
    layers: GivenLayers
    mode: str
    layer_vae: object


@dataclass
class TrajectoryInput:
    keyframes: dict = field(default_factory=dict)
    strength: float = 0.8
    end_step: int = 10
    layer_vae: object = None


def as_alpha(mask: torch.Tensor, node: str) -> torch.Tensor:
    alpha = mask if mask.ndim == 3 else mask.reshape(-1, *mask.shape[-2:])
    check_finite(node, "alpha", alpha)
    return alpha.float().clamp(0, 1)


def as_rgb(image: torch.Tensor, name: str, node: str) -> torch.Tensor:
    if image.ndim != 4 or image.shape[-1] < 3:
        raise LayerT2VInputError(f"{node}: {name} must be an IMAGE batch (frames, height, width, 3)")
    check_finite(node, name, image)
    return image[..., :3].float().clamp(0, 1)


class GivenLayersNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VGivenLayers",
            display_name="LayerT2V Given Layers",
            category=CATEGORY,
            description="Layers you already have, kept by the sampler while it generates the rest: a full video "
                        "(decompose), a background (foregrounds for it), or a foreground + alpha (a background "
                        "for it). Chain nodes through `given` to supply several foregrounds.",
            inputs=[
                LayerVAE.Input("layert2v_vae"),
                io.Image.Input("full", optional=True),
                io.Image.Input("background", optional=True),
                io.Image.Input("foreground", optional=True),
                io.Mask.Input("alpha", optional=True, tooltip="alpha of `foreground`: 1 = opaque"),
                io.Int.Input("foreground_index", default=1, min=1, max=MAX_FOREGROUND_INDEX),
                io.Combo.Input("foreground_is", options=["straight", "premultiplied"], default="straight"),
                io.Combo.Input("mode", options=list(GIVEN_MODES), default="replace",
                               tooltip="replace: works with any checkpoint; native: for checkpoints trained "
                                       "with conditional stage 2"),
                LayerGiven.Input("given", optional=True),
            ],
            outputs=[LayerGiven.Output(display_name="given")],
        )

    @classmethod
    def execute(cls, layert2v_vae, foreground_index, foreground_is, mode, full=None, background=None,
                foreground=None, alpha=None, given=None) -> io.NodeOutput:
        node = "LayerT2V Given Layers"
        if given is None:
            layers = GivenLayers(foreground_is=foreground_is)
        else:  # a copy: upstream outputs are cached by ComfyUI and must not change
            layers = replace(given.layers, foregrounds=dict(given.layers.foregrounds), alphas=dict(given.layers.alphas))
        if given is not None and given.layers.foreground_is != foreground_is and foreground is not None:
            raise LayerT2VInputError(f"{node}: chained nodes must agree on foreground_is")
        if full is not None:
            layers.full = as_rgb(full, "full", node)
        if background is not None:
            layers.background = as_rgb(background, "background", node)
        if (foreground is None) != (alpha is None):
            raise LayerT2VInputError(f"{node}: give `foreground` and `alpha` together (an RGBA clip), or neither")
        if foreground is not None:
            rgb, a = as_rgb(foreground, "foreground", node), as_alpha(alpha, node)
            if tuple(rgb.shape[:3]) != tuple(a.shape):
                raise refuse(node, "foreground and alpha", f"differ: foreground {frames_text(rgb.shape)}, alpha "
                             f"{frames_text(a.shape)}", "give an alpha with the same frame count and size as the foreground")
            layers.foregrounds[foreground_index], layers.alphas[foreground_index] = rgb, a
        if layers.is_empty():
            raise LayerT2VInputError(f"{node}: connect at least one of full, background, or foreground + alpha")
        return io.NodeOutput(GivenInput(layers=layers, mode=mode, layer_vae=layert2v_vae))


class TrajectoryNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VTrajectory",
            display_name="LayerT2V Trajectories",
            category=CATEGORY,
            description='Keyframed boxes per foreground, JSON {"1": [[frame, x0, y0, x1, y1], ...], "2": [...]} '
                        "in normalized 0..1 coordinates, interpolated over the clip. Each foreground's alpha is "
                        "pulled toward its boxes during the first `end_step` steps.",
            inputs=[
                LayerVAE.Input("layert2v_vae"),
                io.String.Input("boxes_json", multiline=True,
                                default='{"1": [[0, 0.05, 0.3, 0.35, 0.7], [16, 0.65, 0.3, 0.95, 0.7]]}'),
                io.Float.Input("strength", default=0.8, min=0.0, max=1.0, step=0.05),
                io.Int.Input("end_step", default=10, min=0, max=1000),
            ],
            outputs=[LayerTrajectory.Output(display_name="trajectory")],
        )

    @classmethod
    def execute(cls, layert2v_vae, boxes_json, strength, end_step) -> io.NodeOutput:
        node = "LayerT2V Trajectories"
        if not 0.0 <= strength <= 1.0:  # NaN passes ComfyUI's min/max check
            raise refuse(node, "strength", f"is {strength}", "give a number from 0 to 1")
        with readable_errors(node, what="boxes_json"):
            keyframes = parse_trajectories(boxes_json, MAX_FOREGROUND_INDEX)
        return io.NodeOutput(TrajectoryInput(keyframes, strength, end_step, layert2v_vae))
