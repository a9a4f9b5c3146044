"""Exponential moving average of the trainable weights (fp32 shadows, keyed by parameter name)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float):
        self.params = named_params
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {k: p.detach().float().clone() for k, p in named_params.items()}

    def current_decay(self) -> float:
        # Warm-up (as in timm/diffusers): early averages are not dominated by the initial weights.
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for k, p in self.params.items():
            self.shadow[k].lerp_(p.detach().float(), 1.0 - d)
        self.num_updates += 1

    @contextmanager
    def swapped_in(self):
        """Temporarily load the EMA weights into the model (evaluation, export)."""
        backup = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.shadow[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(backup[k])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.shadow, "__num_updates__": torch.tensor(self.num_updates)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} tensor(s), e.g. {missing[:3]}")
        for k in self.shadow:
            self.shadow[k].copy_(state[k])
        self.num_updates = int(state["__num_updates__"])
