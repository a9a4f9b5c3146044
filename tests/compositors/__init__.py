"""Real compositors for the tests: ffmpeg, oiiotool and Blender (Debian packages), run as a user would.

Each helper runs a command and returns float pixels; `judge` compares a composite with the
expected one and reports both the worst error and the fringe measure (mean signed error where
alpha is soft), so `pytest -s` prints the figures the README quotes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

FFMPEG, FFPROBE, OIIOTOOL, BLENDER = (shutil.which(b) for b in ("ffmpeg", "ffprobe", "oiiotool",
                                                                 "blender"))
needs_ffmpeg = pytest.mark.skipif(not (FFMPEG and FFPROBE), reason="ffmpeg/ffprobe not installed")
needs_oiio = pytest.mark.skipif(not OIIOTOOL, reason="oiiotool (openimageio-tools) not installed")
needs_blender = pytest.mark.skipif(not BLENDER, reason="blender not installed")


def srgb_decode(x):
    """IEC 61966-2-1, written out here independently of the package under test."""
    x = np.asarray(x, np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def srgb_encode(x):
    x = np.clip(np.asarray(x, np.float64), 0, None)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def run(cmd, cwd=None, timeout=120) -> str:
    """Run a reader; on failure show its own message (the command line is in the test)."""
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         shell=isinstance(cmd, str))
    if res.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({res.returncode}):\n{res.stderr[-3000:]}"
                             f"\n{res.stdout[-3000:]}")
    return res.stdout


# What Blender 3.4 prints when its --python script did not run (it still exits 0 by default).
BLENDER_FAILED = ("could not be opened", "Traceback (most recent call last)", "Error: Python",
                  "Error: script failed")


def run_blender(cmd, cwd, timeout=180) -> str:
    """Run Blender and fail unless its script really ran.

    Blender resolves a relative `--python` path against $PWD, not the process's working folder,
    and exits 0 when it cannot open the script or the script raises. So PWD is set to `cwd`, an
    argument list must name its script by absolute path (and gets `--python-exit-code 1`), and the
    output is checked for Blender's own error lines. A string is a README recipe, run verbatim.
    """
    cwd = Path(cwd).resolve()
    if not isinstance(cmd, str):
        script = cmd[cmd.index("--python") + 1]
        assert Path(script).is_absolute(), f"pass Blender an absolute script path, got {script}"
        cmd = [cmd[0], "--python-exit-code", "1", *cmd[1:]]
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         shell=isinstance(cmd, str), env={**os.environ, "PWD": str(cwd)})
    said = res.stdout + res.stderr
    failed = [m for m in BLENDER_FAILED if m in said]
    if res.returncode != 0 or failed:
        raise AssertionError(f"{cmd!r}: Blender's script did not run ({res.returncode}, {failed}):"
                             f"\n{said[-3000:]}")
    return res.stdout


def blender_lut(name: str) -> tuple:
    """One of Blender's own 1D LUT files (`srgb_inv.spi1d`): (input samples, output samples)."""
    found = sorted(Path("/usr/share/blender").glob(f"**/colormanagement/luts/{name}"))
    if not found:
        pytest.skip(f"Blender's {name} not found under /usr/share/blender")
    lines = found[0].read_text().split("\n")
    low, high = (float(v) for v in lines[1].split()[1:3])
    count = int(lines[2].split()[1])
    values = np.array([float(v) for v in lines[5:5 + count]])
    return np.linspace(low, high, count), values


def read_png(path) -> np.ndarray:
    """A PNG (8 or 16 bit) as float RGB(A) in [0, 1], exactly as stored."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    alpha = "a" in frame.format.name
    raw = frame.to_ndarray(format="rgba64le" if alpha else "rgb48le")
    return raw.astype(np.float64) / 65535.0


def read_pngs(folder, pattern: str, count: int, first: int = 0) -> np.ndarray:
    return np.stack([read_png(Path(folder) / (pattern % (first + i))) for i in range(count)])


def ffmpeg_raw(args: list, height: int, width: int, channels: int, cwd=None) -> np.ndarray:
    """`ffmpeg <args> -f rawvideo -` decoded as 16-bit little-endian RGB(A)."""
    pix = {3: "rgb48le", 4: "rgba64le"}[channels]
    out = subprocess.run([FFMPEG, "-v", "error", *args, "-pix_fmt", pix, "-f", "rawvideo", "-"],
                         cwd=cwd, capture_output=True, check=True).stdout
    return np.frombuffer(out, "<u2").reshape(-1, height, width, channels) / 65535.0


def ffmpeg_float_rgba(args: list, height: int, width: int) -> np.ndarray:
    """`ffmpeg <args>` as 32-bit float RGBA (FFmpeg's planar gbrapf32le, reordered)."""
    out = subprocess.run([FFMPEG, "-v", "error", *args, "-pix_fmt", "gbrapf32le", "-f", "rawvideo",
                          "-"], capture_output=True, check=True).stdout
    planes = np.frombuffer(out, "<f4").reshape(-1, 4, height, width)  # G, B, R, A
    return np.moveaxis(planes[:, [2, 0, 1, 3]], 1, -1)


def judge(what: str, got, expected, alpha, max_tol: float, edge_tol: float | None = None) -> dict:
    """Max error, mean error and the fringe measure (mean signed error over soft-alpha pixels).

    A halo (bright, straight read as premultiplied) or a dark fringe (premultiplied read as
    straight, or premultiplied in the wrong space) shows as a clear bias of the edge pixels.
    """
    got, expected = np.asarray(got, np.float64)[..., :3], np.asarray(expected, np.float64)[..., :3]
    assert got.shape == expected.shape, f"{what}: shape {got.shape} != {expected.shape}"
    err = got - expected
    soft = (alpha > 0.02) & (alpha < 0.98)
    edge = err[soft]
    figures = {"max": float(np.abs(err).max()), "mean": float(np.abs(err).mean()),
               "edge_bias": float(edge.mean()), "edge_max": float(np.abs(edge).max())}
    print(f"\n[{what}] max {figures['max']:.2e}  mean {figures['mean']:.2e}  "
          f"edge bias {figures['edge_bias']:+.2e}  edge max {figures['edge_max']:.2e}")
    edge_tol = max_tol if edge_tol is None else edge_tol
    assert figures["max"] < max_tol, f"{what}: max error {figures['max']:.3g} >= {max_tol}"
    assert abs(figures["edge_bias"]) < edge_tol, f"{what}: fringe, edge bias {figures['edge_bias']:.3g}"
    return figures
