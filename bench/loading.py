"""Peak memory of loading the Wan2.1-1.3B DiT from a ComfyUI single file (the 2.65 GiB fp16 layout).

    nice -n 10 .venv/bin/python bench/loading.py                       # 30 blocks, fp16 file -> bf16 model
    nice -n 10 .venv/bin/python bench/loading.py --layers 10 --diffusers   # + diffusers' from_single_file, 10 blocks

Writes a file with the real 1.3B tensor names and shapes (random fp16 values, streamed tensor by tensor,
so writing it costs little memory), then loads it in a FRESH process per loader and reads the
kernel's peak RSS (VmHWM). "ours" is load_wan_transformer (meta-device build + one tensor at a time,
each cast on read); "diffusers" is WanTransformer3DModel.from_single_file + a cast afterwards (the
previous loader). The figure of merit is (peak - RSS after imports) / weights in the target dtype:
the issue's bar is <= 1.25. The absolute peak includes the ~0.5 GiB that python, torch and diffusers
take before any weight is read.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401
import torch
from _common import GIB, header, table

DTYPE_CODES = {"fp16": ("F16", torch.float16), "bf16": ("BF16", torch.bfloat16), "fp32": ("F32", torch.float32)}
TARGETS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def write_dit_file(path: Path, layers: int, file_dtype: str) -> tuple[int, dict]:
    """A ComfyUI-layout 1.3B file (model.diffusion_model. + original names), written tensor by tensor."""
    from layert2v_core.weights.wan_keys import dit_key_to_original
    from layert2v_core.weights.wan_single_file import build_transformer_from_config, shipped_config

    config = {**shipped_config("transformer"), "num_layers": layers}
    shapes = {k: tuple(v.shape) for k, v in build_transformer_from_config(config, device="meta").state_dict().items()}
    code, dtype = DTYPE_CODES[file_dtype]
    size = torch.finfo(dtype).bits // 8
    entries, offset = {}, 0
    for key, shape in shapes.items():
        n = size * int(torch.Size(shape).numel())
        entries["model.diffusion_model." + dit_key_to_original(key)] = {"dtype": code, "shape": list(shape),
                                                                         "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    g = torch.Generator().manual_seed(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for key, shape in shapes.items():
            f.write((torch.randn(shape, generator=g) * 0.02).to(dtype).view(torch.uint8).numpy().tobytes())
    return offset, config


def measure_child(loader: str, path: str, layers: int, target: str) -> None:
    """Runs in the fresh process: prints one JSON line."""
    from _common import PeakRSS, current_rss

    import layert2v_core.weights.wan_single_file as wsf

    baseline = current_rss()
    dtype = TARGETS[target]
    with PeakRSS() as m:
        if loader == "ours":
            model = wsf.load_wan_transformer(path, dtype=dtype, num_layers=layers)
        else:
            from diffusers import WanTransformer3DModel

            model = WanTransformer3DModel.from_single_file(path, config=str(wsf.WAN21_T2V_1_3B), subfolder="transformer",
                                                           local_files_only=True, num_layers=layers)
            model = wsf._cast_like_from_pretrained(model, dtype)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    print(json.dumps({"baseline": baseline, "peak": m.peak, "weights": weights}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--file-dtype", default="fp16", choices=list(DTYPE_CODES))
    parser.add_argument("--dtype", default="bf16", choices=list(TARGETS))
    parser.add_argument("--diffusers", action="store_true", help="also measure diffusers' from_single_file (needs ~3x)")
    parser.add_argument("--dir", default=None, help="where to write the temporary file (default: system temp)")
    parser.add_argument("--child", nargs=2, metavar=("LOADER", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure_child(args.child[0], args.child[1], args.layers, args.dtype)
        return

    header("Loading the Wan2.1-1.3B DiT from a ComfyUI single file: peak RSS")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / f"wan2.1_t2v_1.3B_{args.file_dtype}.safetensors"
        file_bytes, _ = write_dit_file(path, args.layers, args.file_dtype)
        rows = []
        for loader in ["ours"] + (["diffusers"] if args.diffusers else []):
            cmd = [sys.executable, __file__, "--layers", str(args.layers), "--dtype", args.dtype, "--child", loader, str(path)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if out.returncode:
                raise SystemExit(f"{loader} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            added = r["peak"] - r["baseline"]
            rows.append([loader, f"{args.layers}", f"{file_bytes / GIB:.2f} {args.file_dtype}",
                         f"{r['weights'] / GIB:.2f} {args.dtype}", f"{r['baseline'] / GIB:.2f}", f"{r['peak'] / GIB:.2f}",
                         f"{added / r['weights']:.2f}x", f"{r['peak'] / r['weights']:.2f}x"])
    table(["loader", "blocks", "file GiB", "weights GiB (target)", "RSS after imports GiB", "peak RSS GiB",
           "(peak - imports) / weights", "peak / weights"], rows)


if __name__ == "__main__":
    main()
