"""Thin ComfyUI adapters over layert2v_core: parse inputs, call the core, wrap outputs."""

from comfy_api.latest import ComfyExtension, io

from .conditional import GivenLayersNode, TrajectoryNode
from .layers import ComposeRGBA, DecodeAlpha, DecodeLayers, GetForeground, Recomposite, SplitLayers
from .loaders import LoadLayerT2VModel, LoadLayerT2VTextEncoder, LoadLayerT2VVAE, register_model_folder
from .prompts import LayerPromptsNode
from .sampling import LayeredSampler
from .save import SaveLayers

NODES = [
    LoadLayerT2VModel, LoadLayerT2VVAE, LoadLayerT2VTextEncoder, LayerPromptsNode, LayeredSampler,
    GivenLayersNode, TrajectoryNode, SplitLayers, DecodeLayers, GetForeground, DecodeAlpha, ComposeRGBA,
    Recomposite, SaveLayers,
]


class LayerT2VExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


def extension() -> LayerT2VExtension:
    register_model_folder()
    return LayerT2VExtension()
