"""Video files <-> uint8 frame arrays with PyAV (no ffmpeg binary needed).

Codec convention for files this project writes (names stay `.mp4`, as the VidLayer layout expects):
- RGB layers (full_video, background): H.264 yuv444p, crf 4 by default: near lossless, and without
  4:2:0 chroma blur that would smear colour across the alpha edge at small training sizes.
- Alpha mattes (mask*.mp4): H.264 RGB (`libx264rgb`, qp 0): bit-exact, the alpha repeated in R, G, B.
  Readers that take luma or the channel mean get the same value back.
Readers accept any codec PyAV decodes (real VidLayer files are ordinary yuv420p H.264).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_rgb_video(path: str | Path, frames: np.ndarray, fps: int = 8, crf: int = 4) -> None:
    """frames (F, H, W, 3) uint8."""
    _write(path, frames, fps, codec="libx264", pix_fmt="yuv444p", options={"crf": str(crf)})


def write_alpha_video(path: str | Path, alpha: np.ndarray, fps: int = 8) -> None:
    """alpha (F, H, W) uint8, written losslessly."""
    rgb = np.repeat(alpha[..., None], 3, axis=-1)
    _write(path, rgb, fps, codec="libx264rgb", pix_fmt="rgb24", options={"qp": "0"})


def _write(path, frames: np.ndarray, fps: int, codec: str, pix_fmt: str, options: dict) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())


def count_frames(path: str | Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """Decode the given frame indices (any order, repeats allowed) -> (len(indices), H, W, 3) uint8.

    Decodes sequentially up to the largest index: clips are short and seeking in long-GOP H.264 is
    not frame-exact.
    """
    wanted = sorted(set(indices))
    if not wanted:
        raise ValueError("read_frames: no frame indices requested")
    found: dict[int, np.ndarray] = {}
    decoded = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if i in wanted:
                found[i] = frame.to_ndarray(format="rgb24")
            if i >= wanted[-1]:
                break
    missing = [i for i in wanted if i not in found]
    if missing:
        raise ValueError(f"{path}: has {decoded} decodable frames; asked for frame index {missing[0]}")
    return np.stack([found[i] for i in indices])
