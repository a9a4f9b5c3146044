"""One training step of a stage config, its memory plan beside the measured peak (CUDA or CPU RSS).

    python training/scripts/step_memory.py --config training/configs/stage2_wan1.3b.yaml \
        --set "phases=[{steps: 1, height: 384, width: 672, num_frames: 41, batch_size: 1}]"

Prints one JSON line: the plan's parts and total, the measured peak (torch.cuda.max_memory_allocated
on a GPU; on CPU the resident-set high-water mark minus the RSS before the models were built) and
their ratio. Inputs are random tensors of the phase's shapes (the data pipeline is not part of it).

    python training/scripts/step_memory.py --config training/configs/stage2_wan1.3b.yaml --plan-only --random-weights

--plan-only: the plan alone, no step. --random-weights: a `kind: wan` config without its files: the same
architectures (shipped Wan2.1-1.3B DiT and VAE configs) with random weights. The text encoder is the
tiny one; a plan counts UMT5-XXL from its config (5.7 B parameters) instead, and a step reports that
amount as `plus_umt5_xxl_gib` (what a real run adds).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def main(argv=None) -> dict:
    from training.config import load_config
    from training.memory_plan import _joint_inputs, plan_run
    from training.optim import build_optimizer, to_fp32_master
    from training.stage1_mask_vae import MaskVAETask
    from training.stage2_joint import JointTask
    from training.stage3_multi_fg import MultiForegroundTask
    from training.stage_common import parse_args

    plan_only = "--plan-only" in (argv if argv is not None else sys.argv)
    random_weights = "--random-weights" in (argv if argv is not None else sys.argv)
    argv = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--plan-only", "--random-weights")]
    args = parse_args(__doc__, argv)
    config = load_config(args.config, args.set)
    if random_weights:
        _random_weight_twin(config, plan_only)
    tasks = {"mask_vae": MaskVAETask, "joint": JointTask, "multi_fg": MultiForegroundTask}
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else _null
    accelerator = SimpleNamespace(device=device, is_main_process=True, process_index=0, num_processes=1,
                                  wait_for_everyone=lambda: None)
    _import_lazy_modules()  # their import is not training memory
    rss_before = _rss()
    _reset_peak(cuda)
    task = tasks[config.stage](config)
    if random_weights and hasattr(task, "load_previous_stage"):
        task.load_previous_stage = lambda: None  # no previous adapter to load: random weights
    model = task.setup(accelerator)
    named = task.named_trainable()
    to_fp32_master(named)
    plan = plan_run(config, task, int(os.environ.get("WORLD_SIZE", "1")), autocast)  # fsdp plans: WORLD_SIZE=8
    umt5 = _umt5_xxl_bytes(config) if random_weights and "text encoder" in plan.parts else None
    if umt5 is not None and plan_only:
        plan.parts["text encoder"] = umt5  # a step keeps the tiny built one: plan and peak stay comparable
    if plan_only:
        result = {"config": str(args.config), "overrides": args.set, "estimate_gib": plan.total / 2**30,
                  "parts_gib": {k: round(v / 2**30, 3) for k, v in plan.parts.items()}, "notes": plan.notes}
        print(json.dumps(result))
        return result
    optimizer = build_optimizer(list(named.values()), config.optim)
    phase = max(config.phases, key=lambda p: p.batch_size * p.num_frames * p.height * p.width)
    if config.stage == "mask_vae":
        k = task.layert2v.max_foregrounds
        inputs = {"alpha": torch.rand(phase.batch_size * k, 1, phase.num_frames, phase.height, phase.width,
                                      device=device)}
    else:
        layout = task.encoder.layout(task.layert2v.max_foregrounds, phase.num_frames, phase.height, phase.width)
        one = [_joint_inputs(task, layout) for _ in range(phase.batch_size)]
        inputs = {k: (torch.cat([o[k] for o in one]) if torch.is_tensor(one[0][k]) else one[0][k]) for k in one[0]}
        inputs["latent"].normal_()
        inputs["noise"].normal_()
    with autocast():
        loss = model(**inputs)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    measured = torch.cuda.max_memory_allocated(device) if cuda else _hwm() - rss_before
    result = {"config": str(args.config), "overrides": args.set, "device": torch.cuda.get_device_name(device) if cuda
              else "cpu", "estimate_gib": plan.total / 2**30, "measured_gib": measured / 2**30,
              "ratio": plan.total / measured, "parts_gib": {k: v / 2**30 for k, v in plan.parts.items()},
              "notes": plan.notes, "loss": float(loss.detach())}
    if umt5 is not None:  # what a real run adds on top: the resident UMT5-XXL instead of the tiny encoder
        result["plus_umt5_xxl_gib"] = umt5 / 2**30
    print(json.dumps(result))
    return result


def _random_weight_twin(config, plan_only: bool) -> None:
    """Same architectures as the Wan2.1-1.3B files, random weights, nothing read from disk."""
    from layert2v_core.weights.wan_single_file import shipped_config

    dit = {k: v for k, v in shipped_config("transformer").items() if not k.startswith("_")}
    dit.update(config.model.architecture.get("dit", {}))  # e.g. --set model.architecture.dit.num_layers=2
    config.model.kind = "tiny"
    # For a plan, two real blocks are enough to trace (every block saves the same); the others are
    # counted on the meta device.
    config.model.architecture = {"dit": {**dit, **({"plan_only_blocks": 2} if plan_only else {})}, "vae": {}}
    config.model.init_adapter = None


def _umt5_xxl_bytes(config) -> int:
    """UMT5-XXL encoder (Wan2.1's text encoder) parameter bytes, counted on the meta device."""
    from transformers import UMT5Config, UMT5EncoderModel

    from training.models import DTYPES

    xxl = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                     feed_forward_proj="gated-gelu")
    with torch.device("meta"):
        model = UMT5EncoderModel(xxl)
    return sum(p.numel() for p in model.parameters()) * DTYPES[config.model.text_dtype].itemsize


def _import_lazy_modules() -> None:
    import peft  # noqa: F401
    import torch.utils.checkpoint  # noqa: F401
    from peft import LoraConfig, get_peft_model_state_dict  # noqa: F401
    from transformers import UMT5EncoderModel  # noqa: F401

    from layert2v_core.tiny import build_tiny_tokenizer  # noqa: F401


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _reset_peak(cuda: bool) -> None:
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # big freed tensors go back to the OS at once, so RSS follows live tensors
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _rss() -> int:
    return _status_kb("VmRSS")


def _hwm() -> int:
    return _status_kb("VmHWM")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
