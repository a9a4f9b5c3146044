"""ComfyUI's umt5 path (CLIPLoader type wan -> Layer Prompts) against transformers' UMT5 with the same
weights and the same SentencePiece model: values, real length, zero padding to 512, and the prompt
length the DiT's "mask padding" mode reads back from the padded rows.

Two runs of ComfyUI's own code at reduced size: inside a real ComfyUI 0.30.0 server (a workflow
CLIPLoader -> LayerT2V Layer Prompts -> a dump node of tests/.comfy_packs/umt5_server_pack), at ComfyUI's default
fp16 text-encoder precision; and comfy.sd.load_clip in a fresh process at fp32 and fp16
(tests/umt5_comfy_probe.py), where fp32 must match to float precision."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from layert2v_core.tiny import TINY_WORDS

COMFY_DIR = Path(__file__).resolve().parents[1] / ".cache" / "comfyui" / "0.30.0" / "ComfyUI"
PROMPTS = {"full": "a red cat walking on a beach at sunset", "background": "a beach at sunset",
           "foreground_1": "a red cat walking", "negative": "dark"}
SMALL = {"d_ff": 64, "d_kv": 8, "d_model": 32, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2,
         "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "dense_act_fn": "gelu_pytorch_tanh",
         "is_gated_act": True, "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "model_type": "umt5",
         "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0, "tie_word_embeddings": False,
         "is_encoder_decoder": True, "dropout_rate": 0.0, "initializer_factor": 1.0}


def train_spiece(folder: Path) -> bytes:
    import random

    import sentencepiece as spm

    rng = random.Random(0)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(TINY_WORDS) for _ in range(8)) for _ in range(400)))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "sp"), vocab_size=150,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    return (folder / "sp.model").read_bytes()


@pytest.fixture(scope="module")
def umt5_files(tmp_path_factory):
    """A reduced umt5 file as ComfyUI's are written (HF key names + spiece_model), its small config, and
    the transformers model and SentencePiece processor it came from."""
    import sentencepiece as spm
    from transformers import UMT5Config, UMT5EncoderModel

    if os.environ.get("LAYERT2V_SKIP_COMFY") == "1":
        pytest.skip("LAYERT2V_SKIP_COMFY=1: tests with ComfyUI's code are switched off")
    if not (COMFY_DIR / "comfy" / "sd.py").is_file():
        pytest.fail(f"ComfyUI 0.30.0 is not installed at {COMFY_DIR} (make test installs it)")
    folder = tmp_path_factory.mktemp("umt5")
    proto = train_spiece(folder)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    config = UMT5Config(vocab_size=sp.get_piece_size(), **SMALL)
    torch.manual_seed(0)
    model = UMT5EncoderModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.5)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state["spiece_model"] = torch.frombuffer(bytearray(proto), dtype=torch.uint8)   # as ComfyUI's umt5 files
    umt5_file = folder / "umt5_small.safetensors"
    save_file(state, str(umt5_file))
    (folder / "small.json").write_text(json.dumps({**SMALL, "vocab_size": sp.get_piece_size()}))
    return umt5_file, folder / "small.json", model, sp


@pytest.fixture(scope="module", params=["fp32", "default"], ids=["fp32-text-enc", "comfy-default-fp16"])
def comfy_conditioning(umt5_files, tmp_path_factory, request):
    umt5_file, small_config, model, sp = umt5_files
    out = tmp_path_factory.mktemp("probe") / "out.pt"
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("umt5_comfy_probe.py")), str(COMFY_DIR),
                          str(umt5_file), str(small_config), str(out), json.dumps(PROMPTS), request.param],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out, weights_only=True), model, sp, request.param


# ComfyUI computes text encoders in fp16 by default (model_management.text_encoder_dtype, CPU included);
# measured here: up to 7.1e-3 of the output scale. With --fp32-text-enc it matches to float precision.
TOLERANCE = {"fp32": 1e-5, "default": 1e-2}


def assert_close_rel(got, expected, precision, what):
    err = float((got - expected).abs().max() / expected.abs().max())
    assert err <= TOLERANCE[precision], f"{what}: relative max error {err:.2g}"


def reference(model, sp, text):
    """Wan's encoding with transformers: ids + EOS, the real tokens' states, zero rows up to 512."""
    ids = sp.encode(text) + [1]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    return torch.cat([hidden, hidden.new_zeros(512 - len(ids), hidden.shape[1])]), len(ids)


def real_length(rows: torch.Tensor) -> int:
    """What LayeredWanTransformer._prompt_lengths reads: the last non-zero row."""
    nonzero = (rows.abs().amax(-1) > 0).nonzero()
    return int(nonzero.max()) + 1


def test_comfy_umt5_conditioning_matches_transformers(comfy_conditioning):
    result, model, sp, precision = comfy_conditioning
    check_conditioning(result, model, sp, precision)
    expected, length = reference(model, sp, PROMPTS["negative"])
    assert real_length(result["uncond"][0, 0]) == length
    # Encoding the 512 padded tokens without an attention mask is what a wrong path would give: far off.
    ids = sp.encode(PROMPTS["full"]) + [1]
    with torch.no_grad():
        unmasked = model(input_ids=torch.tensor([ids + [0] * (512 - len(ids))])).last_hidden_state[0]
    expected, length = reference(model, sp, PROMPTS["full"])
    assert float((unmasked[:length] - expected[:length]).abs().max() / expected.abs().max()) > 10 * TOLERANCE["default"]


def test_comfy_raw_output_is_512_long_with_zeroed_padding(comfy_conditioning):
    result, model, sp, _ = comfy_conditioning
    raw = result["raw"]["full"]
    assert raw.shape[-2] == 512                                     # ComfyUI pads to min_length 512 itself
    _, length = reference(model, sp, PROMPTS["full"])
    assert float(raw[length:].abs().max()) == 0.0                # zero_out_masked: padding rows are zeros


def check_conditioning(result, model, sp, precision):
    for index, slot in enumerate(result["slots"]):
        expected, length = reference(model, sp, PROMPTS[slot])
        got = result["cond"][0, index]
        assert got.shape == (512, 32), slot
        assert real_length(got) == length, slot
        assert torch.equal(got[length:], torch.zeros_like(got[length:])), slot
        assert_close_rel(got[:length], expected[:length], precision, slot)
    negative, _ = reference(model, sp, PROMPTS["negative"])
    for index in range(len(result["slots"])):
        assert_close_rel(result["uncond"][0, index], negative, precision, "negative")


def test_cliploader_wan_into_layer_prompts_inside_the_real_server(umt5_files, tmp_path, monkeypatch):
    """The user's graph: CLIPLoader (type wan) on a file in models/text_encoders -> LayerT2V Layer Prompts."""
    from comfyhost.server import ComfyServer

    umt5_file, small_config, model, sp = umt5_files
    monkeypatch.setenv("LAYERT2V_TEST_UMT5_CONFIG", str(small_config))
    server = ComfyServer(COMFY_DIR, tmp_path / "comfy", test_packs=("umt5_server_pack",))
    (server.base_dir / "models" / "text_encoders").mkdir(parents=True)
    (server.base_dir / "models" / "text_encoders" / "umt5_small.safetensors").write_bytes(umt5_file.read_bytes())
    workflow = {
        "1": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5_small.safetensors", "type": "wan"}},
        "2": {"class_type": "LayerT2VPrompts", "inputs": {
            "num_foregrounds": 1, "full": PROMPTS["full"], "background": PROMPTS["background"],
            "foreground_1": PROMPTS["foreground_1"], "negative": PROMPTS["negative"], "clip": ["1", 0]}},
        "3": {"class_type": "TestDumpLayerConditioning", "inputs": {"layer_conditioning": ["2", 0], "name": "umt5"}},
    }
    try:
        server.start()
        entry = server.wait(server.queue_prompt(workflow), timeout=300)
        assert entry["status"]["status_str"] == "success", entry["status"]
        result = torch.load(server.output_dir / "umt5.pt", weights_only=True)
    finally:
        server.stop()
    check_conditioning(result, model, sp, "default")   # the server runs ComfyUI's default fp16 text encoder
