"""Mixed precision done right: frozen weights bf16, every trained tensor and its AdamW state fp32, so
an update of 3e-5 (Adam's first step moves each weight by ~lr) lands instead of rounding away."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from training.config import load_config
from training.engine import Trainer
from training.stage2_joint import JointTask

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
LR = 3e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(out: Path):
    return load_config(CONFIGS / "stage2_cpu_tiny.yaml", [
        f"output_dir={out}", f"data.root={out / 'data'}", "model.init_adapter=null", "model.dtype=bfloat16",
        "phases=[{steps: 1, height: 32, width: 32, num_frames: 5, batch_size: 1}]",
        f"optim.lr={LR}", "optim.warmup_steps=0", "optim.max_grad_norm=0", "ema.enabled=false",
        "eval.enabled=false", "checkpoint.every=0", "memory.check=false"])


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    task = JointTask(cfg)
    task.setup(SimpleNamespace(device=torch.device("cpu"), is_main_process=False, process_index=0,
                               num_processes=1, wait_for_everyone=lambda: None))
    return {k: p.detach().clone() for k, p in task.named_trainable().items()}


def test_trained_tensors_and_adamw_state_are_fp32_and_a_3e_5_update_lands(tmp_path):
    cfg = config(tmp_path / "run")
    before = initial_weights(cfg)
    lora_a = [k for k in before if "lora_A" in k]
    assert lora_a and all(before[k].dtype == torch.bfloat16 for k in lora_a)  # what peft creates on a bf16 base

    trainer = Trainer(cfg, JointTask(cfg))
    trainer.run()
    task = trainer.task
    frozen = {p.dtype for p in task.dit.base.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    named = task.named_trainable()
    assert set(named) == set(before) and len(named) > 10
    not_fp32 = [k for k, p in named.items() if p.dtype != torch.float32]
    assert not not_fp32, not_fp32
    state = trainer.optimizer.optimizer.state
    assert len(state) == len(named)
    for p, s in state.items():
        assert s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32

    # Adam's first step moves every entry with a gradient by ~lr (m / sqrt(v) = sign(g)) plus decay.
    moved = changed = 0
    for k in lora_a:
        delta = (named[k].detach() - before[k].float()).abs()
        changed += int((delta > 0).sum())
        moved += delta.numel()
        assert float(delta.max()) < 2 * LR                              # the step is the size asked for
    assert changed / moved > 0.99
    # The same update stored in bf16 would vanish for most entries: the reason for fp32 masters.
    k = lora_a[0]
    rounded = (before[k].float() + LR * torch.sign(named[k].detach() - before[k].float())).to(torch.bfloat16)
    assert float((rounded == before[k]).float().mean()) > 0.5


def test_require_fp32_names_a_bf16_trained_tensor():
    from training.optim import build_optimizer, require_fp32
    from training.config import OptimConfig

    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="lora_A"):
        require_fp32({"blocks.0.lora_A": p}, build_optimizer([p], OptimConfig()))
