"""Input checks shared by every writer. Each error is a ValueError that names the bad argument.

Checks run before anything touches the disk, so a bad call leaves no partial output behind.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from .conventions import check_alpha_mode

# Values further than this outside [0, 1] are a convention mistake ([-1, 1] or [0, 255] data), not
# VAE overshoot; values within it are clipped.
RANGE_SLACK = 0.5


def as_rgb_frames(x, name: str = "rgb") -> np.ndarray:
    """(F, H, W, 3) float in [0, 1] (numpy or torch) -> contiguous float32 numpy, clipped."""
    arr = _to_float32(x, name)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(
            f"{name} must have shape (frames, height, width, 3), channels last, got "
            f"{tuple(arr.shape)}; pass alpha separately as (frames, height, width)")
    _check_nonempty(arr, name)
    return _check_values(arr, name)


def as_alpha_frames(x, like: np.ndarray, name: str = "alpha") -> np.ndarray:
    """(F, H, W) or (F, H, W, 1) float in [0, 1] matching `like`'s frames and size."""
    arr = _to_float32(x, name)
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.shape != like.shape[:3]:
        raise ValueError(
            f"{name} must have shape (frames, height, width) = {tuple(like.shape[:3])} to match "
            f"its RGB layer, got {tuple(np.shape(x))}")
    return _check_values(arr, name)


def check_fps(fps, name: str = "fps") -> Fraction:
    """Positive finite frame rate -> exact Fraction (29.97 -> 30000/1001, as editors expect)."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)):
        raise ValueError(f"{name} must be a number > 0, got {fps!r}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {fps!r}")
    if isinstance(fps, Fraction):
        return fps
    ntsc = round(fps * 1.001)
    if fps != int(fps) and abs(fps * 1.001 - ntsc) < 1e-3:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(fps).limit_denominator(1001)


def check_alpha_args(alpha, alpha_mode, name: str = "alpha_mode"):
    """An alpha needs an explicit mode: guessing it is how straight/premultiplied mix-ups start."""
    if alpha is None:
        return None
    if alpha_mode is None:
        raise ValueError(f"{name} is required when alpha is given: 'straight' or 'premultiplied'")
    return check_alpha_mode(alpha_mode, name)


def check_choice(value, choices, name: str):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_progress(progress, name: str = "progress"):
    if progress is not None and not callable(progress):
        raise ValueError(f"{name} must be a callable(done, total) or None, got {progress!r}")
    return progress


def _to_float32(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().float().numpy()
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be a float array or tensor in [0, 1], got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_nonempty(arr: np.ndarray, name: str) -> None:
    if 0 in arr.shape:
        raise ValueError(f"{name} is empty: shape {tuple(arr.shape)}")


def _check_values(arr: np.ndarray, name: str) -> np.ndarray:
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.argwhere(~finite)
        raise ValueError(f"{name} contains {len(bad)} NaN/inf values (first at index {tuple(bad[0])})")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(
            f"{name} must hold values in [0, 1], got [{lo:.3g}, {hi:.3g}] "
            f"(convert [-1, 1] or [0, 255] data first)")
    if lo < 0 or hi > 1:
        arr = np.clip(arr, 0.0, 1.0)  # a new array: never modify the caller's data
    return arr
