"""Training run configuration: nested dataclasses filled from YAML, with dotted command-line overrides.

The same fields describe a 2-CPU tiny run and a multi-GPU Wan2.1-1.3B run; only values differ.
Unknown keys are errors (a typo in a YAML file must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union, get_args, get_origin, get_type_hints

import yaml

from .data.synthetic import SyntheticSpec as SyntheticDataConfig  # one definition of the generator spec

# base_vae / base_dit: stage 0, the stand-in for Wan2.1 pretraining (demo model only).
STAGES = ("base_vae", "base_dit", "mask_vae", "joint", "multi_fg")


@dataclass
class ModelConfig:
    kind: str = "tiny"                    # "tiny": random CPU-sized models built in code; "wan": real Wan2.1 files
    seed: int = 0                         # tiny weights seed
    dit_path: Optional[str] = None        # wan: wan2.1_t2v_1.3B_fp16.safetensors or a diffusers folder
    vae_path: Optional[str] = None        # wan: wan_2.1_vae.safetensors or a diffusers folder
    text_encoder_path: Optional[str] = None  # wan: local UMT5 folder (config.json, model.safetensors, tokenizer)
    dtype: str = "float32"                # frozen weights' dtype: float32 | bfloat16 | float16
    text_dtype: str = "bfloat16"
    gradient_checkpointing: bool = False
    init_adapter: Optional[str] = None    # adapter folder from the previous stage (its mask / DiT adapter is loaded)
    layert2v: dict = field(default_factory=dict)  # LayerT2VConfig fields (routing, ranks, text_len, ...)
    train_layer_adaln: bool = True        # false: LayerAdaLN stays at zero (ablation: temporal concatenation only)
    # Stage 0 only: diffusers configs of the models trained from scratch, {vae: {...}, dit: {...},
    # text_encoder: {d_model, num_layers, seed}} (AutoencoderKLWan / WanTransformer3DModel / tiny UMT5).
    architecture: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    root: str = "data/synthetic"
    synthetic: Optional[SyntheticDataConfig] = None  # set: generate `root` first when it holds no samples
    num_foregrounds: Optional[list] = None  # keep only samples with these foreground counts (None: all)
    max_samples: Optional[int] = None     # keep the first N of those (bounds latent-cache time on CPU)
    frame_stride: int = 1
    random_start: bool = True
    random_crop: bool = False
    num_workers: int = 0
    cache_latents: bool = False           # precompute VAE latents + text embeddings (clips become deterministic)
    cache_dir: Optional[str] = None       # default: <output_dir>/latent_cache
    text_dropout: float = 0.1             # probability of the negative ("") prompt in every slot: trains CFG
    text_cache_gib: float = 1.0           # prompt-embedding cache, in CPU RAM (never on the GPU)
    # Stage 0 VAE: each example is one of these layers, drawn uniformly (alpha is replicated to RGB,
    # so the frozen encoder also serves the mask VAE of stage 1).
    vae_layers: list = field(default_factory=lambda: ["full", "background", "foreground", "alpha"])
    vae_crop: Optional[int] = None        # stage 0 VAE: random square crop (px) per example; convolutions do not
                                          # care about size, and a 32 px crop costs a quarter of a 64 px frame


@dataclass
class PhaseConfig:
    """One resolution phase of progressive training; phases run in order."""
    steps: int
    height: int
    width: int
    num_frames: int
    batch_size: int = 1


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 500
    min_lr_ratio: float = 0.0             # cosine floor as a fraction of lr
    max_grad_norm: float = 1.0
    grad_accum: int = 1


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.9999
    export: bool = True                   # the exported adapter holds the EMA weights (else the raw ones)


@dataclass
class TimestepConfig:
    """t ~ sigmoid(N(mean, std)) (logit-normal, the normal's parameters in logit space), t=1 is noise."""
    mean: float = 0.5
    std: float = 1.0


@dataclass
class ConditionalConfig:
    """Conditional training: some segments are given clean (timestep 0) and left out of the loss."""
    probability: float = 0.0
    # Each task lists segment kinds given clean; one task is drawn uniformly when conditioning fires.
    tasks: list = field(default_factory=lambda: [["full"], ["foreground", "mask"], ["background"]])


@dataclass
class LossConfig:
    # stage 1 (mask VAE)
    reconstruction: float = 1.0
    edge: float = 1.0
    perceptual: float = 1.0
    # stage 0 VAE: L1 + MSE on pixels in [-1, 1] + KL to N(0, 1) (small: keeps the latent smooth)
    pixel_l1: float = 1.0
    pixel_mse: float = 1.0
    kl: float = 1.0e-4
    latent_noise: float = 1.0             # scale of the posterior sample's noise; 0 = deterministic (mode) autoencoder
    # stages 0 (DiT), 2 and 3
    flow: float = 1.0
    consistency: float = 0.1
    consistency_space: str = "normalized"  # normalized (the DiT's latent, as the paper) | raw (VAE latent)
    mask: float = 0.1
    mask_gradient: float = 0.1            # inside L_mask: rec + 0.1 * gradient consistency
    mask_reconstruction: str = "smooth_l1"  # smooth_l1 | l1
    # Decode only the first n latent frames of each mask segment for L_mask (the causal VAE gives
    # frames 0..4(n-1) exactly). null = all. Backprop through the Wan decoder at 384x672x41 would
    # hold ~100 GB of activations; the paper-scale config decodes 3 (9 frames, stage 1's clip length).
    mask_latent_frames: Optional[int] = None
    # Decode a random square crop of this many latent pixels (x8 px) of each mask latent for L_mask, and
    # score its interior (mask_crop_margin latent pixels in from cut edges: near a cut the decoder sees
    # zero padding instead of neighbours). null = whole frame. Bounds decoder backprop memory at 384x672.
    mask_crop: Optional[int] = None
    mask_crop_margin: int = 1
    # Backward each (sample, mask layer) decode right away and free it (losses.mask_decoding): the
    # same objective and gradient with one decode alive instead of batch x K. Exact; costs nothing.
    mask_early_backward: bool = False


@dataclass
class CheckpointConfig:
    every: int = 1000                     # optimizer steps; 0 = only at the end
    keep_last: int = 3


@dataclass
class EvalConfig:
    enabled: bool = True
    every: int = 0                        # optimizer steps; 0 = only after the stage
    num_prompts: int = 2
    num_foregrounds: int = 1
    steps: int = 20
    cfg: float = 5.0
    shift: float = 5.0
    sampler: str = "unipc"
    seed: int = 0
    height: Optional[int] = None          # default: the last phase's size
    width: Optional[int] = None
    num_frames: Optional[int] = None
    # Held-out prompts: [{full, background, foregrounds: [...]}, ...]; default: synthetic captions of
    # scenes never written to the training set.
    prompts: Optional[list] = None
    # Base DiT only: the caption probe (training/caption_probe.py) on this many fresh clips at every
    # evaluation, appended to <output_dir>/eval/probe.jsonl (0: no probe).
    probe_clips: int = 0


@dataclass
class DistributedConfig:
    strategy: str = "ddp"                 # ddp: replicated (default) | fsdp: torch FSDP2, each DiT block + the DiT sharded
    timeout_s: float = 1800.0             # every collective gives up (raises) after this instead of hanging
    # Barrier while the main process evaluates; None: from the eval's own compute estimate (engine).
    eval_timeout_s: Optional[float] = None


@dataclass
class MemoryConfig:
    """The per-GPU memory plan printed before training (layert2v_core/memory_training.py)."""
    check: bool = True                    # refuse a config whose estimate exceeds budget_gib
    budget_gib: Optional[float] = None    # None: the device's total memory (CUDA) / available RAM (CPU)


@dataclass
class RunConfig:
    stage: str
    output_dir: str
    phases: list
    seed: int = 0
    mixed_precision: str = "no"           # no | bf16 | fp16 (accelerate)
    cpu_threads: Optional[int] = None     # torch intra-op threads; 1 on shared CPUs (OpenMP spinning under load)
    log_every: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    timesteps: TimestepConfig = field(default_factory=TimestepConfig)
    conditional: ConditionalConfig = field(default_factory=ConditionalConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}: choose one of {STAGES}")
        self.phases = [p if isinstance(p, PhaseConfig) else _build(PhaseConfig, p, "phases[]") for p in self.phases]
        if not self.phases:
            raise ValueError("phases: at least one resolution phase is needed")
        if self.distributed.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"distributed.strategy={self.distributed.strategy!r}: choose ddp or fsdp")

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def phase_at(self, step: int) -> tuple[int, PhaseConfig, int]:
        """(phase index, phase, steps already done inside it) for a global optimizer step."""
        done = 0
        for i, p in enumerate(self.phases):
            if step < done + p.steps:
                return i, p, step - done
            done += p.steps
        return len(self.phases) - 1, self.phases[-1], self.phases[-1].steps

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---- loading --------------------------------------------------------------------------------------
def _build(cls, data: Any, where: str):
    if dataclasses.is_dataclass(data):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    return cls(**kwargs)


def _coerce(hint, value, where):
    origin = get_origin(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        return float(value)  # YAML reads 1e-4 as a string
    return value


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = yaml.safe_load(Path(path).read_text())
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key.path=value")
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    return _build(RunConfig, data, "")


def _set_dotted(data: dict, key: str, value) -> None:
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {p!r} is not a mapping")
    node[parts[-1]] = value


def dump_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
