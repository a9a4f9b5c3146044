"""Layer overhead: one LayeredWanTransformer forward vs vanilla diffusers WanTransformer3DModel.

Same weights, same token count, same total text length; interleaved runs, median ratio.
    nice -n 10 .venv/bin/python bench/dit_overhead.py --preset tiny
    nice -n 10 .venv/bin/python bench/dit_overhead.py --preset mid      # d=512, 4 blocks, 4 x 3 x 16 x 16 tokens
    .venv/bin/python bench/dit_overhead.py --preset mid --device cuda --dtype bf16
The table carries repeats, threads, min/median and the load average: on a shared CPU compare runs
only with similar load.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (sys.path)
import torch
from _common import header, sync, table
from diffusers import WanTransformer3DModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from layert2v_core.config import LayerT2VConfig  # noqa: E402
from layert2v_core.dit import LayeredWanTransformer  # noqa: E402
from layert2v_core.layout import LayerLayout  # noqa: E402

PRESETS = {
    # name: (model kwargs, layout args (K, frames, H, W), text_len)
    "tiny": (dict(num_attention_heads=2, attention_head_dim=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2),
             (1, 9, 32, 32), 8),
    "mid": (dict(num_attention_heads=4, attention_head_dim=128, text_dim=256, freq_dim=256, ffn_dim=2048, num_layers=4),
            (1, 9, 256, 256), 64),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--routing", default="paper")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.set_num_threads(args.threads)
    kwargs, layout_args, text_len = PRESETS[args.preset]

    torch.manual_seed(0)
    base = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, **kwargs).eval()
    base = base.to(args.device, dtype)
    model = LayeredWanTransformer(base, LayerT2VConfig(max_foregrounds=layout_args[0], routing=args.routing,
                                                       text_len=text_len))
    layout = LayerLayout(*layout_args, routing=args.routing)
    model.to(args.device)
    latent = torch.randn(layout.latent_shape()).to(args.device, dtype)
    context = torch.randn(1, len(layout.prompt_names), text_len, kwargs["text_dim"]).to(args.device, dtype)
    flat = context.flatten(1, 2)
    t = torch.tensor([500.0], device=args.device)

    runs = {"layered": lambda: model(latent, t, context, layout),
            "vanilla": lambda: base(latent, t, flat, return_dict=False)}
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                sync(args.device)
                start = time.perf_counter()
                fn()
                sync(args.device)
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    header("Layer overhead: layered DiT forward vs vanilla diffusers forward", args.device)
    print(f"preset {args.preset}: {layout.num_tokens} video tokens, {flat.shape[1]} text tokens, routing {args.routing}, "
          f"{args.dtype}, device {args.device}, {args.repeats} interleaved repeats after 1 warm-up")
    ratios = sorted(a / b for a, b in zip(times["layered"], times["vanilla"]))
    table(["preset", "video tokens", "text tokens", "repeats", "threads", "layered ms (median)", "vanilla ms (median)",
           "layered ms (min)", "vanilla ms (min)", "ratio of medians", "median per-pair ratio"],
          [[args.preset, layout.num_tokens, flat.shape[1], args.repeats, torch.get_num_threads(),
            med["layered"] * 1e3, med["vanilla"] * 1e3, min(times["layered"]) * 1e3, min(times["vanilla"]) * 1e3,
            med["layered"] / med["vanilla"], statistics.median(ratios)]])
    print(f"ratio layered/vanilla: {med['layered'] / med['vanilla']:.3f}")


if __name__ == "__main__":
    main()
