"""A base DiT's samples across guidance scales, beside a training clip through the same VAE: tells "does
not read the words" apart from "does not draw objects at all" (issue 24: at CFG 1 the 2,000-step base
DiTs paint half-and-half colour fields, so the words have no object to act on yet).

    python -m training.base_dit_samples --run output/levers/baseline --out docs/base_dit_baseline_samples.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from layert2v_core.text import TextEncoder
from layert2v_core.vae_io import decode_latent
from layert2v_core.weights.wan_single_file import load_wan_transformer, load_wan_vae

from .eval_hook import save_sheet
from .stage0_base import DIT_FILE, TEXT_ENCODER_DIR, euler_sample


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a stage-0b output_dir (adapter/dit.safetensors, text_encoder/)")
    parser.add_argument("--vae", default="output/demo/stage0_vae/adapter/vae.safetensors")
    parser.add_argument("--prompt", default="a red circle moving right over a blue background")
    parser.add_argument("--cfg", type=float, nargs="+", default=[1.0, 2.0, 4.0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = Path(args.run)
    dit = load_wan_transformer(str(run / "adapter" / DIT_FILE), dtype=torch.float32).eval()
    vae = load_wan_vae(args.vae, dtype=torch.float32).eval()
    text = TextEncoder.from_folder(str(run / TEXT_ENCODER_DIR), text_len=32, dtype=torch.float32, cache_size=0)
    stride = vae.spatial_compression_ratio
    shape = (1, dit.config.in_channels, (args.frames - 1) // 4 + 1, args.size // stride, args.size // stride)
    shown = sorted({0, args.frames // 2, args.frames - 1})
    rows, labels = [], []
    with torch.no_grad():
        cond, uncond = text.encode(args.prompt)[None].float(), text.encode("")[None].float()
        for cfg in args.cfg:
            for seed in range(args.seeds):
                noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
                frames = decode_latent(vae, euler_sample(dit, noise, cond, uncond, args.steps, cfg, args.shift)).cpu()
                rows.append([frames[f].numpy() for f in shown])
                labels.append(f"cfg {cfg:g} seed {seed}")
        cached = sorted(run.glob("full_latents_*.pt"))
        if cached:  # the data itself through the same VAE: what a sample should look like
            latents, _ = torch.load(cached[0], weights_only=True)
            frames = decode_latent(vae, latents[:1]).cpu()
            rows.append([frames[f].numpy() for f in shown])
            labels.append("training clip")
    save_sheet(rows, [f"frame {f}" for f in shown], Path(args.out), labels)
    Path(args.out).with_suffix(".txt").write_text(f"prompt: {args.prompt}\n")
    print(args.out)


if __name__ == "__main__":
    main()
