"""Sharded (FSDP2) vs single-process training of the stage-2 objective: same losses, same weights.

    python training/scripts/fsdp_parity.py OUT.json                     # one process, both ranks' batches
    torchrun --nproc_per_node 2 training/scripts/fsdp_parity.py OUT.json   # two processes, FSDP

Both runs see the same two micro-batches per step (rank r's inputs drawn from seed r): the single
process averages their losses, the two sharded processes take one each and FSDP averages the
gradients. Everything else is the engine's own code (models, fp32 master weights, AdamW, clipping,
sharding). Writes the per-step losses and the final trained tensors' checksums to OUT.json.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

STEPS = 3
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "stage2_cpu_tiny.yaml"


def inputs_for(task, rank: int) -> dict:
    from training.memory_plan import _joint_inputs

    layout = task.encoder.layout(1, 5, 32, 32)
    inputs = _joint_inputs(task, layout)
    g = torch.Generator().manual_seed(100 + rank)
    for key in ("latent", "noise", "context"):
        inputs[key] = torch.randn(inputs[key].shape, generator=g)
    inputs["alpha"] = torch.rand(inputs["alpha"].shape, generator=g)
    inputs["t"] = torch.rand(1, generator=g) * 0.8 + 0.1
    return inputs


def main(out: str) -> None:
    import torch.distributed as dist

    from training import sharding
    from training.config import load_config
    from training.optim import build_optimizer, to_fp32_master
    from training.stage2_joint import JointTask

    torch.set_num_threads(1)
    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank() if world > 1 else 0
    config = load_config(CONFIG, [f"output_dir={Path(out).parent / 'parity_run'}", "model.init_adapter=null",
                                  "model.gradient_checkpointing=true", "optim.warmup_steps=0", "optim.lr=1e-2"])
    task = JointTask(config)
    model = task.setup(SimpleNamespace(device=torch.device("cpu"), is_main_process=rank == 0, process_index=rank,
                                       num_processes=world, wait_for_everyone=lambda: None))
    to_fp32_master(task.named_trainable())
    if world > 1:
        sharding.shard(model, config.stage)
    named = task.named_trainable()
    params = list(named.values())
    optimizer = build_optimizer(params, config.optim)
    batches = [inputs_for(task, r) for r in range(2)]
    losses = []
    for _ in range(STEPS):
        if world > 1:
            loss = model(**batches[rank])["loss"]
            loss.backward()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(float(mean) / world)
        else:
            loss = sum(model(**b)["loss"] for b in batches) / 2
            loss.backward()
            losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(params, config.optim.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    full = sharding.full_tensors(named)
    if rank == 0:
        Path(out).write_text(json.dumps({
            "world": world, "losses": losses, "sharded": sharding.is_sharded(model),
            "weights": {k: [float(v.double().sum()), float(v.double().abs().sum())] for k, v in full.items()},
        }))
    if world > 1:
        dist.barrier()  # no rank tears gloo down while the other still talks to it (seen: SIGABRT at exit)
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
