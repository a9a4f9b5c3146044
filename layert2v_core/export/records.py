"""What a writer produced, and the sidecar JSON that records it next to the output.

The sidecar exists so that a file moved out of its layer set still says how its alpha is meant
(straight or premultiplied), what its values hold (sRGB-encoded or linear) and in which space the
model composites: no container we write has a standard field for the alpha convention.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from .atomic import write_bytes_atomic
from .conventions import composite_convention

SIDECAR_SUFFIX = ".json"          # clip.mov -> clip.mov.json
SEQUENCE_SIDECAR = "sequence.json"  # inside a PNG/EXR sequence folder


@dataclass
class WrittenOutput:
    path: Path                    # the final file or sequence folder (after any counter suffix)
    format: str                   # one of manifest.OUTPUT_FORMATS
    frame_count: int
    width: int
    height: int
    has_alpha: bool
    alpha_mode: str | None        # what the FILE holds; None for opaque layers
    transfer: str                 # conventions.SRGB or conventions.LINEAR: what the values hold
    fps: Fraction | None = None
    pattern: str | None = None    # sequences: printf-style frame file name inside `path`
    first_frame: int | None = None
    details: dict = field(default_factory=dict)  # codec, pixel format, bit depth, colour tags

    def to_json(self, relative_to: Path | None = None) -> dict:
        path = self.path.relative_to(relative_to) if relative_to else self.path
        out = {
            "path": path.as_posix(),
            "format": self.format,
            "frame_count": self.frame_count,
            "width": self.width,
            "height": self.height,
            "has_alpha": self.has_alpha,
            "alpha_mode": self.alpha_mode,
            "transfer": self.transfer,
        }
        if self.fps is not None:
            out["fps"] = fps_to_json(self.fps)
        if self.pattern is not None:
            out["pattern"] = self.pattern
            out["first_frame"] = self.first_frame
        out.update(self.details)
        return out

    def frame_paths(self) -> list[Path]:
        """Every frame file of a sequence, in order (empty for a movie file)."""
        if self.pattern is None:
            return []
        return [self.path / (self.pattern % (self.first_frame + i)) for i in range(self.frame_count)]


def fps_to_json(fps: Fraction) -> dict:
    return {"num": fps.numerator, "den": fps.denominator, "value": float(fps)}


def software_info() -> dict:
    """Versions that produced a file: ours, PyAV's and the FFmpeg libraries inside PyAV."""
    import av

    # Looked up at call time: the core package may import this one while it is still loading. Relative:
    # inside ComfyUI the core is a subpackage of the pack, not a top-level `layert2v_core`.
    core = importlib.import_module("..", __package__)
    libavcodec = av.library_versions.get("libavcodec", ())
    return {
        "name": "layert2v",
        "version": getattr(core, "__version__", "unknown"),
        "pyav": av.__version__,
        "libavcodec": ".".join(str(v) for v in libavcodec),
    }


def sidecar_json(record: WrittenOutput) -> dict:
    body = record.to_json()
    if record.pattern is not None:
        del body["path"]  # a sequence sidecar lives inside the folder it describes
    else:
        body["path"] = record.path.name
    body["composite"] = composite_convention()
    body["software"] = software_info()
    return body


def write_sidecar(record: WrittenOutput, location: Path) -> Path:
    """Write the sidecar at `location`; replacing is safe there because the output is brand new."""
    data = json.dumps(sidecar_json(record), indent=2).encode()
    return write_bytes_atomic(location, data, replace=True)
