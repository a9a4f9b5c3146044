"""Noise levels for rectified-flow training and the choice of segments given clean.

Convention (the core sampler's): x_t = t * noise + (1 - t) * x0, target v = noise - x0, the DiT sees
timestep = 1000 * t, and x0_hat = x_t - t * v.

The paper's appendix gives "logit-normal, mean 0.5, std 1.0". We read it as SD3 writes its logit-normal
schedule: u ~ N(mean, std) in logit space, t = sigmoid(u). A mean of 0.5 then tilts training towards
noisier t (median t = sigmoid(0.5) = 0.62). `mean: 0.0` in the YAML gives the symmetric schedule.
"""

from __future__ import annotations

import random

import torch

from layert2v_core.layout import LayerLayout


def logit_normal(batch: int, mean: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """(batch,) t in (0, 1)."""
    u = torch.randn(batch, generator=generator) * std + mean
    return torch.sigmoid(u)


def given_segments(
    layout: LayerLayout,
    batch: int,
    probability: float,
    tasks: list[list[str]],
    generator: torch.Generator,
) -> torch.Tensor:
    """(batch, L) bool: True where a segment is given clean. Each sample is conditional with
    `probability`; then one task (a list of segment kinds) is drawn and all its segments are given."""
    given = torch.zeros(batch, layout.num_segments, dtype=torch.bool)
    if probability <= 0 or not tasks:
        return given
    fire = torch.rand(batch, generator=generator) < probability
    choice = torch.randint(len(tasks), (batch,), generator=generator)
    for b in range(batch):
        if fire[b]:
            kinds = set(tasks[int(choice[b])])
            for seg in layout.segments:
                if seg.kind in kinds:
                    given[b, seg.position] = True
    return given


def segment_timesteps(t: torch.Tensor, given: torch.Tensor) -> torch.Tensor:
    """(B,) t and (B, L) given -> (B, L) per-segment t, 0 for given segments."""
    return t[:, None].expand_as(given).masked_fill(given, 0.0)


def per_frame(values: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """(B, L) per-segment values -> (B, 1, L*T', 1, 1), broadcastable over a serialized latent."""
    return values.repeat_interleave(layout.latent_frames, dim=1)[:, None, :, None, None]


def make_generator(seed: int, rank: int) -> torch.Generator:
    """The per-process generator for noise, t, conditioning and text dropout (its state is checkpointed)."""
    return torch.Generator(device="cpu").manual_seed(int(seed) * 1000 + int(rank))


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
