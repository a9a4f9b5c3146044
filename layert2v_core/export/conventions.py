"""Alpha conventions: the ONE place where alpha rules live.

Tensor layout (ComfyUI IMAGE / MASK layout, numpy arrays or torch tensors):

- RGB layer: (F, H, W, 3), float, values in [0, 1], channels last.
- Alpha:     (F, H, W),    float, values in [0, 1], 1 = opaque, 0 = transparent.
  (ComfyUI's LoadImage MASK is 1 - alpha; converting that is the caller's job, not ours.)

The model's foreground layer is PREMULTIPLIED on black: fg = full * alpha. That is what every
writer in this package takes as its `rgb` argument for a layer with alpha; the writer's
`alpha_mode` only says what goes INTO THE FILE:

- "straight":      file colour = fg / alpha (un-premultiplied; PNG's specification demands it,
                   and ProRes, WebM and FFmpeg readers assume it);
- "premultiplied": file colour = colour x alpha in the space the file holds: sRGB-encoded for
                   ProRes/WebM (which is the model's own fg), linear light for OpenEXR (which
                   defines RGBA as premultiplied linear values). PNG refuses it.

Compositing is Porter-Duff "over" on premultiplied colour: out = fg + bg * (1 - alpha), with K
foregrounds applied in order, the first foreground lowest. The model's composite holds on
sRGB-ENCODED values (COMPOSITE_SPACE): a linear-light comp of the same layers (Nuke's default on
EXR) differs from the `full` layer wherever alpha is soft (up to ~0.27 on strong colour contrast).
"""

from __future__ import annotations

from typing import Sequence

STRAIGHT = "straight"
PREMULTIPLIED = "premultiplied"
ALPHA_MODES = (STRAIGHT, PREMULTIPLIED)

# Below this alpha, colour cannot be recovered from premultiplied data (it is quantisation noise
# divided by ~0); un-premultiplying outputs black there instead of a huge or infinite value.
DEFAULT_EPS = 1.0 / 4096

# Written into every sidecar and manifest so that a reader never has to guess.
ALPHA_POLARITY = "1 = opaque, 0 = transparent"
MODEL_FOREGROUND_CONVENTION = "premultiplied on black (fg = full * alpha)"
COMPOSITE_RULE = "over: out = fg + bg * (1 - alpha); foregrounds in order, first lowest"
BACKGROUND = "background"  # the opaque layer the set's composites (preview, Blender comp) start from
COMPOSITE_SPACE = "srgb_encoded"
COMPOSITE_SPACE_NOTE = ("the model composites sRGB-encoded (display) values; to reproduce `full`, "
                        "composite sRGB-encoded colour, not linear light")

# What the colour values of a file hold (every output records one).
SRGB = "srgb"       # IEC 61966-2-1 encoded, as the model produces them (PNG, ProRes, WebM, H.264)
LINEAR = "linear"   # linear light, sRGB/BT.709 primaries (OpenEXR)
TRANSFERS = (SRGB, LINEAR)


def composite_convention() -> dict:
    """The block that manifests and sidecars carry, so no reader has to guess."""
    return {"rule": COMPOSITE_RULE, "space": COMPOSITE_SPACE, "note": COMPOSITE_SPACE_NOTE,
            "alpha_polarity": ALPHA_POLARITY, "model_foreground": MODEL_FOREGROUND_CONVENTION}


def to_straight(premult_rgb, alpha, eps: float = DEFAULT_EPS):
    """Un-premultiply: premult / alpha where alpha > eps, 0 elsewhere, clipped to [0, 1].

    Works on numpy arrays and torch tensors alike; never produces inf or NaN from finite input.
    Clipping matters because decoded premultiplied colour can exceed its alpha by a little.
    """
    # 1 / alpha on the (smaller) alpha array, zero where alpha <= eps: no inf, no NaN.
    inverse = (1.0 / alpha.clip(eps, None)) * (alpha > eps)
    return (premult_rgb * inverse[..., None]).clip(0.0, 1.0)


def to_premultiplied(straight_rgb, alpha):
    """Premultiply straight colour by its alpha (numpy or torch)."""
    return straight_rgb * alpha[..., None]


def composite_over(fg_premult, alpha, bg):
    """Composite premultiplied foreground(s) over an opaque background.

    `fg_premult` and `alpha` are one layer each, or equally long sequences of K layers; the first
    foreground is the lowest, so later foregrounds cover earlier ones.
    """
    fgs, alphas = _as_layer_list(fg_premult), _as_layer_list(alpha)
    if len(fgs) != len(alphas):
        raise ValueError(f"composite_over: got {len(fgs)} foregrounds but {len(alphas)} alphas")
    out = bg
    for fg, a in zip(fgs, alphas):
        out = fg + out * (1.0 - a[..., None])
    return out


def file_rgb(premult_rgb, alpha, alpha_mode: str, eps: float = DEFAULT_EPS):
    """The colour a writer stores for a layer given in the model's (premultiplied) convention."""
    check_alpha_mode(alpha_mode)
    if alpha is None or alpha_mode == PREMULTIPLIED:
        return premult_rgb
    return to_straight(premult_rgb, alpha, eps)


def model_rgb(file_rgb_values, alpha, alpha_mode: str):
    """Inverse of `file_rgb`: back to premultiplied colour (readers and round-trip checks)."""
    check_alpha_mode(alpha_mode)
    if alpha is None or alpha_mode == PREMULTIPLIED:
        return file_rgb_values
    return to_premultiplied(file_rgb_values, alpha)


def check_alpha_mode(alpha_mode, name: str = "alpha_mode") -> str:
    if alpha_mode not in ALPHA_MODES:
        raise ValueError(f"{name} must be one of {ALPHA_MODES}, got {alpha_mode!r}")
    return alpha_mode


def _as_layer_list(x) -> Sequence:
    return list(x) if isinstance(x, (list, tuple)) else [x]
