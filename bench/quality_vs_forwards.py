"""Quality vs DiT forwards: each speed setting (step cache, guidance range, fewer steps) on the demo model,
scored with training/eval_demo.py's metrics on the same prompts and seeds, with 95 % intervals.

    .venv/bin/python bench/quality_vs_forwards.py                 # 64 seen-split prompts, every setting (CPU, 1 thread)
    .venv/bin/python bench/quality_vs_forwards.py --table         # the table from saved results
    .venv/bin/python bench/quality_vs_forwards.py --settings cache_0.15 --out more.json   # more rows ...
    .venv/bin/python bench/quality_vs_forwards.py --table bench/results/quality_vs_forwards.json more.json
    .venv/bin/python bench/quality_vs_forwards.py --prompts 4 --settings baseline cache_0.1  # smoke

A forward = one sample through the DiT's block stack (a CFG-batched step is two; a cached step none).
Every row uses the demo evaluation's sampler (UniPC, 20 steps, CFG 4, shift 3) unless it changes it; a
generation's seed is the prompt's index, as in eval_demo. Intervals: mean +- 1.96 standard errors over
prompts; "vs baseline" is the paired difference on the same prompts (significant when its interval
excludes 0). Results are saved after every prompt (--out), so a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import torch  # noqa: E402

from training import eval_demo  # noqa: E402

DEMO = {"steps": 20, "cfg": 4.0, "shift": 3.0}
# (bench/_common is not imported: its malloc setting for
# exact RSS peaks makes every allocation an mmap, which triples this run's time.)
# name -> SamplerConfig overrides on top of DEMO; run in this order (most informative first).
SETTINGS = {
    "baseline": {},
    "cache_0.1+cfg_half_reuse": {"cache_threshold": 0.1, "cfg_end": 0.5, "cfg_outside": "reuse"},
    "cache_0.1": {"cache_threshold": 0.1},
    "cfg_half_reuse": {"cfg_end": 0.5, "cfg_outside": "reuse"},
    "steps_11": {"steps": 11},
    "cfg_half_skip": {"cfg_end": 0.5, "cfg_outside": "skip"},
    "cache_0.2": {"cache_threshold": 0.2},
    "cache_0.05": {"cache_threshold": 0.05},
    "cache_0.1_max3": {"cache_threshold": 0.1, "cache_max_skips": 3},
    "cache_0.15": {"cache_threshold": 0.15},
    "cache_0.08+cfg_0.6_reuse": {"cache_threshold": 0.08, "cfg_end": 0.6, "cfg_outside": "reuse"},
}
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "quality_vs_forwards.json"


def run_setting(pipeline, scenes, overrides: dict, args, save=lambda row: None) -> dict:
    from layert2v_core.sampler import SamplerConfig

    from training.eval_hook import generate_layers

    scores, forwards, seconds, stats = [], [], [], []
    row = {"overrides": overrides, "forwards": forwards, "seconds": seconds, "scores": scores, "stats": stats}
    for i, (background, shapes) in enumerate(scenes):
        prompt = eval_demo.scene_prompt(background, shapes)
        config = SamplerConfig(**{**DEMO, **overrides, "seed": args.seed + i})
        torch.manual_seed(args.seed + i)
        start = time.perf_counter()
        frames = generate_layers(pipeline, prompt, args.frames, args.height, args.width, config)
        seconds.append(time.perf_counter() - start)
        forwards.append(pipeline.last_sampling_stats.forwards)
        stats.append(dataclasses.asdict(pipeline.last_sampling_stats))
        k = len(shapes)
        fgs, alphas = zip(*[tuple(x.float().numpy() for x in frames.foreground(j)) for j in range(1, k + 1)])
        full, bg = frames.rgb["full"].float().numpy(), frames.rgb["background"].float().numpy()
        scores.append(eval_demo.score_layers(full, bg, list(fgs), list(alphas), background, shapes))
        save(row)  # after every prompt: a stopped run keeps what it measured
    return row


def interval(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(half)


def markdown(results: dict) -> str:
    metrics = eval_demo.METRICS
    base = results["settings"].get("baseline")
    head = ("| setting | forwards / generation | fewer forwards | " + " | ".join(h for _, h, _ in metrics)
            + " | worse than baseline: paired / mean outside its interval |")
    lines = [head, "|" + "---|" * (len(metrics) + 4)]
    for name, row in results["settings"].items():
        fwd = float(np.mean(row["forwards"]))
        ratio = float(np.mean(base["forwards"])) / fwd if base and fwd else float("nan")
        cells, paired_worse, outside_worse = [], [], []
        for key, title, higher in metrics:
            values = [s[key] for s in row["scores"]]
            mean, half = interval(values)
            digits = 3 if key == "consistency" else 2
            cell = f"{mean:.{digits}f} ± {half:.{digits}f}"
            paired = min(len(values), len(base["scores"])) if base else 0
            if base and name != "baseline":
                base_mean, base_half = interval([s[key] for s in base["scores"]])
                if (mean < base_mean - base_half) if higher else (mean > base_mean + base_half):
                    outside_worse.append(title)
            if base and name != "baseline" and paired > 1:  # same prompts and seeds: paired difference
                diff, dhalf = interval(np.array(values[:paired]) - np.array([s[key] for s in base["scores"][:paired]]))
                if abs(diff) > dhalf:  # paired 95 % interval excludes 0
                    better = (diff > 0) == higher
                    cell += f" ({'+' if diff > 0 else '−'}{abs(diff):.{digits + 1}f} {'better' if better else 'WORSE'})"
                    if not better:
                        paired_worse.append(title)
            cells.append(cell)
        verdict = "-" if name == "baseline" else f"{', '.join(paired_worse) or 'none'} / {', '.join(outside_worse) or 'none'}"
        cells.append(verdict)
        lines.append(f"| {name} (n={len(row['scores'])}) | {fwd:.1f} | {ratio:.2f}x | " + " | ".join(cells) + " |")
    counts = sorted({len(row["scores"]) for row in results["settings"].values()})
    n = "/".join(map(str, counts))
    lines.append(f"\n{n} {results['split']} prompts, K={results['foregrounds']}, "
                 f"{results['size'][0]}x{results['size'][1]}x{results['size'][2]}, demo sampler {DEMO}; "
                 "± = 95 % interval; (± d better/WORSE) = paired difference to baseline outside its 95 % interval.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    eval_demo.add_model_arguments(parser)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--split", choices=sorted(eval_demo.SPLITS), default="seen",
                        help="seen (default: the demo model scores above the floor there, so drops show) or held-out")
    parser.add_argument("--foregrounds", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--table", nargs="*", default=None, metavar="JSON",
                        help="print one table from saved results (default: --out) and stop; rows of later files "
                             "join the first file's (same prompts and seeds, so paired with its baseline)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.table is not None:
        files = args.table or [out]
        merged = json.loads(Path(files[0]).read_text())
        for extra in files[1:]:
            merged["settings"].update(json.loads(Path(extra).read_text())["settings"])
        print(markdown(merged))
        return
    torch.set_num_threads(args.threads)
    pipeline = eval_demo.load_pipeline(args)
    scenes = eval_demo.SPLITS[args.split](args.seed, args.prompts, args.foregrounds)
    results = {"split": args.split, "foregrounds": args.foregrounds, "size": [args.frames, args.height, args.width],
               "command": ".venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv),
               "threads": args.threads, "settings": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.settings:
        def save(row, name=name):
            results["settings"][name] = row
            out.write_text(json.dumps(results) + "\n")
        start = time.perf_counter()
        run_setting(pipeline, scenes, SETTINGS[name], args, save)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    print(markdown(results))


if __name__ == "__main__":
    main()
