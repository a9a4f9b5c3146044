"""Issue 24's base-DiT experiments: stage 0b runs that each change one factor against a common baseline,
probed (training/caption_probe.py) every `eval.every` steps on the same fresh clips.

    python -m training.base_dit_levers run baseline      # trains output/levers/baseline (resumes if cut)
    python -m training.base_dit_levers table             # the probe table of every arm run so far

Every arm starts from training/configs/demo_stage0_dit.yaml plus COMMON, then its own overrides. The VAE
is the recipe's stage-0a file; full-video latents are cached per arm (`full_latents_*.pt`; copy one arm's
into another's output_dir to skip the encode when both use the same clips).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OUT = Path("output/levers")
CONFIG = "training/configs/demo_stage0_dit.yaml"
STEPS = 2000

COMMON = {
    "model.vae_path": "output/demo/stage0_vae/adapter/vae.safetensors",
    # 9 frames (3 latent frames at 4x time): a third fewer tokens than 17, the motion still spans 2-3 tokens.
    "phases": f"[{{steps: {STEPS}, height: 64, width: 64, num_frames: 9, batch_size: 8}}]",
    "eval.every": 500, "eval.probe_clips": 120, "eval.num_prompts": 2,
    "checkpoint.every": 500,
}

ARMS = {
    "baseline": {},
    # The probe's own question as a loss: the right caption must beat a one-word swap (colour/shape/direction).
    "contrast": {"model.architecture.flow_objective.contrast": "{weight: 0.02, beta: 20}"},
    # One object per clip: no binding of words to one of several objects.
    "single_object": {"data.root": "output/demo/data/shapes_64x17_k1",
                      "data.synthetic": "{num_samples: 1440, height: 64, width: 64, num_frames: 17, min_foregrounds: 1, "
                                        "max_foregrounds: 1, seed: 1, hold_out_pairs: 1}",
                      "data.max_samples": 1440},
    # 4x the clips (720 -> 2880): is the DiT memorising clips (the probe logs fresh- vs training-clip loss)?
    "data_x4": {"data.synthetic.num_samples": 2880, "data.max_samples": 2880},
    # Timesteps tilted further to noise (logit mean 0.5 -> 1.0: median t 0.62 -> 0.73), where only the caption
    # can tell the answer.
    "high_noise": {"timesteps.mean": 1.0},
}


def arm_command(name: str) -> list[str]:
    overrides = {**COMMON, **ARMS[name], "output_dir": str(OUT / name)}
    args = [sys.executable, "-m", "training.stage0_base", "--config", CONFIG, "--resume", "auto"]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    return args


def probe_rows(name: str) -> list[dict]:
    path = OUT / name / "eval" / "probe.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def table() -> str:
    lines = ["| arm | step | fresh / train clip loss | background | colour | shape | direction | shape, direction at K=1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ARMS:
        for r in probe_rows(name):
            cells = [f"{r[w]['right_wins']:.2f} [{r[w]['right_wins_ci'][0]:.2f}-{r[w]['right_wins_ci'][1]:.2f}]"
                     for w in ("background", "colour", "shape", "direction")]
            k1 = r.get("right_wins_by_foregrounds", {}).get("1", {})
            lines.append(f"| {name} | {r['step']} | {r['right_caption_loss']:.3f} / {r['train_clip_loss']:.3f} | "
                         + " | ".join(cells) + f" | {k1.get('shape', float('nan')):.2f}, {k1.get('direction', float('nan')):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("arm", choices=sorted(ARMS))
    sub.add_parser("table")
    args = parser.parse_args(argv)
    if args.command == "run":
        raise SystemExit(subprocess.call(arm_command(args.arm)))
    print(table())


if __name__ == "__main__":
    main()
