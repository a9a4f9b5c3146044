"""The built-in demo model (layert2v_core/demo_model/) end to end through LayerT2VPipeline at its native size."""

from __future__ import annotations

import json

import pytest
import torch

from layert2v_core.demo_model import DEMO_DIR, NATIVE_SIZE, demo_model_paths
from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline
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
    f, h, w = NATIVE_SIZE["num_frames"], NATIVE_SIZE["height"], NATIVE_SIZE["width"]
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
