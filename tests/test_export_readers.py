"""Our files, read back by real readers: ffprobe/ffmpeg (Debian) and oiiotool (OpenImageIO).

Every round trip compares against a reference computed here from the synthetic clip, in the
model's space (premultiplied, sRGB-encoded colour and alpha), and prints its max error so that
`pytest -s` shows the per-format figures. Skips cleanly where a reader binary is absent.
"""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pytest

from compositors import (FFMPEG, FFPROBE, OIIOTOOL, needs_ffmpeg, needs_oiio, srgb_decode,
                         srgb_encode)
from layert2v_core.export import (composite_over, write_exr_sequence, write_h264_preview,
                                  write_png_sequence, write_prores, write_webm)
from layert2v_core.export.synthetic import soft_rgba_clip


F, H, W, FPS = 9, 48, 64, 16


@pytest.fixture(scope="module")
def clip():
    return soft_rgba_clip(F, H, W, seed=1, grain=0.005)


# The reference maths (sRGB curve) is written out independently in tests/compositors.
ref_srgb_to_linear, ref_linear_to_srgb = srgb_decode, srgb_encode


def report(fmt, rgb_err, alpha_err=None, mean_err=None):
    mean_part = "" if mean_err is None else f" (mean {mean_err:.2e})"
    alpha_part = "" if alpha_err is None else f"  alpha max err {alpha_err:.2e}"
    what = "RGB" if alpha_err is None else "premultiplied RGB"
    print(f"\n[round trip] {fmt:<22} {what} max err {rgb_err:.2e}{mean_part}{alpha_part}")


# ---------------------------------------------------------------- readers

def ffprobe_stream(path) -> dict:
    out = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_streams",
                          "-count_frames", str(path)], capture_output=True, check=True, text=True)
    return json.loads(out.stdout)["streams"][0]


def ffmpeg_decode(path, alpha: bool, decoder: str | None = None, subsampled: bool = False):
    """Decode to float RGB(A), converting Y'CbCr with an explicit BT.709 limited-range matrix.

    For 4:2:2/4:2:0 the reader is told the standard co-sited ("left") chroma position; ffmpeg
    5.1's scaler otherwise assumes centred chroma for these streams.
    """
    pix = "rgba64le" if alpha else "rgb48le"
    scale = "scale=in_color_matrix=bt709:in_range=tv:flags=accurate_rnd+full_chroma_int"
    scale += ":in_h_chr_pos=0" if subsampled else ""
    cmd = [FFMPEG, "-v", "error"] + (["-c:v", decoder] if decoder else []) + [
        "-i", str(path), "-vf", scale, "-pix_fmt", pix, "-f", "rawvideo", "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, "<u2").reshape(-1, H, W, 4 if alpha else 3) / 65535.0


_PIXEL = re.compile(r"Pixel \((\d+), (\d+)\): ([^(\n]*)(?:\(([^)]*)\))?")


def oiio_read(path, unassociated: bool = False) -> np.ndarray:
    """Pixels as OpenImageIO sees them (it premultiplies PNG on load unless `unassociated`)."""
    cmd = [OIIOTOOL] + (["--iconfig", "oiio:UnassociatedAlpha", "1"] if unassociated else [])
    out = subprocess.run(cmd + ["--dumpdata", str(path)], capture_output=True, check=True,
                         text=True).stdout
    m = re.search(r":\s+(\d+) x\s+(\d+), (\d+) channel", out)
    w, h, c = (int(g) for g in m.groups())
    img = np.zeros((h, w, c))
    for x, y, raw, normalised in _PIXEL.findall(out):
        img[int(y), int(x)] = [float(v) for v in (normalised or raw).split()]  # ints come with (floats)
    return img


def oiio_over(fg, bg, out) -> np.ndarray:
    """`oiiotool fg bg --over`: stack based, so the first image named ends up on top.

    --over needs alpha on both inputs; the opaque background gets A = 1.
    """
    subprocess.run([OIIOTOOL, str(fg), str(bg), "--ch", "R,G,B,A=1.0", "--over", "-d", "float",
                    "-o", str(out)], check=True, capture_output=True)
    return oiio_read(out)


# ---------------------------------------------------------------- ProRes

@needs_ffmpeg
def test_prores_4444_has_alpha_profile_and_srgb_tags(tmp_path, clip):
    rec = write_prores(tmp_path / "fg.mov", clip.premultiplied, clip.alpha, fps=FPS,
                       alpha_mode="straight")
    s = ffprobe_stream(rec.path)
    assert s["codec_name"] == "prores" and s["profile"] == "4444"
    assert s["codec_tag_string"] == "ap4h"
    # We encode yuva444p10le; FFmpeg's ProRes decoder reports every 4444 stream as 12-bit
    # (yuva444p12le) in ffmpeg 5.x. The "a" is what matters: the alpha plane is in the stream.
    assert s["pix_fmt"] in ("yuva444p10le", "yuva444p12le")
    assert (s["color_space"], s["color_primaries"], s["color_transfer"], s["color_range"]) == \
        ("bt709", "bt709", "iec61966-2-1", "tv")
    assert int(s["nb_read_frames"]) == F and s["r_frame_rate"] == f"{FPS}/1"

    got = ffmpeg_decode(rec.path, alpha=True)
    err = np.abs(got[..., :3] * got[..., 3:] - clip.premultiplied)
    alpha_err = np.abs(got[..., 3] - clip.alpha).max()
    report("prores_4444 straight", err.max(), alpha_err, err.mean())
    assert alpha_err < 2e-3   # 10-bit alpha, coded losslessly by ProRes
    assert err.max() < 0.02 and err.mean() < 2e-3


@needs_ffmpeg
def test_prores_422hq_for_opaque_layers(tmp_path, clip):
    rec = write_prores(tmp_path / "bg.mov", clip.background, fps=FPS)
    s = ffprobe_stream(rec.path)
    assert (s["codec_name"], s["profile"], s["pix_fmt"]) == ("prores", "HQ", "yuv422p10le")
    assert s["codec_tag_string"] == "apch"
    err = np.abs(ffmpeg_decode(rec.path, alpha=False, subsampled=True) - clip.background)
    report("prores_422_hq", err.max(), mean_err=err.mean())
    # 4:2:2 chroma costs most of this; a wrong matrix (BT.601) would give a mean of ~0.03.
    assert err.max() < 0.06 and err.mean() < 8e-3


# ---------------------------------------------------------------- WebM VP9

@needs_ffmpeg
def test_webm_vp9_alpha_survives_libvpx_decode(tmp_path, clip):
    rec = write_webm(tmp_path / "fg.webm", clip.premultiplied, clip.alpha, fps=FPS,
                     alpha_mode="straight")
    s = ffprobe_stream(rec.path)
    assert s["codec_name"] == "vp9"
    assert s["tags"].get("alpha_mode") == "1"
    assert int(s["nb_read_frames"]) == F

    got = ffmpeg_decode(rec.path, alpha=True, decoder="libvpx-vp9", subsampled=True)
    err = np.abs(got[..., :3] * got[..., 3:] - clip.premultiplied)
    alpha_err = np.abs(got[..., 3] - clip.alpha).max()
    report("webm_vp9 straight", err.max(), alpha_err, err.mean())
    assert alpha_err < 0.06
    assert err.max() < 0.1 and err.mean() < 5e-3
    # FFmpeg's native VP9 decoder drops alpha (the known trap): make sure we test the right thing.
    native = ffmpeg_decode(rec.path, alpha=True)
    assert native[..., 3].min() == 1.0


@needs_ffmpeg
def test_h264_preview(tmp_path, clip):
    rec = write_h264_preview(tmp_path / "full.mp4", clip.full, fps=FPS)
    s = ffprobe_stream(rec.path)
    assert (s["codec_name"], s["pix_fmt"], s["color_space"]) == ("h264", "yuv420p", "bt709")
    err = np.abs(ffmpeg_decode(rec.path, alpha=False, subsampled=True) - clip.full)
    report("h264 preview", err.max(), mean_err=err.mean())
    assert err.max() < 0.15 and err.mean() < 0.02  # 4:2:0 8-bit lossy preview of a tiny clip


# ---------------------------------------------------------------- PNG

@needs_oiio
@pytest.mark.parametrize("bits, bound", [(8, 0.005), (16, 1e-4)])
def test_png_straight_round_trip(tmp_path, clip, bits, bound):
    rec = write_png_sequence(tmp_path / "fg", clip.premultiplied, clip.alpha,
                             alpha_mode="straight", bit_depth=bits)
    files = rec.frame_paths()
    assert [p.name for p in files] == [f"fg.{i:05d}.png" for i in range(F)]
    assert all(p.is_file() for p in files)
    worst_rgb = worst_alpha = 0.0
    for i in (0, F // 2, F - 1):
        raw = oiio_read(files[i], unassociated=True)            # file content: straight
        assert raw.shape == (H, W, 4)
        worst_rgb = max(worst_rgb, np.abs(raw[..., :3] * raw[..., 3:] - clip.premultiplied[i]).max())
        worst_alpha = max(worst_alpha, np.abs(raw[..., 3] - clip.alpha[i]).max())
        # OpenImageIO's own PNG interpretation (it premultiplies on load) must agree with ours.
        assoc = oiio_read(files[i])
        assert np.abs(assoc[..., :3] - clip.premultiplied[i]).max() < bound + 2 / 2 ** bits
    report(f"png{bits} straight", worst_rgb, worst_alpha)
    assert worst_rgb < bound and worst_alpha < bound


# ---------------------------------------------------------------- EXR

@needs_oiio
@pytest.mark.parametrize("precision, bound", [("half", 2e-3), ("float", 2e-4)])
def test_exr_round_trip_linear_premultiplied(tmp_path, clip, precision, bound):
    rec = write_exr_sequence(tmp_path / "fg", clip.premultiplied, clip.alpha, precision=precision)
    worst_lin = worst_rgb = worst_alpha = 0.0
    for i in (0, F // 2, F - 1):
        img = oiio_read(rec.frame_paths()[i])
        assert img.shape == (H, W, 4)
        a = clip.alpha[i]
        # A correct EXR: linear straight colour, premultiplied (associated) by alpha.
        ref_lin = ref_srgb_to_linear(clip.straight[i]) * a[..., None]
        worst_lin = max(worst_lin, np.abs(img[..., :3] - ref_lin).max())
        # And back to the model's space: un-premultiply, sRGB-encode, premultiply.
        back_a = img[..., 3]
        with np.errstate(divide="ignore", invalid="ignore"):
            straight = np.where(back_a[..., None] > 0, img[..., :3] / back_a[..., None], 0)
        back = ref_linear_to_srgb(straight) * back_a[..., None]
        worst_rgb = max(worst_rgb, np.abs(back - clip.premultiplied[i]).max())
        worst_alpha = max(worst_alpha, np.abs(back_a - a).max())
    report(f"exr_{precision} linear", worst_rgb, worst_alpha)
    print(f"[round trip] exr_{precision} linear-light premultiplied max err {worst_lin:.2e}")
    assert worst_lin < bound and worst_rgb < 4 * bound and worst_alpha < bound


# ---------------------------------------------------------------- the compositor agrees with us

@needs_oiio
@pytest.mark.parametrize("fmt", ["png16", "exr_float"])
def test_oiiotool_over_matches_composite_over(tmp_path, clip, fmt):
    i = F // 2
    fg_p, a, bg = clip.premultiplied[i:i + 1], clip.alpha[i:i + 1], clip.background[i:i + 1]
    if fmt == "png16":
        fg = write_png_sequence(tmp_path / "fg", fg_p, a, alpha_mode="straight").frame_paths()[0]
        bgf = write_png_sequence(tmp_path / "bg", bg).frame_paths()[0]
        ours = composite_over(fg_p[0], a[0], bg[0])
        bound = 2e-4
    else:
        fg = write_exr_sequence(tmp_path / "fg", fg_p, a, precision="float").frame_paths()[0]
        bgf = write_exr_sequence(tmp_path / "bg", bg, precision="float").frame_paths()[0]
        # The EXR holds linear light: composite there, with our function, on linear inputs.
        fg_lin = ref_srgb_to_linear(clip.straight[i]) * a[0][..., None]
        ours = composite_over(fg_lin, a[0], ref_srgb_to_linear(bg[0]))
        bound = 5e-4
    theirs = oiio_over(fg, bgf, tmp_path / "comp.exr")[..., :3]
    err = np.abs(theirs - ours).max()
    print(f"\n[oiiotool --over] {fmt}: max |oiiotool - composite_over| = {err:.2e}")
    assert err < bound
    # The check has teeth: the other argument order gives a clearly different picture.
    assert np.abs(theirs - bg[0] if fmt == "png16" else theirs - ref_srgb_to_linear(bg[0])).max() > 0.1


@needs_oiio
def test_mislabelled_png_would_be_caught(tmp_path, clip):
    """Premultiplied data in a PNG (which readers take as straight) composites visibly wrong.

    The writer refuses alpha_mode="premultiplied" for PNG; premultiplying twice stores the same
    file colour that such a PNG would hold."""
    i = F // 2
    twice = clip.premultiplied[i:i + 1] * clip.alpha[i:i + 1, ..., None]
    fg = write_png_sequence(tmp_path / "fg", twice, clip.alpha[i:i + 1],
                            alpha_mode="straight").frame_paths()[0]
    bgf = write_png_sequence(tmp_path / "bg", clip.background[i:i + 1]).frame_paths()[0]
    theirs = oiio_over(fg, bgf, tmp_path / "comp.exr")[..., :3]
    ours = composite_over(clip.premultiplied[i], clip.alpha[i], clip.background[i])
    assert np.abs(theirs - ours).max() > 0.02
