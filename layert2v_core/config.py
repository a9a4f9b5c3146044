"""Checkpoint-level configuration of a LayerT2V model: data, saved beside the adapter weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from .layout import ROUTING_PRESETS

ROPE_MODES = ("continuous", "per_segment")
# How cross-attention treats the zero rows that pad each prompt to text_len: vanilla Wan attends to
# them ("attend"); the authors' layered cross-attention masks them ("mask"). It changes the output
# by 2-7 %, so it is stored with the weights it was trained with.
TEXT_PADDING_MODES = ("attend", "mask")

# Every linear layer of the Wan blocks, as the authors' public code targets.
DIT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


@dataclass
class LayerT2VConfig:
    max_foregrounds: int = 1          # LayerAdaLN rows = 2 + 2 * max_foregrounds
    routing: str = "paper"            # prompt visibility preset, see LayerLayout.visible_prompts
    rope_mode: str = "continuous"     # continuous over the serialized time axis (paper) or restarted per segment
    text_len: int = 512               # tokens per prompt after padding, as Wan's T5 encoding
    text_padding: str = "attend"      # TEXT_PADDING_MODES: what cross-attention does with the padding rows
    dit_lora_rank: int = 128
    dit_lora_alpha: float = 128.0
    dit_lora_targets: tuple[str, ...] = DIT_LORA_TARGETS
    mask_vae_lora_rank: int = 128
    mask_vae_lora_alpha: float = 128.0
    # What the model is sampled at (recommended.SamplingSettings fields: width, height, frames, steps,
    # cfg, shift, dtype); a key left out is the base model's (Wan2.1-T2V-1.3B).
    sampling: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # free-form provenance (training run, base model name, ...)

    def __post_init__(self):
        if self.max_foregrounds < 1:
            raise ValueError(f"max_foregrounds={self.max_foregrounds} must be >= 1")
        if self.routing not in ROUTING_PRESETS:
            raise ValueError(f"routing={self.routing!r}: choose one of {ROUTING_PRESETS}")
        if self.rope_mode not in ROPE_MODES:
            raise ValueError(f"rope_mode={self.rope_mode!r}: choose one of {ROPE_MODES}")
        if self.text_padding not in TEXT_PADDING_MODES:
            raise ValueError(f"text_padding={self.text_padding!r}: choose one of {TEXT_PADDING_MODES}")
        self.dit_lora_targets = tuple(self.dit_lora_targets)

    @property
    def adaln_rows(self) -> int:
        return 2 + 2 * self.max_foregrounds

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dit_lora_targets"] = list(self.dit_lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "LayerT2V config") -> "LayerT2VConfig":
        """From data read out of a file: every field type- and bounds-checked first (header_schema)."""
        from .weights.header_schema import check_layert2v_config

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known) if isinstance(d, dict) else []
        if unknown:
            raise ValueError(f"unknown LayerT2V config key(s) {unknown}; known keys: {sorted(known)}")
        return cls(**check_layert2v_config(d, where))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "LayerT2V config") -> "LayerT2VConfig":
        return cls.from_dict(json.loads(text), where)
