"""Per-foreground trajectory control: keyframed boxes -> soft target alpha -> guidance of the mask segment.

Each foreground k gets keyframes (frame, x0, y0, x1, y1) in normalized [0, 1] image coordinates,
linearly interpolated over the clip. The boxes become a feathered alpha video, encoded by the mask
VAE into a target mask latent. During the early steps the model's clean estimate of mask_k is pulled
toward that target, so each foreground follows its own path even when paths cross (the layers keep
the objects apart).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from .layout import MASK, LayerLayout


@dataclass(frozen=True)
class Keyframe:
    frame: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1, normalized to [0, 1]


def parse_trajectories(text: str, num_foregrounds: int) -> dict[int, list[Keyframe]]:
    """JSON {"1": [[frame, x0, y0, x1, y1], ...], "2": [...]} -> keyframes per foreground index.

    Raises ValueError naming the foreground and keyframe that is wrong."""
    try:
        raw = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"trajectories: not valid JSON ({err}); expected {{\"1\": [[frame, x0, y0, x1, y1], ...]}}") from None
    if not isinstance(raw, dict):
        raise ValueError("trajectories: expected an object mapping foreground index to a list of keyframes")
    out = {}
    for key, frames in raw.items():
        if not str(key).isdigit() or not 1 <= int(key) <= num_foregrounds:
            raise ValueError(f"trajectories: foreground {key!r} is not valid; use 1..{num_foregrounds}")
        if not isinstance(frames, list) or not frames:
            raise ValueError(f"trajectories[{key}]: give a non-empty list of [frame, x0, y0, x1, y1]")
        keys = []
        for entry in frames:
            if not (isinstance(entry, list) and len(entry) == 5 and all(isinstance(v, (int, float)) for v in entry)):
                raise ValueError(f"trajectories[{key}]: {entry!r} is not [frame, x0, y0, x1, y1]")
            frame, x0, y0, x1, y1 = entry
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"trajectories[{key}]: box {entry[1:]} must satisfy 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")
            keys.append(Keyframe(int(frame), (float(x0), float(y0), float(x1), float(y1))))
        out[int(key)] = sorted(keys, key=lambda k: k.frame)
    return out


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
