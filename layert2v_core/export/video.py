"""Movie files through PyAV: ProRes (.mov), VP9 with alpha (.webm), H.264 previews (.mp4).

All three get Y'CbCr computed here with the BT.709 matrix (see color.py) and are tagged bt709,
limited range, on both the stream and every frame: prores_ks copies the frame tags into its
frame headers, which is what ffprobe and editors read; the container copies the stream tags.
Alpha planes are full range. FFmpeg treats every alpha pixel format as straight alpha, and so do
browsers for VP9, hence `alpha_mode="straight"` is the interoperable choice for these files.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from .atomic import atomic_output
from .color import quantize_full, quantize_ycbcr
from .conventions import file_rgb
from .records import SIDECAR_SUFFIX, WrittenOutput, write_sidecar
from .validate import as_alpha_frames, as_rgb_frames, check_alpha_args, check_fps, check_progress

# AVColorPrimaries / AVColorTransferCharacteristic / AVColorSpace value 1 = BT.709;
# AVColorRange 1 = MPEG ("tv", limited).
BT709, RANGE_LIMITED = 1, 1


@dataclass(frozen=True)
class VideoSpec:
    """How one kind of movie is encoded."""
    format: str          # name used in records and manifests
    container: str       # FFmpeg muxer
    codec: str
    pix_fmt: str
    bits: int
    chroma: str          # "444", "422", "420"
    options: tuple       # encoder options as (key, value) pairs
    container_options: tuple = ()


PRORES_4444 = VideoSpec("prores_4444", "mov", "prores_ks", "yuva444p10le", 10, "444",
                        (("profile", "4444"),))
PRORES_422_HQ = VideoSpec("prores_422_hq", "mov", "prores_ks", "yuv422p10le", 10, "422",
                          (("profile", "hq"),))
# Constant quality (b=0 + crf); row-mt and cpu-used 4 keep VP9 from being the slowest step.
_VP9_OPTIONS = (("crf", "18"), ("b", "0"), ("deadline", "good"), ("cpu-used", "4"),
                ("row-mt", "1"))
WEBM_VP9_ALPHA = VideoSpec("webm_vp9", "webm", "libvpx-vp9", "yuva420p", 8, "420", _VP9_OPTIONS)
WEBM_VP9 = VideoSpec("webm_vp9", "webm", "libvpx-vp9", "yuv420p", 8, "420", _VP9_OPTIONS)
H264_PREVIEW = VideoSpec("h264", "mp4", "libx264", "yuv420p", 8, "420",
                         (("crf", "18"), ("preset", "medium")),
                         (("movflags", "+faststart"),))


def write_prores(path, rgb, alpha=None, *, fps, alpha_mode=None, progress=None, sidecar=True):
    """ProRes 4444 with alpha when `alpha` is given, ProRes 422 HQ for an opaque layer (.mov)."""
    spec = PRORES_422_HQ if alpha is None else PRORES_4444
    return _write_movie(spec, path, rgb, alpha, fps, alpha_mode, progress, sidecar)


def write_webm(path, rgb, alpha=None, *, fps, alpha_mode=None, progress=None, sidecar=True):
    """VP9 in WebM, with an alpha channel when `alpha` is given (decode with libvpx to keep it)."""
    spec = WEBM_VP9 if alpha is None else WEBM_VP9_ALPHA
    return _write_movie(spec, path, rgb, alpha, fps, alpha_mode, progress, sidecar)


def write_h264_preview(path, rgb, *, fps, progress=None, sidecar=True):
    """Opaque H.264 MP4 for quick viewing (yuv420p: width and height must be even)."""
    return _write_movie(H264_PREVIEW, path, rgb, None, fps, None, progress, sidecar)


def _write_movie(spec: VideoSpec, path, rgb, alpha, fps, alpha_mode, progress, sidecar):
    rgb = as_rgb_frames(rgb, "rgb")
    alpha = None if alpha is None else as_alpha_frames(alpha, rgb, "alpha")
    alpha_mode = check_alpha_args(alpha, alpha_mode)
    rate = check_fps(fps)
    check_progress(progress)
    frames, height, width, _ = rgb.shape
    if spec.codec == "libx264" and (width % 2 or height % 2):
        raise ValueError(f"rgb: H.264 4:2:0 needs an even width and height, got {width}x{height}")
    record = WrittenOutput(
        path=Path(path), format=spec.format, frame_count=frames, width=width, height=height,
        has_alpha=alpha is not None, alpha_mode=alpha_mode, fps=rate,
        details=_details(spec),
    )
    with atomic_output(path) as target:
        container = av.open(str(target.tmp), "w", format=spec.container,
                            options=dict(spec.container_options))
        try:
            stream = _add_stream(container, spec, rate, width, height)

            def convert(i):
                return _yuv_frame(spec, rgb[i], None if alpha is None else alpha[i], alpha_mode)

            # Convert frame i+1 (numpy, releases the GIL) while frame i is being encoded.
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(convert, 0)
                for i in range(frames):
                    frame = pending.result()
                    if i + 1 < frames:
                        pending = pool.submit(convert, i + 1)
                    frame.pts = i
                    container.mux(stream.encode(frame))
                    if progress:
                        progress(i + 1, frames)
            container.mux(stream.encode(None))
        finally:
            container.close()
    record.path = target.path
    if sidecar:
        write_sidecar(record, record.path.with_name(record.path.name + SIDECAR_SUFFIX))
    return record


def _details(spec: VideoSpec) -> dict:
    details = {"codec": spec.codec, "pix_fmt": spec.pix_fmt, "color": "bt709 limited range"}
    if spec.chroma != "444":
        details["chroma_siting"] = "left"
    if "profile" in dict(spec.options):
        details["profile"] = dict(spec.options)["profile"]
    return details


def _add_stream(container, spec: VideoSpec, rate, width, height):
    stream = container.add_stream(spec.codec, rate=rate)
    stream.width, stream.height, stream.pix_fmt = width, height, spec.pix_fmt
    ctx = stream.codec_context
    ctx.color_primaries = ctx.color_trc = ctx.colorspace = BT709
    ctx.color_range = RANGE_LIMITED
    ctx.thread_type = "AUTO"
    ctx.thread_count = 0
    # color.py puts subsampled chroma at the "left" (co-sited) position; say so where the
    # format can (H.264 VUI, Matroska ChromaSiting). ProRes has no field for it.
    siting = {"chroma_sample_location": "left"} if spec.chroma != "444" else {}
    stream.options = {**dict(spec.options), **siting}
    return stream


def _yuv_frame(spec: VideoSpec, premult_rgb, alpha, alpha_mode) -> av.VideoFrame:
    colour = premult_rgb if alpha is None else file_rgb(premult_rgb, alpha, alpha_mode)
    planes = quantize_ycbcr(colour, spec.bits, spec.chroma)
    if alpha is not None:
        planes.append(quantize_full(alpha, spec.bits))
    height, width = premult_rgb.shape[:2]
    frame = av.VideoFrame(width, height, spec.pix_fmt)
    for plane, data in zip(frame.planes, planes):
        # Planes are padded to `line_size` bytes per row; copy row by row through a strided view.
        rows = np.frombuffer(plane, dtype=data.dtype).reshape(plane.height, -1)
        rows[:, : data.shape[1]] = data
    frame.color_primaries = frame.color_trc = frame.colorspace = BT709
    frame.color_range = RANGE_LIMITED
    return frame
