"""Stage 1: adapt the Wan VAE to alpha mattes (frozen encoder; projection head + decoder LoRA train).

    python -m training.stage1_mask_vae --config training/configs/stage1_cpu_tiny.yaml
    accelerate launch --multi_gpu --num_processes 8 -m training.stage1_mask_vae --config training/configs/stage1_wan1.3b.yaml

Loss: SmoothL1 + Sobel edge L1 + perceptual (frozen Wan-encoder features), weights in `loss:`.
Logged metrics: alpha MAE, boundary F-score, mean |grad| error. Output: `<output_dir>/adapter/` with
`mask_adapter.safetensors` + `layert2v_config.json` (the mask part of the core adapter format),
which stage 2 loads through `model.init_adapter`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from layert2v_core.weights.layert2v_adapter import CONFIG_FILE, MASK_FILE
from layert2v_core.weights.files import atomic_save_safetensors, atomic_write_text

from .config import RunConfig
from .data.vidlayer import VidLayerDataset, collate_layered
from .eval_hook import alpha_contact_sheet
from .metrics import alpha_metrics
from .models import build_mask_vae, build_vae, layert2v_config
from .objectives import MaskVAEObjective
from .stage_common import clip_spec, named_trainable, prepare_samples, run_stage, seeded

STAGE = "mask_vae"


class MaskVAETask:
    def __init__(self, config: RunConfig):
        self.config = config
        self.layert2v = layert2v_config(config.model)

    def setup(self, accelerator):
        self.accelerator = accelerator
        self.device = accelerator.device
        vae = build_vae(self.config.model, self.device)
        with seeded(self.config.seed):
            self.mask_vae = build_mask_vae(vae, self.layert2v).to(self.device)
        self.objective = MaskVAEObjective(self.mask_vae, self.config.loss)
        return self.objective

    def named_trainable(self):
        return named_trainable(self.objective)

    def dataset(self, phase, phase_index):
        samples = prepare_samples(self.config.data, self.accelerator)
        self._eval_samples = samples
        dataset = VidLayerDataset(samples, clip_spec(phase, self.config.data), masks_only=True)
        return dataset, [s.num_foregrounds for s in samples], collate_layered

    def make_inputs(self, batch, phase, generator):
        alpha = batch["alpha"].flatten(0, 1)[:, None]        # (B*K, 1, F, H, W): every matte is one example
        return {"alpha": alpha.to(self.device)}

    def export(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / CONFIG_FILE, self.layert2v.to_json())
        atomic_save_safetensors(self.mask_vae.mask_adapter_state_dict(), folder / MASK_FILE)

    @torch.no_grad()
    def evaluate(self, output_dir: Path, step: int):
        cfg = self.config
        phase = cfg.phases[-1]
        samples = self._eval_samples[: max(1, cfg.eval.num_prompts)]
        dataset = VidLayerDataset(samples, clip_spec(phase, cfg.data, deterministic=True), masks_only=True)
        gt = torch.cat([dataset[(i, 0)]["alpha"][:, None] for i in range(len(dataset))]).to(self.device)
        pred = self.mask_vae(gt)
        metrics = alpha_metrics(pred, gt)
        path = alpha_contact_sheet(gt, pred, Path(output_dir) / "eval" / f"mask_vae_step{step:06d}.png")
        path.with_suffix(".txt").write_text("".join(f"{k}: {v:.5f}\n" for k, v in metrics.items()))
        return path


def main(argv=None):
    return run_stage(MaskVAETask, STAGE, __doc__, argv)


if __name__ == "__main__":
    main()
