"""Every row of the demo model's evaluation (issue 13), through the public pipeline, with 95 % intervals.

    python -m training.demo_report --run output/demo          # the recipe's final model (stage 3)
    python -m training.demo_report                              # the built-in demo model
    python -m training.demo_report --run output/demo --rows seen_k1 decompose   # some rows only

Rows (fresh scenes, never written to disk; shapes and directions balanced; training/eval_demo.py metrics):
- seen_k1 / held_out_k1 / seen_k2: text-to-layers; per foreground colour, shape (a template must fit at
  IoU >= 0.8), motion direction (>= 4 px of travel); background colour; leakage, soft alpha, and the
  recomposite consistency |sum fg + bg (1 - sum a) - full|. seen_k1 also scores its first scenes' true
  layers after one VAE + mask-VAE round trip: the ceiling the autoencoders leave (consistency gate: within
  1.5x of it).
- decompose (given the full video): alpha IoU against the true matte; fg_for_bg (given the background)
  and bg_for_fg (given the foreground and its alpha): the generated layer scored like the rows above.
- trajectory: two foregrounds on crossing boxes, guided and unguided: box IoU between each matte's
  bounding box and its target box per frame (LayerT2V v1's mIoU), and the prompted shape's template IoU.
Proportions carry Wilson intervals, means normal ones. Each row is saved as it finishes
(<out>/eval/rows/<row>.json) and skipped when present, so a stopped evaluation resumes; two processes
may share the rows (a row being measured is claimed with a lock file). The last one writes
<out>/eval/report.json, <out>/eval/demo_eval.md and the contact sheet <out>/eval/demo_contact_sheet.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from .data import synthetic as syn
from .eval_demo import (METRICS, SPLITS, generated, load_pipeline, mean_interval, rendered, scene_prompt,
                        score_layers, shape_scores, through_vae, wilson)

# name -> (kind, foregrounds, split, scenes)
ROWS = {
    "seen_k1": ("prompts", 1, "seen", 64),
    "held_out_k1": ("prompts", 1, "held-out", 64),
    "seen_k2": ("prompts", 2, "seen", 64),
    "decompose": ("variant", 1, "seen", 32),
    "fg_for_bg": ("variant", 1, "seen", 32),
    "bg_for_fg": ("variant", 1, "seen", 32),
    "trajectory": ("trajectory", 2, "seen", 16),
}
VARIANT = {"decompose": "decompose", "fg_for_bg": "foreground_for_background", "bg_for_fg": "background_for_foreground"}
CEILING_SCENES = 16          # seen_k1 scenes also scored through the autoencoders
SHEET_SCENES = 3             # seen_k1 scenes on the contact sheet
GATES = {  # (row, metric): threshold; the consistency gate is relative to the VAE ceiling
    ("seen_k1", "fg_colour"): 0.9, ("seen_k1", "shape"): 0.9, ("seen_k1", "motion"): 0.9,
    ("held_out_k1", "fg_colour"): 0.7, ("held_out_k1", "shape"): 0.7, ("held_out_k1", "motion"): 0.7,
    ("seen_k2", "fg_colour"): 0.8, ("seen_k2", "shape"): 0.8, ("seen_k2", "motion"): 0.8,
    ("seen_k1", "bg_colour"): 0.9, ("decompose", "alpha_iou"): 0.8,
}
PER_FG = ("fg_colour", "shape", "motion")


def summarise(per_scene: list[dict], k: int) -> dict:
    """Per-scene scores -> {metric: {value, ci, n}}: Wilson for accuracies (per foreground), normal otherwise."""
    out = {}
    for key in per_scene[0]:
        values = [s[key] for s in per_scene]
        if key in PER_FG or key == "bg_colour":
            n = len(values) * (k if key in PER_FG else 1)
            hits = sum(v * (k if key in PER_FG else 1) for v in values)
            out[key] = {"value": hits / n, "ci": wilson(hits, n), "n": n}
        else:
            out[key] = {"value": float(np.mean(values)), "ci": mean_interval(values), "n": len(values)}
    return out


def prompt_row(pipe, name, k, split, count, args, sheet) -> dict:
    from .eval_hook import layered_tiles, pick_frames

    scenes = SPLITS[split](args.seed, count, k)
    model, ceiling = [], []
    for i, (background, shapes) in enumerate(scenes):
        frames, full, bg, fgs, alphas = generated(pipe, scene_prompt(background, shapes), args, seed=args.seed + i)
        model.append(score_layers(full, bg, fgs, alphas, background, shapes))
        if name == "seen_k1" and i < CEILING_SCENES:
            truth = rendered(background, shapes, args.frames, args.height, args.width)
            ceiling.append(score_layers(*through_vae(pipe, *truth), background, shapes))
        if name == "seen_k1" and i < SHEET_SCENES:
            for f in pick_frames(args.frames):
                labels, tiles = layered_tiles(frames, f)
                sheet["rows"].append(tiles)
                sheet["labels"], sheet["row_labels"] = labels, sheet["row_labels"] + [f"p{i} f{f}"]
            sheet["prompts"].append(scene_prompt(background, shapes))
    row = {"metrics": summarise(model, k), "scenes": count, "foregrounds": k, "split": split}
    if ceiling:
        row["through_vae"] = summarise(ceiling, k)
    return row


def box_of(alpha: np.ndarray) -> tuple[float, float, float, float] | None:
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def box_iou(a, b) -> float:
    if a is None:
        return 0.0
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def trajectory_row(pipe, count, args) -> dict:
    from layert2v_core.pipeline import LayerPrompts, encode_conditioning
    from layert2v_core.sampler import SamplerConfig
    from layert2v_core.trajectory import interpolate_boxes
    from layert2v_core.variants import generate_layers

    from .eval_variants import crossing_boxes

    boxes = crossing_boxes(args.frames)
    targets = {k: (interpolate_boxes(keys, args.frames).numpy() * [args.width, args.height, args.width, args.height])
               for k, keys in boxes.items()}
    out = {}
    for label, strength in (("guided", args.strength), ("unguided", 0.0)):
        box_ious, template_ious = [], []
        for i, (background, shapes) in enumerate(SPLITS["seen"](args.seed + 1, count, 2)):
            prompt = scene_prompt(background, shapes)
            layout = pipe.layout(2, args.frames, args.height, args.width)
            conditioning = encode_conditioning(LayerPrompts(prompt["full"], prompt["background"], prompt["foregrounds"]),
                                               encoder=pipe.text_encoder)
            frames = generate_layers(pipe, layout, conditioning,
                                     SamplerConfig(steps=args.steps, cfg=args.cfg, shift=args.shift, seed=args.seed + i),
                                     trajectories=boxes, trajectory_strength=strength, trajectory_end_step=args.guide_steps)
            for k, s in zip(boxes, shapes):
                alpha = frames.alpha[f"mask_{k}"].float().numpy()
                box_ious.append(float(np.mean([box_iou(box_of(alpha[f]), targets[k][f]) for f in range(args.frames)])))
                fit = shape_scores(alpha)
                template_ious.append(0.0 if fit is None else fit[s.shape])
        keeps = sum(v >= 0.8 for v in template_ious)
        out[label] = {"box_iou": {"value": float(np.mean(box_ious)), "ci": mean_interval(box_ious), "n": len(box_ious)},
                      "template_iou": {"value": float(np.mean(template_ious)), "ci": mean_interval(template_ious),
                                       "n": len(template_ious)},
                      "keeps_shape": {"value": keeps / len(template_ious), "ci": wilson(keeps, len(template_ious)),
                                      "n": len(template_ious)}}
    return {"metrics": out, "scenes": count, "foregrounds": 2, "split": "seen", "strength": args.strength,
            "guide_steps": args.guide_steps}


def variant_row(pipe, name, count, args) -> dict:
    from .eval_variants import variant_output, variant_scores

    rows = []
    for i, scene in enumerate(SPLITS["seen"](args.seed + 2, count, 1)):
        out, full, bg, alphas = variant_output(pipe, VARIANT[name], scene, args, args.seed + i)
        scores = variant_scores(VARIANT[name], out, full, bg, alphas)
        fg, a = out.foreground(1)
        scores.update(score_layers(out.rgb["full"].float().numpy(), out.rgb["background"].float().numpy(),
                                   [fg.float().numpy()], [a.float().numpy()], *scene))
        rows.append(scores)
    return {"metrics": summarise(rows, 1), "scenes": count, "foregrounds": 1, "split": "seen"}


# ---- rows on disk (resumable, shareable by two processes) -------------------------------------------------
def _claim(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        owner = int(lock.read_text() or 0) if lock.exists() else 0
        try:
            os.kill(owner, 0)
            return False  # another live process measures this row
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)  # its process died: take it over
            return _claim(lock)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def run_rows(pipe, names, folder: Path, args) -> None:
    from .eval_hook import save_sheet

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        target, lock = folder / f"{name}.json", folder / f"{name}.lock"
        if target.exists() or not _claim(lock):
            continue
        kind, k, split, count = ROWS[name]
        count = max(1, int(round(count * args.scale)))
        started = time.time()
        sheet = {"rows": [], "labels": [], "row_labels": [], "prompts": []}
        if kind == "prompts":
            row = prompt_row(pipe, name, k, split, count, args, sheet)
        elif kind == "variant":
            row = variant_row(pipe, name, count, args)
        else:
            row = trajectory_row(pipe, count, args)
        row.update(name=name, seconds=round(time.time() - started, 1), steps=args.steps, cfg=args.cfg, shift=args.shift)
        if sheet["rows"]:
            save_sheet(sheet["rows"], sheet["labels"], folder.parent / "demo_contact_sheet.png", sheet["row_labels"])
            (folder.parent / "demo_contact_sheet.txt").write_text(
                "".join(f"p{i}: {json.dumps(p)}\n" for i, p in enumerate(sheet["prompts"])))
        target.write_text(json.dumps(row, indent=2) + "\n")
        lock.unlink(missing_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {row['seconds']:.0f} s", flush=True)


# ---- report -------------------------------------------------------------------------------------------
def _cell(m: dict | None) -> str:
    if not m:
        return "-"
    lo, hi = m["ci"]
    return f"{m['value']:.2f} [{lo:.2f}-{hi:.2f}]"


def gates(rows: dict) -> dict:
    out = {}
    for (row, key), threshold in GATES.items():
        m = rows.get(row, {}).get("metrics", {}).get(key)
        out[f"{row}.{key}"] = None if m is None else {"value": m["value"], "ci": m["ci"], "threshold": threshold,
                                                     "pass": m["value"] >= threshold}
    seen = rows.get("seen_k1", {})
    if "through_vae" in seen:
        ratio = seen["metrics"]["consistency"]["value"] / max(seen["through_vae"]["consistency"]["value"], 1e-9)
        out["seen_k1.consistency_vs_vae_ceiling"] = {"value": ratio, "threshold": 1.5, "pass": ratio <= 1.5}
    return out


def markdown(rows: dict, gate: dict, commands: str) -> str:
    heads = [h for _, h, _ in METRICS]
    lines = ["# Demo model evaluation", "", "Text to layers (95 % intervals: Wilson for accuracies, normal for means; "
             "accuracies per foreground):", "", "| row | n | " + " | ".join(heads) + " |", "|" + "---|" * (len(heads) + 2)]
    for name in ("seen_k1", "held_out_k1", "seen_k2"):
        if name in rows:
            m = rows[name]["metrics"]
            lines.append(f"| {name} | {rows[name]['scenes']} | " + " | ".join(_cell(m.get(k)) for k, _, _ in METRICS) + " |")
            if "through_vae" in rows[name]:
                t = rows[name]["through_vae"]
                lines.append(f"| {name}: true layers through the VAEs (ceiling) | {len(t) and t['fg_colour']['n']} | "
                             + " | ".join(_cell(t.get(k)) for k, _, _ in METRICS) + " |")
    lines += ["", "Conditional variants (given one layer, 1 foreground):", "",
              "| variant | n | alpha IoU | given layer PSNR (dB) | fg colour | shape | motion | bg colour | consistency |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in ("decompose", "fg_for_bg", "bg_for_fg"):
        if name in rows:
            m = rows[name]["metrics"]
            cells = [_cell(m.get(k)) for k in ("alpha_iou", "given_psnr", "fg_colour", "shape", "motion", "bg_colour",
                                                "consistency")]
            lines.append(f"| {name} | {rows[name]['scenes']} | " + " | ".join(cells) + " |")
    if "trajectory" in rows:
        lines += ["", "Trajectories (two foregrounds on crossing boxes):", "",
                  "| guidance | mattes | box IoU | prompted-shape template IoU | keeps the shape (IoU >= 0.8) |", "|---|---|---|---|---|"]
        for label, m in rows["trajectory"]["metrics"].items():
            lines.append(f"| {label} | {m['box_iou']['n']} | {_cell(m['box_iou'])} | {_cell(m['template_iou'])} | "
                         f"{_cell(m['keeps_shape'])} |")
    lines += ["", "Gates:", "", "| gate | value | threshold | pass |", "|---|---|---|---|"]
    for key, g in gate.items():
        lines.append(f"| {key} | " + ("not measured | - | - |" if g is None else
                                      f"{g['value']:.2f} | {g['threshold']} | {'yes' if g['pass'] else 'no'} |"))
    missing = [n for n in ROWS if n not in rows]
    if missing:
        lines += ["", "Not measured: " + ", ".join(missing)]
    lines += ["", commands]
    return "\n".join(lines) + "\n"


def assemble(folder: Path, args) -> dict:
    rows = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    gate = gates(rows)
    settings = f"{args.frames}x{args.height}x{args.width}, {args.steps} UniPC steps, CFG {args.cfg}, shift {args.shift}"
    command = "python -m training.demo_report " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    report = {"rows": rows, "gates": gate, "settings": settings, "command": command,
              "summary": {k: (None if g is None else round(g["value"], 3)) for k, g in gate.items()}}
    report["summary"]["all_gates_pass"] = all(g is not None and g["pass"] for g in gate.values())
    (folder.parent / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder.parent / "demo_eval.md").write_text(markdown(rows, gate, f"Settings: {settings}. Command: `{command}`"))
    return report


def main(argv=None) -> None:
    import torch

    from layert2v_core.demo_model import demo_model_paths

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=None, help="a demo_recipe run folder: its final model (stage 3)")
    for key in ("dit", "vae", "adapter", "text_encoder"):
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None)
    parser.add_argument("--out", default=None, help="result folder (default <run>/eval, or output/demo_report)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every row's scene count")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--shift", type=float, default=3.0)
    parser.add_argument("--strength", type=float, default=0.8)
    parser.add_argument("--guide-steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="one scene per row, 2 steps: checks the tool runs")
    parser.add_argument("--assemble-only", action="store_true",
                        help="measure nothing: write the report from the rows already saved (rows not saved are listed as not measured)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.scale, args.steps = 0.0, 2
    from .demo_recipe import run_model_files

    default = run_model_files(args.run) if args.run else demo_model_paths(required=False)
    for key in ("dit", "vae", "adapter", "text_encoder"):
        setattr(args, key, getattr(args, key) or default.get(key))
    folder = Path(args.out or (Path(args.run) / "eval" if args.run else "output/demo_report")) / "rows"
    if not args.assemble_only:
        run_rows(load_pipeline(args), args.rows, folder, args)
    while not args.assemble_only and any(folder.glob("*.lock")):  # another process still measures a row: the last one writes the report
        time.sleep(10)
        for lock in folder.glob("*.lock"):
            _claim_dead = lock.read_text() if lock.exists() else ""
            try:
                os.kill(int(_claim_dead or 0), 0)
            except (ProcessLookupError, ValueError):
                lock.unlink(missing_ok=True)
    report = assemble(folder, args)
    print((folder.parent / "demo_eval.md").read_text())
    print("all gates pass" if report["summary"]["all_gates_pass"] else "gates NOT all reached", flush=True)


if __name__ == "__main__":
    main()
