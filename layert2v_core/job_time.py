"""How long a sampling job will take on this machine, known before its first step.

    seconds = DiT forwards the sampler will run x FLOPs of one forward / FLOP rate measured here

FLOPs of one forward (multiply-add = 2), per Wan block, with S video tokens, d = heads * head_dim,
F = ffn_dim: self-attention projections 4*2*S*d^2, its scores and weighted sum 2*2*S^2*d, the FFN
2*2*S*d*F, and per routing group (queries Q, visible text rows T) the cross-attention's query/output
projections 2*2*Q*d^2, key/value projections 2*2*T*d^2 and scores 2*2*Q*T*d. Forwards: one per step,
two on steps that run the negative prompt (CFG batched); a step cache can only lower it.

The rate is a matmul shaped like the DiT's FFN, in the DiT's dtype, timed on the job's device for
about 0.1 s (the fastest of a few runs): threads and dtype support (bf16 on a CPU is slow) are
measured, not assumed. Attention runs below matmul speed, small models pay per-kernel overhead and
other jobs on the machine slow the run, so the estimate is a lower bound (tests/test_model_defaults.py
compares it with a real step); it exists to refuse jobs that are hours or days long, before they start.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Optional

import torch

from .layout import LayerLayout
from .memory import DiTShape
from .sampler import SamplerConfig

LIMIT_ENV = "LAYERT2V_MAX_MINUTES"     # refuse jobs estimated longer than this; 0 = never refuse
DEFAULT_LIMIT_MINUTES = 60.0
CALIBRATION_SECONDS = 0.05             # timed matmul work per estimate
CALIBRATION_TRIALS = 5
MAX_CALIBRATION_ROWS = 8192


# ---- FLOPs ---------------------------------------------------------------------------------------
def block_flops(tokens: int, dim: int, ffn: int, cross: list[tuple[int, int]]) -> float:
    """One Wan block: self-attention projections + scores, FFN, and cross-attention per (queries, text rows)."""
    flops = 4 * 2 * tokens * dim * dim + 2 * 2 * tokens * tokens * dim + 2 * 2 * tokens * dim * ffn
    for queries, text in cross:
        flops += 2 * 2 * queries * dim * dim + 2 * 2 * text * dim * dim + 2 * 2 * queries * text * dim
    return flops


def dit_flops(layout: LayerLayout, model, text_len: int, batch: int = 1) -> float:
    """One layered forward of `batch` samples; `model` as DiTShape.of takes it."""
    shape = DiTShape.of(model)
    per_segment = layout.tokens_per_segment
    cross = [(per_segment * len(group), text_len * len(visible)) for visible, group in layout.routing_groups()]
    return batch * shape.layers * block_flops(layout.num_tokens, shape.dim, shape.ffn_dim, cross)


def vanilla_flops(tokens: int, model, text_len: int, batch: int = 1) -> float:
    """One vanilla Wan forward over `tokens` video tokens and one prompt."""
    shape = DiTShape.of(model)
    return batch * shape.layers * block_flops(tokens, shape.dim, shape.ffn_dim, [(tokens, text_len)])


def planned_forwards(config: SamplerConfig, guided: bool) -> int:
    """Samples through the block stack over the whole run (SamplingStats.forwards without a step cache)."""
    return sum(2 if guided and config.guided_step(i) else 1 for i in range(config.steps))


# ---- rate ----------------------------------------------------------------------------------------
def measure_rate(device, dtype: torch.dtype, shape: DiTShape, seconds: float = CALIBRATION_SECONDS,
                 clock=time.perf_counter) -> float:
    """FLOP/s of an FFN-shaped matmul (rows x d @ d x F) on `device` in `dtype`: rows grown until one
    product takes about a millisecond (from 1024 rows, up to MAX_CALIBRATION_ROWS), then the fastest of CALIBRATION_TRIALS
    runs of about `seconds` / CALIBRATION_TRIALS each. The fastest, because a busy machine can stall
    a short run for longer than it lasts: the estimate leans fast, so only a job that is too long
    even then is refused. `clock`: wall time (what the user waits); time.process_time gives CPU seconds."""
    device = torch.device(device)
    weight = torch.randn(shape.dim, shape.ffn_dim, device=device, dtype=dtype)
    # From 1024 rows, not a handful: a tiny product that one stall (first call, a busy machine) pushes past
    # a millisecond would stop the growth there and measure per-call overhead as the rate (seen: 400x
    # too slow on a server's first job, which was then refused).
    rows = 1024
    while True:
        x = torch.randn(rows, shape.dim, device=device, dtype=dtype)
        one = min(_timed(lambda: x @ weight, device, clock, repeats=1) for _ in range(3))
        if one >= 1e-3 or rows >= MAX_CALIBRATION_ROWS:
            break
        rows *= 4
    repeats = max(1, min(1000, int(seconds / CALIBRATION_TRIALS / max(one, 1e-6))))
    fastest = min(_timed(lambda: x @ weight, device, clock, repeats) for _ in range(CALIBRATION_TRIALS))
    return 2.0 * rows * shape.dim * shape.ffn_dim * repeats / max(fastest, 1e-9)


def _timed(fn, device: torch.device, clock, repeats: int) -> float:
    with torch.no_grad():
        fn()  # warm: kernels chosen, memory allocated
        _sync(device)
        start = clock()
        for _ in range(repeats):
            fn()
        _sync(device)
    return clock() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- estimate and limit --------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeEstimate:
    seconds: float
    steps: int
    forwards: int
    tokens: int
    flops_per_forward: float
    rate: float                  # FLOP/s measured on `device`
    device: str

    def describe(self) -> str:
        steps = f"{self.steps} step" + "s" * (self.steps != 1)
        return (f"about {duration_text(self.seconds)} on {self.device} ({steps}, {self.forwards} DiT "
                f"forwards over {self.tokens} tokens, {self.flops_per_forward / 1e12:.3g} TFLOP each at "
                f"{self.rate / 1e12:.3g} TFLOP/s measured here)")


def estimate_sampling_time(layout: LayerLayout, model, config: SamplerConfig, text_len: int, guided: bool,
                           device, dtype: torch.dtype, clock=time.perf_counter) -> TimeEstimate:
    shape = DiTShape.of(model)
    flops = dit_flops(layout, shape, text_len)
    forwards = planned_forwards(config, guided)
    rate = measure_rate(device, dtype, shape, clock=clock)
    return TimeEstimate(seconds=forwards * flops / rate, steps=config.steps, forwards=forwards,
                        tokens=layout.num_tokens, flops_per_forward=flops, rate=rate, device=str(device))


class TooSlowError(ValueError):
    """A job estimated to run longer than the limit: bad input (one line), refused before it starts."""


def time_limit() -> float:
    """Seconds a job may take: LAYERT2V_MAX_MINUTES (default 60) x 60; infinite when it is 0."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    try:
        minutes = float(text) if text else DEFAULT_LIMIT_MINUTES
    except ValueError:
        minutes = math.nan
    if not minutes >= 0 or math.isinf(minutes):
        raise ValueError(f"{LIMIT_ENV}={text!r} is not valid: give minutes (e.g. 120), or 0 for no limit")
    return math.inf if minutes == 0 else minutes * 60.0


def check_time(estimate: TimeEstimate, limit: float) -> TimeEstimate:
    if estimate.seconds > limit:
        raise TooSlowError(
            f"this job would take {estimate.describe()}, more than the {duration_text(limit)} allowed; lower "
            f"steps, width/height or frames (time grows with steps and faster than tokens), use a faster "
            f"device, or set {LIMIT_ENV}=0 (no limit) or a larger number of minutes to run it anyway"
        )
    return estimate


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 60:
        return f"{minutes:.0f} min"
    hours = minutes / 60
    if hours < 48:
        return f"{int(hours)} h" + (f" {int(minutes % 60)} min" if int(minutes % 60) else "")
    return f"{hours / 24:.0f} days"
