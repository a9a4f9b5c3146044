"""Step caching: skip the DiT's block stack on steps where its input barely moved, reusing the residual
(blocks' output - blocks' input) of the last computed step. Training-free.

Method: TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model",
arXiv 2411.19108). The cheap signal is the first block's timestep-modulated input (norm1(x) * (1 + scale)
+ shift, per segment, so per-segment timesteps and LayerAdaLN rows count): its relative L1 change from
the previous step is accumulated, and while the sum stays under `threshold` the cached residual stands in
for the blocks. Computing resets the sum. No per-model polynomial rescale is fitted (TeaCache's optional
refinement): the threshold is in raw relative-L1 units.

Why not diffusers' hooks (FirstBlockCache / MagCache / TaylorSeer in 0.42.1): they key on registered
block classes and one shared residual per cache context, and expose no count of skipped steps; this cache
is ~50 lines, sees the layered modulation directly, and the sampler can force steps and count forwards.

Guards: the first step and the last step always compute; at most `max_skips` cached steps in a row
(MagCache's K); a change of batch (classifier-free guidance switched off mid-run) computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepCacheConfig:
    threshold: float = 0.0   # 0 = off; larger = more steps reuse the residual
    max_skips: int = 2       # cached steps in a row before one is computed again

    @property
    def enabled(self) -> bool:
        return float(self.threshold) > 0.0

    def validate(self) -> None:
        if not 0.0 <= float(self.threshold) <= 10.0:
            raise ValueError(f"step_cache={self.threshold!r} is not valid: use 0 (off) to 10; 0.05-0.3 is typical")
        if not isinstance(self.max_skips, int) or self.max_skips < 1:
            raise ValueError(f"cache_max_skips={self.max_skips!r} is not valid: use an integer >= 1")


def modulated_input(block, tokens: torch.Tensor, modulation: torch.Tensor, segments: int) -> torch.Tensor:
    """The first block's self-attention input (what TeaCache watches), per-segment modulation applied."""
    batch, seq, dim = tokens.shape
    # Read outside the block's forward: a streamed block (offload.py) keeps this table on the CPU.
    table = block.scale_shift_table.to(tokens.device)
    shift, scale = (table.float() + modulation).chunk(6, dim=2)[:2]
    normed = block.norm1(tokens.float()).view(batch, segments, seq // segments, dim)
    return normed * (1 + scale) + shift


class StepCache:
    """One generation's cache. Pass `runner(force)` to the DiT forward as `blocks` once per step."""

    def __init__(self, config: StepCacheConfig):
        config.validate()
        self.config = config
        self.accumulated = 0.0
        self.previous_signal: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.skips_in_row = 0
        self.computed = 0   # steps whose blocks ran
        self.skipped = 0    # steps that reused the residual

    def runner(self, force: bool = False):
        def run(dit, tokens, modulation, segments, run_blocks):
            signal = modulated_input(dit.base.blocks[0], tokens, modulation, segments)
            reuse = not force and self._may_reuse(signal, tokens)
            self.previous_signal = signal
            if reuse:
                self.skipped += 1
                self.skips_in_row += 1
                return (tokens.float() + self.residual).type_as(tokens)
            out = run_blocks(tokens)
            self.residual = out.float() - tokens.float()
            self.computed += 1
            self.skips_in_row = 0
            self.accumulated = 0.0
            return out
        return run

    def _may_reuse(self, signal: torch.Tensor, tokens: torch.Tensor) -> bool:
        previous = self.previous_signal
        if previous is None or self.residual is None or previous.shape != signal.shape \
                or self.residual.shape != tokens.shape or self.skips_in_row >= self.config.max_skips:
            return False
        change = float((signal - previous).abs().mean() / previous.abs().mean().clamp_min(1e-12))
        self.accumulated += change
        return self.accumulated < float(self.config.threshold)
