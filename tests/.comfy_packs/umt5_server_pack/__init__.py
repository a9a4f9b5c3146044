"""Test-only ComfyUI pack (tests/test_umt5_comfy.py links it into a server of its own): lets the stock
CLIPLoader (type wan) load a REDUCED umt5 file, and dumps the LayerT2V conditioning that Layer Prompts
builds from it.

Only two things are redirected, and only while LAYERT2V_TEST_UMT5_CONFIG is set: ComfyUI's text-encoder
detection, which recognises umt5 by 24 blocks of width 10240, answers T5_XXL for a file that carries a
spiece_model; and UMT5XXlModel's fixed config path points at the small config. Tokenizer, T5 model class,
attention masks, zeroing of the padding, dtype choice and the CLIP wrapper stay ComfyUI's own.
"""

import os
import types

import comfy.sd
import comfy.text_encoders.wan as wan
import folder_paths
import torch

SMALL_CONFIG = os.environ.get("LAYERT2V_TEST_UMT5_CONFIG")

if SMALL_CONFIG:
    _detect = comfy.sd.detect_te_model

    def _detect_small_umt5(sd):
        if "spiece_model" in sd and "encoder.block.0.layer.1.DenseReluDense.wi_1.weight" in sd:
            return comfy.sd.TEModel.T5_XXL
        return _detect(sd)

    class _Path(types.SimpleNamespace):
        @staticmethod
        def join(*parts):
            return SMALL_CONFIG if parts[-1] == "umt5_config_xxl.json" else os.path.join(*parts)

    comfy.sd.detect_te_model = _detect_small_umt5
    wan.os = types.SimpleNamespace(path=_Path(dirname=os.path.dirname, realpath=os.path.realpath))


class DumpLayerConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"layer_conditioning": ("LAYERT2V_CONDITIONING",), "name": ("STRING", {"default": "dump"})}}

    RETURN_TYPES = ()
    FUNCTION = "dump"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def dump(self, layer_conditioning, name):
        torch.save({"cond": layer_conditioning.cond.float().cpu(), "uncond": layer_conditioning.uncond.float().cpu(),
                    "slots": list(layer_conditioning.prompts)},
                   os.path.join(folder_paths.get_output_directory(), f"{name}.pt"))
        return {}


NODE_CLASS_MAPPINGS = {"TestDumpLayerConditioning": DumpLayerConditioning}
