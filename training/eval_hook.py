"""Evaluation after a stage (or every N steps): sample held-out prompts and save a contact sheet PNG.

Layered sheet, one row per (prompt, frame): full | background | foreground_k over a checkerboard |
alpha_k | recomposite (sum_k fg_k + bg * (1 - sum_k alpha_k), premultiplied foregrounds).
Mask-VAE sheet (stage 1): GT alpha | decoded alpha | |error|.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from layert2v_core.layout import BACKGROUND, FULL
from layert2v_core.pipeline import LayerFrames, LayerPrompts, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig

MIN_TILE = 96  # tiny runs are 32-64 px; upscale (nearest) so the sheet is readable


def checkerboard(height: int, width: int, cell: int = 8) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    light = ((y // cell + x // cell) % 2).astype(np.float32)
    return np.repeat((0.6 + 0.3 * light)[..., None], 3, axis=-1)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().clamp(0, 1).numpy()


def layered_tiles(frames: LayerFrames, frame: int) -> tuple[list[str], list[np.ndarray]]:
    """(column labels, (H, W, 3) float tiles) of one frame of a generation."""
    layout = frames.layout
    full, bg = _np(frames.rgb[FULL][frame]), _np(frames.rgb[BACKGROUND][frame])
    labels, tiles = ["full", "background"], [full, bg]
    recomposite = np.zeros_like(full)
    total_alpha = np.zeros(full.shape[:2], dtype=np.float32)
    board = checkerboard(*full.shape[:2], cell=max(2, full.shape[0] // 8))
    for k in range(1, layout.num_foregrounds + 1):
        fg, alpha = frames.foreground(k)
        fg, alpha = _np(fg[frame]), _np(alpha[frame])
        labels += [f"fg {k} / checker", f"alpha {k}"]
        tiles += [fg + board * (1 - alpha[..., None]), np.repeat(alpha[..., None], 3, axis=-1)]
        recomposite += fg
        total_alpha += alpha
    recomposite += bg * np.clip(1 - total_alpha, 0, 1)[..., None]
    labels.append("recomposite")
    tiles.append(np.clip(recomposite, 0, 1))
    return labels, tiles


def save_sheet(rows: list[list[np.ndarray]], labels: list[str], path: str | Path, row_labels=None) -> Path:
    """Grid of equally sized float tiles with a header row of labels."""
    h, w = rows[0][0].shape[:2]
    scale = max(1, int(np.ceil(MIN_TILE / min(h, w))))
    th, tw, pad, header = h * scale, w * scale, 2, 14
    left = 0 if not row_labels else 8 * max(len(s) for s in row_labels) + 4
    cols = max(len(r) for r in rows)
    sheet = Image.new("RGB", (left + cols * (tw + pad), header + len(rows) * (th + pad)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((left + c * (tw + pad) + 2, 1), label, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        y = header + r * (th + pad)
        if row_labels:
            draw.text((2, y + th // 2 - 5), row_labels[r], fill=(0, 0, 0))
        for c, tile in enumerate(row):
            img = Image.fromarray((np.clip(tile, 0, 1) * 255).round().astype(np.uint8))
            sheet.paste(img.resize((tw, th), Image.NEAREST), (left + c * (tw + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def pick_frames(num_frames: int) -> list[int]:
    return sorted({0, num_frames // 2, num_frames - 1})


@torch.no_grad()
def generate_layers(pipeline: LayerT2VPipeline, prompt: dict, num_frames: int, height: int, width: int,
                    sampler: SamplerConfig) -> LayerFrames:
    """Held-out prompt {full, background, foregrounds} -> decoded layers, through the core pipeline."""
    prompts = LayerPrompts(full=prompt["full"], background=prompt["background"], foregrounds=list(prompt["foregrounds"]))
    layout = pipeline.layout(prompts.num_foregrounds, num_frames, height, width)
    conditioning = pipeline.encode_prompts(prompts, guided=float(sampler.cfg) != 1.0)
    latent = pipeline.sample_latent(layout, conditioning, sampler)
    return pipeline.decode(latent, layout)


def layered_contact_sheet(pipeline: LayerT2VPipeline, prompts: list[dict], num_frames: int, height: int, width: int,
                          sampler: SamplerConfig, path: str | Path) -> Path:
    rows, row_labels, labels = [], [], []
    for i, prompt in enumerate(prompts):
        frames = generate_layers(pipeline, prompt, num_frames, height, width, sampler)
        for f in pick_frames(num_frames):
            labels, tiles = layered_tiles(frames, f)
            rows.append(tiles)
            row_labels.append(f"p{i} f{f}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    (Path(path).with_suffix(".txt")).write_text("\n".join(f"p{i}: {p}" for i, p in enumerate(prompts)) + "\n")
    return save_sheet(rows, labels, path, row_labels)


def alpha_contact_sheet(gt: torch.Tensor, pred: torch.Tensor, path: str | Path) -> Path:
    """gt / pred (N, 1, F, H, W) -> rows per (item, frame): GT | decoded | |error|."""
    rows, row_labels = [], []
    for n in range(gt.shape[0]):
        for f in pick_frames(gt.shape[2]):
            g, p = _np(gt[n, 0, f]), _np(pred[n, 0, f])
            rows.append([np.repeat(x[..., None], 3, axis=-1) for x in (g, p, np.abs(g - p))])
            row_labels.append(f"m{n} f{f}")
    return save_sheet(rows, ["GT alpha", "decoded", "|error|"], path, row_labels)


# ---- how long an evaluation may take (the barrier the other processes wait at) ----------------------
EVAL_FLOPS = {"cuda": 100e12, "cpu": 20e9}   # sustained FLOP/s assumed: 1/8 of an H200's bf16 peak; a CPU core pair
EVAL_SAFETY = 4.0                             # the barrier waits this many times the estimate


def eval_seconds_estimate(config, task, device) -> float:
    """DiT compute of the run's evaluation: prompts x steps x (2 with CFG) forwards of 2 * params * tokens
    FLOPs plus attention (4 * tokens^2 * dim per layer), at EVAL_FLOPS; the VAE decode adds half."""
    dit = getattr(task, "dit", None)
    if dit is None:
        return 0.0
    ev, last = config.eval, config.phases[-1]
    layout = task.encoder.layout(ev.num_foregrounds, ev.num_frames or last.num_frames, ev.height or last.height,
                                 ev.width or last.width)
    tokens, params = layout.num_tokens, sum(p.numel() for p in dit.parameters())
    per_forward = 2 * params * tokens + 4 * tokens ** 2 * dit.inner_dim * len(dit.base.blocks)
    forwards = ev.num_prompts * ev.steps * (2 if ev.cfg > 1 else 1)
    return 1.5 * forwards * per_forward / EVAL_FLOPS.get(torch.device(device).type, EVAL_FLOPS["cpu"])


def eval_barrier_timeout(config, task, device) -> float:
    """Seconds the other processes wait for the main one's evaluation: distributed.eval_timeout_s when
    set, else EVAL_SAFETY x the estimate, never less than the run's collective timeout."""
    if config.distributed.eval_timeout_s is not None:
        return float(config.distributed.eval_timeout_s)
    return max(config.distributed.timeout_s, EVAL_SAFETY * eval_seconds_estimate(config, task, device))
