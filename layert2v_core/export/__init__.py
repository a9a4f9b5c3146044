"""Layered export for compositors: alpha conventions and writers (PNG, EXR, multi-layer EXR,
ProRes, WebM, H.264) and the ready Blender comp written with each layer set Blender can read.

Start with `conventions` (the alpha and composite rules) and `write_layer_set` (one folder per
generation). Everything writes through PyAV (multi-layer EXR through the OpenEXR bindings); no
ffmpeg binary is needed.
"""

from .atomic import atomic_output
from .conventions import (ALPHA_MODES, COMPOSITE_SPACE, PREMULTIPLIED, STRAIGHT, composite_over,
                          to_premultiplied, to_straight)
from .exr import write_exr_sequence
from .exr_multilayer import write_multilayer_exr_sequence
from .layer_set import DEFAULT_FORMATS, FORMATS, write_layer_set
from .manifest import MANIFEST_NAME, LayerSet, LayerSetError, load_layer_set, validate_manifest
from .png import write_png_sequence
from .records import WrittenOutput
from .video import write_h264_preview, write_prores, write_webm

__all__ = [
    "ALPHA_MODES", "COMPOSITE_SPACE", "PREMULTIPLIED", "STRAIGHT", "to_straight", "to_premultiplied",
    "composite_over", "write_png_sequence", "write_exr_sequence", "write_multilayer_exr_sequence", "write_prores", "write_webm",
    "write_h264_preview", "write_layer_set", "FORMATS", "DEFAULT_FORMATS", "load_layer_set",
    "validate_manifest", "LayerSet", "LayerSetError", "MANIFEST_NAME", "WrittenOutput",
    "atomic_output",
]
