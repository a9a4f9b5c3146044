"""Per-foreground trajectory control: keyframed boxes -> soft target alpha -> guidance of the mask segment.

Each foreground k gets keyframes (frame, x0, y0, x1, y1) in normalized [0, 1] image coordinates,
linearly interpolated over the clip. The boxes become a feathered alpha video, encoded by the mask
VAE into a target mask latent. During the early steps the model's clean estimate of mask_k is pulled
toward that target, so each foreground follows its own path even when paths cross (the layers keep
the objects apart).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from .layout import MASK, LayerLayout


@dataclass(frozen=True)
class Keyframe:
    frame: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1, normalized to [0, 1]


MAX_TRAJECTORY_CHARS = 200_000   # a hand-written or generated path is a few KB
MAX_KEYFRAMES = 10_000            # per foreground
MAX_KEYFRAME_FRAME = 100_000      # far beyond any clip; rejects 1e300 and friends
_MAX_NESTING = 3                  # {"1": [[frame, x0, y0, x1, y1]]}
FORMAT_HINT = '{"1": [[frame, x0, y0, x1, y1], ...]}'


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside strings, found without building anything (a 100,000-deep
    document must be refused before json.loads recurses into it)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _reject_constant(name: str):
    raise ValueError(f"trajectories: {name} is not a usable number; give finite numbers only")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_trajectories(text: str, num_foregrounds: int) -> dict[int, list[Keyframe]]:
    """JSON {"1": [[frame, x0, y0, x1, y1], ...], "2": [...]} -> keyframes per foreground index.

    Raises ValueError naming the foreground and keyframe that is wrong. Bounded before parsing
    (length, nesting), so no text makes it recurse, overflow or allocate without limit."""
    if not isinstance(text, str):
        raise ValueError(f"trajectories: expected JSON text, got {type(text).__name__}")
    if len(text) > MAX_TRAJECTORY_CHARS:
        raise ValueError(f"trajectories: {len(text):,} characters is more than the {MAX_TRAJECTORY_CHARS:,} allowed; "
                         f"give fewer keyframes ({FORMAT_HINT})")
    if _nesting_depth(text) > _MAX_NESTING:
        raise ValueError(f"trajectories: nested {_nesting_depth(text)} levels deep; the format is {FORMAT_HINT} "
                         f"(3 levels)")
    try:
        raw = json.loads(text, parse_constant=_reject_constant) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"trajectories: not valid JSON ({err}); expected {FORMAT_HINT}") from None
    except ValueError as err:  # _reject_constant, or an integer with thousands of digits
        message = str(err) if str(err).startswith("trajectories:") else f"trajectories: a number is out of range ({err})"
        raise ValueError(message) from None
    if not isinstance(raw, dict):
        raise ValueError(f"trajectories: expected an object mapping foreground index to a list of keyframes, {FORMAT_HINT}")
    out = {}
    for key, frames in raw.items():
        index = int(key) if key.isascii() and key.isdigit() and len(key) < 4 else None
        if index is None or not 1 <= index <= num_foregrounds:
            raise ValueError(f"trajectories: foreground {key!r} is not valid; use 1..{num_foregrounds}")
        if index in out:
            raise ValueError(f"trajectories: foreground {index} is given twice ({key!r}); give each foreground once")
        if not isinstance(frames, list) or not frames:
            raise ValueError(f"trajectories[{key}]: give a non-empty list of [frame, x0, y0, x1, y1]")
        if len(frames) > MAX_KEYFRAMES:
            raise ValueError(f"trajectories[{key}]: {len(frames):,} keyframes; at most {MAX_KEYFRAMES:,}")
        keys = []
        for entry in frames:
            if not (isinstance(entry, list) and len(entry) == 5 and all(_is_number(v) for v in entry)):
                raise ValueError(f"trajectories[{key}]: {_short(entry)} is not [frame, x0, y0, x1, y1] of finite numbers")
            frame, x0, y0, x1, y1 = entry
            if frame != int(frame) or not 0 <= frame <= MAX_KEYFRAME_FRAME:
                raise ValueError(f"trajectories[{key}]: frame {_short(frame)} must be a whole number in "
                                 f"0..{MAX_KEYFRAME_FRAME:,} (the clip's frame index)")
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"trajectories[{key}]: box {_short(entry[1:])} must satisfy 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
            keys.append(Keyframe(int(frame), (float(x0), float(y0), float(x1), float(y1))))
        out[index] = sorted(keys, key=lambda k: k.frame)
    return out


def check_foregrounds(keyframes: dict[int, list[Keyframe]], layout: LayerLayout) -> None:
    """Boxes only for foregrounds this generation has (reported on the trajectory, not the sampler)."""
    extra = sorted(k for k in keyframes if k > layout.num_foregrounds)
    if extra:
        raise ValueError(f"trajectory input has boxes for foreground {', '.join(map(str, extra))} but this generation "
                         f"has {layout.num_foregrounds} foreground(s); give boxes for 1..{layout.num_foregrounds} only, "
                         "or generate more foregrounds")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def interpolate_boxes(keyframes: list[Keyframe], num_frames: int) -> torch.Tensor:
    """(F, 4) box per frame: linear between keyframes, held constant before the first and after the last."""
    frames = torch.tensor([k.frame for k in keyframes], dtype=torch.float32)
    boxes = torch.tensor([k.box for k in keyframes], dtype=torch.float32)
    t = torch.arange(num_frames, dtype=torch.float32)
    idx = torch.searchsorted(frames, t, right=True).clamp(1, max(len(keyframes) - 1, 1))
    lo, hi = idx - 1, idx.clamp(max=len(keyframes) - 1)
    span = (frames[hi] - frames[lo]).clamp_min(1e-6)
    w = ((t - frames[lo]) / span).clamp(0, 1)[:, None]
    return boxes[lo] * (1 - w) + boxes[hi] * w


def boxes_to_alpha(boxes: torch.Tensor, height: int, width: int, feather: float = 0.04) -> torch.Tensor:
    """(F, 4) normalized boxes -> (F, H, W) soft alpha: 1 inside, a linear ramp of `feather` outside."""
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32) + 0.5) / width
    x0, y0, x1, y1 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    dx = torch.maximum(x0 - xs.view(1, 1, -1), xs.view(1, 1, -1) - x1).clamp_min(0)
    dy = torch.maximum(y0 - ys.view(1, -1, 1), ys.view(1, -1, 1) - y1).clamp_min(0)
    distance = torch.sqrt(dx**2 + dy**2)
    return (1 - distance / max(feather, 1e-6)).clamp(0, 1)


class TrajectoryGuidance:
    """Sampler guidance: pull each guided mask segment's x0 estimate toward its target latent.

    strength in [0, 1] (1 = replace the estimate); applied for steps < end_step."""

    def __init__(self, layout: LayerLayout, targets: dict[int, torch.Tensor], strength: float, end_step: int):
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength={strength!r} is not valid: use 0..1")
        if end_step < 0:
            raise ValueError(f"end_step={end_step!r} is not valid: use 0 or more")
        self.slices = {k: layout.time_slice(f"{MASK}_{k}") for k in targets}
        self.targets = targets
        self.strength = float(strength)
        self.end_step = int(end_step)

    def __call__(self, step: int, sigma: float, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if step >= self.end_step or sigma <= 0 or self.strength == 0:
            return v
        denoised = x - sigma * v
        for k, sl in self.slices.items():
            target = self.targets[k].to(denoised)
            denoised[:, :, sl] = denoised[:, :, sl] * (1 - self.strength) + target * self.strength
        return (x - denoised) / sigma


def trajectory_targets(mask_vae, keyframes: dict[int, list[Keyframe]], layout: LayerLayout,
                       feather: float = 0.04) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(target mask latents, target alphas (F, H, W)) per guided foreground."""
    latents, alphas = {}, {}
    for k, keys in keyframes.items():
        alpha = boxes_to_alpha(interpolate_boxes(keys, layout.num_frames), layout.height, layout.width, feather)
        with torch.no_grad():
            latents[k] = mask_vae.encode_alpha(alpha[None, None])
        alphas[k] = alpha
    return latents, alphas
