"""Alpha conventions and input validation of layert2v_core.export (no external readers needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from layert2v_core.export import (composite_over, to_premultiplied, to_straight, write_exr_sequence,
                                  write_layer_set, write_png_sequence, write_prores, write_webm)
from layert2v_core.export.color import linear_to_srgb, rgb_to_ycbcr, srgb_to_linear
from layert2v_core.export.conventions import DEFAULT_EPS, file_rgb, model_rgb
from layert2v_core.export.synthetic import soft_rgba_clip
from layert2v_core.export.validate import check_fps


@pytest.fixture()
def clip():
    return soft_rgba_clip(3, 16, 24, seed=2)


def test_to_straight_inverts_premultiply_where_alpha_is_meaningful(clip):
    p = clip.premultiplied
    s = to_straight(p, clip.alpha)
    mask = clip.alpha > DEFAULT_EPS
    ref = np.where(mask[..., None], p / np.where(mask, clip.alpha, 1)[..., None], 0)
    assert np.abs(s - ref).max() < 1e-5
    assert np.abs(s[mask] - clip.straight[mask]).max() < 1e-3
    assert np.all(s[~mask] == 0)


def test_to_straight_is_safe_at_zero_alpha_and_clamps():
    p = np.array([[[[0.0, 0.0, 0.0], [1e-7, 0.5, 0.0], [0.6, 0.2, 0.1]]]], np.float32)
    a = np.array([[[0.0, 1e-9, 0.5]]], np.float32)
    s = to_straight(p, a)
    assert np.isfinite(s).all()
    assert np.all(s[0, 0, :2] == 0)                      # alpha ~ 0: black, not inf/NaN
    assert np.allclose(s[0, 0, 2], [1.0, 0.4, 0.2])      # 0.6 / 0.5 = 1.2, clipped to 1


def test_conventions_work_on_torch_tensors(clip):
    p, a = torch.from_numpy(clip.premultiplied), torch.from_numpy(clip.alpha)
    s = to_straight(p, a)
    assert isinstance(s, torch.Tensor)
    assert np.allclose(s.numpy(), to_straight(clip.premultiplied, clip.alpha), atol=1e-6)
    assert np.allclose(to_premultiplied(s, a).numpy(), clip.premultiplied, atol=1e-3)
    zero = to_straight(torch.ones(1, 2, 2, 3), torch.zeros(1, 2, 2))
    assert torch.isfinite(zero).all() and zero.abs().max() == 0


def test_composite_over_matches_porter_duff_and_order(clip):
    rng = np.random.default_rng(0)
    a1, a2 = clip.alpha, rng.random(clip.alpha.shape).astype(np.float32)
    f1, f2 = clip.premultiplied, rng.random(clip.straight.shape).astype(np.float32) * a2[..., None]
    bg = clip.background
    # Reference written out by hand: f2 over (f1 over bg).
    ref = f2 + (f1 + bg * (1 - a1[..., None])) * (1 - a2[..., None])
    assert np.abs(composite_over([f1, f2], [a1, a2], bg) - ref).max() < 1e-6
    assert np.abs(composite_over(f1, a1, bg) - clip.full).max() < 1e-6
    # Order matters: the first foreground is the lowest.
    assert np.abs(composite_over([f2, f1], [a2, a1], bg) - ref).max() > 1e-2
    with pytest.raises(ValueError, match="2 foregrounds but 1 alphas"):
        composite_over([f1, f2], [a1], bg)


def test_file_rgb_and_model_rgb_are_inverse(clip):
    for mode in ("straight", "premultiplied"):
        back = model_rgb(file_rgb(clip.premultiplied, clip.alpha, mode), clip.alpha, mode)
        assert np.abs(back - clip.premultiplied).max() < 1e-5
    with pytest.raises(ValueError, match="alpha_mode"):
        file_rgb(clip.premultiplied, clip.alpha, "associated")


def test_colour_helpers_against_reference_values():
    # BT.709: white -> Y 1, chroma 0; pure red -> Y 0.2126, Cr 0.5.
    ycc = rgb_to_ycbcr(np.array([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]], np.float32))
    assert np.allclose(ycc[:, 0, 0], [1, 0, 0], atol=1e-6)
    assert np.allclose(ycc[:, 0, 1], [0.2126, -0.2126 / 1.8556, 0.5], atol=1e-6)
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(srgb_to_linear(np.float32(0.5)), 0.21404, atol=1e-5)
    assert np.abs(linear_to_srgb(srgb_to_linear(x)) - x).max() < 1e-5


def test_fps_is_exact():
    assert check_fps(16) == 16 and check_fps(23.976).denominator == 1001
    assert check_fps(29.97) * 1001 == 30000 and check_fps(12.5) * 2 == 25


@pytest.mark.parametrize("call, message", [
    (lambda d, c: write_prores(d / "x.mov", c.premultiplied[0], fps=16), r"rgb must have shape"),
    (lambda d, c: write_prores(d / "x.mov", c.premultiplied, c.alpha[:2], fps=16,
                               alpha_mode="straight"), r"alpha must have shape"),
    (lambda d, c: write_prores(d / "x.mov", c.premultiplied, c.alpha, fps=16),
     r"alpha_mode is required"),
    (lambda d, c: write_prores(d / "x.mov", c.premultiplied, fps=0), r"fps must be"),
    (lambda d, c: write_prores(d / "x.mov", c.premultiplied, fps=float("nan")), r"fps must be"),
    (lambda d, c: write_prores(d / "x.mov", np.full((2, 4, 4, 3), np.nan, np.float32), fps=8),
     r"rgb contains 96 NaN"),
    (lambda d, c: write_prores(d / "x.mov", (c.premultiplied * 255).astype(np.uint8), fps=8),
     r"rgb must be a float"),
    (lambda d, c: write_prores(d / "x.mov", c.premultiplied * 255, fps=8), r"values in \[0, 1\]"),
    (lambda d, c: write_png_sequence(d / "p", c.premultiplied, bit_depth=12), r"bit_depth"),
    (lambda d, c: write_png_sequence(d / "p", c.premultiplied, c.alpha, alpha_mode="premultiplied"),
     r"alpha_mode must be 'straight' for PNG \(the PNG specification"),
    (lambda d, c: write_webm(d / "w.webm", c.premultiplied, c.alpha, fps=8, alpha_mode="premultiplied"),
     r"alpha_mode must be 'straight' for WebM"),
    (lambda d, c: write_png_sequence(d / "p", c.full, prefix="a/b"), r"prefix must be"),
    (lambda d, c: write_png_sequence(d / "p", c.full, first_frame=-1), r"first_frame must be"),
    (lambda d, c: write_exr_sequence(d / "e", c.premultiplied, c.alpha, alpha_mode="straight"),
     r"alpha_mode must be 'premultiplied' for EXR"),
    (lambda d, c: write_layer_set(d, {"full": c.full}, fps=8, formats=["gif"]), r"formats"),
    (lambda d, c: write_layer_set(d, {"full": c.full}, {"fg": c.alpha}, fps=8),
     r"alphas: \['fg'\] have no RGB layer"),
    (lambda d, c: write_layer_set(d, {"full": c.full, "background": c.background[:2]}, fps=8),
     r"layers must all have the same"),
    (lambda d, c: write_layer_set(d, {"full": c.full}, fps=8, name="../up"), r"name must be"),
    (lambda d, c: write_layer_set(d, {"full": c.full}, fps=8, seed=1.5), r"seed must be"),
    (lambda d, c: write_layer_set(d, {"full": c.full}, fps=8, progress=3), r"progress must be"),
    (lambda d, c: write_layer_set(d, {"full": c.full[:, :15]}, fps=8, formats=["h264"]),
     r"formats: 'h264' needs an even"),
])
def test_bad_input_is_a_clear_value_error_and_writes_nothing(tmp_path, clip, call, message):
    with pytest.raises(ValueError, match=message):
        call(tmp_path, clip)
    assert list(tmp_path.iterdir()) == []


def test_inputs_are_not_modified_and_slight_overshoot_is_clipped(tmp_path, clip):
    rgb = clip.full.copy()
    rgb[0, 0, 0] = [1.02, -0.01, 0.5]
    before = rgb.copy()
    write_png_sequence(tmp_path / "p", rgb, bit_depth=8)
    assert np.array_equal(rgb, before)
