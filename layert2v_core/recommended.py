"""The settings a model is meant to be sampled at: size, frames, steps, CFG, shift and dtype.

A checkpoint names its own in its config (LayerT2VConfig.sampling, e.g. the demo model's 64x64, 17
frames, 20 steps, CFG 4, shift 3, fp32); whatever it leaves out is the base model's, read from
configs/wan2.1_t2v_1.3B/sampling.json. Callers that take a user's value treat AUTO (0, or "auto" for
a dtype) as "the model's": `settings.fill(width=0, steps=30)` keeps 30 steps and takes the width.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .config import LayerT2VConfig
from .weights.header_schema import check_sampling_settings

BASE_MODEL_SAMPLING = Path(__file__).resolve().parent / "configs" / "wan2.1_t2v_1.3B" / "sampling.json"
AUTO = 0              # a numeric setting of 0: the model's
AUTO_DTYPE = "auto"   # a dtype choice: the model's


@dataclass(frozen=True)
class SamplingSettings:
    width: int
    height: int
    frames: int
    steps: int
    cfg: float
    shift: float
    dtype: str          # weights.loading.DTYPES name the DiT and its text encoder run in

    @classmethod
    def base_model(cls) -> "SamplingSettings":
        where = BASE_MODEL_SAMPLING.name
        return cls(**check_sampling_settings(json.loads(BASE_MODEL_SAMPLING.read_text()), where))

    @classmethod
    def of(cls, config: LayerT2VConfig) -> "SamplingSettings":
        """The checkpoint's own settings over the base model's."""
        return replace(cls.base_model(), **check_sampling_settings(dict(config.sampling), "LayerT2V config"))

    def fill(self, **values) -> dict:
        """`values` (any of this class's fields) with AUTO / AUTO_DTYPE / None replaced by this model's."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown sampling setting(s) {unknown}; known: {sorted(known)}")
        return {name: getattr(self, name) if value in (None, AUTO, AUTO_DTYPE) else value
                for name, value in values.items()}

    def describe(self) -> str:
        return (f"{self.width}x{self.height}, {self.frames} frames, {self.steps} steps, CFG {self.cfg:g}, "
                f"shift {self.shift:g}, {self.dtype}")

    def to_dict(self) -> dict:
        return asdict(self)
