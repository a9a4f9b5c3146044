"""AdamW and the linear-warm-up + cosine learning-rate schedule (paper: lr 1e-4, wd 0.01, 500 warm-up).

Mixed precision: the frozen weights may be bf16, but every trained tensor and its AdamW state are
fp32. In bf16 an update of 3e-5 to a weight of 0.05 is below half a unit in the last place (2^-9 *
0.05 = 1e-4), so most LoRA entries would never move and weight decay (1 - lr * wd) rounds to 1.
Autocast still runs the matmuls in bf16; only the stored weights and the optimizer math are fp32.
"""

from __future__ import annotations

import math

import torch

from .config import OptimConfig


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.AdamW:
    # No weight decay on LayerAdaLN-like vectors and biases would be the usual refinement; the paper
    # states a single wd, so one group.
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), eps=cfg.eps)


def warmup_cosine(step: int, warmup: int, total: int, floor: float) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg: OptimConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(cfg.warmup_steps, max(0, total_steps - 1))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup, total_steps, cfg.min_lr_ratio)
    )


def to_fp32_master(named: dict[str, torch.nn.Parameter]) -> None:
    """Store trained tensors in fp32 (peft creates LoRA in the base layer's dtype)."""
    for p in named.values():
        if p.dtype != torch.float32:
            p.data = p.data.float()


def require_fp32(named: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    """Fail before training if a trained tensor or (once created) its optimizer state is not fp32."""
    wrong = [k for k, p in named.items() if p.dtype != torch.float32]
    for p, state in getattr(optimizer, "state", {}).items():
        wrong += [f"optimizer.{k}" for k, v in state.items() if torch.is_tensor(v) and v.numel() > 1
                  and v.dtype != torch.float32]
    if wrong:
        raise TypeError(f"trained tensors must be fp32 (frozen weights may be bf16); not fp32: {wrong[:5]}")
