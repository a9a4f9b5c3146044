"""The per-process memory plan of a run (layert2v_core/memory_training.py), built from its config and
the models the stage has just built, printed before step 1 and used to refuse a run that cannot fit.

Every phase is planned and the worst one reported. Stage 0 (demo-model pretraining) is not planned.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import nullcontext
from typing import Optional

import torch

from layert2v_core.memory import available_memory
from layert2v_core.memory_training import (GIB, LinearFit, TrainingMemoryPlan, module_bytes, parameter_storages,
                                           saved_tensor_bytes, trainable_state_bytes)

ADVICE = {
    "frozen weights": "distributed.strategy: fsdp (shards the DiT) or model.dtype: bfloat16",
    "trainable state": "distributed.strategy: fsdp or ema.enabled: false",
    "activations": "model.gradient_checkpointing: true, or a smaller phases[].batch_size with a larger "
                   "optim.grad_accum (same effective batch)",
    "mask loss": "loss.mask_early_backward: true (exact), then loss.mask_latent_frames or loss.mask_crop",
    "text encoder": "model.text_dtype: bfloat16",
}
SMALL = ((32, 32), (64, 32))     # traced pixel sizes (multiples of 32: VAE stride x patch up to 8 x 4)
# Memory of a training process that is not tensors: on CPU the allocator arenas, thread pools and
# library state, measured as peak RSS minus the plan at a 32x32x5 tiny run (0.10 GiB); on CUDA the
# context and cuBLAS workspaces live outside torch's allocator: kept out of the total, reserved in `budget`.
RUNTIME = {"cpu": int(0.10 * GIB), "cuda": 0}
CUDA_RESERVE = 1 * GIB


def check_run_memory(config, task, accelerator) -> Optional[TrainingMemoryPlan]:
    if config.stage not in ("mask_vae", "joint", "multi_fg"):
        return None
    plan = plan_run(config, task, accelerator.num_processes, accelerator.autocast)
    plan.budget, plan.where = budget(config, accelerator.device)
    if config.memory.check:
        plan.check(f"{config.stage} run {config.output_dir!r}")
    return plan


def budget(config, device) -> tuple[Optional[int], str]:
    device = torch.device(device)
    if config.memory.budget_gib is not None:
        return int(config.memory.budget_gib * GIB), f"{device} (memory.budget_gib)"
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory - CUDA_RESERVE
        return int(total), f"{torch.cuda.get_device_name(device)} (less {CUDA_RESERVE / GIB:.0f} GiB for the CUDA context)"
    free = available_memory(device)
    if free is None:
        return None, str(device)
    return free + _rss(), "this machine's RAM"


def plan_run(config, task, processes: int = 1, autocast=nullcontext) -> TrainingMemoryPlan:
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        if config.stage == "mask_vae":
            plan = _plan_mask_vae(config, task, autocast)
        else:
            plan = _plan_joint(config, task, processes, autocast)
    plan.parts["runtime"] = RUNTIME.get(torch.device(task.device).type, 0)
    return plan


# ---- stages 2 / 3 -----------------------------------------------------------------------------------
def _plan_joint(config, task, processes, autocast) -> TrainingMemoryPlan:
    """Every phase is planned (a low-resolution phase with a big batch can be the worst); the worst wins."""
    objective, dit = task.objective, task.dit
    sharded = config.distributed.strategy == "fsdp" and processes > 1
    trained = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    fixed = {}
    dit_frozen = module_bytes(dit)
    fixed["frozen weights"] = module_bytes(objective) - dit_frozen + dit_frozen // (processes if sharded else 1)
    fixed["trainable state"] = trainable_state_bytes(trained, config.ema.enabled) // (processes if sharded else 1)
    fixed["text encoder"] = module_bytes(task.text_encoder.model) if task.text_encoder.model is not None else 0
    plans = []
    for phase in config.phases:
        plan = TrainingMemoryPlan(parts=dict(fixed), advice=dict(ADVICE))
        _phase_activations(plan, config, task, phase, autocast)
        plan.notes.append(f"{'FSDP over %d processes' % processes if sharded else 'replicated (DDP)'}")
        plans.append(plan)
    worst = max(plans, key=lambda p: p.total)
    others = [f"{ph.height}x{ph.width}x{ph.num_frames} b{ph.batch_size}: {p.total / GIB:.1f} GiB"
              for ph, p in zip(config.phases, plans) if p is not worst]
    if others:
        worst.notes.append("other phases: " + "; ".join(others))
    return worst


def _phase_activations(plan, config, task, phase, autocast) -> None:
    objective, dit, mask_vae = task.objective, task.dit, task.mask_vae
    k = task.layert2v.max_foregrounds
    layout = task.encoder.layout(k, phase.num_frames, phase.height, phase.width)
    b, layers = phase.batch_size, len(dit.base.blocks)
    skip = parameter_storages(objective)
    no_mask = dataclasses.replace(objective.weights, mask=0.0)
    checkpointing = dit.gradient_checkpointing
    blocks = dit.base.blocks
    traced_layers = min(2, layers)  # every block saves the same: trace two, scale to all

    def trace(height, width, ckpt):
        small = task.encoder.layout(k, phase.num_frames, height, width)
        inputs = _joint_inputs(task, small)
        weights, dit.gradient_checkpointing, objective.weights = objective.weights, ckpt, no_mask
        dit.base.blocks = torch.nn.ModuleList(list(blocks)[:traced_layers])
        try:
            with autocast():
                return saved_tensor_bytes(lambda: objective(**inputs)["loss"], skip)
        finally:
            objective.weights, dit.gradient_checkpointing, dit.base.blocks = weights, checkpointing, blocks

    pixels = [h * w for h, w in SMALL]
    outside = LinearFit.through(pixels[0], trace(*SMALL[0], True), pixels[1], trace(*SMALL[1], True))
    whole = LinearFit.through(pixels[0], trace(*SMALL[0], False), pixels[1], trace(*SMALL[1], False))
    hw = phase.height * phase.width
    one_block = max(0, whole(hw) - outside(hw)) // traced_layers
    if checkpointing:
        with autocast():
            one_patch = torch.zeros(1, dit.base.config.in_channels, *layout.patch_size, device=dit.device, dtype=dit.dtype)
            token_bytes = dit.base.patch_embedding(one_patch).element_size()
        block_inputs = layers * layout.num_tokens * dit.inner_dim * token_bytes
        # checkpointed: what the blocks return, plus one block's tensors while it is recomputed
        plan.parts["activations"] = b * (outside(hw) + block_inputs + one_block)
    else:
        plan.parts["activations"] = b * (outside(hw) + layers * one_block)

    mask = 0
    if objective.weights.mask > 0:
        fit, decoded = _mask_decode_fit(mask_vae, config.loss, layout, autocast)
        alive = 1 if config.loss.mask_early_backward else b * k   # decodes whose graphs are alive at once
        mask = alive * fit(decoded)
        plan.notes.append(f"mask loss: {alive} decode(s) of {decoded} latent pixels x "
                          f"{_mask_frames(config.loss, layout)} latent frames alive at once")
    plan.parts["mask loss"] = mask
    plan.notes.append(f"worst phase {phase.height}x{phase.width}x{phase.num_frames}, batch {b}, K={k}: "
                      f"{layout.num_tokens} tokens per sample; checkpointing {'on' if checkpointing else 'off'}")


def _joint_inputs(task, layout) -> dict:
    dev = task.device
    p, n, dim = len(layout.prompt_names), task.layert2v.text_len, task.dit.text_dim
    latent = torch.zeros(layout.latent_shape(1), device=dev)
    return {"latent": latent, "noise": torch.zeros_like(latent), "t": torch.full((1,), 0.5, device=dev),
            "given": torch.zeros(1, layout.num_segments, dtype=torch.bool, device=dev),
            "context": torch.zeros(1, p, n, dim, device=dev),
            "alpha": torch.zeros(1, layout.num_foregrounds, layout.num_frames, layout.height, layout.width,
                                 device=dev),
            "layout": layout}


def _mask_frames(loss, layout) -> int:
    n = loss.mask_latent_frames
    return layout.latent_frames if n is None else max(1, min(n, layout.latent_frames))


def _mask_decode_fit(mask_vae, loss, layout, autocast) -> tuple[LinearFit, int]:
    """Saved bytes of one mask decode, as a function of decoded latent pixels; and that count."""
    n = _mask_frames(loss, layout)
    skip = parameter_storages(mask_vae)

    def trace(h, w):
        z = torch.zeros(1, mask_vae.z_dim, n, h, w, device=mask_vae.head.weight.device, requires_grad=True)
        with autocast():
            return saved_tensor_bytes(lambda: mask_vae.decode_alpha(z).sum(), skip)

    fit = LinearFit.through(16, trace(4, 4), 32, trace(8, 4))
    crop = getattr(loss, "mask_crop", None)
    h, w = layout.latent_height, layout.latent_width
    if crop:
        h, w = min(h, crop), min(w, crop)
    return fit, h * w


# ---- stage 1 ----------------------------------------------------------------------------------------
def _plan_mask_vae(config, task, autocast) -> TrainingMemoryPlan:
    objective = task.objective
    phase = max(config.phases, key=lambda p: p.batch_size * p.num_frames * p.height * p.width)  # one shape grows
    k = task.layert2v.max_foregrounds
    plan = TrainingMemoryPlan(advice=dict(ADVICE))
    plan.parts["frozen weights"] = module_bytes(objective)
    trained = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    plan.parts["trainable state"] = trainable_state_bytes(trained, config.ema.enabled)
    skip = parameter_storages(objective)
    dev = task.device

    def trace(h, w):
        alpha = torch.zeros(1, 1, phase.num_frames, h, w, device=dev)
        with autocast():
            return saved_tensor_bytes(lambda: objective(alpha)["loss"], skip)

    pixels = [h * w for h, w in SMALL]
    fit = LinearFit.through(pixels[0], trace(*SMALL[0]), pixels[1], trace(*SMALL[1]))
    one = fit(phase.height * phase.width)
    plan.parts["activations"] = phase.batch_size * k * one   # every matte of the batch is one example
    plan.notes.append(f"worst phase {phase.height}x{phase.width}x{phase.num_frames}, "
                      f"{phase.batch_size * k} mattes per step")
    return plan


def _rss() -> int:
    try:
        with open(f"/proc/{os.getpid()}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
