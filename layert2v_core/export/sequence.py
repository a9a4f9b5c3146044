"""Image sequences (PNG, EXR): one folder per layer, one zero-padded file per frame.

Each frame is encoded by an FFmpeg image encoder through PyAV; one encoded packet is one complete
image file. Encoders with frame threading (png, exr) then compress several frames in parallel.
The folder is written under a temporary name and renamed when every frame is on disk.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import av

from .atomic import atomic_output
from .records import SEQUENCE_SIDECAR, WrittenOutput, write_sidecar

FRAME_DIGITS = 5


def frame_pattern(prefix: str, ext: str, frame_count: int, first_frame: int) -> str:
    """printf-style name (`fg.%05d.png`), the form Nuke, oiiotool and ffmpeg all read."""
    digits = max(FRAME_DIGITS, len(str(first_frame + frame_count - 1)))
    return f"{prefix.replace('%', '%%')}.%0{digits}d.{ext}"


def write_sequence(
    folder,
    frames: Iterable[av.VideoFrame],
    *,
    codec: str,
    pix_fmt: str,
    options: dict,
    ext: str,
    record: WrittenOutput,
    prefix: str | None,
    first_frame: int,
    progress: Callable[[int, int], None] | None,
    sidecar: bool,
) -> WrittenOutput:
    """Encode `frames` into `folder/prefix.00000.ext`...; returns `record` with its final path."""
    folder = Path(folder)
    prefix = prefix or folder.name
    if "/" in prefix or "\\" in prefix:
        raise ValueError(f"prefix must be a file name prefix without folders, got {prefix!r}")
    if isinstance(first_frame, bool) or not isinstance(first_frame, int) or first_frame < 0:
        raise ValueError(f"first_frame must be an integer >= 0, got {first_frame!r}")
    total = record.frame_count
    record.pattern = frame_pattern(prefix, ext, total, first_frame)
    record.first_frame = first_frame
    with atomic_output(folder, is_dir=True) as target:
        encoder = _image_encoder(codec, pix_fmt, options, record.width, record.height)
        written = 0

        def save(packets):
            nonlocal written
            for packet in packets:
                (target.tmp / (record.pattern % (first_frame + written))).write_bytes(bytes(packet))
                written += 1
                if progress:
                    progress(written, total)

        for frame in frames:
            save(encoder.encode(frame))
        save(encoder.encode(None))
        if written != total:
            raise RuntimeError(f"{codec} encoder returned {written} images for {total} frames")
        if sidecar:
            write_sidecar(record, target.tmp / SEQUENCE_SIDECAR)
    record.path = target.path
    return record


def _image_encoder(codec: str, pix_fmt: str, options: dict, width: int, height: int):
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base = Fraction(1, 25)  # required by the API; meaningless for still images
    ctx.sample_aspect_ratio = Fraction(1, 1)  # else PNG gets a 0:1 pixel aspect (pHYs) chunk
    ctx.options = dict(options)
    ctx.thread_type = "FRAME"
    ctx.thread_count = 0  # FFmpeg picks one thread per core
    return ctx
