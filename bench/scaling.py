"""Scaling: time and memory per sampling step as K grows 1 -> 3 and frames grow 9 -> 81.

Mid-size random DiT (d=512, 4 heads, 4 blocks, FFN 2048) on CPU at a small frame so it runs in minutes;
CFG batch 2, one Euler step per point after a warm-up step. Attention is quadratic in the serialized
length S = layers x T' x h x w, the rest linear: the last column (ms per step / S) grows with S.
    nice -n 10 .venv/bin/python bench/scaling.py
    nice -n 10 .venv/bin/python bench/scaling.py --size 128 --frames 9 17 41 81 --foregrounds 1 2 3
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401
import torch
from _common import MIB, PeakRSS, header, mid_wan_transformer, table

from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.pipeline import LayerConditioning, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64, help="height = width in pixels")
    parser.add_argument("--frames", type=int, nargs="+", default=[9, 17, 41, 81])
    parser.add_argument("--foregrounds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--base-frames", type=int, default=17, help="frames of the K sweep")
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = mid_wan_transformer(num_layers=4)
    dit = LayeredWanTransformer(base, LayerT2VConfig(max_foregrounds=max(args.foregrounds), text_len=args.text_len))
    pipe = LayerT2VPipeline(dit, None, None)
    points = [(k, args.base_frames) for k in args.foregrounds] + [(1, f) for f in args.frames if f != args.base_frames]
    rows = []
    for k, frames in points:
        layout = pipe.layout(k, frames, args.size, args.size)
        p = len(layout.prompt_names)
        cond = LayerConditioning(torch.randn(1, p, args.text_len, 256), torch.randn(1, p, args.text_len, 256))
        config = SamplerConfig(steps=1, cfg=5.0, sampler="euler")
        pipe.sample_latent(layout, cond, config)  # warm-up
        with PeakRSS() as m:
            start = time.perf_counter()
            pipe.sample_latent(layout, cond, config)
            step = time.perf_counter() - start
        est = pipe.last_memory_estimate.needed
        rows.append([k, frames, layout.num_segments, layout.num_tokens, step * 1e3, m.delta / MIB, est / MIB,
                     step * 1e6 / layout.num_tokens])
    header("Scaling per sampling step (CFG batch 2)")
    print(f"mid DiT d=512, 4 blocks, {args.size}x{args.size} px, text_len {args.text_len}")
    table(["K", "frames", "layers", "tokens S", "ms/step", "peak RSS delta MiB", "estimate MiB", "us/step per token"],
          rows)


if __name__ == "__main__":
    main()
