import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
from diffusers.pipelines.wan.pipeline_wan import WanPipeline

from layert2v_core.layout import LayerLayout
from layert2v_core.text import (
    PromptTruncatedWarning,
    TextEncoder,
    encode_layer_prompts,
    pad_embedding,
)
from layert2v_core.tiny import TINY_TEXT_DIM, save_tiny_text_encoder

TEXT_LEN = 16
LONG_PROMPT = " ".join(["a red cat walking on the beach at sunset"] * 4)  # > 16 tokens


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_text_encoder(tmp_path_factory.mktemp("umt5"))


@pytest.fixture()
def encoder(folder):
    return TextEncoder.from_folder(folder, text_len=TEXT_LEN, dtype=torch.float32, cache_size=2)


def wan_pipeline_embedding(encoder, prompt):
    """Reference: diffusers' own WanPipeline text encoding (pad with mask, trim, zero-pad)."""
    fake_pipe = SimpleNamespace(tokenizer=encoder.tokenizer, text_encoder=encoder.model,
                                _execution_device=torch.device("cpu"))
    with torch.no_grad():
        return WanPipeline._get_t5_prompt_embeds(fake_pipe, prompt=prompt, max_sequence_length=TEXT_LEN)[0]


@pytest.mark.parametrize("prompt", ["a cat", "  a  big &amp; old\ttree  ", "zebra 42", LONG_PROMPT])
def test_encoding_matches_wan_pipeline(encoder, prompt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptTruncatedWarning)
        ours = encoder.encode(prompt)
    ref = wan_pipeline_embedding(encoder, prompt)
    assert ours.shape == (TEXT_LEN, TINY_TEXT_DIM)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    real = int((ref.abs().sum(-1) > 0).sum())
    assert real < TEXT_LEN or prompt == LONG_PROMPT
    assert torch.all(ours[real:] == 0)


def test_truncation_warns_only_when_cut(encoder):
    with pytest.warns(PromptTruncatedWarning, match="text_len=16"):
        encoder.encode(LONG_PROMPT)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PromptTruncatedWarning)
        encoder.encode("a cat on a table")


def test_cache_is_keyed_by_cleaned_prompt_and_bounded(encoder):
    calls = []
    encoder.model.register_forward_hook(lambda *args: calls.append(1))
    first = encoder.encode("a dog")
    first.add_(1.0)  # editing a returned tensor must not reach the cache
    again = encoder.encode("  a   dog ")
    assert len(calls) == 1
    torch.testing.assert_close(again, first - 1.0)
    encoder.encode("a cat")
    encoder.encode("a bird")  # cache_size=2: "a dog" is evicted
    encoder.encode("a dog")
    assert len(calls) == 4


def test_pad_embedding_trims_and_zero_pads():
    emb = torch.randn(5, 8)
    padded = pad_embedding(emb, 16)
    assert padded.shape == (16, 8) and torch.equal(padded[:5], emb) and torch.all(padded[5:] == 0)
    long = torch.randn(20, 8)
    with pytest.warns(PromptTruncatedWarning, match="20 tokens"):
        assert torch.equal(pad_embedding(long, 16), long[:16])
    assert pad_embedding(emb[None], 16).shape == (16, 8)  # (1, L, dim) from a CLIP output
    with pytest.raises(ValueError, match="expected \\(tokens, dim\\)"):
        pad_embedding(torch.randn(2, 5, 8), 16)


def test_layer_prompts_follow_layout_order_and_negative_fills_uncond(encoder):
    layout = LayerLayout(num_foregrounds=2, num_frames=5, height=32, width=32)
    prompts = {"full": "a cat and a dog in a room", "background": "an empty room",
               "foreground_1": "a cat", "foreground_2": "a dog"}
    cond, uncond = encode_layer_prompts(prompts, layout.prompt_names, negative="dark", encoder=encoder)
    assert cond.shape == uncond.shape == (4, TEXT_LEN, TINY_TEXT_DIM)
    for row, slot in enumerate(layout.prompt_names):
        torch.testing.assert_close(cond[row], wan_pipeline_embedding(encoder, prompts[slot]), atol=1e-5, rtol=1e-5)
    negative = wan_pipeline_embedding(encoder, "dark")
    for row in range(4):
        torch.testing.assert_close(uncond[row], negative, atol=1e-5, rtol=1e-5)


def test_precomputed_embeddings_are_padded_like_prompts(encoder):
    names = LayerLayout(num_foregrounds=1, num_frames=5, height=32, width=32).prompt_names
    clip_like = torch.randn(7, TINY_TEXT_DIM)
    prompts = {"full": clip_like, "background": "an empty street", "foreground_1": "a car"}
    cond, uncond = encode_layer_prompts(prompts, names, negative=torch.zeros(3, TINY_TEXT_DIM), encoder=encoder)
    torch.testing.assert_close(cond[0], pad_embedding(clip_like, TEXT_LEN))
    assert torch.all(uncond == 0)
    # Without any text encoder (ComfyUI feeds every slot), text_len must be given.
    only_tensors = {k: torch.randn(3, 4) for k in names}
    cond, _ = encode_layer_prompts(only_tensors, names, negative=torch.randn(2, 4), text_len=8)
    assert cond.shape == (3, 8, 4)


@pytest.mark.parametrize(
    "prompts, message",
    [
        ({"full": "x", "background": "y", "foreground_1": "  "}, "'foreground_1' is empty"),
        ({"full": "x", "background": "y"}, "'foreground_1' is empty"),
        ({"full": "x", "background": "y", "foreground_1": "z", "foreground_2": "w"}, "unknown prompt slot"),
    ],
)
def test_bad_prompts_name_the_slot(encoder, prompts, message):
    names = ["full", "background", "foreground_1"]
    with pytest.raises(ValueError, match=message):
        encode_layer_prompts(prompts, names, negative="", encoder=encoder)


def test_text_without_encoder_is_refused():
    with pytest.raises(ValueError, match="no TextEncoder"):
        encode_layer_prompts({"full": "x"}, ["full"], negative=torch.zeros(1, 4), text_len=4)


def test_diffusers_folder_layout_loads(folder, tmp_path):
    root = tmp_path / "Wan2.1-T2V-1.3B-Diffusers"
    for sub, names in (("tokenizer", ("tokenizer.json", "tokenizer_config.json")),
                       ("text_encoder", ("config.json", "model.safetensors"))):
        (root / sub).mkdir(parents=True)
        for name in names:
            shutil.copy(folder / name, root / sub / name)
    enc = TextEncoder.from_folder(root, text_len=TEXT_LEN, dtype=torch.float32)
    assert enc.encode("a cat").shape == (TEXT_LEN, TINY_TEXT_DIM)


@pytest.mark.parametrize("remove, message", [("tokenizer.json", "no tokenizer"), ("model.safetensors", "no weights"),
                                             ("config.json", "no config.json")])
def test_missing_files_are_named(folder, tmp_path, remove, message):
    broken = tmp_path / "te"
    shutil.copytree(folder, broken)
    (broken / remove).unlink()
    with pytest.raises(FileNotFoundError, match=message):
        TextEncoder.from_folder(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEncoder.from_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is a file.*precomputed"):
        TextEncoder.from_folder(folder / "model.safetensors")


def test_offload_and_release(encoder):
    cached = encoder.encode("a cat")
    encoder.offload()
    torch.testing.assert_close(encoder.encode("a dog"), wan_pipeline_embedding(encoder, "a dog"))
    encoder.release()
    torch.testing.assert_close(encoder.encode("a cat"), cached)  # cache survives
    with pytest.raises(RuntimeError, match="released"):
        encoder.encode("a new prompt")


def test_fit_text_len_pads_trims_zero_rows_and_warns_on_real_rows():
    from layert2v_core.text import fit_text_len

    context = torch.zeros(1, 3, 8, 4)
    context[..., :5, :] = torch.randn(1, 3, 5, 4)
    assert torch.equal(fit_text_len(context, 6), context[..., :6, :])
    padded = fit_text_len(context, 12)
    assert padded.shape == (1, 3, 12, 4) and torch.equal(padded[..., :8, :], context) and not padded[..., 8:, :].any()
    with pytest.warns(PromptTruncatedWarning):
        assert fit_text_len(context, 4).shape == (1, 3, 4, 4)
