"""The three training stages end to end on tiny models and synthetic data (CPU, seconds each):
loss goes down, adapters load back into the core pipeline and generate, stage 3 grows the
LayerAdaLN table, and a resumed run replays the uninterrupted loss sequence exactly."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from layert2v_core.weights.layert2v_adapter import load_layert2v_adapter
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.mask_vae import MaskVAE
from layert2v_core.pipeline import LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig
from layert2v_core.text import TextEncoder
from layert2v_core.tiny import build_tiny_transformer, build_tiny_vae
from training.config import load_config
from training.engine import Trainer
from training.eval_hook import generate_layers
from training.models import load_mask_part
from training.stage1_mask_vae import MaskVAETask
from training.stage2_joint import JointTask
from training.stage3_multi_fg import MultiForegroundTask

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
SMALL_SAMPLER = SamplerConfig(steps=3, cfg=2.0, shift=3.0, sampler="euler", seed=7)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(name: str, out: Path, *sets: str):
    return load_config(CONFIGS / name, [f"output_dir={out}", *sets])


def fake_accelerator():
    return SimpleNamespace(device=torch.device("cpu"), is_main_process=True, process_index=0, num_processes=1,
                           wait_for_everyone=lambda: None)


def probe_loss(task, draws: int = 4) -> float:
    """Mean objective on one fixed sample with fixed noise/t draws: a low-variance view of progress."""
    phase = task.config.phases[-1]
    dataset, _, collate = task.dataset(phase, len(task.config.phases) - 1)
    batch = collate([dataset[(0, 0)]])
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        return sum(float(task.objective(**task.make_inputs(batch, phase, generator))["loss"]) for _ in range(draws)) / draws


def initial_probe(task_class, cfg) -> float:
    fresh = task_class(cfg)
    fresh.setup(fake_accelerator())  # same seeds as the run: its initial weights
    return probe_loss(fresh)


# ---- stage 1 ---------------------------------------------------------------------------------------
def test_stage1_mask_vae_learns_and_exports_a_loadable_mask_adapter(tmp_path):
    cfg = tiny("stage1_cpu_tiny.yaml", tmp_path / "run", f"data.root={tmp_path / 'data'}",
               "data.synthetic.num_samples=1", "phases=[{steps: 12, height: 32, width: 32, num_frames: 5, batch_size: 1}]",
               "optim.lr=5e-3", "optim.warmup_steps=0", "checkpoint.every=6", "eval.num_prompts=1")
    before = initial_probe(MaskVAETask, cfg)
    task = MaskVAETask(cfg)
    trainer = Trainer(cfg, task)
    history = trainer.run()
    assert [r["step"] for r in history] == list(range(1, 13))
    assert {"rec", "edge", "perceptual", "alpha_mae", "boundary_f", "grad_error"} <= set(history[0])
    assert probe_loss(task) < 0.85 * before
    assert (tmp_path / "run" / "eval" / "mask_vae_step000012.png").is_file()

    fresh = MaskVAE(build_tiny_vae(), lora_rank=4, lora_alpha=4.0)
    load_mask_part(fresh, tmp_path / "run" / "adapter")
    alpha = torch.rand(1, 1, 5, 16, 16)
    with trainer.ema.swapped_in():  # the export holds the EMA weights
        expected = task.mask_vae(alpha)
    torch.testing.assert_close(fresh(alpha), expected)


# ---- stage 2 ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage2")
    cfg = tiny("stage2_cpu_tiny.yaml", root / "run", f"data.root={root / 'data'}", "model.init_adapter=null",
               "data.synthetic.num_samples=1", "phases=[{steps: 20, height: 32, width: 32, num_frames: 5, batch_size: 1}]",
               "optim.lr=1e-2", "optim.warmup_steps=0", "data.text_dropout=0", "conditional.probability=0",
               "ema.decay=0.8", "checkpoint.every=10", "eval.num_prompts=1", "eval.steps=3")
    before = initial_probe(JointTask, cfg)
    task = JointTask(cfg)
    trainer = Trainer(cfg, task)
    history = trainer.run()
    return SimpleNamespace(cfg=cfg, task=task, trainer=trainer, history=history, before=before, root=root)


def test_stage2_loss_goes_down(stage2_run):
    after = probe_loss(stage2_run.task)
    assert after < 0.9 * stage2_run.before, (stage2_run.before, after)
    assert {"flow", "consistency", "mask", "loss", "lr", "grad_norm"} <= set(stage2_run.history[0])


def test_stage2_writes_checkpoints_tensorboard_and_contact_sheet(stage2_run):
    out = Path(stage2_run.cfg.output_dir)
    assert (out / "checkpoints" / "latest").read_text() == "step_000020"
    for step in (10, 20):
        folder = out / "checkpoints" / f"step_{step:06d}"
        assert {p.name for p in folder.iterdir()} == {"trainable.safetensors", "ema.safetensors", "optimizer.pt",
                                                      "rng_rank0.pt", "trainer_state.json", "adapter"}
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 20
    assert (out / "eval" / "joint_step000020.png").is_file()


def loaded_pipeline(run_dir: Path, text_len: int, max_foregrounds: int) -> LayerT2VPipeline:
    """A pipeline built the way a user would: base models + the exported adapter folder."""
    adapter = load_layert2v_adapter(run_dir / "adapter")
    assert adapter.config.max_foregrounds == max_foregrounds
    vae = build_tiny_vae()
    dit = LayeredWanTransformer(build_tiny_transformer(), adapter.config)
    mask_vae = MaskVAE.from_config(vae, adapter.config)
    adapter.apply(dit, mask_vae)
    text = TextEncoder.from_folder(run_dir / "text_encoder", text_len=text_len, dtype=torch.float32)
    return LayerT2VPipeline(dit, vae, mask_vae, text)


def test_stage2_adapter_loads_into_the_core_pipeline_and_generates(stage2_run):
    out = Path(stage2_run.cfg.output_dir)
    pipeline = loaded_pipeline(out, text_len=32, max_foregrounds=1)
    prompt = {"full": "a red circle moving right over blue stripes", "background": "blue stripes",
              "foregrounds": ["a red circle moving right"]}
    frames = generate_layers(pipeline, prompt, 5, 32, 32, SMALL_SAMPLER)
    assert frames.rgb["full"].shape == (5, 32, 32, 3) and frames.alpha["mask_1"].shape == (5, 32, 32)
    assert 0 <= float(frames.alpha["mask_1"].min()) and float(frames.alpha["mask_1"].max()) <= 1

    task = stage2_run.task
    with stage2_run.trainer.ema.swapped_in():  # the adapter is the EMA: same weights, same latent
        expected = generate_layers(task.pipeline(), prompt, 5, 32, 32, SMALL_SAMPLER)
    torch.testing.assert_close(frames.rgb["full"], expected.rgb["full"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(frames.alpha["mask_1"], expected.alpha["mask_1"], atol=1e-4, rtol=1e-4)
    untrained = LayerT2VPipeline(LayeredWanTransformer(build_tiny_transformer(), pipeline.dit.config),
                                 pipeline.vae, pipeline.mask_vae, pipeline.text_encoder)
    assert not torch.allclose(generate_layers(untrained, prompt, 5, 32, 32, SMALL_SAMPLER).rgb["full"], frames.rgb["full"])


# ---- stage 3 ---------------------------------------------------------------------------------------
def test_stage3_grows_layer_adaln_from_trained_rows_and_trains_on_two_foregrounds(stage2_run, tmp_path):
    stage2_adapter = Path(stage2_run.cfg.output_dir) / "adapter"
    cfg = tiny("stage3_cpu_tiny.yaml", tmp_path / "run", f"data.root={tmp_path / 'data'}",
               f"model.init_adapter={stage2_adapter}", "data.synthetic.num_samples=4", "data.num_foregrounds=[2]",
               "data.synthetic.min_foregrounds=2", "phases=[{steps: 3, height: 32, width: 32, num_frames: 5, batch_size: 1}]",
               "optim.grad_accum=1", "checkpoint.every=0", "eval.steps=2")
    grown = MultiForegroundTask(cfg)
    grown.setup(fake_accelerator())
    rows = grown.dit.layer_adaln.detach()
    trained = load_layert2v_adapter(stage2_adapter).dit_state["layer_adaln"]
    assert rows.shape[0] == 6 and grown.new_rows == ["foreground_2", "mask_2"]
    torch.testing.assert_close(rows[:4], trained)
    torch.testing.assert_close(rows[4], trained[2])
    torch.testing.assert_close(rows[5], trained[3])
    assert trained[2].abs().sum() > 0  # stage 2 did train the rows that are copied

    history = Trainer(cfg, MultiForegroundTask(cfg)).run()
    assert [r["foregrounds"] for r in history] == [2.0, 2.0, 2.0]
    assert (tmp_path / "run" / "eval" / "multi_fg_step000003.png").is_file()
    pipeline = loaded_pipeline(tmp_path / "run", text_len=32, max_foregrounds=2)
    prompt = {"full": "a red circle moving right and a green square moving up over blue stripes",
              "background": "blue stripes", "foregrounds": ["a red circle moving right", "a green square moving up"]}
    frames = generate_layers(pipeline, prompt, 5, 32, 32, SMALL_SAMPLER)
    assert set(frames.alpha) == {"mask_1", "mask_2"} and frames.rgb["foreground_2"].shape == (5, 32, 32, 3)


# ---- resume ----------------------------------------------------------------------------------------
def test_resumed_run_replays_the_uninterrupted_loss_sequence(tmp_path):
    """Two phases, gradient accumulation, random conditioning and text dropout, EMA: a run stopped after
    step 2 and resumed must see the same batches, noise and weights as one that never stopped."""
    sets = [f"data.root={tmp_path / 'data'}", "model.init_adapter=null", "data.synthetic.num_samples=3",
            "phases=[{steps: 4, height: 32, width: 32, num_frames: 5, batch_size: 1},"
            " {steps: 2, height: 32, width: 32, num_frames: 9, batch_size: 1}]",
            "optim.grad_accum=2", "optim.warmup_steps=2", "optim.lr=1e-2", "data.text_dropout=0.5",
            "conditional.probability=0.5", "data.random_crop=true", "checkpoint.every=2", "eval.enabled=false"]
    full_cfg = tiny("stage2_cpu_tiny.yaml", tmp_path / "uninterrupted", *sets)
    uninterrupted = Trainer(full_cfg, JointTask(full_cfg))
    reference = uninterrupted.run()

    cut_cfg = tiny("stage2_cpu_tiny.yaml", tmp_path / "interrupted", *sets)
    first = Trainer(cut_cfg, JointTask(cut_cfg), stop_after=2).run()  # mid-phase: the data position matters
    assert [r["step"] for r in first] == [1, 2]
    assert not (tmp_path / "interrupted" / "adapter").exists()  # stopped early: no final export
    resumed_trainer = Trainer(cut_cfg, JointTask(cut_cfg), resume="auto")
    resumed = resumed_trainer.run()
    assert [r["step"] for r in resumed] == [3, 4, 5, 6]

    keys = ["loss", "flow", "consistency", "mask", "lr", "grad_norm", "phase"]
    as_seq = lambda hist: [float(r[k]) for r in hist for k in keys]
    assert as_seq(first + resumed) == pytest.approx(as_seq(reference), rel=1e-6, abs=1e-7)
    for a, b in zip(uninterrupted.task.named_trainable().values(), resumed_trainer.task.named_trainable().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for k in uninterrupted.ema.shadow:
        torch.testing.assert_close(uninterrupted.ema.shadow[k], resumed_trainer.ema.shadow[k], rtol=1e-6, atol=1e-7)
    logged = [json.loads(line)["step"] for line in (tmp_path / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4, 5, 6]
    state = json.loads((tmp_path / "interrupted" / "checkpoints" / "step_000006" / "trainer_state.json").read_text())
    assert state == {"step": 6, "batches_per_rank": 12, "seed": 0}

    with pytest.raises(FileExistsError, match="--resume auto"):
        Trainer(cut_cfg, JointTask(cut_cfg)).run()  # a fresh run never silently overwrites checkpoints


def test_resume_drops_torn_metric_lines_and_later_steps(tmp_path):
    from training.engine import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 6)) + '{"step": 6, "lo')
    _truncate_metrics(path, 3)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]


def test_checkpoint_prune_removes_crash_leftovers(tmp_path):
    from training.checkpoint import _prune

    for name in ("step_000002", "step_000004", "step_000006", "step_000003.tmp", ".step_000001.deleting"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "trainer_state.json").write_text("{}")
    _prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000004", "step_000006"]
