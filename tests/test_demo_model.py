"""The built-in demo model (layert2v_core/demo_model/) end to end through LayerT2VPipeline at its native size."""

from __future__ import annotations

import json

import pytest
import torch

from layert2v_core.demo_model import DEMO_DIR, checkpoint_config, demo_model_paths
from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline
from layert2v_core.recommended import SamplingSettings
from layert2v_core.sampler import SamplerConfig

MAX_SHIPPED_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def pipeline():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores, two OpenMP threads ran this ~6x slower than one
    paths = demo_model_paths()
    dit = load_layered_dit(paths["dit"], paths["adapter"], dtype="fp32")
    layer_vae = load_layer_vae(paths["vae"], paths["adapter"])
    text = load_text_encoder(paths["text_encoder"], text_len=dit.config.text_len, dtype="fp32")
    yield LayerT2VPipeline(dit, layer_vae.vae, layer_vae.mask_vae, text)
    torch.set_num_threads(threads)


def test_shipped_files_are_small_safetensors_with_a_manifest():
    weights = [p for p in DEMO_DIR.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in weights) <= MAX_SHIPPED_BYTES
    manifest = json.loads((DEMO_DIR / "manifest.json").read_text())
    assert "training.demo_recipe" in manifest["command"]


@pytest.mark.parametrize("prompts", [
    LayerPrompts("a red circle moving right over blue stripes", "blue stripes", ["a red circle moving right"]),
    LayerPrompts("a green square moving down and a pink ring moving left and a white triangle moving up over "
                 "an orange to cyan gradient", "an orange to cyan gradient",
                 ["a green square moving down", "a pink ring moving left", "a white triangle moving up"]),
], ids=["1fg", "3fg"])
def test_demo_model_generates_real_layers_at_native_size(pipeline, prompts):
    native = SamplingSettings.of(checkpoint_config())
    f, h, w = native.frames, native.height, native.width
    with torch.no_grad():
        layers = pipeline(prompts, f, h, w, SamplerConfig(steps=8, cfg=4.0, shift=3.0, seed=0))
    for name, rgb in layers.rgb.items():
        assert rgb.shape == (f, h, w, 3), name
        assert torch.isfinite(rgb).all() and rgb.std() > 0.02, f"{name} is constant"
    assert len(layers.alpha) == prompts.num_foregrounds
    for name, alpha in layers.alpha.items():
        assert alpha.shape == (f, h, w), name
        assert alpha.min() >= 0.0 and alpha.max() <= 1.0, name
        assert alpha.std() > 0.05, f"{name} is constant"
        assert (alpha > 0.5).any() and (alpha < 0.5).any(), f"{name} is not a matte"
        assert (alpha[0] - alpha[-1]).abs().mean() > 0.002, f"{name} does not move"


def test_eval_metrics_score_the_renderer_right_and_a_wrong_prompt_wrong():
    """training/eval_demo.py's metrics on the synthetic renderer's own layers: right scene -> high,
    the same layers judged against another colour / shape / direction -> low."""
    import dataclasses

    from training.data import synthetic as syn
    from training.eval_demo import rendered, score_layers

    right, wrong = [], []
    for background, shapes in syn.held_out_scenes(seed=3, count=6, num_foregrounds=1):
        layers = rendered(background, shapes, 17, 64, 64)
        right.append(score_layers(*layers, background, shapes))
        s = shapes[0]
        other = dataclasses.replace(
            s, color=next(c for c in syn.COLORS if c not in (s.color, background.color_a, background.color_b)),
            shape=next(x for x in syn.SHAPES if x != s.shape),
            direction={"left": "right", "right": "left", "up": "down", "down": "up"}[s.direction])
        wrong.append(score_layers(*layers, background, [other]))
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    for key in ("fg_colour", "shape", "motion"):
        assert mean(right, key) >= 0.8 and mean(wrong, key) <= 0.2, key
    assert mean(right, "consistency") < 0.02 and mean(right, "alpha_soft") < 0.15


# ---- issue 13's measuring tools (training/eval_demo, demo_vae_gate, caption_probe, stage0_base) ----------
def test_wilson_interval_is_the_inverted_score_test():
    """Independent reference: the Wilson interval is the set of p whose score test accepts the observation."""
    import numpy as np

    from training.eval_demo import wilson

    for hits, n in ((0, 64), (7, 64), (32, 64), (60, 64), (64, 64), (3, 10)):
        grid = np.linspace(0, 1, 200001)
        accepted = grid[np.abs(hits / n - grid) <= 1.96 * np.sqrt(grid * (1 - grid) / n)]
        lo, hi = wilson(hits, n)
        assert abs(lo - accepted.min()) < 1e-4 and abs(hi - accepted.max()) < 1e-4, (hits, n)


def test_shape_needs_a_fitting_template_and_motion_needs_4_pixels():
    import numpy as np

    from training.data import synthetic as syn
    from training.eval_demo import motion_of, shape_of

    blob = np.zeros((17, 64, 64), np.float32)
    blob[:, 20:30, 8:56] = 1.0                       # a long bar: no template fits it at IoU >= 0.8
    assert shape_of(blob) is None
    spec = syn.ShapeSpec("triangle", "red", "plain", "right", 0.22, (0.4, 0.5), 0.0)
    still = np.stack([syn.render_shape(spec, t, 64, 64)[0] for t in np.linspace(0, 1, 17)])
    assert shape_of(still) == "triangle" and motion_of(still) is None
    creeping = np.stack([np.roll(a, i // 8, axis=1) for i, a in enumerate(still)])   # 2 px in all
    moving = np.stack([np.roll(a, i // 2, axis=1) for i, a in enumerate(still)])     # 8 px
    assert motion_of(creeping) is None and motion_of(moving) == "right"


def test_vae_gate_passes_the_identity_and_fails_a_colour_swap():
    from training.demo_vae_gate import gate_clips, measure

    clips = gate_clips(seed=1, one_fg=8, multi_fg=4, frames=9, size=64)
    assert measure(clips, lambda full: full)["pass"]
    swapped = measure(clips, lambda full: full[..., ::-1])     # red <-> blue: what a bad VAE does to colours
    assert swapped["fg_colour"] < 0.7 and swapped["footprint_shape"] < 0.7 and not swapped["pass"]


def test_caption_probe_swaps_one_word_of_the_asked_type():
    import numpy as np

    from training import caption_probe as probe
    from training.caption_swap import WORD_TYPES, swap_word
    from training.data import synthetic as syn

    rng = np.random.default_rng(0)
    vocab = {"background": set(syn.COLORS), "colour": set(syn.COLORS), "shape": set(syn.SHAPES),
             "direction": set(syn.DIRECTIONS)}
    for background, shapes in probe.probe_scenes(seed=0, count=9):
        right = syn.full_caption(shapes, background)
        for word_type in WORD_TYPES:
            other = swap_word(right, word_type, rng).split()
            changed = [(a, b) for a, b in zip(right.split(), other) if a != b]
            assert len(other) == len(right.split()) and len(changed) == 1, (word_type, right, other)
            assert {changed[0][0], changed[0][1]} <= vocab[word_type]
            if word_type in ("colour", "background"):  # a colour the scene does not use, so it stays unambiguous
                assert changed[0][1] not in right.split()
    assert swap_word("", "shape", rng) is None                   # the CFG caption has nothing to swap


def test_caption_contrastive_term_is_the_softplus_of_the_swapped_captions_relative_loss_increase():
    import torch
    from diffusers import WanTransformer3DModel

    from training.stage0_base import CaptionEmbedder, FlowObjective, build_demo_text_encoder

    torch.manual_seed(0)
    encoder = build_demo_text_encoder({"d_model": 32, "seed": 0}, 16, "cpu")
    encoder.cache_size = 0
    dit = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=1, rope_max_seq_len=64)
    objective = FlowObjective(dit, CaptionEmbedder(encoder), contrast_weight=0.5, contrast_beta=20.0).train()
    right = ["a red circle moving right over a blue background", "a white ring moving up over a green background"]
    swapped = ["a red square moving right over a blue background", "a white ring moving down over a green background"]
    latent, noise, t = torch.randn(2, 4, 2, 4, 4), torch.randn(2, 4, 2, 4, 4), torch.tensor([0.3, 0.8])
    ids, mask = objective.text.token_ids(right)
    s_ids, s_mask = objective.text.token_ids(swapped)
    out = objective(latent, noise, t, input_ids=ids, attention_mask=mask, contrast=torch.tensor([True, False]),
                    swapped_input_ids=s_ids, swapped_attention_mask=s_mask)
    # Independently: the flow loss of sample 0 under each caption, through the encoder the sampler uses.
    x_t = t.view(-1, 1, 1, 1, 1) * noise + (1 - t.view(-1, 1, 1, 1, 1)) * latent
    with torch.no_grad():
        def loss_of(caption):
            v = dit(hidden_states=x_t[:1], timestep=t[:1] * 1000, encoder_hidden_states=encoder.encode(caption)[None],
                    return_dict=False)[0]
            return float((v - (noise[:1] - latent[:1])).pow(2).mean())
        r = loss_of(swapped[0]) / loss_of(right[0]) - 1
    assert abs(out["contrast"].item() - float(torch.nn.functional.softplus(torch.tensor(-20.0 * r)))) < 1e-4
    assert abs(out["loss"].item() - (out["flow"].item() + 0.5 * out["contrast"].item())) < 1e-5
    out["loss"].backward()                       # the term reaches the text encoder: it can learn the words
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.text.parameters())


def test_trainable_text_encoder_gives_the_contexts_sampling_sees():
    import torch

    from layert2v_core.layout import LayerLayout
    from training.stage0_base import CaptionEmbedder, FlowObjective, build_demo_text_encoder, latent_coverage

    encoder = build_demo_text_encoder({"d_model": 32, "seed": 0}, 16, "cpu")
    encoder.cache_size = 0
    objective = FlowObjective(torch.nn.Identity(), CaptionEmbedder(encoder)).train()  # training mode, as the engine
    captions = ["a red circle moving right over a blue background", "", "a white ring moving up"]
    ids, mask = objective.text.token_ids(captions)
    context = objective.text(ids, mask)
    assert context.requires_grad
    assert torch.allclose(context, torch.stack([encoder.encode(c).float() for c in captions]), atol=1e-5)
    alpha = torch.zeros(1, 9, 64, 64)
    alpha[:, 1:5, :, :32] = 1.0                     # frames 1-4 = latent frame 1, left half
    coverage = latent_coverage(alpha, LayerLayout(1, 9, 64, 64, patch_size=(1, 1, 1), space_stride=8))
    assert coverage.shape == (3, 8, 8)
    assert coverage[1, :, :4].eq(1).all() and coverage[1, :, 4:].eq(0).all() and coverage[[0, 2]].eq(0).all()
