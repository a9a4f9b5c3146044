"""What the three stage entry points share: the command line, data preparation, LoRA seeding."""

from __future__ import annotations

import argparse
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import DataConfig, PhaseConfig, RunConfig, load_config
from .data.synthetic import generate
from .data.vidlayer import ClipSpec, SampleInfo, find_samples


def parse_args(description: str, argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML run config (training/configs/...)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=2e-4 --set output_dir=runs/x")
    parser.add_argument("--resume", default=None, help="'auto' (latest checkpoint in output_dir) or a checkpoint folder")
    parser.add_argument("--stop-after", type=int, default=None, help="stop after this many optimizer steps")
    return parser.parse_args(argv)


def load_run_config(args: argparse.Namespace, stage: str) -> RunConfig:
    config = load_config(args.config, args.set)
    if config.stage != stage:
        raise ValueError(f"{args.config} is a stage {config.stage!r} config; this entry point trains {stage!r}")
    return config


def run_stage(task_class, stage: str, description: str, argv=None) -> list[dict]:
    from .engine import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(description, argv)
    config = load_run_config(args, stage)
    return Trainer(config, task_class(config), resume=args.resume, stop_after=args.stop_after).run()


def prepare_samples(data: DataConfig, accelerator, max_foregrounds: int | None = None) -> list[SampleInfo]:
    """Generate the synthetic set when configured and absent (main process), then list the samples."""
    root = Path(data.root)
    if data.synthetic is not None and accelerator.is_main_process:
        if not root.is_dir() or not any(root.glob("*/metadata.json")):
            generate(root, data.synthetic)
    accelerator.wait_for_everyone()
    samples = find_samples(root)
    keep = set(data.num_foregrounds) if data.num_foregrounds else None
    samples = [s for s in samples if (keep is None or s.num_foregrounds in keep)
               and (max_foregrounds is None or s.num_foregrounds <= max_foregrounds)]
    samples = samples[: data.max_samples] if data.max_samples else samples
    if not samples:
        raise ValueError(f"{root}: no samples with the foreground counts asked for "
                         f"(data.num_foregrounds={data.num_foregrounds}, model max_foregrounds={max_foregrounds})")
    return samples


def clip_spec(phase: PhaseConfig, data: DataConfig, deterministic: bool = False) -> ClipSpec:
    return ClipSpec(num_frames=phase.num_frames, height=phase.height, width=phase.width,
                    frame_stride=data.frame_stride,
                    random_start=data.random_start and not deterministic,
                    random_crop=data.random_crop and not deterministic)


@contextmanager
def seeded(seed: int):
    """Adapter initialisation (LoRA A matrices) from the run seed, identical on every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def named_trainable(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in module.named_parameters() if p.requires_grad}
