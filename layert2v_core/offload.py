"""Weight placement: a model that computes on one device (a GPU) while its weights live on another (the
CPU), in full or in part.

A host that manages accelerator memory (ComfyUI: `load_models_gpu`, --lowvram, --novram) hands a model
a budget of bytes it may keep on the device. `WeightPlacement` honours it: the model's base (every
weight outside its streamable blocks: embeddings, norms, tables read outside any block) goes to the
device, then as many whole blocks as the budget still holds after one block's worth of room for
streaming; every other block stays on the offload device and is copied in just before it runs and
dropped right after (forward hooks), so at most one streamed block is on the device at a time. With no
budget, or one the whole model fits in, the model moves whole and no hook is left.

A block must touch only its own weights inside its own forward: true of the DiT's transformer blocks
and of UMT5's encoder blocks. A model that names no blocks (the VAE, under 1 GB) always moves whole.
Weights move by swapping `tensor.data`, so parameters keep their identity (optimizers, LoRA wrappers
and anyone holding a parameter see the same object).
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import torch
import torch.nn as nn


def unique_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of `module` and its children, each once (tied weights count once)."""
    seen, out = set(), []
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append(tensor)
    return out


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _move(tensors, device: torch.device) -> None:
    for t in tensors:
        if t.device != device:
            t.data = t.data.to(device)


class _Streamer:
    """Forward hooks of one streamed block: its weights on the compute device only while it runs.
    Holds the block's tensors, not the block or the placement, so no reference cycle keeps a model alive."""

    def __init__(self, tensors: list[torch.Tensor], device: torch.device):
        self.tensors, self.device, self.stored = tensors, device, None

    def fetch(self, module, args):
        self.stored = [t.data for t in self.tensors]
        for t in self.tensors:
            t.data = t.data.to(self.device, non_blocking=True)

    def drop(self, module, args, output):
        if self.stored is not None:  # also after an exception (always_call): the copies never stay behind
            for t, stored in zip(self.tensors, self.stored):
                t.data = stored
            self.stored = None


class WeightPlacement:
    def __init__(self, model: nn.Module, blocks: Sequence[nn.Module] = (), offload_device="cpu"):
        self.offload_device = torch.device(offload_device)
        self._blocks = list(blocks)
        self._block_tensors = [unique_tensors(b) for b in self._blocks]
        in_blocks = {id(t) for ts in self._block_tensors for t in ts}
        self._base = [t for t in unique_tensors(model) if id(t) not in in_blocks]
        self.base_bytes = tensor_bytes(self._base)
        self.block_bytes = [tensor_bytes(ts) for ts in self._block_tensors]
        self.device: Optional[torch.device] = None   # where the placed weights are; None: all offloaded
        self._resident = [False] * len(self._blocks)
        self._hooks: dict[int, list] = {}

    # ---- what is where -------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.base_bytes + sum(self.block_bytes)

    @property
    def loaded_bytes(self) -> int:
        """Weight bytes kept on the compute device (streamed blocks not counted)."""
        if self.device is None:
            return 0
        return self.base_bytes + sum(b for b, r in zip(self.block_bytes, self._resident) if r)

    @property
    def streamed_blocks(self) -> int:
        return 0 if self.device is None else self._resident.count(False)

    @property
    def streaming_bytes(self) -> int:
        """Device memory a streamed block takes while it runs (its largest), 0 when nothing streams."""
        if self.device is None:
            return 0
        return max((b for b, r in zip(self.block_bytes, self._resident) if not r), default=0)

    # ---- moves ---------------------------------------------------------------------------------
    def place(self, device, budget: Optional[float] = None) -> int:
        """Weights onto `device` within `budget` bytes (None: all of them); returns the bytes placed.

        The base always goes (the model cannot run without it), even past the budget. Blocks already
        on the device are kept first, so a larger budget adds blocks without moving the others."""
        device = torch.device(device)
        if self.device is not None and self.device != device:
            self.offload()
        self.device = device
        _move(self._base, device)
        if budget is None or budget >= self.size:
            keep = [True] * len(self._blocks)
        else:
            room = budget - self.base_bytes - max(self.block_bytes, default=0)
            keep = [False] * len(self._blocks)
            order = sorted(range(len(self._blocks)), key=lambda i: not self._resident[i])
            for i in order:
                if self.block_bytes[i] <= room:
                    keep[i] = True
                    room -= self.block_bytes[i]
        for i, resident in enumerate(keep):
            self._make_resident(i) if resident else self._make_streamed(i)
        return self.loaded_bytes

    def release(self, nbytes: float) -> int:
        """Stream blocks that were resident (the last first) until `nbytes` are off the device; returns
        the bytes freed. The base stays: only `offload` takes it away."""
        freed = 0
        for i in reversed(range(len(self._blocks))):
            if freed >= nbytes:
                break
            if self.device is not None and self._resident[i]:
                self._make_streamed(i)
                freed += self.block_bytes[i]
        return freed

    def offload(self) -> None:
        """Every weight back to the offload device, no hook left."""
        for i in list(self._hooks):
            self._remove_hooks(i)
        _move(self._base, self.offload_device)
        for tensors in self._block_tensors:
            _move(tensors, self.offload_device)
        self._resident = [False] * len(self._blocks)
        self.device = None

    def _make_resident(self, i: int) -> None:
        self._remove_hooks(i)
        _move(self._block_tensors[i], self.device)
        self._resident[i] = True

    def _make_streamed(self, i: int) -> None:
        _move(self._block_tensors[i], self.offload_device)
        self._resident[i] = False
        if i not in self._hooks:
            streamer = _Streamer(self._block_tensors[i], self.device)
            block = self._blocks[i]
            self._hooks[i] = [block.register_forward_pre_hook(streamer.fetch),
                              block.register_forward_hook(streamer.drop, always_call=True)]

    def _remove_hooks(self, i: int) -> None:
        for handle in self._hooks.pop(i, []):
            handle.remove()
