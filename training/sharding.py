"""Sharded training with torch FSDP2 (`fully_shard`): `distributed.strategy: fsdp`.

Each DiT block (a LayeredWanBlock, whose own forward runs the layered step) is one shard unit and the
LayeredWanTransformer root holds the rest (embedders, head, LayerAdaLN). Frozen bf16 weights and fp32
trainable tensors live in the same units (FSDP2 shards per parameter, so mixed dtypes are fine).
The frozen VAE / mask VAE / text encoder stay replicated: nothing of theirs trains in stages 2-3.

Why our own call and not accelerate's FSDP plugin: accelerate only enables FSDP on accelerator
devices, so the plugin could never be exercised by the 2-process CPU (gloo) parity test; fully_shard
itself runs the same on gloo and NCCL.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn

from layert2v_core.dit import LayeredWanTransformer


def sharded_dits(model: nn.Module) -> list[LayeredWanTransformer]:
    return [m for m in model.modules() if isinstance(m, LayeredWanTransformer)]


def shard(model: nn.Module, stage: str) -> None:
    from torch.distributed.fsdp import fully_shard

    dits = sharded_dits(model)
    if not dits:
        raise ValueError(f"distributed.strategy=fsdp shards the DiT; stage {stage!r} trains none: use ddp")
    for dit in dits:
        for block in dit.base.blocks:
            fully_shard(block)
        fully_shard(dit)
    outside = [n for n, p in model.named_parameters() if p.requires_grad and not _is_dtensor(p)]
    if outside:  # they would train unsynchronised: every trainable tensor must be inside a shard unit
        raise ValueError(f"distributed.strategy=fsdp: trainable tensors outside the DiT ({outside[:3]}); use ddp")


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def full_tensors(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors of (possibly sharded) parameters; a collective: every process must call it."""
    return {k: (p.full_tensor() if _is_dtensor(p) else p).detach() for k, p in named.items()}


@contextmanager
def gradient_sync(model: nn.Module, sync: bool):
    """Skip the reduce-scatter on accumulation micro-steps (FSDP's counterpart of DDP's no_sync)."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_requires_gradient_sync(sync, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.set_requires_gradient_sync(True, recurse=False)


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
