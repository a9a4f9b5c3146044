"""Caption-discrimination probe of a stage-0 base DiT (issue 13's base-DiT gate): has it learned each word?

    python -m training.caption_probe --run output/demo                 # the recipe's stage-0 DiT
    python -m training.caption_probe --dit D --vae V --text-encoder T  # any base DiT (e.g. the shipped one)

On fresh clips (never written to disk; 1-3 foregrounds, shapes and directions balanced), the flow loss
of the true full-video latent is measured with the right caption and with the same caption after one
word of one type is swapped for another word of that type that the scene does not use:
- background: the background's colour; colour / shape / direction: those of one foreground.
Noise and timesteps are shared by both captions (t in --timesteps, averaged), so the difference is the
caption alone. Per word type it reports the mean relative loss increase of the swapped caption and the
share of clips where the right caption has the lower loss (95 % Wilson interval).
Gate: for every word type the increase is positive and the right caption wins >= 90 % over >= 200 clips.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from .data import synthetic as syn
from .eval_demo import wilson

WORD_TYPES = ("background", "colour", "shape", "direction")
GATE_WIN = 0.9
GATE_CLIPS = 200


def swapped_caption(background, shapes, word_type: str, rng: np.random.Generator) -> str:
    """The scene's full caption with one word of `word_type` replaced by an unused word of that type."""
    used = {background.color_a, background.color_b} | {s.color for s in shapes}
    k = int(rng.integers(len(shapes)))
    if word_type == "background":
        colour = str(rng.choice([c for c in syn.COLORS if c not in used]))
        background = dataclasses.replace(background, color_a=colour, color_b=colour)
    else:
        s = shapes[k]
        if word_type == "colour":
            s = dataclasses.replace(s, color=str(rng.choice([c for c in syn.COLORS if c not in used])))
        elif word_type == "shape":
            s = dataclasses.replace(s, shape=str(rng.choice([x for x in syn.SHAPES if x != s.shape])))
        else:
            s = dataclasses.replace(s, direction=str(rng.choice([d for d in syn.DIRECTIONS if d != s.direction])))
        shapes = shapes[:k] + [s] + shapes[k + 1:]
    return syn.full_caption(shapes, background)


def probe_scenes(seed: int, count: int):
    """count fresh scenes with 1, 2 and 3 foregrounds in turn, drawn like the training data."""
    per_k = {k: syn.balanced_scenes(seed, (count + 3 - k) // 3, k, held_out=False) for k in (1, 2, 3)}
    return [per_k[i % 3 + 1][i // 3] for i in range(count)]


def run_probe(dit, vae, text_encoder, clips: int, timesteps: list[float], seed: int, frames: int = 17, size: int = 64,
              progress=None) -> dict:
    import torch

    from layert2v_core.vae_io import encode_frames

    losses = {"right": []} | {w: [] for w in WORD_TYPES}
    rng = np.random.default_rng([seed, 5_000_011])
    gen = torch.Generator().manual_seed(seed)
    t = torch.tensor(timesteps, dtype=torch.float32)
    for i, (background, shapes) in enumerate(probe_scenes(seed, clips)):
        full, _, _ = syn.render_clip(background, shapes, frames, size, size)
        with torch.no_grad():
            x0 = encode_frames(vae, torch.from_numpy(full.astype(np.float32)))
        noise = torch.randn(x0.shape, generator=gen)
        captions = [syn.full_caption(shapes, background)] + [swapped_caption(background, shapes, w, rng) for w in WORD_TYPES]
        with torch.no_grad():
            context = torch.stack([text_encoder.encode(c).float() for c in captions])   # (5, L, d)
            n, m = len(captions), len(timesteps)
            tt = t.repeat(n).view(-1, 1, 1, 1, 1)                                         # caption-major
            x_t = tt * noise + (1 - tt) * x0
            v = dit(hidden_states=x_t, timestep=tt.flatten() * 1000.0,
                    encoder_hidden_states=context.repeat_interleave(m, 0), return_dict=False)[0]
            per = (v.float() - (noise - x0)).pow(2).mean(dim=(1, 2, 3, 4)).view(n, m).mean(1)
        losses["right"].append(float(per[0]))
        for j, w in enumerate(WORD_TYPES, start=1):
            losses[w].append(float(per[j]))
        if progress and (i + 1) % 50 == 0:
            progress(f"{i + 1}/{clips} clips")
    right = np.array(losses["right"])
    summary = {"clips": clips, "timesteps": timesteps, "right_caption_loss": float(right.mean())}
    for w in WORD_TYPES:
        other = np.array(losses[w])
        wins = int((right < other).sum())
        summary[w] = {"loss_increase": float((other / right - 1).mean()), "right_wins": wins / clips,
                      "right_wins_ci": wilson(wins, clips)}
    summary["pass"] = clips >= GATE_CLIPS and all(
        summary[w]["loss_increase"] > 0 and summary[w]["right_wins"] >= GATE_WIN for w in WORD_TYPES)
    return summary


def main(argv=None) -> None:
    import torch

    from layert2v_core.text import TextEncoder
    from layert2v_core.weights.wan_single_file import load_wan_transformer, load_wan_vae

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a demo_recipe run folder: its stage0_dit and stage0_vae files")
    parser.add_argument("--dit", default=None, help="base DiT file (default: the built-in demo model's)")
    parser.add_argument("--vae", default=None)
    parser.add_argument("--text-encoder", default=None)
    parser.add_argument("--text-len", type=int, default=32)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--timesteps", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.9])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--smoke", action="store_true", help="6 clips: checks the tool runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from layert2v_core.demo_model import demo_model_paths

    from .demo_recipe import run_model_files

    default = run_model_files(args.run) if args.run else demo_model_paths()
    for key in ("dit", "vae", "text_encoder"):
        setattr(args, key, getattr(args, key) or default[key])
    if args.smoke:
        args.clips = 6
    dit = load_wan_transformer(args.dit, dtype=torch.float32).eval()
    vae = load_wan_vae(args.vae, dtype=torch.float32).eval()
    text = TextEncoder.from_folder(args.text_encoder, text_len=args.text_len, dtype=torch.float32, cache_size=0)
    summary = run_probe(dit, vae, text, args.clips, args.timesteps, args.seed, progress=lambda m: print(m, flush=True))
    print(f"caption probe ({args.dit}): {'PASS' if summary['pass'] else 'FAIL'} on {args.clips} fresh clips "
          f"(gate: every word type raises the loss and the right caption wins >= {GATE_WIN:.0%} over >= {GATE_CLIPS})")
    print("| word swapped | loss increase | right caption wins (95 % CI) |\n|---|---|---|")
    for w in WORD_TYPES:
        r = summary[w]
        print(f"| {w} | {r['loss_increase']:+.1%} | {r['right_wins']:.2f} [{r['right_wins_ci'][0]:.2f}-{r['right_wins_ci'][1]:.2f}] |")
    result = {"dit": args.dit, "summary": summary,
              "command": "python -m training.caption_probe " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
