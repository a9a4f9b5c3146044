"""Run in a fresh process by tests/test_umt5_comfy.py: ComfyUI 0.30.0's own stock CLIP path for Wan
(comfy.sd.load_clip with CLIPType.WAN: the CLIPLoader node's call) on a reduced-size umt5 file, then
the conditioning the Layer Prompts node builds from it (layert2v_core.pipeline.encode_conditioning).

Two redirections make a reduced file possible, both outside the encoder's code: ComfyUI's detection
keys on 24 blocks of width 10240, so detect_te_model is told "T5_XXL"; and UMT5XXlModel's fixed
config path is pointed at a small config JSON. Tokenizer (from the file's spiece_model), model class,
attention masks, zeroing of the padding and the CLIP wrapper are ComfyUI's, unchanged.

    python umt5_comfy_probe.py COMFY_DIR UMT5_FILE SMALL_CONFIG OUT.pt PROMPTS_JSON [fp32|default]

"default" keeps ComfyUI's text-encoder dtype (fp16, also on CPU); "fp32" is its --fp32-text-enc.
"""

import json
import os
import sys
import types


def main(comfy_dir, umt5_file, small_config, out_path, prompts_json, precision="default"):
    import torch

    sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.fp32_text_enc = precision == "fp32"
    import comfy.sd
    import comfy.text_encoders.wan as wan

    class _Path(types.SimpleNamespace):
        @staticmethod
        def join(*parts):
            if parts[-1] == "umt5_config_xxl.json":
                return small_config
            return os.path.join(*parts)

    wan.os = types.SimpleNamespace(path=_Path(dirname=os.path.dirname, realpath=os.path.realpath))
    comfy.sd.detect_te_model = lambda sd: comfy.sd.TEModel.T5_XXL

    clip = comfy.sd.load_clip(ckpt_paths=[umt5_file], clip_type=comfy.sd.CLIPType.WAN)

    def encode(text):  # nodes/prompts.py encode_with_comfy_clip
        return clip.encode_from_tokens(clip.tokenize(text))[0]

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from layert2v_core.pipeline import LayerPrompts, encode_conditioning

    slots = json.loads(prompts_json)
    prompts = LayerPrompts(slots["full"], slots["background"], [slots["foreground_1"]], negative=slots["negative"])
    raw = {slot: encode(text) for slot, text in prompts.slots().items()}
    conditioning = encode_conditioning(prompts, embeddings=raw, text_len=512, negative_embedding=encode(prompts.negative))
    torch.save({"raw": {k: v.float() for k, v in raw.items()}, "cond": conditioning.cond.float(),
                "uncond": conditioning.uncond.float(), "slots": list(prompts.slots())}, out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
