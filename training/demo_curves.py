"""Loss curves of a demo_recipe run, one panel per stage, from each stage's metrics.jsonl (PIL only).

    python -m training.demo_curves --run output/demo          # -> output/demo/loss_curves.png

Each panel: the stage's `loss` (and stage 0b's unweighted flow loss, grey) against the optimizer step,
averaged over windows of 1/50 of the run, on a log scale.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

PANEL_W, PANEL_H, MARGIN = 360, 200, 34
SERIES = (("loss", (200, 40, 40)), ("flow_unweighted", (120, 120, 120)))


def _smoothed(records: list[dict], key: str) -> list[tuple[int, float]]:
    points = [(r["step"], r[key]) for r in records if key in r and r[key] and r[key] > 0]
    window = max(1, len(points) // 50)
    return [(points[i + window - 1][0], sum(v for _, v in points[i:i + window]) / window)
            for i in range(0, len(points) - window + 1, window)]


def draw_panel(name: str, records: list[dict]) -> Image.Image:
    panel = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(panel)
    curves = [(c, _smoothed(records, k)) for k, c in SERIES]
    values = [v for _, pts in curves for _, v in pts]
    last = max(r["step"] for r in records)
    lo, hi = math.log10(min(values)), math.log10(max(values))
    hi = hi if hi > lo else lo + 1
    x = lambda s: MARGIN + (PANEL_W - MARGIN - 8) * s / max(1, last)  # noqa: E731
    y = lambda v: 8 + (PANEL_H - MARGIN - 8) * (hi - math.log10(v)) / (hi - lo)  # noqa: E731
    draw.rectangle([MARGIN, 8, PANEL_W - 8, PANEL_H - MARGIN], outline=(0, 0, 0))
    for colour, pts in curves:
        if len(pts) > 1:
            draw.line([(x(s), y(v)) for s, v in pts], fill=colour, width=2)
    draw.text((MARGIN + 4, 10), name, fill=(0, 0, 0))
    draw.text((2, 8), f"{10 ** hi:.3g}", fill=(0, 0, 0))
    draw.text((2, PANEL_H - MARGIN - 10), f"{10 ** lo:.3g}", fill=(0, 0, 0))
    draw.text((MARGIN, PANEL_H - MARGIN + 4), "0", fill=(0, 0, 0))
    draw.text((PANEL_W - 60, PANEL_H - MARGIN + 4), f"step {last}", fill=(0, 0, 0))
    return panel


def plot_run(run: Path) -> Path | None:
    stages = sorted(p.parent for p in run.glob("*/metrics.jsonl"))
    panels = []
    for folder in stages:
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        restarts = [i for i in range(1, len(records)) if records[i]["step"] <= records[i - 1]["step"]]
        records = records[restarts[-1]:] if restarts else records  # a fresh restart's lines follow a killed run's
        if records:
            panels.append(draw_panel(folder.name, records))
    if not panels:
        return None
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * PANEL_W, rows * PANEL_H), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % cols) * PANEL_W, (i // cols) * PANEL_H))
    target = run / "loss_curves.png"
    sheet.save(target)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    args = parser.parse_args(argv)
    print(plot_run(Path(args.run)))


if __name__ == "__main__":
    main()
