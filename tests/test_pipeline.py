import pytest
import torch

from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
from layert2v_core.layout import LayoutError
from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig
from layert2v_core.tiny import TINY_TEXT_LEN, write_tiny_model_files


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    paths = write_tiny_model_files(tmp_path_factory.mktemp("tiny"), max_foregrounds=2)
    dit = load_layered_dit(paths["dit"], paths["adapter"], dtype="fp32")
    layer_vae = load_layer_vae(paths["vae"], paths["adapter"])
    text = load_text_encoder(paths["text_encoder"], text_len=TINY_TEXT_LEN, dtype="fp32")
    return LayerT2VPipeline(dit, layer_vae.vae, layer_vae.mask_vae, text)


PROMPTS = {1: LayerPrompts("a red cat on grass", "green grass field", ["a red cat walking"], negative="dark"),
           2: LayerPrompts("a dog and a bird at the beach", "empty beach", ["a brown dog running", "a white bird flying"])}


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("sampler", ["euler", "unipc"])
def test_end_to_end_layers(pipeline, k, sampler):
    frames, h, w = 9, 32, 48
    steps = []
    out = pipeline(PROMPTS[k], frames, h, w, SamplerConfig(steps=3, cfg=4.0, sampler=sampler, seed=1),
                   callback=lambda s: steps.append(s.step))
    assert steps == [1, 2, 3]
    assert sorted(out.rgb) == sorted(["full", "background"] + [f"foreground_{i}" for i in range(1, k + 1)])
    assert sorted(out.alpha) == [f"mask_{i}" for i in range(1, k + 1)]
    for frames_rgb in out.rgb.values():
        assert frames_rgb.shape == (frames, h, w, 3)
        assert 0.0 <= frames_rgb.min() and frames_rgb.max() <= 1.0
    for alpha in out.alpha.values():
        assert alpha.shape == (frames, h, w)
        assert 0.0 <= alpha.min() and alpha.max() <= 1.0
        assert alpha.std() > 0  # an actual matte, not a constant


def test_same_seed_same_layers_and_cfg_uses_negative(pipeline):
    cfg = SamplerConfig(steps=2, cfg=3.0, sampler="euler", seed=7)
    a = pipeline(PROMPTS[1], 5, 32, 32, cfg)
    b = pipeline(PROMPTS[1], 5, 32, 32, cfg)
    assert all(torch.equal(a.rgb[n], b.rgb[n]) for n in a.rgb)
    other = LayerPrompts(**{**PROMPTS[1].__dict__, "negative": "bright sunny"})
    c = pipeline(other, 5, 32, 32, cfg)
    assert not torch.equal(a.rgb["full"], c.rgb["full"])


def test_bad_requests_name_the_parameter(pipeline):
    cfg = SamplerConfig(steps=1, cfg=1.0)
    with pytest.raises(LayoutError, match="frames=8"):
        pipeline(PROMPTS[1], 8, 32, 32, cfg)
    with pytest.raises(LayoutError, match="width=40"):
        pipeline(PROMPTS[1], 5, 32, 40, cfg)
    three = LayerPrompts("x", "y", ["a", "b", "c"])
    with pytest.raises(LayoutError, match="max_foregrounds=2"):
        pipeline(three, 5, 32, 32, cfg)
    with pytest.raises(ValueError, match="'background' is empty"):
        pipeline(LayerPrompts("a cat", "  ", ["a cat"]), 5, 32, 32, cfg)


def test_decoded_foreground_is_valid_premultiplied(pipeline):
    out = pipeline(PROMPTS[2], 5, 32, 32, SamplerConfig(steps=2, cfg=1.0, seed=3))
    for k in (1, 2):
        fg, alpha = out.foreground(k)
        assert (fg <= alpha[..., None] + 1e-6).all()



def test_text_encoder_length_does_not_move_the_model_off_its_training_length(pipeline):
    """A text encoder left at Wan's 512 tokens on a model trained at 16 gives the same layers: the
    pipeline fits the (zero-padded) context to the DiT's own text_len."""
    from layert2v_core.text import TextEncoder

    assert pipeline.dit.config.text_len == TINY_TEXT_LEN
    long_text = TextEncoder(pipeline.text_encoder.model, pipeline.text_encoder.tokenizer, text_len=512)
    assert long_text.encode("a red cat").shape[0] == 512
    cfg = SamplerConfig(steps=2, cfg=3.0, sampler="euler", seed=3)
    short = pipeline(PROMPTS[1], 5, 32, 32, cfg)
    long = LayerT2VPipeline(pipeline.dit, pipeline.vae, pipeline.mask_vae, long_text)(PROMPTS[1], 5, 32, 32, cfg)
    assert all(torch.equal(short.rgb[n], long.rgb[n]) for n in short.rgb)
    assert all(torch.equal(short.alpha[n], long.alpha[n]) for n in short.alpha)
