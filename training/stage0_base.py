"""Stage 0 (demo model only): the stand-in for Wan2.1's own pretraining, from scratch, on full videos.

    python -m training.stage0_base --config training/configs/demo_stage0_vae.yaml   # tiny Wan VAE
    python -m training.stage0_base --config training/configs/demo_stage0_dit.yaml   # tiny Wan T2V DiT

`base_vae` trains an AutoencoderKLWan (L1 + MSE + small KL) on single layers: full, background,
premultiplied foreground and alpha replicated to RGB, so the frozen encoder also serves stage 1's mask
VAE. Its export sets `latents_mean` / `latents_std` in the config to the measured latent statistics and
writes `<output_dir>/adapter/vae.safetensors` (config in the header, loadable by `load_wan_vae`).

`base_dit` builds the tiny UMT5 text encoder + tokenizer in code from the caption vocabulary, and trains a
WanTransformer3DModel with rectified flow on full-video latents only (text dropout for CFG). With
`architecture.text_encoder.trainable: true` the text encoder trains with the DiT here (and is frozen in
every later stage): a random frozen encoder kept the words apart, but the DiT never learned the
foreground words from it (issue 13). `architecture.flow_objective.foreground_weight: w` weighs the flow
loss by 1 + w * (the data's own object coverage of each latent cell), so the objects, not the
background, carry the loss. Export: `<output_dir>/adapter/dit.safetensors` (loadable by
`load_wan_transformer`) and `<output_dir>/text_encoder/`.

Stages 1-3 then load these files with `model.kind: wan`: the same code path as the real Wan2.1 files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from layert2v_core.layout import LayerLayout
from layert2v_core.model_geometry import vae_strides
from layert2v_core.text import TextEncoder
from layert2v_core.tiny import TINY_WORDS, build_tiny_tokenizer, build_tiny_umt5
from layert2v_core.vae_io import decode_latent, decoder_chunks, encode_frames, normalize_latent
from layert2v_core.weights.wan_single_file import save_with_config

from .caption_swap import swap_word
from .config import RunConfig, load_config
from .data.synthetic import held_out_prompts
from .data.vidlayer import VidLayerDataset, collate_layered, frame_indices
from .eval_hook import pick_frames, save_sheet
from .losses import alpha_to_latent_grid
from .models import SYNTHETIC_WORDS, build_vae, save_text_encoder
from .stage_common import clip_spec, parse_args, prepare_samples, seeded
from .timesteps import logit_normal

logger = logging.getLogger(__name__)

VAE_FILE = "vae.safetensors"
DIT_FILE = "dit.safetensors"
TEXT_ENCODER_DIR = "text_encoder"
STATS_SAMPLES = 48  # clips used to measure the latent mean / std at export


def _to_vae_input(frames: torch.Tensor) -> torch.Tensor:
    """(F, H, W, 3) in [0, 1] -> (3, F, H, W) in [-1, 1]."""
    return frames.permute(3, 0, 1, 2) * 2.0 - 1.0


def _random_crop(x: torch.Tensor, size, generator) -> torch.Tensor:
    """(C, F, H, W) -> (C, F, size, size) at a random offset (whole clip when size is None)."""
    if not size:
        return x
    top = int(torch.randint(x.shape[-2] - size + 1, (1,), generator=generator))
    left = int(torch.randint(x.shape[-1] - size + 1, (1,), generator=generator))
    return x[..., top:top + size, left:left + size]


class MemoryClips(torch.utils.data.Dataset):
    """VidLayerDataset items, each whole video decoded once and kept (fp16): the VAE visits every sample
    several times, and decoding four small videos per item cost more than the VAE step itself."""

    def __init__(self, samples, clip):
        self.whole = VidLayerDataset(samples, dataclasses.replace(clip, num_frames=1, random_start=False))
        self.clip = clip
        self.store: dict[int, dict] = {}

    def __len__(self):
        return len(self.whole)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        if index not in self.store:
            total = self.whole._total_frames(index)
            self.whole.clip = dataclasses.replace(self.whole.clip, num_frames=total)
            item = self.whole[(index, 0)]
            self.store[index] = {"full": item["full"].half(), "background": item["background"].half(),
                                 "alpha": item["alpha"].half(), "prompts": item["prompts"], "name": item["name"]}
        kept = self.store[index]
        idx = frame_indices(kept["full"].shape[0], self.clip, np.random.default_rng([seed, index]))
        full, alpha = kept["full"][idx].float(), kept["alpha"][:, idx].float()
        return {"name": kept["name"], "prompts": kept["prompts"], "full": full, "alpha": alpha,
                "background": kept["background"][idx].float(), "foreground": full[None] * alpha[..., None]}


# ---- base VAE ---------------------------------------------------------------------------------------
class VAEObjective(nn.Module):
    def __init__(self, vae: AutoencoderKLWan, loss):
        super().__init__()
        self.vae = vae
        self.loss = loss

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        # Reparameterised sample, eps from the step generator. A fresh encoder's std is ~1 against means
        # ~0.1: at full noise the decoder learns from near-pure noise for a long time.
        z = posterior.mean + self.loss.latent_noise * posterior.std * eps
        # Before diffusers' final clamp: it has zero gradient outside [-1, 1], so pixels a fresh decoder
        # overshoots would stop learning. (Measured alone it changed little, within 0.3 dB over 450 steps; the
        # residual shortcuts are what made the VAE learn, see demo_stage0_vae.yaml.)
        rec = torch.cat(list(decoder_chunks(self.vae, z)), 2)
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
        w = self.loss
        loss = w.pixel_l1 * l1 + w.pixel_mse * mse + w.kl * kl
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))  # peak-to-peak 2 in [-1, 1]
        return {"loss": loss, "l1": l1, "mse": mse, "kl": kl, "psnr": psnr}


class BaseVAETask:
    stage = "base_vae"

    def __init__(self, config: RunConfig):
        self.config = config

    def setup(self, accelerator):
        self.accelerator = accelerator
        self.device = accelerator.device
        with seeded(self.config.seed):
            self.vae = AutoencoderKLWan(**self.config.model.architecture["vae"]).to(self.device)
        self.vae.train().requires_grad_(True)
        self.objective = VAEObjective(self.vae, self.config.loss)
        return self.objective

    def named_trainable(self):
        return {n: p for n, p in self.objective.named_parameters() if p.requires_grad}

    def dataset(self, phase, phase_index):
        self.samples = prepare_samples(self.config.data, self.accelerator)
        return MemoryClips(self.samples, clip_spec(phase, self.config.data)), \
            [s.num_foregrounds for s in self.samples], collate_layered

    def make_inputs(self, batch, phase, generator):
        kinds = self.config.data.vae_layers
        clips = []
        for b in range(batch["full"].shape[0]):
            kind = kinds[int(torch.randint(len(kinds), (1,), generator=generator))]
            k = int(torch.randint(batch["alpha"].shape[1], (1,), generator=generator))
            if kind == "alpha":
                frames = batch["alpha"][b, k][..., None].expand(-1, -1, -1, 3)
            elif kind == "foreground":
                frames = batch["foreground"][b, k]
            else:
                frames = batch[kind][b]
            clips.append(_random_crop(_to_vae_input(frames), self.config.data.vae_crop, generator))
        x = torch.stack(clips)
        latent_shape = clip_layout(self.vae, *x.shape[2:]).segment_latent_shape(x.shape[0], self.vae.config.z_dim)
        eps = torch.randn(latent_shape, generator=generator)
        return {"x": x.to(self.device), "eps": eps.to(self.device)}

    def _stats_clips(self) -> list[torch.Tensor]:
        """Deterministic full and background clips (the last phase's size) for statistics and eval."""
        phase = self.config.phases[-1]
        data = VidLayerDataset(self.samples[:STATS_SAMPLES], clip_spec(phase, self.config.data, deterministic=True))
        clips = []
        for i in range(len(data)):
            item = data[(i, 0)]
            clips += [item["full"], item["background"]]
        return clips

    @torch.no_grad()
    def export(self, folder: Path) -> None:
        was_training = self.vae.training
        self.vae.eval()
        modes = torch.cat([self.vae.encode(_to_vae_input(c)[None].to(self.device)).latent_dist.mode()
                           for c in self._stats_clips()])
        # Normalised latents of unit scale per channel: what the DiT's flow matching assumes.
        per_channel = modes.transpose(0, 1).flatten(1)
        self.vae.register_to_config(latents_mean=per_channel.mean(1).tolist(), latents_std=per_channel.std(1).tolist())
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_with_config(self.vae, folder / VAE_FILE)
        self.vae.train(was_training)

    @torch.no_grad()
    def evaluate(self, output_dir: Path, step: int):
        self.vae.eval()
        rows, labels, psnrs = [], [], []
        for clip in self._stats_clips()[:4]:
            rec = decode_latent(self.vae, encode_frames(self.vae, clip.to(self.device))).cpu()
            psnrs.append(float(10 * torch.log10(1.0 / (rec - clip).pow(2).mean())))
            for f in pick_frames(clip.shape[0]):
                rows.append([clip[f].numpy(), rec[f].numpy(), (rec[f] - clip[f]).abs().numpy()])
                labels.append(f"c{len(psnrs) - 1} f{f}")
        self.vae.train()
        path = save_sheet(rows, ["input", "decoded", "|error|"], Path(output_dir) / "eval" / f"base_vae_step{step:06d}.png", labels)
        path.with_suffix(".txt").write_text(f"psnr_db: {sum(psnrs) / len(psnrs):.2f}\n")
        return path


# ---- base DiT ---------------------------------------------------------------------------------------
def build_demo_text_encoder(architecture: dict, text_len: int, device) -> TextEncoder:
    """Tokenizer over the caption vocabulary (+ the tiny word list, so other prompts still tokenize)."""
    tokenizer = build_tiny_tokenizer(tuple(TINY_WORDS) + tuple(SYNTHETIC_WORDS))
    model = build_tiny_umt5(len(tokenizer), seed=architecture.get("seed", 0),
                            d_model=architecture.get("d_model", 64)).to(device)
    return TextEncoder(model, tokenizer, text_len=text_len, device=device, cache_size=8192)


class CaptionEmbedder(nn.Module):
    """The text encoder as a trainable module: token ids -> (B, text_len, d) with zero rows after each
    caption's own tokens, the layout TextEncoder.encode gives (so sampling later sees what training saw)."""

    def __init__(self, encoder: TextEncoder):
        super().__init__()
        self.model, self.tokenizer, self.text_len = encoder.model, encoder.tokenizer, encoder.text_len
        self.model.requires_grad_(True)

    def train(self, mode: bool = True):
        """The encoder stays in eval mode while it trains: UMT5's dropout (modules and functional calls) would
        make training contexts differ from the ones sampling gets (measured: up to 1.2 apart)."""
        super().train(mode)
        self.model.eval()
        return self

    def token_ids(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(captions, add_special_tokens=True, truncation=True, max_length=self.text_len,
                               padding="max_length", return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden * attention_mask[..., None].to(hidden.dtype)


class FlowObjective(nn.Module):
    """Rectified flow on full-video latents: x_t = t*noise + (1-t)*x0, target v = noise - x0.
    weight (B, 1, T', h, w): per-cell loss weights (foreground emphasis), normalised to mean 1 per sample.

    Caption-contrastive term (issue 24; `flow_objective.contrast: {weight, beta}`): for the samples in
    `contrast`, the same x_t is also denoised under the caption with one word swapped (swapped_*), and
    softplus(-beta * r), r = the swapped caption's relative loss increase, asks the right caption to win
    by a margin: what the caption probe measures, as a loss. It saturates once r is well above 1 / beta."""

    def __init__(self, dit: WanTransformer3DModel, text: CaptionEmbedder | None = None,
                 contrast_weight: float = 0.0, contrast_beta: float = 20.0):
        super().__init__()
        self.dit = dit
        self.text = text
        self.contrast_weight, self.contrast_beta = contrast_weight, contrast_beta

    def _context(self, context, input_ids, attention_mask):
        return self.text(input_ids, attention_mask) if self.text is not None else context

    def _per_sample(self, v, target, weight):
        err = (v.float() - target).pow(2)
        if weight is None:
            return err.mean(dim=(1, 2, 3, 4)), err.mean()
        return (err * weight).mean(dim=(1, 2, 3, 4)) / weight.mean(dim=(1, 2, 3, 4)), err.mean()

    def forward(self, latent, noise, t, context=None, input_ids=None, attention_mask=None, weight=None,
                contrast=None, swapped_context=None, swapped_input_ids=None, swapped_attention_mask=None):
        tt = t.view(-1, 1, 1, 1, 1)
        x_t = tt * noise + (1 - tt) * latent
        target = noise - latent
        v = self.dit(hidden_states=x_t, timestep=t * 1000.0,
                     encoder_hidden_states=self._context(context, input_ids, attention_mask), return_dict=False)[0]
        per_sample, plain = self._per_sample(v, target, weight)
        if weight is None:
            flow = plain
            out = {"flow": plain}
        else:
            flow = (per_sample * weight.mean(dim=(1, 2, 3, 4))).sum() / weight.mean(dim=(1, 2, 3, 4)).sum()
            out = {"flow": flow, "flow_unweighted": plain.detach()}
        loss = flow
        if self.contrast_weight > 0 and contrast is not None and bool(contrast.any()):
            pick = contrast.nonzero().flatten()
            ctx = self._context(None if swapped_context is None else swapped_context[pick],
                                None if swapped_input_ids is None else swapped_input_ids[pick],
                                None if swapped_attention_mask is None else swapped_attention_mask[pick])
            v_s = self.dit(hidden_states=x_t[pick], timestep=t[pick] * 1000.0, encoder_hidden_states=ctx,
                           return_dict=False)[0]
            swapped, _ = self._per_sample(v_s, target[pick], None if weight is None else weight[pick])
            r = swapped / per_sample[pick].detach() - 1.0
            term = F.softplus(-self.contrast_beta * r).mean()
            out.update(contrast=term, contrast_wins=(r > 0).float().mean().detach())
            loss = loss + self.contrast_weight * term
        out["loss"] = loss
        return out


def clip_layout(vae, num_frames: int, height: int, width: int, patch_size=(1, 1, 1)) -> LayerLayout:
    """One clip's latent geometry at this VAE's strides (a one-layer layout: only its segment shape is read)."""
    return LayerLayout(1, num_frames, height, width, patch_size=tuple(patch_size), **vae_strides(vae))


def latent_coverage(alpha: torch.Tensor, layout: LayerLayout) -> torch.Tensor:
    """(K, F, H, W) visible mattes -> (T', h, w): the share of each latent cell the objects cover, on the
    latent grid of the consistency loss (the causal VAE's time grouping, the VAE's spatial cells)."""
    union = 1 - torch.prod(1 - alpha.float(), dim=0)
    return alpha_to_latent_grid(union[None, None], layout)[0, 0]


class FullLatentDataset(torch.utils.data.Dataset):
    def __init__(self, latents: torch.Tensor, coverage: torch.Tensor, captions: list[str]):
        self.latents, self.coverage, self.captions = latents, coverage, captions

    def __len__(self):
        return len(self.captions)

    def __getitem__(self, key):
        index = key[0] if isinstance(key, tuple) else key
        return {"latent": self.latents[index], "coverage": self.coverage[index], "caption": self.captions[index]}


def collate_full(items):
    return {"latent": torch.stack([it["latent"] for it in items]), "coverage": torch.stack([it["coverage"] for it in items]),
            "caption": [it["caption"] for it in items]}


class BaseDiTTask:
    stage = "base_dit"

    def __init__(self, config: RunConfig):
        self.config = config
        self.text_len = int(config.model.layert2v.get("text_len", 32))

    def setup(self, accelerator):
        cfg = self.config
        self.accelerator = accelerator
        self.device = accelerator.device
        arch = cfg.model.architecture
        self.vae = build_vae(cfg.model, self.device)  # stage 0 VAE file, frozen
        text_arch = arch.get("text_encoder", {})
        self.text_encoder = build_demo_text_encoder(text_arch, self.text_len, self.device)
        self.foreground_weight = float(arch.get("flow_objective", {}).get("foreground_weight", 0.0))
        trainable_text = bool(text_arch.get("trainable", False))
        if trainable_text:
            self.text_encoder.cache_size = 0  # its embeddings change every step; export saves the trained one
        elif accelerator.is_main_process:
            save_text_encoder(self.text_encoder, Path(cfg.output_dir) / TEXT_ENCODER_DIR)
        with seeded(cfg.seed):
            self.dit = WanTransformer3DModel(**{**arch["dit"], "text_dim": self.text_encoder.model.config.d_model})
        self.dit.to(self.device).train().requires_grad_(True)
        flow_cfg = arch.get("flow_objective", {})
        contrast = flow_cfg.get("contrast", {}) or {}
        self.contrast_types = tuple(contrast.get("word_types", ("colour", "shape", "direction")))
        self.objective = FlowObjective(self.dit, CaptionEmbedder(self.text_encoder) if trainable_text else None,
                                       contrast_weight=float(contrast.get("weight", 0.0)),
                                       contrast_beta=float(contrast.get("beta", 20.0)))
        return self.objective

    def named_trainable(self):
        return {n: p for n, p in self.objective.named_parameters() if p.requires_grad}

    def dataset(self, phase, phase_index):
        samples = prepare_samples(self.config.data, self.accelerator)
        clip = clip_spec(phase, self.config.data, deterministic=True)
        cache = Path(self.config.output_dir) / f"full_latents_{clip.num_frames}x{clip.height}x{clip.width}.pt"
        if cache.is_file():
            latents, coverage = torch.load(cache, weights_only=True)
        else:  # the frozen VAE runs once per sample, not once per step
            latents, coverage = self._encode_full(VidLayerDataset(samples, clip))
            if self.accelerator.is_main_process:
                torch.save((latents, coverage), cache)
        self._train_set = FullLatentDataset(latents, coverage, [s.full_caption for s in samples])
        return self._train_set, [0] * len(samples), collate_full

    @torch.no_grad()
    def _encode_full(self, data, batch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-video latents (N, C, T', h, w) and object coverage (N, 1, T', h, w), clips batched through
        the VAE (one clip at a time cost 0.4 s each on one core, dominated by per-call overhead)."""
        layout = clip_layout(self.vae, data.clip.num_frames, data.clip.height, data.clip.width)
        latents, coverage = [], []
        for start in range(0, len(data), batch):
            items = [data[(i, 0)] for i in range(start, min(start + batch, len(data)))]
            x = torch.stack([_to_vae_input(it["full"]) for it in items]).to(self.device, self.vae.dtype)
            latents.append(normalize_latent(self.vae.encode(x).latent_dist.mode().float(), self.vae).cpu())
            coverage += [latent_coverage(it["alpha"], layout)[None] for it in items]
        return torch.cat(latents), torch.stack(coverage)

    @torch.no_grad()
    def _context(self, captions: list[str]) -> torch.Tensor:
        return torch.stack([self.text_encoder.encode(c).float() for c in captions])

    def make_inputs(self, batch, phase, generator):
        cfg = self.config
        latent = batch["latent"].float()
        n = latent.shape[0]
        drop = (torch.rand(n, generator=generator) < cfg.data.text_dropout).tolist()
        captions = ["" if d else c for d, c in zip(drop, batch["caption"])]
        noise = torch.randn(latent.shape, generator=generator)
        t = logit_normal(n, cfg.timesteps.mean, cfg.timesteps.std, generator)
        dev = self.device
        inputs = {"latent": latent.to(dev), "noise": noise.to(dev), "t": t.to(dev)}
        if self.objective.text is not None:
            ids, mask = self.objective.text.token_ids(captions)
            inputs.update(input_ids=ids.to(dev), attention_mask=mask.to(dev))
        else:
            inputs["context"] = self._context(captions).to(dev)
        if self.foreground_weight > 0:
            inputs["weight"] = (1.0 + self.foreground_weight * batch["coverage"].float()).to(dev)
        if self.objective.contrast_weight > 0:
            inputs.update(self._swapped_inputs(captions, generator))
        return inputs

    def _swapped_inputs(self, captions: list[str], generator) -> dict:
        """Each caption with one word (of a type drawn from contrast.word_types) swapped; `contrast` marks the
        samples that have one (not the dropped, empty captions)."""
        rng = np.random.default_rng(int(torch.randint(2 ** 31, (1,), generator=generator)))
        swapped = [swap_word(c, str(rng.choice(self.contrast_types)), rng) if c else None for c in captions]
        out = {"contrast": torch.tensor([s is not None for s in swapped], device=self.device)}
        swapped = [s or c for s, c in zip(swapped, captions)]
        if self.objective.text is not None:
            ids, mask = self.objective.text.token_ids(swapped)
            out.update(swapped_input_ids=ids.to(self.device), swapped_attention_mask=mask.to(self.device))
        else:
            out["swapped_context"] = self._context(swapped).to(self.device)
        return out

    def export(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.objective.text is not None:  # the trained encoder (EMA weights when the engine swaps them in)
            save_text_encoder(self.text_encoder, folder / TEXT_ENCODER_DIR)
            if folder.resolve() == (Path(self.config.output_dir) / "adapter").resolve():  # the final export:
                # where stages 1-3 and the demo model read it
                save_text_encoder(self.text_encoder, Path(self.config.output_dir) / TEXT_ENCODER_DIR)
        save_with_config(self.dit, folder / DIT_FILE)

    @torch.no_grad()
    def evaluate(self, output_dir: Path, step: int):
        ev, phase = self.config.eval, self.config.phases[-1]
        prompts = [p["full"] for p in held_out_prompts(self.config.seed, ev.num_prompts, ev.num_foregrounds)]
        self.dit.eval()
        rows, labels = [], []
        gen = torch.Generator().manual_seed(ev.seed)
        layout = clip_layout(self.vae, phase.num_frames, phase.height, phase.width, self.dit.config.patch_size)
        shape = layout.segment_latent_shape(1, self.dit.config.in_channels)
        for i, prompt in enumerate(prompts):
            latent = euler_sample(self.dit, torch.randn(shape, generator=gen).to(self.device), self._context([prompt]).to(self.device),
                                  self._context([""]).to(self.device), ev.steps, ev.cfg, ev.shift)
            frames = decode_latent(self.vae, latent).cpu()
            rows.append([frames[f].numpy() for f in pick_frames(phase.num_frames)])
            labels.append(f"p{i}")
        self.dit.train()
        path = Path(output_dir) / "eval" / f"base_dit_step{step:06d}.png"
        save_sheet(rows, [f"frame {f}" for f in pick_frames(phase.num_frames)], path, labels)
        path.with_suffix(".txt").write_text("".join(f"p{i}: {p}\n" for i, p in enumerate(prompts)))
        if ev.probe_clips:
            self._probe(Path(output_dir), step)
        return path

    @torch.no_grad()
    def _probe(self, output_dir: Path, step: int) -> None:
        """The caption probe on the same fresh clips at every evaluation, plus the same loss on training clips:
        a fresh-clip loss far above the training-clip loss means the DiT memorises clips instead of words."""
        from .caption_probe import flow_losses, format_table, probe_clips, score_probe

        ev, phase = self.config.eval, self.config.phases[-1]
        self.dit.eval()
        if getattr(self, "_probe_items", None) is None:
            self._probe_items = probe_clips(self.vae, ev.probe_clips, seed=11, frames=phase.num_frames, size=phase.height)
        summary = score_probe(self.dit, self.text_encoder.encode, self._probe_items)
        gen = torch.Generator().manual_seed(ev.seed)
        train = self._train_set
        seen = []
        for i in range(min(64, len(train))):
            item = train[i]
            latent = item["latent"][None].to(self.device)
            context = self.text_encoder.encode(item["caption"]).float()[None].to(self.device)
            seen.append(float(flow_losses(self.dit, latent, torch.randn(latent.shape, generator=gen).to(self.device),
                                          context, summary["timesteps"])[0]))
        summary.update(step=step, train_clip_loss=float(np.mean(seen)))
        self.dit.train()
        with open(output_dir / "eval" / "probe.jsonl", "a") as f:
            f.write(json.dumps(summary) + "\n")
        logger.info("caption probe at step %d (%d fresh clips; fresh-clip loss %.3f, training-clip loss %.3f):\n%s",
                    step, summary["clips"], summary["right_caption_loss"], summary["train_clip_loss"], format_table(summary))


@torch.no_grad()
def euler_sample(dit, noise, cond, uncond, steps: int, cfg: float, shift: float) -> torch.Tensor:
    """Plain flow-matching Euler with CFG, for the base model's eval sheet (the layered sampler needs a layout)."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    x = noise
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        t = torch.full((1,), float(s) * 1000.0, device=x.device)
        v_c = dit(hidden_states=x, timestep=t, encoder_hidden_states=cond, return_dict=False)[0]
        v_u = dit(hidden_states=x, timestep=t, encoder_hidden_states=uncond, return_dict=False)[0]
        x = x + (s_next - s) * (v_u + cfg * (v_c - v_u))
    return x


TASKS = {"base_vae": BaseVAETask, "base_dit": BaseDiTTask}


def main(argv=None):
    from .engine import Trainer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(__doc__, argv)
    config = load_config(args.config, args.set)  # one entry point, two stages: the file says which
    if config.stage not in TASKS:
        raise ValueError(f"{args.config} is a stage {config.stage!r} config; this entry point trains {sorted(TASKS)}")
    return Trainer(config, TASKS[config.stage](config), resume=args.resume, stop_after=args.stop_after).run()


if __name__ == "__main__":
    main()
