import pytest
import torch

from layert2v_core.layout import LayerLayout, LayoutError
from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline, encode_conditioning
from layert2v_core.sampler import SamplerConfig, sample
from layert2v_core.tiny import TINY_TEXT_LEN, write_tiny_model_files
from layert2v_core.trajectory import (Keyframe, TrajectoryGuidance, boxes_to_alpha, interpolate_boxes,
                                      parse_trajectories)
from layert2v_core.variants import GivenLayers, generate_layers
from layert2v_core.vae_io import decode_latent


def test_boxes_interpolate_linearly_and_hold_at_the_ends():
    keys = [Keyframe(2, (0.0, 0.0, 0.2, 0.2)), Keyframe(6, (0.4, 0.2, 0.6, 0.6))]
    boxes = interpolate_boxes(keys, 9)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 0.2, 0.2]))
    torch.testing.assert_close(boxes[4], torch.tensor([0.2, 0.1, 0.4, 0.4]))
    torch.testing.assert_close(boxes[8], torch.tensor([0.4, 0.2, 0.6, 0.6]))


def test_box_alpha_is_one_inside_zero_far_outside():
    alpha = boxes_to_alpha(torch.tensor([[0.25, 0.25, 0.75, 0.75]]), 32, 32, feather=0.05)
    assert alpha[0, 16, 16] == 1 and alpha[0, 0, 0] == 0
    assert ((alpha > 0) & (alpha < 1)).any()  # soft edge


@pytest.mark.parametrize("text, match", [
    ("{", "not valid JSON"), ('{"3": [[0, 0, 0, 1, 1]]}', "foreground '3'"),
    ('{"1": [[0, 0.5, 0, 0.4, 1]]}', "0 <= x0 < x1"), ('{"1": [[0, 1, 2]]}', "is not"),
])
def test_bad_trajectories_name_the_problem(text, match):
    with pytest.raises(ValueError, match=match):
        parse_trajectories(text, num_foregrounds=2)


def test_full_strength_guidance_lands_exactly_on_the_target():
    layout = LayerLayout(1, 5, 32, 32)
    target = torch.randn(layout.segment_latent_shape(), generator=torch.Generator().manual_seed(0))
    guidance = TrajectoryGuidance(layout, {1: target}, strength=1.0, end_step=100)
    cond = torch.zeros(1, 3, 4, 8)
    # A model that always predicts x0 = 0: without guidance everything ends at 0.
    out = sample(lambda x, t, c: x / (t.float()[:, :1].view(-1, 1, 1, 1, 1) / 1000), layout, cond, None,
                 SamplerConfig(steps=4, cfg=1.0, sampler="euler", seed=0), guidance=guidance)
    torch.testing.assert_close(out[:, :, layout.time_slice("mask_1")], target, rtol=1e-4, atol=1e-4)
    assert out[:, :, layout.time_slice("full")].abs().max() < 1e-3


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    paths = write_tiny_model_files(tmp_path_factory.mktemp("tiny"), max_foregrounds=2)
    vae = load_layer_vae(paths["vae"], paths["adapter"])
    return LayerT2VPipeline(load_layered_dit(paths["dit"], paths["adapter"], dtype="fp32"), vae.vae, vae.mask_vae,
                            load_text_encoder(paths["text_encoder"], text_len=TINY_TEXT_LEN, dtype="fp32"))


def clip(seed, shape):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("variant", ["decompose", "background_for_foreground", "foreground_for_background"])
def test_given_layers_are_kept_and_the_rest_is_generated(pipe, variant):
    layout = pipe.layout(1, 5, 32, 32)
    prompts = LayerPrompts("a red cat on grass", "green grass", ["a red cat"])
    cond = encode_conditioning(prompts, encoder=pipe.text_encoder)
    rgb = clip(1, (5, 32, 32, 3))
    given = {"decompose": GivenLayers(full=rgb),
             "background_for_foreground": GivenLayers(foregrounds={1: rgb}, alphas={1: clip(2, (5, 32, 32))}),
             "foreground_for_background": GivenLayers(background=rgb)}[variant]
    out = generate_layers(pipe, layout, cond, SamplerConfig(steps=2, cfg=3.0, seed=0), given=given)
    kept = {"decompose": "full", "background_for_foreground": "foreground_1",
            "foreground_for_background": "background"}[variant]
    rgb_given, _ = given.segment_frames()
    reference = decode_latent(pipe.vae, pipe.encode_layer(rgb_given[kept]))
    if kept.startswith("foreground"):
        reference = torch.minimum(reference, out.alpha["mask_1"][..., None])
    torch.testing.assert_close(out.rgb[kept], reference, rtol=1e-5, atol=1e-5)
    assert all(v.shape == (5, 32, 32, 3) for v in out.rgb.values())


def test_given_layer_of_wrong_size_is_refused(pipe):
    layout = pipe.layout(1, 5, 32, 32)
    cond = encode_conditioning(LayerPrompts("a", "b", ["c"]), encoder=pipe.text_encoder)
    with pytest.raises(LayoutError, match="given full has shape"):
        generate_layers(pipe, layout, cond, SamplerConfig(steps=1, cfg=1.0), given=GivenLayers(full=clip(0, (5, 16, 32, 3))))
    with pytest.raises(ValueError, match="without its alpha"):
        generate_layers(pipe, layout, cond, SamplerConfig(steps=1, cfg=1.0),
                        given=GivenLayers(foregrounds={1: clip(0, (5, 32, 32, 3))}))
