"""A synthetic layered clip with soft alpha edges, for tests and benchmarks (no model needed).

Smooth colour fields with a little grain (like decoded video), a moving foreground disc whose
alpha ramps from exactly 0 to exactly 1, and a background; `full` is their composite, so the
clip obeys the model's conventions (fg premultiplied, full = fg + bg * (1 - alpha)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticClip:
    straight: np.ndarray      # (F, H, W, 3) foreground colour, straight
    alpha: np.ndarray         # (F, H, W)
    background: np.ndarray    # (F, H, W, 3)

    @property
    def premultiplied(self) -> np.ndarray:
        return self.straight * self.alpha[..., None]

    @property
    def full(self) -> np.ndarray:
        return self.premultiplied + self.background * (1.0 - self.alpha[..., None])


def soft_rgba_clip(frames: int = 9, height: int = 48, width: int = 64, seed: int = 0,
                   grain: float = 0.01, tones: tuple = (0.15, 0.85)) -> SyntheticClip:
    """`tones`: the (darkest, brightest) value the colour fields sweep; (0, 1) reaches black and
    white (then grain clipped at both ends), for readers whose error depends on the tone."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = y / height, x / width
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)[:, None, None]

    low, high = tones

    def field(phase):  # under one cycle across the frame: gradients like real footage
        wave = np.sin(2 * np.pi * (0.6 * x + (0.3 + phase) * y + 0.5 * t + phase))
        return low + (high - low) * (0.5 + 0.5 * wave)

    straight = np.stack([field(0.0), field(0.33), field(0.66)], axis=-1)
    background = np.stack([0.8 * field(0.2),
                           field(0.5), 1.0 - field(0.8)], axis=-1)
    cx, cy = 0.3 + 0.4 * t, 0.5 + 0.1 * np.sin(2 * np.pi * t)
    dist = np.hypot((x - cx) * width / height, y - cy)
    # Opaque core, a soft ramp over ~12% of the height, then exactly transparent.
    alpha = np.clip((0.32 - dist) / 0.12, 0.0, 1.0)
    straight = straight + rng.normal(0.0, grain, straight.shape)
    background = background + rng.normal(0.0, grain, background.shape)
    return SyntheticClip(
        straight=np.clip(straight, 0, 1).astype(np.float32),
        alpha=alpha.astype(np.float32),
        background=np.clip(background, 0, 1).astype(np.float32),
    )
