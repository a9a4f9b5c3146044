"""VAE decode: time-chunked decode into a preallocated clip and spatial tiling vs diffusers' plain decode.

    nice -n 10 .venv/bin/python bench/vae_decode.py                      # both parts, CPU sizes
    .venv/bin/python bench/vae_decode.py --device cuda --vae full --size 480x832 --frames 81
Part "long clip": the tiny Wan VAE (activations small, output large) over a long clip: diffusers grows
the clip with torch.cat per latent frame and converts it with full-size temporaries; ours writes
each chunk into the final (F, H, W, 3) tensor. Part "tiles": the real Wan2.1 VAE architecture (random
weights, --vae full) where the decoder activations dominate: untiled vs diffusers' tiles.
Each variant runs in a fresh PeakRSS section; identical outputs are checked where they must be.
"""

from __future__ import annotations

import argparse
import time

import _common  # noqa: F401
import torch
from _common import MIB, header, peak_meter, sync, table

from layert2v_core.tiny import build_tiny_vae
from layert2v_core.vae_io import VaeTiling, decode_latent, denormalize_latent, vae_output_to_frames
from layert2v_core.weights.wan_single_file import build_vae_from_config, shipped_config


def plain(vae, z):
    with torch.no_grad():
        return vae_output_to_frames(vae.decode(denormalize_latent(z, vae).to(vae.dtype)).sample)


def measure(name, fn, device, rows, reference=None):
    with peak_meter(device) as m:
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        elapsed = time.perf_counter() - start
    same = "-" if reference is None else f"{(out - reference).abs().max().item():.1e}"
    rows.append([name, tuple(out.shape), elapsed, m.delta / MIB, same])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--long-size", default="192x192", help="HxW of the long-clip part")
    parser.add_argument("--long-frames", type=int, default=81)
    parser.add_argument("--vae", choices=["full", "none"], default="full", help="tiles part with the real VAE architecture")
    parser.add_argument("--size", default="256x256", help="HxW of the tiles part")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--stride", type=int, default=96)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    rows = []
    h, w = map(int, args.long_size.split("x"))
    vae = build_tiny_vae().to(device)
    z = torch.randn(1, 16, (args.long_frames - 1) // 4 + 1, h // 8, w // 8, device=device)
    ref = measure(f"long clip {args.long_frames}f {h}x{w}, tiny VAE: diffusers decode + convert", lambda: plain(vae, z),
                  device, rows)
    measure("  same: ours, chunked in time into the final tensor", lambda: decode_latent(vae, z), device, rows, ref)
    del ref
    if args.vae == "full":
        h, w = map(int, args.size.split("x"))
        vae = build_vae_from_config(shipped_config("vae"), device=device,
                                    dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()
        z = torch.randn(1, 16, (args.frames - 1) // 4 + 1, h // 8, w // 8, device=device)
        ref = measure(f"tiles {args.frames}f {h}x{w}, Wan2.1 VAE: ours untiled", lambda: decode_latent(vae, z, tiling=None),
                      device, rows)
        tiling = VaeTiling(args.tile, args.tile, args.stride, args.stride)
        measure(f"  same: ours + diffusers tiles {args.tile}/{args.stride}",
                lambda: decode_latent(vae, z, tiling=tiling), device, rows, ref)
    header("VAE decode: time chunks and spatial tiles", device)
    table(["variant", "output (F,H,W,3)", "seconds", "peak memory delta MiB", "max abs diff vs row above"], rows)


if __name__ == "__main__":
    main()
