"""The training loop shared by all stages: accelerate, accumulation, AdamW + cosine, EMA, phases,
atomic checkpoints, exact resume, TensorBoard + tqdm.

A stage supplies a `StageTask` (what to build, what one batch means, how to export and evaluate);
the engine owns everything about *how* to train. Randomness has three sources, all restored on resume:
the data order (a pure function of seed and position), the per-process step generator (noise,
timesteps, conditioning, text dropout), and the global RNGs.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Optional, Protocol

import torch
from torch.utils.data import DataLoader

from layert2v_core.weights.files import atomic_write_text

from .checkpoint import TrainerState, find_latest, load_checkpoint, restore_rng_state, save_checkpoint
from .config import PhaseConfig, RunConfig, dump_config
from .data.order import BatchOrder, ResumableBatchSampler
from . import sharding
from .ema import EMA
from .eval_hook import eval_barrier_timeout
from .optim import build_optimizer, build_scheduler, require_fp32, to_fp32_master
from .timesteps import make_generator, seed_everything

logger = logging.getLogger("training")


class StageTask(Protocol):
    def setup(self, accelerator) -> torch.nn.Module:
        """Build models; return the module whose forward(**inputs) returns {"loss": ..., other scalars}."""

    def named_trainable(self) -> dict[str, torch.nn.Parameter]: ...

    def dataset(self, phase: PhaseConfig, phase_index: int) -> tuple[torch.utils.data.Dataset, list[int], callable]:
        """(dataset, bucket key per sample, collate_fn) for a resolution phase."""

    def make_inputs(self, batch: dict, phase: PhaseConfig, generator: torch.Generator) -> dict:
        """Frozen encoding + sampled noise/timesteps: keyword arguments of the objective's forward."""

    def export(self, folder: Path) -> None: ...

    def evaluate(self, output_dir: Path, step: int) -> Optional[Path]: ...


class Trainer:
    def __init__(self, config: RunConfig, task: StageTask, resume: Optional[str] = None,
                 stop_after: Optional[int] = None):
        """resume: None (fresh; refuses a folder that already has checkpoints), "auto" (latest if any),
        or a checkpoint folder. stop_after: stop once this many optimizer steps are done (as if the
        job was killed right after that step's checkpoint): for resume tests and time-boxed jobs."""
        self.config = config
        self.task = task
        self.resume = resume
        self.stop_after = stop_after
        self.output_dir = Path(config.output_dir)
        self.history: list[dict] = []

    # ---- setup -----------------------------------------------------------------------------------
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Bounded collectives: a rank that never arrives makes the others raise, not hang forever.
        timeout = timedelta(seconds=self.config.distributed.timeout_s)
        return Accelerator(
            # Without CUDA, processes started by a launcher become a gloo (MULTI_CPU) group.
            cpu=not torch.cuda.is_available(),
            mixed_precision=self.config.mixed_precision,
            log_with="tensorboard",
            project_dir=str(self.output_dir),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False),
                             InitProcessGroupKwargs(timeout=timeout)],
        )

    def _loader(self, phase_index: int, start_batches: int, accelerator):
        phase = self.config.phases[phase_index]
        dataset, buckets, collate = self.task.dataset(phase, phase_index)
        order = BatchOrder(buckets, phase.batch_size, seed=self.config.seed * 7919 + phase_index)
        sampler = ResumableBatchSampler(order, start_batches, accelerator.process_index, accelerator.num_processes)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                            num_workers=self.config.data.num_workers,
                            persistent_workers=False)
        return iter(loader)

    # ---- run -------------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        threads = torch.get_num_threads()
        if self.config.cpu_threads:
            torch.set_num_threads(self.config.cpu_threads)
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)  # in-process callers (tests) get their setting back

    def _run(self) -> list[dict]:
        cfg = self.config
        found = self._resume_point()  # before building models: a wrong output_dir fails fast
        accelerator = self._accelerator()
        self.accelerator = accelerator
        rank = accelerator.process_index
        seed_everything(cfg.seed + rank)
        model = self.task.setup(accelerator)
        to_fp32_master(self.task.named_trainable())  # peft creates LoRA in the frozen base's dtype (bf16)
        self._memory_plan(accelerator, model)
        self.sharded = cfg.distributed.strategy == "fsdp" and accelerator.num_processes > 1
        if self.sharded:
            sharding.shard(model, cfg.stage)  # replaces parameters by sharded ones: collect them after
        named = self.task.named_trainable()
        params = list(named.values())
        optimizer = build_optimizer(params, cfg.optim)
        require_fp32(named, optimizer)
        if self.sharded:
            optimizer = accelerator.prepare(optimizer)
        else:
            model, optimizer = accelerator.prepare(model, optimizer)
        self.optimizer = optimizer
        self._eval_group = self._make_eval_group(accelerator)
        # The scheduler is stepped by us once per optimizer step (accelerate's wrapper would step it
        # once per process).
        scheduler = build_scheduler(optimizer.optimizer, cfg.optim, cfg.total_steps)
        self._check_fsdp(accelerator)
        self.model = model
        ema = EMA(named, cfg.ema.decay) if cfg.ema.enabled else None
        self.ema = ema
        generator = make_generator(cfg.seed, rank)
        state = TrainerState(seed=cfg.seed)

        if found is not None:
            ckpt = load_checkpoint(found, rank)
            with torch.no_grad():
                for k, p in named.items():
                    p.copy_(ckpt.trainable[k].to(p))
            optimizer.optimizer.load_state_dict(ckpt.optimizer)
            scheduler.load_state_dict(ckpt.scheduler)
            if ema is not None and ckpt.ema is not None:
                ema.load_state_dict(ckpt.ema)
            if ckpt.rng is not None:
                restore_rng_state(ckpt.rng, generator)
            state = ckpt.state
            if accelerator.is_main_process:
                logger.info("resumed from %s at step %d", found, state.step)
                _truncate_metrics(self.output_dir / "metrics.jsonl", state.step)

        if accelerator.is_main_process:
            dump_config(cfg, self.output_dir / "config.yaml")
        accelerator.init_trackers("tensorboard", config=_flat_hparams(cfg.to_dict()))
        metrics_path = self.output_dir / "metrics.jsonl"

        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.total_steps, initial=state.step, disable=not accelerator.is_main_process,
                   desc=cfg.stage, dynamic_ncols=True)
        accum = cfg.optim.grad_accum
        phase_index, data = -1, None
        end = cfg.total_steps if self.stop_after is None else min(cfg.total_steps, self.stop_after)
        model.train()
        while state.step < end:
            p_index, phase, done_in_phase = cfg.phase_at(state.step)
            if p_index != phase_index:
                phase_index = p_index
                data = self._loader(p_index, done_in_phase * accum, accelerator)
            started = time.perf_counter()
            sums: dict[str, float] = {}
            for micro in range(accum):
                batch = next(data)
                inputs = self.task.make_inputs(batch, phase, generator)
                sync = micro == accum - 1
                with self._sync(accelerator, model, sync), accelerator.autocast():
                    out = model(**inputs)
                    accelerator.backward(out["loss"] / accum)
                for k, v in out.items():
                    if torch.is_tensor(v) and v.numel() == 1:
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            grad_norm = accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm) if cfg.optim.max_grad_norm > 0 else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update()
            state.step += 1
            state.batches_per_rank += accum

            if accelerator.num_processes > 1:  # log the mean over processes, not rank 0's share
                keys = sorted(sums)
                mean = accelerator.reduce(torch.tensor([sums[k] for k in keys], device=accelerator.device), "mean")
                sums = dict(zip(keys, mean.tolist()))
            record = {"step": state.step, **sums, "lr": scheduler.get_last_lr()[0],
                      "step_time": time.perf_counter() - started, "phase": phase_index,
                      "processes": accelerator.num_processes}
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            self.history.append(record)
            if accelerator.is_main_process:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss']:.4f}")
            if state.step % max(1, cfg.log_every) == 0:
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.step)

            last = state.step == end
            every = cfg.checkpoint.every
            if last or (every and state.step % every == 0):
                self._save(accelerator, state, named, ema, optimizer, scheduler, generator)
            if cfg.eval.enabled and cfg.eval.every and state.step % cfg.eval.every == 0 and not last:
                self._evaluate(accelerator, ema, state.step)
        bar.close()
        self._check_in_sync(accelerator, params)

        if state.step >= cfg.total_steps:
            self._export_adapter(accelerator, ema, self.output_dir / "adapter")
            accelerator.wait_for_everyone()
            if cfg.eval.enabled:
                self._evaluate(accelerator, ema, state.step)
        accelerator.end_training()
        return self.history

    # ---- distributed -------------------------------------------------------------------------------
    def _sync(self, accelerator, model, sync: bool):
        if self.sharded:
            return sharding.gradient_sync(model, sync)
        return nullcontext() if sync else accelerator.no_sync(model)

    def _memory_plan(self, accelerator, model) -> None:
        """Print the per-GPU estimate of this run and refuse one that cannot fit (names what to change)."""
        from .memory_plan import check_run_memory

        plan = check_run_memory(self.config, self.task, accelerator)
        if plan is not None and accelerator.is_main_process:
            logger.info("memory plan per process:\n%s", plan.table())

    def _make_eval_group(self, accelerator):
        """A gloo group for the barrier the other processes wait at while the main one evaluates, with a
        timeout taken from the evaluation's own estimate (the run's collective timeout could trip)."""
        if accelerator.num_processes == 1 or not self.config.eval.enabled or self.sharded:
            return None
        import torch.distributed as dist

        seconds = eval_barrier_timeout(self.config, self.task, accelerator.device)
        if accelerator.is_main_process:
            logger.info("evaluation barrier timeout: %.0f s", seconds)
        return dist.new_group(backend="gloo", timeout=timedelta(seconds=seconds))

    # ---- helpers -----------------------------------------------------------------------------------
    def _resume_point(self) -> Optional[Path]:
        if self.resume in (None, "", "none"):
            existing = find_latest(self.output_dir)
            if existing is not None:
                raise FileExistsError(
                    f"{self.output_dir} already holds checkpoints (latest {existing.name}); pass --resume auto "
                    f"to continue it or choose another output_dir"
                )
            return None
        if self.resume == "auto":
            return find_latest(self.output_dir)
        path = Path(self.resume)
        if not (path / "trainer_state.json").is_file():
            raise FileNotFoundError(f"--resume {path}: not a training checkpoint (no trainer_state.json)")
        return path

    def _export(self, ema: Optional[EMA], folder: Path) -> None:
        if ema is not None and self.config.ema.export:
            with ema.swapped_in():
                self.task.export(folder)
        else:
            self.task.export(folder)

    def _check_in_sync(self, accelerator, params) -> None:
        """DDP must leave every process with the same weights; a cheap fingerprint proves it."""
        if accelerator.num_processes == 1:
            return
        if sharding.is_sharded(self.model):
            return  # sharded: ranks hold different pieces by design
        with torch.no_grad():
            fingerprint = torch.stack([torch.stack([p.float().sum(), p.float().abs().sum()]) for p in params]).flatten()
        gathered = accelerator.gather(fingerprint.to(accelerator.device)[None])
        if not torch.allclose(gathered, gathered[:1].expand_as(gathered), rtol=1e-5, atol=1e-6):
            raise RuntimeError("trainable weights differ between processes after training: gradients were not synchronised")

    def _check_fsdp(self, accelerator) -> None:
        from accelerate.utils import DistributedType

        if accelerator.distributed_type == DistributedType.FSDP:
            raise ValueError("accelerate's FSDP plugin is not used: launch with a DDP/multi-GPU accelerate config "
                             "and set distributed.strategy: fsdp in the run config")
        if not self.sharded:
            return
        if self.config.ema.enabled:
            raise ValueError("FSDP: set ema.enabled: false (EMA shadows of sharded parameters are not gathered)")
        if self.resume not in (None, "", "none"):
            raise ValueError("FSDP: --resume is not supported (sharded optimizer state); use DDP for Wan2.1-1.3B")

    def _export_adapter(self, accelerator, ema: Optional[EMA], folder: Path) -> None:
        """Main process writes `folder`. Sharded: every process exports (the adapter's tensors are gathered,
        a collective), the others into a scratch folder."""
        import tempfile

        if not self.sharded:
            if accelerator.is_main_process:
                self._export(ema, folder)
            return
        with tempfile.TemporaryDirectory() as scratch:
            self._export(ema, folder if accelerator.is_main_process else Path(scratch) / "adapter")

    def _save(self, accelerator, state, named, ema, optimizer, scheduler, generator) -> None:
        import shutil
        import tempfile

        trainable = sharding.full_tensors(named)  # every process: a collective under FSDP
        export = lambda folder: self._export(ema, folder)  # noqa: E731
        with tempfile.TemporaryDirectory() as staging:
            if self.sharded:
                optimizer = _NotSaved("sharded optimizer state is not saved: FSDP runs do not resume")
                self._export_adapter(accelerator, ema, Path(staging) / "adapter")
                export = lambda folder: shutil.copytree(Path(staging) / "adapter", folder)  # noqa: E731
            save_checkpoint(
                accelerator, self.output_dir, state,
                trainable=trainable,
                ema_state=ema.state_dict() if ema is not None else None,
                optimizer=getattr(optimizer, "optimizer", optimizer), scheduler=scheduler, generator=generator,
                export_adapter=export,
                keep_last=self.config.checkpoint.keep_last,
            )

    def _evaluate(self, accelerator, ema: Optional[EMA], step: int) -> None:
        if self.sharded:  # every process runs the sharded forward; only the main one keeps the sheet
            self._evaluate_here(ema, step, self.output_dir if accelerator.is_main_process else None)
            accelerator.wait_for_everyone()
            return
        if accelerator.is_main_process:
            self._evaluate_here(ema, step, self.output_dir)
        if self._eval_group is not None:
            import torch.distributed as dist

            dist.barrier(group=self._eval_group)  # its timeout covers the evaluation, not the run's default
        else:
            accelerator.wait_for_everyone()

    def _evaluate_here(self, ema: Optional[EMA], step: int, output_dir: Optional[Path]) -> None:
        import tempfile

        # The eval draws its own seeded noise; the training RNGs must not notice it ran.
        with torch.random.fork_rng(devices=[]), (ema.swapped_in() if ema is not None else nullcontext()), \
                tempfile.TemporaryDirectory() as scratch:
            path = self.task.evaluate(output_dir or Path(scratch), step)
        if path is not None and output_dir is not None:
            logger.info("eval sheet: %s", path)


class _NotSaved:
    """Stands in for an optimizer whose state a checkpoint does not hold (sharded runs)."""

    def __init__(self, reason: str):
        self.reason = reason

    def state_dict(self) -> dict:
        return {"not_saved": self.reason}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint we resume from (they are about to be redone), and a line
    torn by the crash. Rewritten atomically: a second crash here must not lose the history."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _flat_hparams(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        elif isinstance(v, (int, float, str, bool)):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    return out
