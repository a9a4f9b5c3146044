"""Bench the export writers against the obvious alternatives (not a timed test).

    .venv/bin/python bench/export.py [--runs 5] [--frames 41] [--width 672] [--height 384]

- ProRes 4444 + alpha: our PyAV writer vs the `ffmpeg` CLI fed the same frames as raw rgba64le
  through a pipe (same profile, pixel format, BT.709 matrix and tags). Both start from the same
  float arrays; the pipe side converts and streams frame by frame while ffmpeg encodes.
- Multi-layer EXR (one float file per frame, background + foreground groups, OpenEXR bindings)
  vs the same two layers as two per-layer float EXR sequences (FFmpeg's exr encoder).
- 16-bit PNG sequence: ours vs Pillow's default `Image.save(..., "PNG")`. Pillow has no 16-bit
  RGBA mode, so its default is an 8-bit RGBA file; our 8-bit writer is listed for a like-for-like.

Runs are interleaved (A, B, A, B, ...) so that load from other processes hits both alike;
the table shows the median and the spread of the runs, and the median CPU seconds used (this
process plus the ffmpeg child), which shared machines disturb less than wall time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from layert2v_core.export import (to_straight, write_exr_sequence,  # noqa: E402
                                  write_multilayer_exr_sequence, write_png_sequence, write_prores)
from layert2v_core.export.synthetic import soft_rgba_clip  # noqa: E402

FPS = 16


def ffmpeg_prores_pipe(out: Path, premult, alpha) -> float:
    """The ffmpeg-CLI way: straight RGBA16 frames streamed into its stdin while it encodes.

    Returns the seconds spent making the raw bytes (they overlap with ffmpeg's encoding).
    """
    frames, height, width = alpha.shape
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgba64le",
           "-s", f"{width}x{height}", "-r", str(FPS), "-i", "-",
           "-vf", "scale=out_color_matrix=bt709:out_range=tv,format=yuva444p10le",
           "-c:v", "prores_ks", "-profile:v", "4444", "-pix_fmt", "yuva444p10le",
           "-color_primaries", "bt709", "-color_trc", "bt709", "-colorspace", "bt709",
           "-color_range", "tv", str(out)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    prep = 0.0
    for i in range(frames):
        t0 = time.perf_counter()
        straight = to_straight(premult[i], alpha[i])
        rgba = np.concatenate([straight, alpha[i][..., None]], axis=-1)
        raw = np.rint(rgba * 65535).astype("<u2").tobytes()
        prep += time.perf_counter() - t0
        proc.stdin.write(raw)
    proc.stdin.close()
    if proc.wait() != 0:
        raise RuntimeError(f"ffmpeg failed: {' '.join(cmd)}")
    return prep


def pillow_png_sequence(folder: Path, premult, alpha) -> None:
    from PIL import Image

    folder.mkdir()
    straight = to_straight(premult, alpha)
    rgba = np.rint(np.concatenate([straight, alpha[..., None]], axis=-1) * 255).astype(np.uint8)
    for i, frame in enumerate(rgba):
        Image.fromarray(frame, "RGBA").save(folder / f"frame.{i:05d}.png")


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the ffmpeg CLI)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--frames", type=int, default=41)
    ap.add_argument("--width", type=int, default=672)
    ap.add_argument("--height", type=int, default=384)
    args = ap.parse_args()
    if not shutil.which("ffmpeg"):
        sys.exit("bench/export.py needs the ffmpeg CLI for the comparison (apt-get install ffmpeg)")

    clip = soft_rgba_clip(args.frames, args.height, args.width, seed=0)
    premult, alpha = clip.premultiplied, clip.alpha
    contenders = {
        "prores4444: ours (PyAV)": lambda d: write_prores(d / "o.mov", premult, alpha, fps=FPS,
                                                          alpha_mode="straight", sidecar=False),
        "prores4444: ffmpeg CLI pipe": lambda d: ffmpeg_prores_pipe(d / "f.mov", premult, alpha),
        "png16 seq: ours (PyAV)": lambda d: write_png_sequence(d / "p16", premult, alpha,
                                                              alpha_mode="straight",
                                                              bit_depth=16, sidecar=False),
        "png8 seq: ours (PyAV)": lambda d: write_png_sequence(d / "p8", premult, alpha,
                                                             alpha_mode="straight", bit_depth=8,
                                                             sidecar=False),
        "png8 seq: Pillow default": lambda d: pillow_png_sequence(d / "pil", premult, alpha),
        "exr float: multi-layer (2 grp)": lambda d: write_multilayer_exr_sequence(
            d / "ml", {"background": clip.background, "foreground_1": premult},
            {"foreground_1": alpha}, sidecar=False),
        "exr float: 2 per-layer seqs": lambda d: [
            write_exr_sequence(d / "pl" / "bg", clip.background, precision="float", sidecar=False),
            write_exr_sequence(d / "pl" / "fg", premult, alpha, precision="float", sidecar=False)],
    }
    outputs = {"prores4444: ours (PyAV)": "o.mov", "prores4444: ffmpeg CLI pipe": "f.mov",
               "png16 seq: ours (PyAV)": "p16", "png8 seq: ours (PyAV)": "p8",
               "png8 seq: Pillow default": "pil", "exr float: multi-layer (2 grp)": "ml",
               "exr float: 2 per-layer seqs": "pl"}
    times = {k: [] for k in contenders}
    cpu = {k: [] for k in contenders}
    sizes, prep = {}, []
    for _ in range(args.runs):
        for name, run in contenders.items():  # interleaved: one run of each per round
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
                d = Path(tmp)
                c0, t0 = _cpu_seconds(), time.perf_counter()
                extra = run(d)
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(_cpu_seconds() - c0)
                if isinstance(extra, float):
                    prep.append(extra)
                sizes[name] = size_of(d / outputs[name])

    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"clip: {args.frames} frames {args.width}x{args.height} RGBA, {args.runs} interleaved runs, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'writer':<30} {'median s':>9} {'min s':>7} {'max s':>7} {'fps':>7} {'CPU s':>7} "
          f"{'MB':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<30} {med:9.3f} {min(ts):7.3f} {max(ts):7.3f} {args.frames / med:7.1f} "
              f"{statistics.median(cpu[name]):7.2f} {sizes[name] / 1e6:7.2f}")
    med = {k: statistics.median(v) for k, v in times.items()}

    def ratio(a, b):
        return med[a] / med[b]

    print(f"ratio prores ours / ffmpeg pipe: "
          f"{ratio('prores4444: ours (PyAV)', 'prores4444: ffmpeg CLI pipe'):.2f} (pipe side spent "
          f"{statistics.median(prep):.3f} s making raw bytes, overlapped with encoding)")
    print(f"ratio png16 ours / Pillow png8 default: "
          f"{ratio('png16 seq: ours (PyAV)', 'png8 seq: Pillow default'):.2f}; png8 ours / Pillow "
          f"png8: {ratio('png8 seq: ours (PyAV)', 'png8 seq: Pillow default'):.2f}")
    print(f"ratio exr multi-layer / per-layer sequences: "
          f"{ratio('exr float: multi-layer (2 grp)', 'exr float: 2 per-layer seqs'):.2f}")


if __name__ == "__main__":
    main()
