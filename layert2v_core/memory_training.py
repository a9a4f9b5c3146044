"""Training memory plan: what one training process holds at its worst moment, known before step 1.

    weights          frozen parameter bytes (DiT, VAE, mask VAE, text encoder); the DiT's are divided
                     by the process count when it is sharded (FSDP)
    trainable state  n * (4 fp32 weight + 4 fp32 grad + 8 AdamW m, v) + 4 per EMA shadow
    activations      tensors autograd saves in the forward, kept until the backward uses them:
                     traced (below), plus, with gradient checkpointing, the block inputs (layers x B S d e)
    mask loss        tensors saved while decoding the mask latents for L_mask (traced)
    runtime          what is not tensors (CPU: allocator arenas, thread pools; a measured constant)
    (the text-embedding cache is held in CPU RAM, bounded in bytes: not on the GPU)

Gradients of activations add no separate term: the backward frees saved tensors as it produces
gradients of about their size (measured on CPU: the peak stays within the sum above).

Saved-tensor bytes are traced, not guessed: the real modules run at two small sizes under autograd
with a saved_tensors_hooks counter, and the count is extrapolated linearly in the number of pixels
(memory-efficient / flash attention keeps no S x S matrix, so every saved tensor is linear in the
tokens; the text part is the constant). Checked against measured peaks on CPU in
tests/test_training_memory.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .memory import GIB, InsufficientMemoryError

ADAMW_BYTES = 4 + 4 + 8      # fp32 weight, fp32 grad, fp32 exp_avg + exp_avg_sq
EMA_BYTES = 4


def saved_tensor_bytes(run: Callable[[], object], exclude: Optional[set] = None) -> int:
    """Bytes of the distinct storages autograd saves while `run()` executes (parameters excluded)."""
    exclude = exclude if exclude is not None else set()
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in exclude and t.device.type != "meta":
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = run()
    del out
    return sum(seen.values())


def parameter_storages(*modules: torch.nn.Module) -> set:
    return {p.untyped_storage().data_ptr() for m in modules if m is not None for p in m.parameters()}


@dataclass
class LinearFit:
    """bytes(n) = slope * n + constant, from two traced points (n: pixels, tokens, ...)."""
    slope: float
    constant: float

    @classmethod
    def through(cls, n1: int, b1: int, n2: int, b2: int) -> "LinearFit":
        slope = (b2 - b1) / (n2 - n1)
        return cls(slope, max(0.0, b1 - slope * n1))

    def __call__(self, n: float) -> int:
        return int(self.slope * n + self.constant)


def module_bytes(module: Optional[torch.nn.Module], trainable: bool = False) -> int:
    if module is None:
        return 0
    seen, total = set(), 0
    for p in module.parameters():
        if p.requires_grad == trainable and id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


def trainable_state_bytes(numel: int, ema: bool) -> int:
    return numel * (ADAMW_BYTES + (EMA_BYTES if ema else 0))


@dataclass
class TrainingMemoryPlan:
    """Bytes per process by part; `advice` names, per part, the setting that shrinks it."""
    parts: dict = field(default_factory=dict)
    advice: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    budget: Optional[int] = None
    where: str = ""

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def table(self) -> str:
        width = max(len(k) for k in self.parts) if self.parts else 10
        rows = [f"  {k:<{width}}  {v / GIB:8.2f} GiB" for k, v in self.parts.items()]
        rows.append(f"  {'total':<{width}}  {self.total / GIB:8.2f} GiB"
                    + (f"  (budget {self.budget / GIB:.1f} GiB on {self.where})" if self.budget else ""))
        return "\n".join(rows + [f"  note: {n}" for n in self.notes])

    def check(self, what: str) -> "TrainingMemoryPlan":
        """Raise InsufficientMemoryError (one line) when the total exceeds the budget."""
        if self.budget is None or self.total <= self.budget:
            return self
        largest = max((k for k in self.parts if k in self.advice), key=lambda k: self.parts[k], default=None)
        hint = f"; largest part: {largest} {self.parts[largest] / GIB:.1f} GiB, change {self.advice[largest]}" if largest else ""
        raise InsufficientMemoryError(
            f"{what}: estimated {self.total / GIB:.1f} GiB per process vs {self.budget / GIB:.1f} GiB on "
            f"{self.where}{hint} (or memory.check: false to try anyway)"
        )
