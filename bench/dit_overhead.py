"""Layer overhead: one LayeredWanTransformer forward vs vanilla diffusers WanTransformer3DModel.

Same weights, same token count, same total text length; interleaved runs, median ratio.
    .venv/bin/python bench/dit_overhead.py --preset tiny
    .venv/bin/python bench/dit_overhead.py --preset mid      # d=512, 4 blocks, 4 x 3 x 16 x 16 tokens
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kwargs, layout_args, text_len = PRESETS[args.preset]

    torch.manual_seed(0)
    base = WanTransformer3DModel(patch_size=(1, 2, 2), in_channels=16, out_channels=16, **kwargs).eval()
    model = LayeredWanTransformer(base, LayerT2VConfig(max_foregrounds=layout_args[0], routing=args.routing,
                                                       text_len=text_len))
    layout = LayerLayout(*layout_args, routing=args.routing)
    latent = torch.randn(layout.latent_shape())
    context = torch.randn(1, len(layout.prompt_names), text_len, kwargs["text_dim"])
    flat = context.flatten(1, 2)
    t = torch.tensor([500.0])

    runs = {"layered": lambda: model(latent, t, context, layout),
            "vanilla": lambda: base(latent, t, flat, return_dict=False)}
    times = {k: [] for k in runs}
    with torch.no_grad():
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"command: {' '.join(sys.argv)}")
    print(f"preset {args.preset}: {layout.num_tokens} video tokens, {flat.shape[1]} text tokens, "
          f"routing {args.routing}, {torch.get_num_threads()} threads, device cpu")
    print("| model | median ms |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v * 1e3:.2f} |")
    print(f"ratio layered/vanilla: {med['layered'] / med['vanilla']:.3f}")


if __name__ == "__main__":
    main()
