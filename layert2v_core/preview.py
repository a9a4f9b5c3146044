"""Previews: cheap per-step latent previews while sampling, and the small web previews that the
layer viewer plays after a generation (one film strip per layer, next to the exported layer set)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .export.conventions import composite_over, to_straight
from .export.manifest import RECOMPOSITE
from .layout import LayerLayout


def latent_preview(latent: torch.Tensor, layout: LayerLayout, rgb_factors, rgb_bias=None) -> np.ndarray:
    """(1, C, L*T', h, w) latent -> uint8 (h, L*w, 3): segments left to right in layout order.

    rgb_factors: (C, 3) linear map from latent channels to RGB in [-1, 1] (the host's table for Wan).
    """
    factors = torch.as_tensor(rgb_factors, dtype=torch.float32, device=latent.device)
    bias = torch.zeros(3) if rgb_bias is None else torch.as_tensor(rgb_bias, dtype=torch.float32)
    middle = layout.latent_frames // 2
    tiles = []
    for part in layout.split(latent.float()).values():
        frame = part[0, :, middle]                                   # (C, h, w)
        rgb = torch.einsum("chw,cr->hwr", frame, factors) + bias.to(frame.device)
        tiles.append(((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(tiles, dim=1).numpy()


# ---- web previews: what the layer viewer in the browser plays -------------------------------------

WEB_PREVIEW_DIR = "web_preview"  # inside the layer set's folder
MAX_PREVIEW_SIDE = 320           # px; previews are for judging motion, not pixels
_WEBP_MAX_SIDE = 16383           # the WebP format's limit on either side of one image


@dataclass
class FilmStrip:
    """One layer's frames laid out in a grid in one WebP (the viewer shows frame i of `frames`)."""
    layer: str
    kind: str        # "opaque", "foreground" (straight RGBA), "matte" (grey) or "recomposite"
    path: Path
    frames: int
    columns: int
    frame_width: int
    frame_height: int
    fps: float

    def to_json(self, relative_to: Path) -> dict:
        record = {k: v for k, v in self.__dict__.items() if k != "path"}
        return {**record, "path": self.path.resolve().relative_to(relative_to).as_posix()}


def write_web_previews(folder, rgb: dict, alphas: dict, fps: float, max_side: int = MAX_PREVIEW_SIDE,
                       on_layer=None) -> list[FilmStrip]:
    """Small animated previews of a generation, one film strip per layer, in viewer order.

    `rgb` maps layer names to (F, H, W, 3) in [0, 1], foregrounds premultiplied; `alphas` maps the
    foreground names to (F, H, W). Written: full, the recomposite (background with the foregrounds
    over it, to compare with full), background, then each foreground as straight RGBA with its matte.
    `on_layer()` is called before each strip (a host's cancel check).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Everything below runs at preview size: compositing there matches full size to within rounding.
    rgb = {name: _small(v, max_side) for name, v in rgb.items()}
    alphas = {name: _small(v[..., None], max_side)[..., 0] for name, v in alphas.items()}
    foregrounds = [name for name in rgb if name in alphas]
    jobs = [(name, "opaque", rgb[name]) for name in rgb if name == "full"]
    if "background" in rgb and foregrounds:  # first foreground lowest, as the exporters composite
        comp = composite_over([rgb[n] for n in foregrounds], [alphas[n] for n in foregrounds], rgb["background"])
        jobs.append((RECOMPOSITE, "recomposite", comp))
    jobs += [(name, "opaque", rgb[name]) for name in rgb if name != "full" and name not in alphas]
    for name in foregrounds:
        a = alphas[name]
        jobs.append((name, "foreground", torch.cat([to_straight(rgb[name], a), a[..., None]], -1)))
        jobs.append((name, "matte", a[..., None]))

    strips = []
    for layer, kind, pixels in jobs:
        if on_layer is not None:
            on_layer()
        frames = (pixels.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
        sheet, columns = _sheet(frames)
        path = folder / f"{layer}{'_matte' if kind == 'matte' else ''}.webp"
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[sheet.shape[-1]]
        # Mattes lossless: lossy WebP would tint grey (its chroma is subsampled) and soften edges.
        Image.fromarray(sheet[..., 0] if mode == "L" else sheet, mode).save(
            path, "WEBP", quality=90, method=2, lossless=kind == "matte")
        strips.append(FilmStrip(layer, kind, path, frames.shape[0], columns, frames.shape[2], frames.shape[1],
                                float(fps)))
    return strips


def _small(frames, max_side: int) -> torch.Tensor:
    """(F, H, W, C) -> float (F, h, w, C), longest side <= max_side (area filter; never upscaled)."""
    x = torch.as_tensor(frames, dtype=torch.float32)
    count, height, width, _ = x.shape
    scale = min(1.0, max_side / max(height, width))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size == (height, width):
        return x
    return torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=size, mode="area").permute(0, 2, 3, 1)


def _sheet(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Frames in a near-square grid, row by row; returns the image and its number of columns."""
    count, h, w, c = frames.shape
    columns = max(1, min(count, math.ceil(math.sqrt(count * h / w))))
    rows = math.ceil(count / columns)
    if columns * w > _WEBP_MAX_SIDE or rows * h > _WEBP_MAX_SIDE:
        raise ValueError(f"{count} frames of {w}x{h} do not fit one WebP preview; lower max_side")
    sheet = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, frame in enumerate(frames):
        r, col = divmod(i, columns)
        sheet[r * h:(r + 1) * h, col * w:(col + 1) * w] = frame
    return sheet, columns
