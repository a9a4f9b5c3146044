"""Layer prompts: full, background, K foreground prompts and a negative prompt -> layer conditioning."""

from __future__ import annotations

from comfy_api.latest import io

from ..layert2v_core.pipeline import LayerPrompts, encode_conditioning
from ..layert2v_core.text import check_prompt_text

from . import model_management as models
from .errors import LayerT2VInputError, readable_errors
from .types import CATEGORY, LayerConditioning as LayerConditioningType, LayerTextEncoder

MAX_FOREGROUND_PROMPTS = 3
WAN_TEXT_LEN = 512  # ComfyUI's umt5 output is padded/trimmed to Wan's context length


def encode_with_comfy_clip(clip, text: str):
    """ComfyUI's own CLIP object (umt5 via CLIPLoader type 'wan') -> (tokens, dim) embedding."""
    tokens = clip.tokenize(text)
    return clip.encode_from_tokens(tokens)[0]


class LayerPromptsNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        fg_inputs = [
            io.String.Input(f"foreground_{k}", multiline=True, default="", optional=k > 1,
                            tooltip=f"What foreground layer {k} shows (it is generated on its own layer with an alpha matte)")
            for k in range(1, MAX_FOREGROUND_PROMPTS + 1)
        ]
        return io.Schema(
            node_id="LayerT2VPrompts",
            display_name="LayerT2V Layer Prompts",
            category=CATEGORY,
            description="Encodes one prompt per layer. The full prompt describes the composited video.",
            inputs=[
                io.Int.Input("num_foregrounds", default=1, min=1, max=MAX_FOREGROUND_PROMPTS,
                             tooltip="K: number of foreground layers (the model may support fewer)"),
                io.String.Input("full", multiline=True, default="", tooltip="The whole composited video"),
                io.String.Input("background", multiline=True, default="", tooltip="The clean background layer"),
                *fg_inputs,
                io.String.Input("negative", multiline=True, default="", optional=True),
                io.Clip.Input("clip", optional=True, tooltip="ComfyUI text encoder (umt5, CLIPLoader type wan)"),
                LayerTextEncoder.Input("text_encoder", optional=True,
                                               tooltip="The pack's own text encoder"),
            ],
            outputs=[LayerConditioningType.Output(display_name="layer_conditioning")],
        )

    @classmethod
    def execute(cls, num_foregrounds, full, background, foreground_1, foreground_2="", foreground_3="",
                negative="", clip=None, text_encoder=None) -> io.NodeOutput:
        foregrounds = [foreground_1, foreground_2, foreground_3][:num_foregrounds]
        prompts = LayerPrompts(full=full, background=background, foregrounds=foregrounds, negative=negative or "")
        with readable_errors("LayerT2V Layer Prompts"):
            prompts.validate()
            for slot, text in {**prompts.slots(), "negative": prompts.negative}.items():
                check_prompt_text(slot, text)  # before either encoder: ComfyUI's tokenizer fails the same way
            if (clip is None) == (text_encoder is None):
                raise LayerT2VInputError(
                    "LayerT2V Layer Prompts: connect exactly one text encoder: `clip` (ComfyUI CLIPLoader, "
                    "type wan) or `text_encoder` (LayerT2V Load Text Encoder)"
                )
            if text_encoder is not None:
                models.load([text_encoder])  # as ComfyUI's CLIP: it stays loaded until the room is needed
                conditioning = encode_conditioning(prompts, encoder=text_encoder)
            else:
                embeddings = {slot: encode_with_comfy_clip(clip, text) for slot, text in prompts.slots().items()}
                conditioning = encode_conditioning(prompts, embeddings=embeddings, text_len=WAN_TEXT_LEN,
                                                   negative_embedding=encode_with_comfy_clip(clip, prompts.negative))
        return io.NodeOutput(conditioning)
