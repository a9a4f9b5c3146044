"""The demo model's VAE gate (issue 13), measured before any DiT training: can the autoencoder carry the
objects at all? A DiT cannot draw what its VAE cannot reproduce.

    python -m training.demo_vae_gate --run output/demo            # the recipe's stage-0 VAE
    python -m training.demo_vae_gate --vae layert2v_core/demo_model/vae.safetensors --json gate.json

On fresh scenes (never written to disk; shapes and directions balanced), each whole 17-frame clip is
encoded and decoded once, and three things are measured on the decoded full video:
- PSNR of the whole clip (pixels in [0, 1]); gate: mean >= 28 dB;
- foreground colour: the mean decoded colour inside each object's true visible matte (alpha > 0.5) is
  nearest to its own palette colour; gate >= 0.95;
- footprint shape (one-foreground clips): the pixels whose nearest palette colour is the object's colour
  form a matte that training/eval_demo.py's shape classifier names as the object's shape, with its
  template fitting at IoU >= 0.8; gate >= 0.95.
The same measures on the rendered clips (before the VAE) are printed too: they check the metrics.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from .data import synthetic as syn
from .eval_demo import PALETTE_NAMES, fg_colour, mean_interval, nearest_colour, shape_of, wilson

GATES = {"psnr_db": 28.0, "fg_colour": 0.95, "footprint_shape": 0.95}


def footprint(full: np.ndarray, colour: str) -> np.ndarray:
    """(F, H, W) float matte of the pixels whose nearest plain palette colour is `colour`."""
    return (nearest_colour(full, shaded=False) == PALETTE_NAMES.index(colour)).astype(np.float32)


def measure(clips, decode) -> dict:
    """clips: [(background, shapes, full, alphas)]; decode: full (F, H, W, 3) -> decoded full."""
    psnr, colour_hits, shape_hits = [], [], []
    for background, shapes, full, alphas in clips:
        out = decode(full)
        mse = float(((out - full) ** 2).mean())
        psnr.append(10 * np.log10(1.0 / max(mse, 1e-10)))
        for s, a in zip(shapes, alphas):
            if (a > 0.5).sum() >= 16:  # an object hidden behind others has no colour to read
                colour_hits.append(float(fg_colour(out * a[..., None], a) == s.color))
        if len(shapes) == 1:
            shape_hits.append(float(shape_of(footprint(out, shapes[0].color)) == shapes[0].shape))
    summary = {"psnr_db": float(np.mean(psnr)), "psnr_db_ci": mean_interval(psnr), "clips": len(psnr),
               "fg_colour": float(np.mean(colour_hits)), "fg_colour_ci": wilson(sum(colour_hits), len(colour_hits)),
               "fg_colour_n": len(colour_hits),
               "footprint_shape": float(np.mean(shape_hits)), "footprint_shape_ci": wilson(sum(shape_hits), len(shape_hits)),
               "footprint_shape_n": len(shape_hits)}
    summary["pass"] = all(summary[k] >= v for k, v in GATES.items())
    return summary


def gate_clips(seed: int, one_fg: int, multi_fg: int, frames: int, size: int):
    scenes = syn.balanced_scenes(seed, one_fg, 1, held_out=False)
    for k in (2, 3):
        scenes += syn.balanced_scenes(seed, multi_fg // 2, k, held_out=False)
    clips = []
    for background, shapes in scenes:
        full, _, alphas = syn.render_clip(background, shapes, frames, size, size)
        clips.append((background, shapes, full.astype(np.float32), list(alphas)))
    return clips


def main(argv=None) -> None:
    import torch

    from layert2v_core.vae_io import decode_latent, encode_frames
    from layert2v_core.weights.wan_single_file import load_wan_vae

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a demo_recipe run folder: uses <run>/stage0_vae/adapter/vae.safetensors")
    parser.add_argument("--vae", default=None, help="a VAE file (default: the built-in demo model's)")
    parser.add_argument("--one-fg", type=int, default=64, help="one-foreground clips (colour and footprint shape)")
    parser.add_argument("--multi-fg", type=int, default=32, help="two- and three-foreground clips (colour)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--smoke", action="store_true", help="4 clips: checks the tool runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.vae is None:
        from layert2v_core.demo_model import demo_model_paths

        from .demo_recipe import run_model_files

        args.vae = (run_model_files(args.run) if args.run else demo_model_paths())["vae"]
    if args.smoke:
        args.one_fg, args.multi_fg = 4, 2
    vae = load_wan_vae(args.vae, dtype=torch.float32).eval()
    clips = gate_clips(args.seed, args.one_fg, args.multi_fg, 17, 64)

    def through(full):
        with torch.no_grad():
            return decode_latent(vae, encode_frames(vae, torch.from_numpy(full))).float().numpy()

    result = {"vae": args.vae, "gates": GATES, "summary": measure(clips, through),
              "rendered": measure(clips, lambda full: full),
              "command": "python -m training.demo_vae_gate " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    s, r = result["summary"], result["rendered"]
    print(f"VAE gate ({args.vae}): {'PASS' if s['pass'] else 'FAIL'}")
    for key, threshold in GATES.items():
        lo, hi = s[key + "_ci"]
        print(f"  {key}: {s[key]:.3f} [{lo:.3f}-{hi:.3f}] (gate >= {threshold}; rendered clips {r[key]:.3f})")
    print(f"  {s['clips']} clips, {s['fg_colour_n']} foregrounds for colour, {s['footprint_shape_n']} for shape")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
