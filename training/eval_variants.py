"""Measure the conditional variants and trajectory control on held-out synthetic clips with known layers.

    python -m training.eval_variants [--scenes 4] [--steps 20]      # demo model by default

- decompose: given the rendered full video -> alpha IoU (alpha > 0.5) and background PSNR vs the truth;
- background_for_foreground / foreground_for_background: PSNR of the decoded given layer vs the input
  (is it preserved?) and the cross-layer consistency error mean |fg + bg (1 - a) - full| of the result;
- trajectory: two foregrounds whose boxes cross; mIoU between each alpha and its target boxes, with
  guidance and with it off (the baseline).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

import numpy as np
import torch

from layert2v_core.pipeline import LayerPrompts, encode_conditioning
from layert2v_core.sampler import SamplerConfig
from layert2v_core.trajectory import Keyframe, boxes_to_alpha, interpolate_boxes
from layert2v_core.variants import GivenLayers, generate_layers

from .data import synthetic as syn
from .eval_demo import load_pipeline, scene_prompt


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(1.0 / mse)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def consistency(frames) -> float:
    comp = frames.rgb["background"].numpy()
    for name, alpha in frames.alpha_by_layer().items():
        comp = frames.rgb[name].numpy() + comp * (1 - alpha.numpy()[..., None])
    return float(np.mean(np.abs(comp - frames.rgb["full"].numpy())))


def variant_output(pipe, variant: str, scene, args, seed: int):
    """One conditional generation on a rendered scene -> (decoded layers, rendered full, bg, alphas as tensors)."""
    background, shapes = scene
    full, bg, alphas = (torch.from_numpy(x).float() for x in syn.render_clip(background, shapes, args.frames,
                                                                          args.height, args.width))
    prompt = scene_prompt(background, shapes)
    layout = pipe.layout(len(shapes), args.frames, args.height, args.width)
    conditioning = encode_conditioning(LayerPrompts(prompt["full"], prompt["background"], prompt["foregrounds"]),
                                       encoder=pipe.text_encoder)
    config = SamplerConfig(steps=args.steps, cfg=args.cfg, shift=args.shift, seed=seed)
    if variant == "decompose":
        given = GivenLayers(full=full)
    elif variant == "background_for_foreground":
        given = GivenLayers(foregrounds={k + 1: full * alphas[k][..., None] for k in range(len(shapes))},
                            alphas={k + 1: alphas[k] for k in range(len(shapes))}, foreground_is="premultiplied")
    else:
        given = GivenLayers(background=bg)
    return generate_layers(pipe, layout, conditioning, config, given=given), full, bg, alphas


def run_variant(pipe, variant: str, scene, args, seed: int) -> dict:
    return variant_scores(variant, *variant_output(pipe, variant, scene, args, seed))


def variant_scores(variant: str, out, full, bg, alphas) -> dict:
    k_all = range(len(alphas))
    scores = {"consistency": consistency(out)}
    if variant == "decompose":
        scores["alpha_iou"] = float(np.mean([iou(out.alpha[f"mask_{k + 1}"].numpy(), alphas[k].numpy()) for k in k_all]))
        scores["bg_psnr"] = psnr(out.rgb["background"].numpy(), bg.numpy())
        scores["given_psnr"] = psnr(out.rgb["full"].numpy(), full.numpy())
    elif variant == "background_for_foreground":
        scores["given_psnr"] = psnr(out.rgb["foreground_1"].numpy(), (full * alphas[0][..., None]).numpy())
    else:
        scores["given_psnr"] = psnr(out.rgb["background"].numpy(), bg.numpy())
    return scores


def crossing_boxes(frames: int) -> dict[int, list[Keyframe]]:
    """Foreground 1 left -> right, foreground 2 right -> left, at the same height: the paths cross."""
    last = frames - 1
    return {1: [Keyframe(0, (0.02, 0.3, 0.38, 0.7)), Keyframe(last, (0.62, 0.3, 0.98, 0.7))],
            2: [Keyframe(0, (0.62, 0.3, 0.98, 0.7)), Keyframe(last, (0.02, 0.3, 0.38, 0.7))]}


def run_trajectory(pipe, scene, args, seed: int, strength: float) -> float:
    background, shapes = scene
    prompt = scene_prompt(background, shapes)
    layout = pipe.layout(2, args.frames, args.height, args.width)
    conditioning = encode_conditioning(LayerPrompts(prompt["full"], prompt["background"], prompt["foregrounds"]),
                                       encoder=pipe.text_encoder)
    boxes = crossing_boxes(args.frames)
    out = generate_layers(pipe, layout, conditioning, SamplerConfig(steps=args.steps, cfg=args.cfg, shift=args.shift,
                                                                    seed=seed),
                          trajectories=boxes, trajectory_strength=strength, trajectory_end_step=args.guide_steps)
    targets = {k: boxes_to_alpha(interpolate_boxes(keys, args.frames), args.height, args.width).numpy()
               for k, keys in boxes.items()}
    return float(np.mean([iou(out.alpha[f"mask_{k}"].numpy(), targets[k]) for k in boxes]))


def evaluate(args) -> dict:
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args)
    scenes = syn.held_out_scenes(args.seed, args.scenes, 1)
    variants = {}
    for variant in ("decompose", "background_for_foreground", "foreground_for_background"):
        rows = [run_variant(pipe, variant, scene, args, args.seed + i) for i, scene in enumerate(scenes)]
        variants[variant] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    trajectory = {}
    if pipe.max_foregrounds >= 2:
        pairs = syn.held_out_scenes(args.seed + 1, args.scenes, 2)
        for label, strength in (("guided", args.strength), ("baseline (off)", 0.0)):
            trajectory[label] = float(np.mean([run_trajectory(pipe, scene, args, args.seed + i, strength)
                                               for i, scene in enumerate(pairs)]))
    return {"variants": variants, "trajectory_miou": trajectory, "scenes": args.scenes, "steps": args.steps,
            "size": [args.frames, args.height, args.width],
            "command": "python -m training.eval_variants " + " ".join(shlex.quote(a) for a in sys.argv[1:])}


def markdown(result: dict) -> str:
    lines = ["| variant | given layer PSNR (dB) | alpha IoU | background PSNR (dB) | consistency |",
             "|---|---|---|---|---|"]
    for name, m in result["variants"].items():
        cell = lambda k, f: f.format(m[k]) if k in m else "-"  # noqa: E731
        lines.append(f"| {name} | {cell('given_psnr', '{:.1f}')} | {cell('alpha_iou', '{:.2f}')} | "
                     f"{cell('bg_psnr', '{:.1f}')} | {m['consistency']:.3f} |")
    if result["trajectory_miou"]:
        lines += ["", "| trajectory, two crossing objects | mIoU alpha vs target boxes |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in result["trajectory_miou"].items()]
    return "\n".join(lines)


def main(argv=None) -> None:
    from layert2v_core.demo_model import demo_model_paths

    default = demo_model_paths(required=False)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key in ("dit", "vae", "adapter", "text_encoder"):
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=default.get(key))
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--guide-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = evaluate(args)
    print(f"command: {result['command']}")
    print(markdown(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
