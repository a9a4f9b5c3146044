"""The layer viewer's film strips (layert2v_core.preview.write_web_previews), read back with Pillow and
compared with an independent computation at full size, then block-averaged to the preview size."""

from __future__ import annotations

import numpy as np
from PIL import Image

from layert2v_core.preview import write_web_previews

FRAMES, H, W, SCALE = 7, 48, 64, 4  # previews at most 16 px: 4x4 blocks


def scene():
    rng = np.random.default_rng(3)
    t = np.arange(FRAMES)[:, None, None]
    x = np.arange(W)[None, None, :]
    background = np.stack([np.broadcast_to(x / W, (FRAMES, H, W)), np.full((FRAMES, H, W), 0.5),
                           np.broadcast_to(t / FRAMES, (FRAMES, H, W))], -1)
    alpha = np.zeros((FRAMES, H, W))
    for f in range(FRAMES):  # a square moving right by one block per frame
        alpha[f, 8:32, 4 * f:4 * f + 24] = 1.0
    colour = rng.uniform(0.2, 0.9, 3)
    foreground = alpha[..., None] * colour  # premultiplied, as the model gives it
    full = foreground + background * (1 - alpha[..., None])
    return {"full": full, "background": background, "foreground_1": foreground}, {"foreground_1": alpha}, colour


def blocks(a):
    """Block average to preview size (what an area filter computes)."""
    f, h, w = a.shape[:3]
    return a.reshape(f, h // SCALE, SCALE, w // SCALE, SCALE, *a.shape[3:]).mean(axis=(2, 4))


def frames_of(path, strip):
    sheet = np.asarray(Image.open(path)).astype(np.float64) / 255.0
    fw, fh, columns = strip.frame_width, strip.frame_height, strip.columns
    return np.stack([sheet[(i // columns) * fh:(i // columns + 1) * fh, (i % columns) * fw:(i % columns + 1) * fw]
                     for i in range(strip.frames)])


def test_film_strips_hold_every_layer_frame_by_frame(tmp_path):
    rgb, alphas, colour = scene()
    strips = write_web_previews(tmp_path, rgb, alphas, fps=12.5, max_side=W // SCALE)
    assert [(s.layer, s.kind) for s in strips] == [("full", "opaque"), ("recomposite", "recomposite"),
                                                   ("background", "opaque"), ("foreground_1", "foreground"),
                                                   ("foreground_1", "matte")]
    for s in strips:
        assert (s.frames, s.frame_width, s.frame_height, s.fps) == (FRAMES, W // SCALE, H // SCALE, 12.5)
        assert s.path.parent == tmp_path and s.path.suffix == ".webp"
    by_kind = {s.kind if s.kind != "opaque" else s.layer: s for s in strips}

    # Lossy WebP (4:2:0 chroma) on 16-px frames of saturated ramps: a few % per pixel; frame means exact
    # enough to tell the frames apart (the background's blue channel steps 1/7 per frame).
    for name in ("full", "background"):
        got = frames_of(by_kind[name].path, by_kind[name])
        assert np.abs(got - blocks(rgb[name])).mean() < 0.05, name
    background = frames_of(by_kind["background"].path, by_kind["background"])
    assert np.abs(background[..., 2].mean(axis=(1, 2)) - np.arange(FRAMES) / FRAMES).max() < 0.02
    recomposite = frames_of(by_kind["recomposite"].path, by_kind["recomposite"])
    assert np.abs(recomposite - blocks(rgb["full"])).mean() < 0.05  # the layers add up to full here

    matte = frames_of(by_kind["matte"].path, by_kind["matte"])
    assert np.abs(matte[..., 0] - blocks(alphas["foreground_1"])).max() <= 0.5 / 255 + 1e-9  # lossless
    assert np.array_equal(matte[..., 0], matte[..., 1]) and np.array_equal(matte[..., 1], matte[..., 2])

    foreground = frames_of(by_kind["foreground"].path, by_kind["foreground"])
    inside = blocks(alphas["foreground_1"]) == 1.0
    assert np.abs(foreground[..., 3] - blocks(alphas["foreground_1"])).max() <= 0.5 / 255 + 1e-9
    # Straight colour where opaque: the square's own colour, not darkened by premultiplication.
    assert np.abs(foreground[..., :3][inside] - colour).mean() < 0.03


def test_previews_of_large_frames_are_scaled_down(tmp_path):
    rgb = {"full": np.zeros((3, 480, 832, 3)), "background": np.zeros((3, 480, 832, 3))}
    strip = write_web_previews(tmp_path, rgb, {}, fps=16)[0]
    assert (strip.frame_width, strip.frame_height) == (320, 185)
    assert [s.layer for s in write_web_previews(tmp_path, rgb, {}, fps=16)] == ["full", "background"]

