"""Routed cross-attention: segment-wise (what dit.py runs) vs one dense additive mask over the
concatenated prompts (the obvious alternative). Time, peak memory, and the mask size.

    nice -n 10 .venv/bin/python bench/cross_attention.py                       # mid: d=512, K=2, 3 x 16 x 16 tokens/layer
    nice -n 10 .venv/bin/python bench/cross_attention.py --frames 17 --size 256

The dense path materialises an additive mask (B, 1, S, P*text_len) and, because SDPA's flash /
memory-efficient kernels take no arbitrary mask on GPU, falls back to kernels that build the
(B, H, S, P*text_len) score matrix. Both are printed analytically for the full-size setting too.
Peak memory on CPU: RSS high-water mark per section (bench/_common.PeakRSS), one fresh section each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import _common  # noqa: F401  (sys.path, malloc threshold)
import torch
from _common import GIB, MIB, PeakRSS, header, mid_wan_transformer, table

from layert2v_core.dit import LayeredWanTransformer, _routed_cross_attention
from layert2v_core.layout import LayerLayout


def dense_mask(layout: LayerLayout, text_len: int, dtype) -> torch.Tensor:
    """(1, 1, S, P*text_len) additive mask: 0 where a token's segment may see the prompt, -inf elsewhere."""
    table_ = torch.tensor(layout.visibility_table())                         # (L, P)
    allowed = table_.repeat_interleave(text_len, dim=1)                       # (L, P*n)
    allowed = allowed.repeat_interleave(layout.tokens_per_segment, dim=0)     # (S, P*n)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, float("-inf"))
    return mask[None, None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--foregrounds", type=int, default=2)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=256, help="height = width in pixels")
    parser.add_argument("--text-len", type=int, default=512)
    parser.add_argument("--routing", default="paper")
    parser.add_argument("--batch", type=int, default=2, help="2 = CFG batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    base = mid_wan_transformer(num_layers=1)
    heads, head_dim = base.config.num_attention_heads, base.config.attention_head_dim
    attn = base.blocks[0].attn2
    layout = LayerLayout(args.foregrounds, args.frames, args.size, args.size, routing=args.routing)
    d, B, S, P = heads * head_dim, args.batch, layout.num_tokens, len(layout.prompt_names)
    queries = torch.randn(B, S, d)
    text = torch.randn(B, P, args.text_len, d)
    routes = LayeredWanTransformer._routes(layout, "cpu")

    def routed():
        return _routed_cross_attention(attn, queries, text, routes, layout.num_segments)

    mask = dense_mask(layout, args.text_len, queries.dtype)  # built once per forward, shared by all blocks

    def dense():
        return attn(queries, text.flatten(1, 2), mask, None)

    with torch.no_grad():
        err = (routed() - dense()).abs().max().item()
        runs = {"segment-wise (ours)": routed, "dense additive mask": dense}
        times, peaks = {k: [] for k in runs}, {k: [] for k in runs}
        for _ in range(args.repeats):
            for name, fn in runs.items():
                with PeakRSS() as m:
                    start = time.perf_counter()
                    out = fn()
                    times[name].append(time.perf_counter() - start)
                    del out
                peaks[name].append(m.delta)

    header("Routed cross-attention: segment-wise vs dense additive mask")
    print(f"layout: K={args.foregrounds}, {args.frames} frames, {args.size}x{args.size}, routing {args.routing}; "
          f"{S} query tokens x {P} prompts x {args.text_len} text tokens; batch {B}; d={d}, {heads} heads; "
          f"{args.repeats} interleaved repeats; max |routed - dense| = {err:.2e}")
    mask_bytes = mask.numel() * mask.element_size()
    resident = {"segment-wise (ours)": 0, "dense additive mask": mask_bytes}
    rows, total = [], {}
    for name in runs:
        total[name] = statistics.median(peaks[name]) + resident[name]
        rows.append([name, statistics.median(times[name]) * 1e3, statistics.median(peaks[name]) / MIB,
                     resident[name] / MIB, total[name] / MIB])
    table(["cross-attention", "median ms", "peak RSS delta in the call MiB", "mask held MiB", "peak total MiB"], rows)
    r_t = statistics.median(times["segment-wise (ours)"]) / statistics.median(times["dense additive mask"])
    r_m = total["segment-wise (ours)"] / max(1, total["dense additive mask"])
    print(f"ratio ours/dense: time {r_t:.3f}, peak memory {r_m:.3f} (mask measured: {mask_bytes / MIB:.1f} MiB "
          f"= S x P*text_len x 4 B analytic {S * P * args.text_len * 4 / MIB:.1f} MiB)")

    print("\nFull-size setting (analytic; Wan2.1-1.3B, 12 heads, text_len 512, bf16, CFG batch 2):")
    full_rows = []
    for k, frames in ((1, 41), (2, 41), (1, 81)):
        lay = LayerLayout(k, frames, 384, 672)
        s, t = lay.num_tokens, len(lay.prompt_names) * 512
        mask = s * t * 2
        scores = 2 * 12 * s * t * 2
        full_rows.append([f"K={k}, {frames} frames, 384x672", s, t, mask / GIB, scores / GIB])
    table(["layout", "query tokens", "text tokens", "dense mask GiB (per block call)",
           "score matrix GiB without flash"], full_rows)


if __name__ == "__main__":
    main()
