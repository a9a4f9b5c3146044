"""Read a clip the user gives (a video file or a folder of images) as float frames for given layers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".exr", ".tif", ".tiff"}


def _decode(path: Path, limit: int) -> np.ndarray:
    """(F, H, W, 4) float32 RGBA in [0, 1]; alpha is 1 where the source has none."""
    if path.is_dir():
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not files:
            raise FileNotFoundError(f"{str(path)!r} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return np.stack([_read_image(Image, f) for f in files])
    if not path.is_file():
        raise FileNotFoundError(f"video {str(path)!r} does not exist")
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            if codec == "vp9":  # FFmpeg's native VP9 decoder drops the alpha plane; libvpx keeps it
                stream.codec_context = av.CodecContext.create("libvpx-vp9", "r")
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgba").astype(np.float32) / 255.0)
                if len(frames) >= limit:
                    break
    except av.error.FFmpegError as err:
        raise ValueError(f"{str(path)!r} is not a readable video: {err}") from None
    if not frames:
        raise ValueError(f"{str(path)!r} has no video frames")
    return np.stack(frames)


def _read_image(Image, path: Path) -> np.ndarray:
    """(H, W, 4) float32; an unreadable, damaged or decompression-bomb image is named, not dumped."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"image {str(path)!r} cannot be read ({type(err).__name__}: {str(err)[:120]}); "
                         "replace it or remove it from the folder") from None


def read_clip(path: str | Path, num_frames: int, height: int, width: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """-> RGB (F, H, W, 3) and alpha (F, H, W) or None when the source is opaque; resized to the
    generation size. A clip shorter than num_frames is refused (no silent looping)."""
    rgba = _decode(Path(path), num_frames)
    if len(rgba) < num_frames:
        raise ValueError(f"{str(path)!r} has {len(rgba)} frames; this generation needs {num_frames}")
    clip = torch.from_numpy(rgba).permute(0, 3, 1, 2)
    if clip.shape[-2:] != (height, width):
        clip = F.interpolate(clip, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    clip = clip.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    alpha = clip[..., 3]
    return clip[..., :3], (alpha if bool((alpha < 0.999).any()) else None)
