"""Quality of a demo-scale LayerT2V model on new prompts, per layer, as a markdown table.

    python -m training.eval_demo                                   # the built-in demo model, 1 foreground
    python -m training.eval_demo --foregrounds 2 --json out.json --sheet sheet.png
    python -m training.eval_demo --split seen                      # pairings that training does show
    python -m training.eval_demo --dit D --vae V --text-encoder T --adapter A --name "(a) ..."
    python -m training.eval_demo --table a.json b.json c.json      # merge saved results into one table

Prompts (`--split`): held-out, scenes whose every foreground is a (colour, shape) pair that the demo
training data never draws (`hold_out_pairs`); or seen, new scenes drawn like the training data. Motion
and background are random. Metrics, averaged over prompts and foregrounds:
- fg colour: the mean colour inside alpha > 0.5 (un-premultiplied) is closest to the prompted colour
  (palette colours and their striped shades);
- shape: the alpha region matches the prompted shape best among the five (IoU against fitted templates);
- motion: the alpha centroid moves in the prompted direction (first vs last frames);
- bg colour: share of the two prompted background colours among the background's two most frequent
  palette colours;
- leakage (lower is better): background pixels under the foreground's alpha > 0.5 whose colour is the
  foreground's prompted colour;
- alpha soft (lower is sharper): fraction of alpha pixels with 0.1 < alpha < 0.9;
- consistency (lower is better): mean |sum_k fg_k (premultiplied) + bg (1 - sum_k alpha_k) - full| on pixels in [0, 1].
A "rendered ground truth" row scores the synthetic renderer's own layers for the same scenes: the ceiling,
and a check of the metrics themselves. "Ground truth through the VAEs" scores those layers after one
round trip through the model's VAE (RGB) and mask VAE (alpha): the ceiling the autoencoders leave.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from .data import synthetic as syn

METRICS = [  # key, column header, higher is better
    ("fg_colour", "fg colour acc", True), ("shape", "shape acc", True), ("motion", "motion dir acc", True),
    ("bg_colour", "bg colour acc", True), ("leakage", "leakage ↓", False), ("alpha_soft", "alpha soft px ↓", False),
    ("consistency", "consistency L1 ↓", False),
]
PALETTE_NAMES = list(syn.COLORS)
_PALETTE = np.array([syn.COLORS[n] for n in PALETTE_NAMES], dtype=np.float32)
_SHADES = (1.0, 0.775, 0.55)  # plain, striped mean, striped dark half (synthetic.render_shape)
_SHADED = np.concatenate([_PALETTE * s for s in _SHADES])
_SHADED_NAMES = PALETTE_NAMES * len(_SHADES)


# Prompt sets: "held-out" pairs a colour with a shape that the training data never pairs it with;
# "seen" draws new scenes with pairings that training does show. Both balance shapes and directions.
SPLITS = {"held-out": lambda seed, count, k: syn.balanced_scenes(seed, count, k, held_out=True),
          "seen": lambda seed, count, k: syn.balanced_scenes(seed, count, k, held_out=False)}
MIN_SHAPE_IOU = 0.8     # a matte counts as a shape only when that shape's template fits this well
MIN_MOTION_PX = 4.0     # a direction counts only when the centroid travels at least this far


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (successes may be a fractional count)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def mean_interval(values) -> tuple[float, float]:
    """95 % normal interval of a mean (for continuous metrics: IoU, PSNR, L1)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else 0.0,) * 2
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v))
    return (float(v.mean() - half), float(v.mean() + half))


def nearest_colour(rgb: np.ndarray, shaded: bool = True) -> np.ndarray:
    """(..., 3) -> palette name index per colour."""
    table = _SHADED if shaded else _PALETTE
    d = ((rgb[..., None, :] - table) ** 2).sum(-1)
    idx = d.argmin(-1)
    return idx % len(PALETTE_NAMES)


# ---- per-layer measurements (numpy: frames (F, H, W, 3), alpha (F, H, W), floats in [0, 1]) ----------
def fg_colour(fg: np.ndarray, alpha: np.ndarray) -> str | None:
    region = alpha > 0.5
    if region.sum() < 4:
        return None
    colour = fg[region].sum(0) / max(float(alpha[region].sum()), 1e-6)  # un-premultiply
    return PALETTE_NAMES[int(nearest_colour(colour))]


def _centroid(a: np.ndarray) -> tuple[float, float] | None:
    total = float(a.sum())
    if total < 1.0:
        return None
    y, x = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    return float((a * x).sum() / total), float((a * y).sum() / total)


def shape_scores(alpha: np.ndarray) -> dict[str, float] | None:
    """Mean best-fit template IoU per shape over the first, middle and last frames (templates fitted to
    size and centroid); None when a frame's matte is empty."""
    h, w = alpha.shape[1:]
    scale = min(h, w)
    gx, gy = syn._grid(h, w)
    scores = dict.fromkeys(syn.SHAPES, 0.0)
    for f in sorted({0, alpha.shape[0] // 2, alpha.shape[0] - 1}):
        mask = alpha[f] > 0.5
        c = _centroid(mask.astype(np.float32))
        if c is None:
            return None
        cx, cy = (c[0] + 0.5) / scale, (c[1] + 0.5) / scale
        for shape in syn.SHAPES:
            best = 0.0
            for r in np.arange(0.06, 0.40, 0.01):
                t = syn._signed_distance(shape, gx - cx, gy - cy, r) < 0
                tc = _centroid(t.astype(np.float32))
                if tc is None:
                    continue
                sx, sy = cx + (cx - (tc[0] + 0.5) / scale), cy + (cy - (tc[1] + 0.5) / scale)  # centroid-align
                t = syn._signed_distance(shape, gx - sx, gy - sy, r) < 0
                iou = (t & mask).sum() / max(1, (t | mask).sum())
                best = max(best, float(iou))
            scores[shape] += best
    frames = len({0, alpha.shape[0] // 2, alpha.shape[0] - 1})
    return {k: v / frames for k, v in scores.items()}


def shape_of(alpha: np.ndarray, min_iou: float = MIN_SHAPE_IOU) -> str | None:
    """The best-fitting shape, or None unless its template fits at IoU >= min_iou (a blob is no shape)."""
    scores = shape_scores(alpha)
    if scores is None:
        return None
    best = max(scores, key=scores.get)
    return best if scores[best] >= min_iou else None


def motion_of(alpha: np.ndarray, min_pixels: float = MIN_MOTION_PX) -> str | None:
    n = max(1, alpha.shape[0] // 4)
    start = [_centroid(a) for a in alpha[:n]]
    end = [_centroid(a) for a in alpha[-n:]]
    if any(c is None for c in start + end):
        return None
    dx = np.mean([c[0] for c in end]) - np.mean([c[0] for c in start])
    dy = np.mean([c[1] for c in end]) - np.mean([c[1] for c in start])
    if np.hypot(dx, dy) < min_pixels:
        return None
    return max(syn.DIRECTIONS, key=lambda d: syn.DIRECTIONS[d][0] * dx + syn.DIRECTIONS[d][1] * dy)


def bg_colour_score(bg: np.ndarray, colours: tuple[str, str]) -> float:
    counts = np.bincount(nearest_colour(bg.reshape(-1, 3), shaded=False), minlength=len(PALETTE_NAMES))
    if colours[0] == colours[1]:  # a plain background: its most frequent colour
        return float(PALETTE_NAMES[int(np.argmax(counts))] == colours[0])
    top2 = {PALETTE_NAMES[i] for i in np.argsort(counts)[-2:]}
    return len(top2 & set(colours)) / 2


def leakage(bg: np.ndarray, alpha: np.ndarray, colour: str) -> float:
    region = alpha > 0.5
    pixels = bg[region] if region.sum() >= 4 else bg.reshape(-1, 3)
    return float((nearest_colour(pixels) == PALETTE_NAMES.index(colour)).mean())


def score_layers(full, bg, fgs, alphas, background: syn.BackgroundSpec, shapes: list) -> dict:
    """One generation (or rendering) against its scene description."""
    per_fg = {"fg_colour": [], "shape": [], "motion": [], "leakage": []}
    for fg, a, s in zip(fgs, alphas, shapes):
        per_fg["fg_colour"].append(float(fg_colour(fg, a) == s.color))
        per_fg["shape"].append(float(shape_of(a) == s.shape))
        per_fg["motion"].append(float(motion_of(a) == s.direction))
        per_fg["leakage"].append(leakage(bg, a, s.color))
    composite = sum(fgs) + bg * np.clip(1 - sum(alphas), 0, 1)[..., None]
    out = {k: float(np.mean(v)) for k, v in per_fg.items()}
    out["bg_colour"] = bg_colour_score(bg, (background.color_a, background.color_b))
    out["alpha_soft"] = float(np.mean([((a > 0.1) & (a < 0.9)).mean() for a in alphas]))
    out["consistency"] = float(np.abs(composite - full).mean())
    return out


# ---- scenes, generation ------------------------------------------------------------------------------
def scene_prompt(background, shapes) -> dict:
    return {"full": syn.full_caption(shapes, background), "background": background.caption,
            "foregrounds": [s.caption for s in shapes]}


def rendered(background, shapes, num_frames, height, width):
    full, bg, alphas = syn.render_clip(background, shapes, num_frames, height, width)
    return full, bg, [full * a[..., None] for a in alphas], list(alphas)


def through_vae(pipeline, full, bg, fgs, alphas):
    """The rendered layers after one round trip through the model's VAE and mask VAE: the ceiling that
    the autoencoders alone put on every metric (a DiT cannot score above what they can reproduce)."""
    import torch

    from layert2v_core.vae_io import decode_latent

    def rgb(frames):
        return decode_latent(pipeline.vae, pipeline.encode_layer(torch.from_numpy(frames))).numpy()

    def matte(a):
        with torch.no_grad():
            return pipeline.mask_vae(torch.from_numpy(a)[None, None])[0, 0].numpy()

    return rgb(full), rgb(bg), [rgb(f) for f in fgs], [matte(a) for a in alphas]


def load_pipeline(args):
    from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
    from layert2v_core.pipeline import LayerT2VPipeline

    dit = load_layered_dit(args.dit, args.adapter, dtype="fp32")
    layer_vae = load_layer_vae(args.vae, args.adapter, dtype="fp32")
    text = load_text_encoder(args.text_encoder, text_len=dit.config.text_len, dtype="fp32")
    return LayerT2VPipeline(dit, layer_vae.vae, layer_vae.mask_vae, text)


def generated(pipeline, prompt, args, seed):
    import torch

    from layert2v_core.layout import BACKGROUND, FULL
    from layert2v_core.sampler import SamplerConfig

    from .eval_hook import generate_layers

    sampler = SamplerConfig(steps=args.steps, cfg=args.cfg, shift=args.shift, seed=seed)
    torch.manual_seed(seed)
    frames = generate_layers(pipeline, prompt, args.frames, args.height, args.width, sampler)
    k = len(prompt["foregrounds"])
    fgs, alphas = zip(*[tuple(x.float().numpy() for x in frames.foreground(i)) for i in range(1, k + 1)])
    return frames, frames.rgb[FULL].float().numpy(), frames.rgb[BACKGROUND].float().numpy(), list(fgs), list(alphas)


def evaluate(args) -> dict:
    import torch

    from .eval_hook import layered_tiles, pick_frames, save_sheet

    torch.set_num_threads(args.threads)
    scenes = SPLITS[args.split](args.seed, args.prompts, args.foregrounds)
    pipeline = load_pipeline(args)
    rows, model_scores, truth_scores, vae_scores, sheet_rows, sheet_labels, labels = [], [], [], [], [], [], []
    for i, (background, shapes) in enumerate(scenes):
        prompt = scene_prompt(background, shapes)
        frames, full, bg, fgs, alphas = generated(pipeline, prompt, args, seed=args.seed + i)
        model_scores.append(score_layers(full, bg, fgs, alphas, background, shapes))
        truth = rendered(background, shapes, args.frames, args.height, args.width)
        truth_scores.append(score_layers(*truth, background, shapes))
        vae_scores.append(score_layers(*through_vae(pipeline, *truth), background, shapes))
        rows.append({"prompt": prompt, **model_scores[-1]})
        if args.sheet and i < args.sheet_prompts:
            for f in pick_frames(args.frames):
                labels, tiles = layered_tiles(frames, f)
                sheet_rows.append(tiles)
                sheet_labels.append(f"p{i} f{f}")
    if args.sheet:
        save_sheet(sheet_rows, labels, args.sheet, sheet_labels)
        Path(args.sheet).with_suffix(".txt").write_text(
            "".join(f"p{i}: {json.dumps(r['prompt'])}\n" for i, r in enumerate(rows[: args.sheet_prompts])))
    mean = lambda scores: {k: float(np.mean([s[k] for s in scores])) for k, _, _ in METRICS}  # noqa: E731
    return {"name": args.name, "foregrounds": args.foregrounds, "split": args.split, "prompts": args.prompts, "steps": args.steps,
            "cfg": args.cfg, "shift": args.shift, "size": [args.frames, args.height, args.width],
            "metrics": mean(model_scores), "ground_truth": mean(truth_scores), "through_vae": mean(vae_scores),
            "per_prompt": rows,
            "command": "python -m training.eval_demo " + " ".join(shlex.quote(a) for a in sys.argv[1:])}


def markdown_table(results: list[dict], with_truth: bool = True) -> str:
    head = "| model | fg | " + " | ".join(h for _, h, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    fmt = lambda m: " | ".join(f"{m[k]:.2f}" if k != "consistency" else f"{m[k]:.3f}" for k, _, _ in METRICS)  # noqa: E731
    for r in results:
        lines.append(f"| {r['name']} | {r['foregrounds']} | {fmt(r['metrics'])} |")
    if with_truth and results:
        shown = set()
        for r in results:
            key = (r["foregrounds"], r.get("split", "held-out"))
            if key not in shown:
                shown.add(key)
                tag = ", seen pairs" if key[1] == "seen" else ""
                lines.append(f"| rendered ground truth{tag} | {r['foregrounds']} | {fmt(r['ground_truth'])} |")
                if "through_vae" in r:
                    lines.append(f"| ground truth through the VAEs{tag} | {r['foregrounds']} | {fmt(r['through_vae'])} |")
    return "\n".join(lines)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--dit / --vae / --adapter / --text-encoder, each defaulting to the shipped demo model's file."""
    from layert2v_core.demo_model import demo_model_paths

    default = demo_model_paths(required=False)
    for flag, key in (("--dit", "dit"), ("--vae", "vae"), ("--adapter", "adapter"), ("--text-encoder", "text_encoder")):
        parser.add_argument(flag, default=default.get(key))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--name", default="demo model")
    parser.add_argument("--foregrounds", type=int, default=1)
    parser.add_argument("--split", choices=sorted(SPLITS), default="held-out",
                        help="held-out (colour, shape) pairs, or new scenes with pairs seen in training")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--sheet", default=None, help="write a contact sheet PNG of the first prompts here")
    parser.add_argument("--sheet-prompts", type=int, default=2)
    parser.add_argument("--table", nargs="+", default=None, metavar="JSON", help="print one table from saved results")
    args = parser.parse_args(argv)
    if args.table:
        results = [json.loads(Path(p).read_text()) for p in args.table]
        print(markdown_table(results))
        for r in results:
            print(f"\n{r['name']}: `{r['command']}`")
        return
    result = evaluate(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown_table([result]))
    print(f"\n{result['prompts']} {result['split']} prompts, {result['steps']} steps, cfg {result['cfg']}, "
          f"{result['size'][0]}x{result['size'][1]}x{result['size'][2]}: `{result['command']}`")


if __name__ == "__main__":
    main()
