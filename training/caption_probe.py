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
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from .data import synthetic as syn
from .caption_swap import WORD_TYPES, swap_word
from .eval_demo import wilson

GATE_WIN = 0.9
GATE_CLIPS = 200
DEFAULT_TIMESTEPS = (0.3, 0.5, 0.7, 0.9)


def probe_scenes(seed: int, count: int):
    """count fresh scenes with 1, 2 and 3 foregrounds in turn, drawn like the training data."""
    per_k = {k: syn.balanced_scenes(seed, (count + 3 - k) // 3, k, held_out=False) for k in (1, 2, 3)}
    return [per_k[i % 3 + 1][i // 3] for i in range(count)]


def probe_clips(vae, clips: int, seed: int, frames: int = 17, size: int = 64) -> list[dict]:
    """The probe's fresh clips, encoded once: {latent (1, C, T', h, w), noise, captions [right, swapped per
    word type]}. Separate from scoring so a training run probes every checkpoint on the same clips."""
    import torch

    from layert2v_core.vae_io import encode_frames

    rng = np.random.default_rng([seed, 5_000_011])
    gen = torch.Generator().manual_seed(seed)
    items = []
    for background, shapes in probe_scenes(seed, clips):
        full, _, _ = syn.render_clip(background, shapes, frames, size, size)
        with torch.no_grad():
            x0 = encode_frames(vae, torch.from_numpy(full.astype(np.float32))).cpu()
        right = syn.full_caption(shapes, background)
        items.append({"latent": x0, "noise": torch.randn(x0.shape, generator=gen), "foregrounds": len(shapes),
                      "captions": [right] + [swap_word(right, w, rng) for w in WORD_TYPES]})
    return items


def flow_losses(dit, latent, noise, contexts, timesteps) -> "torch.Tensor":
    """(n,) unweighted flow loss of one clip under each of n contexts (n, L, d), averaged over timesteps;
    noise and timesteps shared, so differences come from the context alone."""
    import torch

    t = torch.tensor(list(timesteps), dtype=torch.float32, device=latent.device)
    n, m = contexts.shape[0], t.numel()
    tt = t.repeat(n).view(-1, 1, 1, 1, 1)                                                   # context-major
    x_t = tt * noise + (1 - tt) * latent
    with torch.no_grad():
        v = dit(hidden_states=x_t.to(dit.dtype), timestep=tt.flatten() * 1000.0,
                encoder_hidden_states=contexts.to(dit.dtype).repeat_interleave(m, 0), return_dict=False)[0]
    return (v.float() - (noise - latent)).pow(2).mean(dim=(1, 2, 3, 4)).view(n, m).mean(1)


def score_probe(dit, encode, items: list[dict], timesteps=DEFAULT_TIMESTEPS, progress=None) -> dict:
    """encode: caption -> (L, d) context. Per word type: mean relative loss increase of the swapped caption
    and the share of clips where the right caption has the lower loss (95 % Wilson interval)."""
    import torch

    device = next(dit.parameters()).device
    losses = []
    for i, item in enumerate(items):
        with torch.no_grad():
            contexts = torch.stack([encode(c).float() for c in item["captions"]]).to(device)
        losses.append(flow_losses(dit, item["latent"].to(device), item["noise"].to(device), contexts, timesteps).cpu())
        if progress and (i + 1) % 50 == 0:
            progress(f"{i + 1}/{len(items)} clips")
    per = torch.stack(losses).numpy()                                         # (clips, 1 + word types)
    right, clips = per[:, 0], len(items)
    summary = {"clips": clips, "timesteps": list(timesteps), "right_caption_loss": float(right.mean())}
    for j, w in enumerate(WORD_TYPES, start=1):
        wins = int((right < per[:, j]).sum())
        summary[w] = {"loss_increase": float((per[:, j] / right - 1).mean()), "right_wins": wins / clips,
                      "right_wins_ci": wilson(wins, clips)}
    # Per foreground count: a DiT may read a one-object caption's words and still fail to bind them in three.
    counts = np.array([item.get("foregrounds", 0) for item in items])
    summary["right_wins_by_foregrounds"] = {
        str(k): {w: float((right[counts == k] < per[counts == k, j]).mean()) for j, w in enumerate(WORD_TYPES, start=1)}
        for k in sorted(set(counts.tolist()))}
    summary["pass"] = clips >= GATE_CLIPS and all(
        summary[w]["loss_increase"] > 0 and summary[w]["right_wins"] >= GATE_WIN for w in WORD_TYPES)
    return summary


def run_probe(dit, vae, text_encoder, clips: int, timesteps: list[float], seed: int, frames: int = 17, size: int = 64,
              progress=None) -> dict:
    return score_probe(dit, text_encoder.encode, probe_clips(vae, clips, seed, frames, size), timesteps, progress)


def format_table(summary: dict) -> str:
    rows = [f"| {w} | {summary[w]['loss_increase']:+.1%} | {summary[w]['right_wins']:.2f} "
            f"[{summary[w]['right_wins_ci'][0]:.2f}-{summary[w]['right_wins_ci'][1]:.2f}] |" for w in WORD_TYPES]
    return "\n".join(["| word swapped | loss increase | right caption wins (95 % CI) |", "|---|---|---|"] + rows)


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
    parser.add_argument("--timesteps", type=float, nargs="+", default=list(DEFAULT_TIMESTEPS))
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--frames", type=int, default=17, help="frames per probe clip (the base DiT's training length)")
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
    summary = run_probe(dit, vae, text, args.clips, args.timesteps, args.seed, frames=args.frames, progress=lambda m: print(m, flush=True))
    print(f"caption probe ({args.dit}): {'PASS' if summary['pass'] else 'FAIL'} on {args.clips} fresh clips "
          f"(gate: every word type raises the loss and the right caption wins >= {GATE_WIN:.0%} over >= {GATE_CLIPS})")
    print(format_table(summary))
    result = {"dit": args.dit, "summary": summary,
              "command": "python -m training.caption_probe " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
