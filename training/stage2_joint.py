"""Stage 2: joint full | background | foreground | mask training of the DiT adapter.

    python -m training.stage2_joint --config training/configs/stage2_cpu_tiny.yaml
    accelerate launch --multi_gpu --num_processes 8 -m training.stage2_joint --config training/configs/stage2_wan1.3b.yaml

Frozen: Wan VAE, mask VAE (stage 1's adapter from `model.init_adapter`), text encoder, DiT base.
Trained: peft LoRA on the DiT + LayerAdaLN (routed cross-attention is the routing preset in the
adapter config). L = L_FM + 0.1 L_cons + 0.1 L_mask, t logit-normal; optional conditional training
(`conditional.probability`). Output: `<output_dir>/adapter/`, the core adapter format.
"""

from __future__ import annotations

from pathlib import Path

import torch

from layert2v_core.weights.layert2v_adapter import save_layert2v_adapter
from layert2v_core.model_geometry import trained_vae_record
from layert2v_core.pipeline import LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig

from .config import RunConfig
from .data.latent_cache import LatentCacheDataset, build_latent_cache, collate_cached
from .data.synthetic import held_out_prompts
from .data.vidlayer import VidLayerDataset, collate_layered
from .eval_hook import layered_contact_sheet
from .layer_encoding import LayerEncoder
from .losses import draw_mask_crop
from .models import (build_dit, build_mask_vae, build_text_encoder, build_vae, layert2v_config, load_mask_part,
                     save_text_encoder)
from .objectives import JointObjective
from .stage_common import clip_spec, named_trainable, prepare_samples, run_stage, seeded
from .timesteps import given_segments, logit_normal

STAGE = "joint"


class JointTask:
    stage = STAGE

    def __init__(self, config: RunConfig):
        self.config = config
        self.layert2v = layert2v_config(config.model)

    # ---- models --------------------------------------------------------------------------------
    def setup(self, accelerator):
        cfg = self.config
        self.accelerator = accelerator
        self.device = accelerator.device
        self.vae = build_vae(cfg.model, self.device)
        if cfg.model.kind == "wan":  # a VAE of our own (demo stage 0) has its own statistics: keep them with the adapter
            self.layert2v.extra.setdefault("latents_mean", list(self.vae.config.latents_mean))
            self.layert2v.extra.setdefault("latents_std", list(self.vae.config.latents_std))
        # ... and its strides, so a sampler without the VAE at hand (ComfyUI's) sizes latents for it
        self.layert2v.extra.update(trained_vae_record(self.vae))
        self.text_encoder = build_text_encoder(cfg.model, self.layert2v.text_len, self.device, cfg.data.text_cache_gib)
        with seeded(cfg.seed):
            self.mask_vae = build_mask_vae(self.vae, self.layert2v).to(self.device)
            self.dit = build_dit(cfg.model, self.layert2v, self.device)
            self.dit.add_lora()
        self.load_previous_stage()
        if not cfg.model.train_layer_adaln:  # ablation (a): temporal concatenation only
            self.dit.layer_adaln.requires_grad_(False)
        self.mask_vae.requires_grad_(False)
        self.encoder = LayerEncoder(self.vae, self.mask_vae, self.text_encoder, self.layert2v,
                                    patch_size=self.dit.base.config.patch_size)
        self.objective = JointObjective(self.dit, self.mask_vae, cfg.loss)
        if cfg.model.kind == "tiny" and accelerator.is_main_process:  # kind wan: the text encoder is a file already
            save_text_encoder(self.text_encoder, Path(cfg.output_dir) / "text_encoder")
        return self.objective

    def load_previous_stage(self) -> None:
        """Stage 2 starts from stage 1's mask adapter (without one the mask VAE is the plain Wan VAE)."""
        if self.config.model.init_adapter:
            load_mask_part(self.mask_vae, self.config.model.init_adapter)

    def named_trainable(self):
        named = named_trainable(self.objective)
        expected = {id(p) for p in self.dit.trainable_parameters() if p.requires_grad}
        if {id(p) for p in named.values()} != expected:  # peft or a freeze went wrong: fail loudly
            raise RuntimeError("trainable tensors are not exactly the DiT LoRA + LayerAdaLN")
        return named

    # ---- data ----------------------------------------------------------------------------------
    def dataset(self, phase, phase_index):
        data = self.config.data
        samples = prepare_samples(data, self.accelerator, self.layert2v.max_foregrounds)
        buckets = [s.num_foregrounds for s in samples]
        if not data.cache_latents:
            return VidLayerDataset(samples, clip_spec(phase, data)), buckets, collate_layered
        clip = clip_spec(phase, data, deterministic=True)
        cache_dir = data.cache_dir or str(Path(self.config.output_dir) / "latent_cache")
        acc = self.accelerator
        build_latent_cache(VidLayerDataset(samples, clip), self.encoder, cache_dir, acc.process_index, acc.num_processes)
        acc.wait_for_everyone()
        paths = build_latent_cache(VidLayerDataset(samples, clip), self.encoder, cache_dir, 0, 1)  # all exist now
        return LatentCacheDataset(paths, [s.name for s in samples]), buckets, collate_cached

    def make_inputs(self, batch, phase, generator):
        cfg = self.config
        k = batch["alpha"].shape[1]
        layout = self.encoder.layout(k, phase.num_frames, phase.height, phase.width)
        if "latent" in batch:
            latent, context = batch["latent"], batch["context"]
        else:
            items = [{key: batch[key][b] for key in ("full", "background", "foreground", "alpha")}
                     for b in range(len(batch["name"]))]
            latent = torch.stack([self.encoder.latent(it, layout) for it in items])
            context = torch.stack([self.encoder.context(p, layout) for p in batch["prompts"]])
        batch_size = latent.shape[0]
        context = context.to(self.device).clone()
        drop = torch.rand(batch_size, generator=generator) < cfg.data.text_dropout
        context[drop.to(self.device)] = self.encoder.uncond_row().to(context)
        noise = torch.randn(latent.shape, generator=generator)
        t = logit_normal(batch_size, cfg.timesteps.mean, cfg.timesteps.std, generator)
        given = given_segments(layout, batch_size, cfg.conditional.probability, cfg.conditional.tasks, generator)
        dev = self.device
        inputs = {"latent": latent.to(dev), "noise": noise.to(dev), "t": t.to(dev), "given": given.to(dev),
                  "context": context, "alpha": batch["alpha"].to(dev), "layout": layout}
        if cfg.loss.mask_crop:  # drawn only when configured: runs without a crop keep their random stream
            inputs["mask_crop"] = draw_mask_crop(layout, cfg.loss.mask_crop, cfg.loss.mask_crop_margin, generator)
        return inputs

    # ---- export / eval ---------------------------------------------------------------------------
    def export(self, folder: Path) -> None:
        save_layert2v_adapter(folder, self.dit, self.mask_vae, config=self.layert2v)

    def pipeline(self) -> LayerT2VPipeline:
        return LayerT2VPipeline(self.dit, self.vae, self.mask_vae, self.text_encoder, device=self.device)

    def eval_prompts(self) -> list[dict]:
        ev = self.config.eval
        if ev.prompts:
            return list(ev.prompts)[: ev.num_prompts]
        return held_out_prompts(self.config.seed, ev.num_prompts, ev.num_foregrounds)

    @torch.no_grad()
    def evaluate(self, output_dir: Path, step: int):
        ev = self.config.eval
        last = self.config.phases[-1]
        sampler = SamplerConfig(steps=ev.steps, cfg=ev.cfg, shift=ev.shift, sampler=ev.sampler, seed=ev.seed)
        path = Path(output_dir) / "eval" / f"{self.stage}_step{step:06d}.png"
        return layered_contact_sheet(self.pipeline(), self.eval_prompts(), ev.num_frames or last.num_frames,
                                     ev.height or last.height, ev.width or last.width, sampler, path)


def main(argv=None):
    return run_stage(JointTask, STAGE, __doc__, argv)


if __name__ == "__main__":
    main()
