"""OpenEXR sequences (half or float, RGB or RGBA) for Nuke, Blender and other linear compositors.

Written with FFmpeg's `exr` encoder through PyAV (it writes half and float, with ZIP compression),
so no extra library is needed. OpenEXR defines RGBA as premultiplied (associated) alpha, so
"premultiplied" is the only alpha mode accepted here.

Compositors read EXR as scene-linear. Model output is sRGB-encoded video, so by default
(`transfer="linear"`) colour is decoded with the sRGB curve: straight colour is linearised and then
premultiplied again, which is the correct order (linearising premultiplied values would darken
soft edges). `transfer="srgb"` stores the encoded values unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import av
import numpy as np

from .color import srgb_to_linear
from .conventions import LINEAR, PREMULTIPLIED, SRGB, to_premultiplied, to_straight
from .records import WrittenOutput
from .sequence import write_sequence
from .validate import as_alpha_frames, as_rgb_frames, check_alpha_args, check_choice, check_progress

PRECISIONS = ("half", "float")
TRANSFERS = (LINEAR, SRGB)
COMPRESSIONS = ("none", "rle", "zip1", "zip16")


def write_exr_sequence(
    folder,
    rgb,
    alpha=None,
    *,
    alpha_mode: str | None = PREMULTIPLIED,
    precision: str = "half",
    transfer: str = "linear",
    compression: str = "zip16",
    prefix: str | None = None,
    first_frame: int = 0,
    progress: Callable[[int, int], None] | None = None,
    sidecar: bool = True,
) -> WrittenOutput:
    """Write `folder/<prefix>.00000.exr`, ...; `rgb` is premultiplied where `alpha` is given."""
    rgb = as_rgb_frames(rgb, "rgb")
    alpha = None if alpha is None else as_alpha_frames(alpha, rgb, "alpha")
    alpha_mode = check_alpha_args(alpha, alpha_mode)
    if alpha is not None and alpha_mode != PREMULTIPLIED:
        raise ValueError(
            f"alpha_mode must be 'premultiplied' for EXR (OpenEXR defines RGBA as premultiplied), "
            f"got {alpha_mode!r}")
    check_choice(precision, PRECISIONS, "precision")
    check_choice(transfer, TRANSFERS, "transfer")
    check_choice(compression, COMPRESSIONS, "compression")
    check_progress(progress)
    frames, height, width, _ = rgb.shape
    pix_fmt = "gbrpf32le" if alpha is None else "gbrapf32le"
    record = WrittenOutput(
        path=Path(folder), format=f"exr_{precision}", frame_count=frames, width=width,
        height=height, has_alpha=alpha is not None, alpha_mode=alpha_mode, transfer=transfer,
        details={"precision": precision, "compression": compression, "codec": "exr"},
    )
    options = {"format": precision, "compression": compression}
    return write_sequence(
        folder, _frames(rgb, alpha, transfer, pix_fmt), codec="exr", pix_fmt=pix_fmt,
        options=options, ext="exr", record=record, prefix=prefix, first_frame=first_frame,
        progress=progress, sidecar=sidecar,
    )


def exr_rgb(premult_rgb: np.ndarray, alpha: np.ndarray | None, transfer: str) -> np.ndarray:
    """The premultiplied colour an EXR file holds for a model-convention layer."""
    if transfer == SRGB:
        return premult_rgb
    if alpha is None:
        return srgb_to_linear(premult_rgb)
    return to_premultiplied(srgb_to_linear(to_straight(premult_rgb, alpha)), alpha)


def _frames(rgb, alpha, transfer, pix_fmt):
    for i in range(rgb.shape[0]):
        a = None if alpha is None else alpha[i]
        colour = exr_rgb(rgb[i], a, transfer)
        pixels = colour if a is None else np.concatenate([colour, a[..., None]], axis=-1)
        # from_ndarray takes gbrp* data in RGB(A) channel order.
        yield av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels, np.float32), format=pix_fmt)
