"""Checkpoint-level configuration of a LayerT2V model: data, saved beside the adapter weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .layout import ROUTING_PRESETS

ROPE_MODES = ("continuous", "per_segment")

# Every linear layer of the Wan blocks, as the authors' public code targets.
DIT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


@dataclass
class LayerT2VConfig:
    max_foregrounds: int = 1          # LayerAdaLN rows = 2 + 2 * max_foregrounds
    routing: str = "paper"            # prompt visibility preset, see LayerLayout.visible_prompts
    rope_mode: str = "continuous"     # continuous over the serialized time axis (paper) or restarted per segment
    text_len: int = 512               # tokens per prompt after padding, as Wan's T5 encoding
    dit_lora_rank: int = 128
    dit_lora_alpha: float = 128.0
    dit_lora_targets: tuple[str, ...] = DIT_LORA_TARGETS
    mask_vae_lora_rank: int = 128
    mask_vae_lora_alpha: float = 128.0
    extra: dict = field(default_factory=dict)  # free-form provenance (training run, base model name, ...)

    def __post_init__(self):
        if self.max_foregrounds < 1:
            raise ValueError(f"max_foregrounds={self.max_foregrounds} must be >= 1")
        if self.routing not in ROUTING_PRESETS:
            raise ValueError(f"routing={self.routing!r}: choose one of {ROUTING_PRESETS}")
        if self.rope_mode not in ROPE_MODES:
            raise ValueError(f"rope_mode={self.rope_mode!r}: choose one of {ROPE_MODES}")
        self.dit_lora_targets = tuple(self.dit_lora_targets)

    @property
    def adaln_rows(self) -> int:
        return 2 + 2 * self.max_foregrounds

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dit_lora_targets"] = list(self.dit_lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerT2VConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LayerT2V config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LayerT2VConfig":
        return cls.from_dict(json.loads(text))
