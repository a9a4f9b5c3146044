"""A deterministic, resumable, rank-sharded order of batches.

The whole run's batch stream is a pure function of (seed, epoch): epoch e shuffles the samples of each
bucket (samples with the same number of foregrounds, so a batch never mixes layouts), cuts them into
batches and shuffles the batches. Global batch g of the stream goes to rank g % world. A run resumed
at optimizer step s restarts the stream at the batch it would have drawn next, so the data position
is one integer in the checkpoint. Each item carries an augmentation seed derived from (seed, epoch,
index), so crops and temporal windows replay exactly too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import numpy as np


class BatchOrder:
    def __init__(self, buckets: list[int], batch_size: int, seed: int):
        """buckets[i]: the bucket key of sample i (its number of foregrounds)."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.buckets = list(buckets)
        self.batch_size = batch_size
        self.seed = seed
        by_key = defaultdict(list)
        for i, k in enumerate(self.buckets):
            by_key[k].append(i)
        self._by_key = dict(sorted(by_key.items()))
        if self.batches_per_epoch == 0:
            sizes = {k: len(v) for k, v in self._by_key.items()}
            raise ValueError(f"no full batch of {batch_size} fits any bucket (samples per foreground count: {sizes})")

    @property
    def batches_per_epoch(self) -> int:
        return sum(len(v) // self.batch_size for v in self._by_key.values())

    def epoch(self, epoch: int) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, epoch])
        batches = []
        for members in self._by_key.values():
            perm = rng.permutation(members)
            for b in range(len(perm) // self.batch_size):  # incomplete tail batches are dropped
                chunk = perm[b * self.batch_size:(b + 1) * self.batch_size]
                batches.append([(int(i), int(rng.integers(2**31))) for i in chunk])
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def global_batch(self, g: int) -> list[tuple[int, int]]:
        epoch, within = divmod(g, self.batches_per_epoch)
        return self.epoch(epoch)[within]

    def stream(self, start: int, rank: int = 0, world: int = 1) -> Iterator[list[tuple[int, int]]]:
        """Batches for `rank`, starting at its `start`-th batch (the count it has already consumed)."""
        g = start * world + rank
        cached_epoch, cached = -1, []
        while True:
            epoch, within = divmod(g, self.batches_per_epoch)
            if epoch != cached_epoch:
                cached_epoch, cached = epoch, self.epoch(epoch)
            yield cached[within]
            g += world


class ResumableBatchSampler:
    """A torch batch_sampler view of BatchOrder.stream (infinite; the training loop decides when to stop)."""

    def __init__(self, order: BatchOrder, start: int, rank: int, world: int):
        self.order, self.start, self.rank, self.world = order, start, rank, world

    def __iter__(self):
        return self.order.stream(self.start, self.rank, self.world)
