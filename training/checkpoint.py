"""Atomic, resumable training checkpoints.

    <output_dir>/checkpoints/step_000120/
      trainable.safetensors   the trained tensors by parameter name (raw, not EMA)
      ema.safetensors         EMA shadows (when EMA is on)
      optimizer.pt            optimizer + LR-scheduler state (torch.save; read with weights_only=True)
      rng_rank<r>.pt          every process's RNG states (python, numpy, torch, CUDA, the step generator)
      trainer_state.json      step, data position, run seed
      adapter/                the stage's export in the core adapter format (loadable by the pipeline)
    <output_dir>/checkpoints/latest   name of the newest complete checkpoint

A checkpoint is written into `step_X.tmp/` and renamed only when every process has finished, so a
crash leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from safetensors.torch import save_file

from layert2v_core.weights.files import CorruptWeightsError, atomic_write_text, load_pickle_weights, load_safetensors

LATEST = "latest"
TMP_SUFFIX = ".tmp"


@dataclass
class TrainerState:
    step: int = 0                 # optimizer steps done
    batches_per_rank: int = 0     # micro-batches each process has consumed (the data position)
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:06d}"


# ---- RNG -------------------------------------------------------------------------------------------
def rng_state(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- save ------------------------------------------------------------------------------------------
def save_checkpoint(
    accelerator,
    output_dir: str | Path,
    state: TrainerState,
    trainable: dict[str, torch.Tensor],
    ema_state: Optional[dict[str, torch.Tensor]],
    optimizer,
    scheduler,
    generator: torch.Generator,
    export_adapter: Callable[[Path], None],
    keep_last: int = 3,
) -> Path:
    final = checkpoint_dir(output_dir, state.step)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(rng_state(generator), tmp / f"rng_rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
        if ema_state is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        (tmp / "trainer_state.json").write_text(state.to_json())
        export_adapter(tmp / "adapter")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(final.parent / LATEST, final.name)
        _prune(final.parent, keep_last)
    accelerator.wait_for_everyone()
    return final


def _prune(folder: Path, keep_last: int) -> None:
    # Called right after a complete save: any other step_*.tmp or .deleting folder is a crash's leftover.
    for stale in [*folder.glob(f"step_*{TMP_SUFFIX}"), *folder.glob(".step_*.deleting")]:
        shutil.rmtree(stale, ignore_errors=True)
    done = sorted(p for p in folder.glob("step_*") if p.is_dir() and not p.name.endswith(TMP_SUFFIX))
    for old in done[:-keep_last] if keep_last > 0 else []:
        # Renamed out of the step_* namespace first: a kill during the slow delete must not leave a
        # half-deleted folder that looks like a checkpoint.
        doomed = old.with_name(f".{old.name}.deleting")
        try:
            os.replace(old, doomed)
        except OSError:
            doomed = old
        shutil.rmtree(doomed, ignore_errors=True)


# ---- load ------------------------------------------------------------------------------------------
def find_latest(output_dir: str | Path) -> Optional[Path]:
    folder = Path(output_dir) / "checkpoints"
    pointer = folder / LATEST
    if pointer.is_file():
        candidate = folder / pointer.read_text().strip()
        if (candidate / "trainer_state.json").is_file():
            return candidate
    done = sorted(p for p in folder.glob("step_*") if (p / "trainer_state.json").is_file() and not p.name.endswith(TMP_SUFFIX))
    return done[-1] if done else None


@dataclass
class LoadedCheckpoint:
    state: TrainerState
    trainable: dict[str, torch.Tensor]
    ema: Optional[dict[str, torch.Tensor]]
    optimizer: dict
    scheduler: dict
    rng: Optional[dict]


def load_checkpoint(folder: str | Path, process_index: int) -> LoadedCheckpoint:
    """Everything a resume needs; pickles only with weights_only=True, every error names the file."""
    folder = Path(folder)
    state_path = folder / "trainer_state.json"
    try:
        raw = json.loads(state_path.read_text())
        state = TrainerState(**raw)
        if not all(isinstance(getattr(state, k), int) and getattr(state, k) >= 0 for k in ("step", "batches_per_rank")):
            raise TypeError(f"step and batches_per_rank must be integers >= 0, got {raw}")
    except (OSError, ValueError, TypeError) as err:
        raise CorruptWeightsError(f"{str(state_path)!r} is not a valid trainer state: {err}") from None
    opt = load_pickle_weights(folder / "optimizer.pt")
    if not isinstance(opt, dict) or not {"optimizer", "scheduler"} <= set(opt):
        raise CorruptWeightsError(f"{str(folder / 'optimizer.pt')!r} does not hold optimizer and scheduler states")
    ema_path = folder / "ema.safetensors"
    rng_path = folder / f"rng_rank{process_index}.pt"
    # A run resumed on more processes than it was saved with has no RNG file for the new ranks.
    rng = load_pickle_weights(rng_path) if rng_path.is_file() else None
    return LoadedCheckpoint(
        state=state,
        trainable=load_safetensors(folder / "trainable.safetensors"),
        ema=load_safetensors(ema_path) if ema_path.is_file() else None,
        optimizer=opt["optimizer"],
        scheduler=opt["scheduler"],
        rng=rng,
    )
