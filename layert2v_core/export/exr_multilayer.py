"""Multi-layer OpenEXR: one file per frame holding every layer as a named channel group.

    <folder>/<prefix>.00000.exr   channels full.R full.G full.B full.A, background.R ..., foreground_1.A

The layer-dot-channel names are the OpenEXR convention that Nuke shows as layers, Blender's Image
node as one output socket per layer (a "multilayer" file) and oiiotool selects with `--ch`.
Colour is linear light and premultiplied, as OpenEXR defines RGBA; opaque layers get A = 1 so
that every group reads as RGBA. Written with the OpenEXR Python bindings (FFmpeg's EXR encoder
only names R, G, B, A).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_output
from .color import srgb_to_linear
from .conventions import COMPOSITE_RULE, LINEAR, PREMULTIPLIED
from .exr import exr_rgb
from .records import SEQUENCE_SIDECAR, WrittenOutput, write_sidecar
from .sequence import frame_pattern
from .validate import as_alpha_frames, as_rgb_frames, check_choice, check_progress

PRECISIONS = ("half", "float")
COMPRESSIONS = ("none", "zip", "piz")
CHANNELS = ("R", "G", "B", "A")


def layer_channels(layer: str) -> list[str]:
    return [f"{layer}.{c}" for c in CHANNELS]


def write_multilayer_exr_sequence(
    folder,
    layers: dict,
    alphas: dict | None = None,
    *,
    precision: str = "float",
    compression: str = "zip",
    prefix: str | None = None,
    first_frame: int = 0,
    progress: Callable[[int, int], None] | None = None,
    sidecar: bool = True,
) -> WrittenOutput:
    """`layers`: name -> (F, H, W, 3) in the model's convention (premultiplied where `alphas` has
    the name); `alphas`: name -> (F, H, W). Channel groups keep the order of `layers`."""
    import OpenEXR  # imported here: only this format needs it

    rgb = {name: as_rgb_frames(x, f"layers[{name!r}]") for name, x in layers.items()}
    alphas = alphas or {}
    alpha = {n: as_alpha_frames(alphas[n], rgb[n], f"alphas[{n!r}]") for n in rgb if n in alphas}
    if not rgb or len({x.shape for x in rgb.values()}) != 1:
        raise ValueError("layers must be a non-empty dict of equally sized (F, H, W, 3) clips")
    check_choice(precision, PRECISIONS, "precision")
    check_choice(compression, COMPRESSIONS, "compression")
    check_progress(progress)
    if isinstance(first_frame, bool) or not isinstance(first_frame, int) or first_frame < 0:
        raise ValueError(f"first_frame must be an integer >= 0, got {first_frame!r}")
    folder = Path(folder)
    prefix = prefix or folder.name
    frames, height, width, _ = next(iter(rgb.values())).shape
    record = WrittenOutput(
        path=folder, format="exr_multilayer", frame_count=frames, width=width, height=height,
        has_alpha=bool(alpha), alpha_mode=PREMULTIPLIED if alpha else None, transfer=LINEAR,
        pattern=frame_pattern(prefix, "exr", frames, first_frame), first_frame=first_frame,
        details={"precision": precision, "compression": compression, "codec": "exr",
                 "channels": {name: layer_channels(name) for name in rgb},
                 "alpha_layers": list(alpha)},  # the groups whose A is a matte; the others' A is 1
    )
    dtype = np.float16 if precision == "half" else np.float32
    header = {"compression": getattr(OpenEXR, f"{compression.upper()}_COMPRESSION"),
              "type": OpenEXR.scanlineimage,
              "comments": f"LayerT2V layers; linear, premultiplied; model composite: {COMPOSITE_RULE} "
                          "on sRGB-encoded values"}
    with atomic_output(folder, is_dir=True) as target:
        for i in range(frames):
            channels = {}
            for name, clip in rgb.items():
                a = alpha.get(name)
                colour = srgb_to_linear(clip[i]) if a is None else exr_rgb(clip[i], a[i], LINEAR)
                a_plane = np.ones(colour.shape[:2], np.float32) if a is None else a[i]
                for c, plane in zip(layer_channels(name), (*np.moveaxis(colour, -1, 0), a_plane)):
                    channels[c] = np.ascontiguousarray(plane, dtype=dtype)
            path = target.tmp / (record.pattern % (first_frame + i))
            OpenEXR.File(header, channels).write(str(path))
            if progress:
                progress(i + 1, frames)
        if sidecar:
            write_sidecar(record, target.tmp / SEQUENCE_SIDECAR)
    record.path = target.path
    return record
