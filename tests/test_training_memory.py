"""The training memory plan: checked against measured CPU peaks, printed, and used to refuse a run."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from layert2v_core.memory import InsufficientMemoryError
from layert2v_core.memory_training import LinearFit, saved_tensor_bytes
from training.config import load_config
from training.eval_hook import eval_barrier_timeout, eval_seconds_estimate
from training.memory_plan import check_run_memory
from training.models import build_text_encoder
from training.stage2_joint import JointTask

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("size", [128, 192])
def test_plan_is_within_15_percent_of_the_measured_cpu_peak(tmp_path, size):
    """One real training step (forward, mask-loss decode, backward, AdamW) of a mid-size random model in
    a fresh process; peak RSS above the pre-build RSS against the plan's total (fit from 32-64 px traces)."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "training" / "scripts" / "step_memory.py"), "--config",
         str(CONFIGS / "memory_check_cpu_tiny.yaml"), "--set", f"output_dir={tmp_path}",
         "--set", f"phases=[{{steps: 1, height: {size}, width: {size}, num_frames: 17, batch_size: 1}}]"],
        capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["measured_gib"] > 0.3  # big enough that tensors, not the interpreter, dominate
    assert 0.85 <= result["ratio"] <= 1.15, result


def tiny_task(tmp_path, *sets):
    cfg = load_config(CONFIGS / "stage2_cpu_tiny.yaml", [f"output_dir={tmp_path}", "model.init_adapter=null",
                                                       f"data.root={tmp_path / 'data'}", *sets])
    task = JointTask(cfg)
    acc = SimpleNamespace(device=torch.device("cpu"), is_main_process=True, process_index=0, num_processes=1,
                          wait_for_everyone=lambda: None, autocast=_null)
    task.setup(acc)
    return cfg, task, acc


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_run_that_cannot_fit_is_refused_in_one_line_naming_the_setting(tmp_path):
    cfg, task, acc = tiny_task(tmp_path, "memory.budget_gib=0.01")
    with pytest.raises(InsufficientMemoryError) as err:
        check_run_memory(cfg, task, acc)
    message = str(err.value)
    assert "\n" not in message and "GiB per process" in message and "memory.budget_gib" in message
    assert "change " in message  # names the config setting that shrinks the largest part
    cfg.memory.check = False
    plan = check_run_memory(cfg, task, acc)  # printed, not enforced
    assert "total" in plan.table() and plan.total > 0


def test_mask_crop_shrinks_the_planned_mask_loss(tmp_path):
    sizes = {}
    for crop in (None, 2):
        cfg, task, acc = tiny_task(tmp_path / str(crop), f"loss.mask_crop={crop if crop else 'null'}",
                                   "phases=[{steps: 1, height: 64, width: 64, num_frames: 5, batch_size: 1}]")
        sizes[crop] = check_run_memory(cfg, task, acc).parts["mask loss"]
    assert sizes[2] < 0.5 * sizes[None]  # 2x2 of 8x8 latent pixels decoded (the trace's constant remains)


def test_saved_tensor_bytes_counts_what_autograd_keeps():
    x = torch.randn(1000, requires_grad=True)
    kept = saved_tensor_bytes(lambda: (x * 2).exp().sum())   # exp saves its output: 1000 fp32
    assert kept == 4000
    fit = LinearFit.through(10, 100, 20, 180)
    assert fit(30) == 260


def test_text_cache_lives_on_the_cpu_and_is_bounded_in_bytes(tmp_path):
    cfg = load_config(CONFIGS / "stage2_cpu_tiny.yaml", [f"output_dir={tmp_path}"])
    encoder = build_text_encoder(cfg.model, text_len=32, device="cpu", cache_gib=3 * 32 * 32 * 4 / 2 ** 30)
    for word in ["circle", "square", "ring", "diamond", "waves"]:
        encoder.encode(word)
    assert len(encoder._cache) == 3 and encoder._cached_bytes <= encoder.cache_bytes
    assert all(v.device.type == "cpu" for v in encoder._cache.values())
    again = encoder.encode("waves")
    assert torch.equal(again, encoder._encode_uncached("waves"))


def test_eval_barrier_timeout_follows_the_eval_estimate(tmp_path):
    cfg, task, _ = tiny_task(tmp_path)
    small = eval_seconds_estimate(cfg, task, "cuda")
    cfg.eval.steps *= 10
    assert eval_seconds_estimate(cfg, task, "cuda") == pytest.approx(10 * small)
    cfg.distributed.timeout_s = 0.001
    assert eval_barrier_timeout(cfg, task, "cpu") == pytest.approx(4 * eval_seconds_estimate(cfg, task, "cpu"))
    cfg.distributed.eval_timeout_s = 7200
    assert eval_barrier_timeout(cfg, task, "cpu") == 7200
