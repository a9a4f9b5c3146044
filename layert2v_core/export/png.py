"""PNG sequences, 8- or 16-bit, RGB or RGBA.

PNG alpha is straight by specification ("PNG does not use premultiplied alpha", PNG spec 12.8;
readers such as OpenImageIO and Blender premultiply on load), so "straight" is the only alpha mode
accepted: premultiplied colour in a PNG composites with dark fringes in every reader.
Values are sRGB-encoded, and the file is tagged so (sRGB chunk).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import av
import numpy as np

from .color import quantize_full
from .conventions import SRGB, STRAIGHT, file_rgb
from .records import WrittenOutput
from .sequence import write_sequence
from .validate import as_alpha_frames, as_rgb_frames, check_alpha_args, check_choice, check_progress

BIT_DEPTHS = (8, 16)
_PIX_FMTS = {(8, False): "rgb24", (8, True): "rgba", (16, False): "rgb48be", (16, True): "rgba64be"}
# Paeth prediction: ~10% smaller 16-bit files than FFmpeg's default (no prediction), similar speed.
PNG_OPTIONS = {"pred": "paeth"}
AVCOL_PRI_BT709, AVCOL_TRC_SRGB = 1, 13


def write_png_sequence(
    folder,
    rgb,
    alpha=None,
    *,
    alpha_mode: str | None = None,
    bit_depth: int = 16,
    prefix: str | None = None,
    first_frame: int = 0,
    progress: Callable[[int, int], None] | None = None,
    sidecar: bool = True,
) -> WrittenOutput:
    """Write `folder/<prefix>.00000.png`, ... (prefix defaults to the folder name).

    `rgb` is (F, H, W, 3) in the model's convention (premultiplied where `alpha` is given);
    `alpha` (F, H, W) makes RGBA files and then needs `alpha_mode`. Returns the record of the
    final folder, which carries a counter suffix if `folder` already existed.
    """
    rgb = as_rgb_frames(rgb, "rgb")
    alpha = None if alpha is None else as_alpha_frames(alpha, rgb, "alpha")
    alpha_mode = check_alpha_args(alpha, alpha_mode)
    if alpha_mode not in (None, STRAIGHT):
        raise ValueError(f"alpha_mode must be 'straight' for PNG (the PNG specification defines alpha "
                         f"as straight; premultiplied PNGs fringe in every reader), got {alpha_mode!r}; "
                         f"use an EXR for premultiplied layers")
    check_choice(bit_depth, BIT_DEPTHS, "bit_depth")
    check_progress(progress)
    frames, height, width, _ = rgb.shape
    pix_fmt = _PIX_FMTS[(bit_depth, alpha is not None)]
    record = WrittenOutput(
        path=Path(folder), format=f"png{bit_depth}", frame_count=frames, width=width,
        height=height, has_alpha=alpha is not None, alpha_mode=alpha_mode, transfer=SRGB,
        details={"bit_depth": bit_depth, "codec": "png"},
    )
    return write_sequence(
        folder, _frames(rgb, alpha, alpha_mode, bit_depth, pix_fmt), codec="png",
        pix_fmt=pix_fmt, options=PNG_OPTIONS, ext="png", record=record, prefix=prefix,
        first_frame=first_frame, progress=progress, sidecar=sidecar,
    )


def _frames(rgb, alpha, alpha_mode, bit_depth, pix_fmt):
    for i in range(rgb.shape[0]):
        a = None if alpha is None else alpha[i]
        colour = file_rgb(rgb[i], a, alpha_mode) if a is not None else rgb[i]
        pixels = colour if a is None else np.concatenate([colour, a[..., None]], axis=-1)
        frame = av.VideoFrame.from_ndarray(quantize_full(pixels, bit_depth), format=pix_fmt)
        # Tagged sRGB so the encoder writes the sRGB/cHRM chunks and viewers need not guess.
        frame.color_primaries, frame.color_trc = AVCOL_PRI_BT709, AVCOL_TRC_SRGB
        yield frame
