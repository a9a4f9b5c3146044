"""Colour maths for the writers: BT.709 Y'CbCr quantisation and the sRGB transfer curve.

We convert RGB -> Y'CbCr ourselves (instead of letting swscale pick a matrix) so that the matrix
always agrees with the bt709 tags written into the file; swscale's default is BT.601, the usual
cause of "colours shift in the editor".
"""

from __future__ import annotations

import numpy as np

# BT.709 luma coefficients.
KR, KB = 0.2126, 0.0722
KG = 1.0 - KR - KB
_RGB_TO_YCBCR = np.array([
    [KR, KG, KB],
    [-KR / (2 * (1 - KB)), -KG / (2 * (1 - KB)), 0.5],
    [0.5, -KG / (2 * (1 - KR)), -KB / (2 * (1 - KR))],
], dtype=np.float32)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) R'G'B' in [0, 1] -> (3, H, W) Y' in [0, 1], Cb/Cr in [-0.5, 0.5]."""
    return np.stack(_matrix_planes(rgb, _RGB_TO_YCBCR, (0.0, 0.0, 0.0)))


def quantize_ycbcr(rgb: np.ndarray, bits: int, chroma: str) -> list[np.ndarray]:
    """(H, W, 3) R'G'B' -> limited ("tv") range integer planes [Y', Cb, Cr].

    Limited range: Y' in 16..235 and Cb/Cr in 16..240, scaled by 2**(bits - 8); chroma is "444",
    "422" or "420". The range scaling is folded into the matrix: one pass per plane.
    """
    scale = float(1 << (bits - 8))
    gains = np.array([219.0, 224.0, 224.0], np.float32)[:, None] * scale
    offsets = (16 * scale, 128 * scale, 128 * scale)
    y, cb, cr = _matrix_planes(rgb, _RGB_TO_YCBCR * gains, offsets)
    dtype = np.uint8 if bits == 8 else np.uint16
    # Subsampling is linear, so averaging the already scaled chroma is exact.
    return [_to_int(y, dtype), _to_int(_subsample(cb, chroma), dtype),
            _to_int(_subsample(cr, chroma), dtype)]


def quantize_full(x: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] -> full-range integers (alpha planes are always full range)."""
    dtype = np.uint8 if bits <= 8 else np.uint16
    return _to_int(x * float((1 << bits) - 1), dtype)


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding, for EXR files that Nuke and Blender read as scene-linear."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, None)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def _subsample(c: np.ndarray, chroma: str) -> np.ndarray:
    """Chroma at the sample positions decoders assume ("left" siting, FFmpeg's default).

    Horizontally each chroma sample sits on an even luma column (co-sited), so it is a [1, 2, 1]/4
    filter centred there; vertically (4:2:0 only) it sits between two rows, so a 2-row average.
    A plain 2x2 box average would shift chroma by half a pixel against what decoders reconstruct.
    """
    if chroma == "444":
        return c
    padded = np.concatenate([c[:, :1], c, c[:, -1:], c[:, -1:]], axis=1)  # edges repeat
    centre = padded[:, 1:-2:2]
    c = 0.5 * centre + 0.25 * (padded[:, 0:-3:2] + padded[:, 2:-1:2])
    if chroma == "422":
        return c
    if c.shape[0] % 2:
        c = np.concatenate([c, c[-1:]], axis=0)
    return 0.5 * (c[0::2] + c[1::2])


def _matrix_planes(rgb: np.ndarray, matrix: np.ndarray, offsets) -> list[np.ndarray]:
    # Planar element-wise maths: several times faster than a (N, 3) x (3, 3) matmul in numpy.
    r, g, b = np.ascontiguousarray(np.moveaxis(rgb, -1, 0), dtype=np.float32)
    planes = []
    for (kr, kg, kb), offset in zip(matrix, offsets):
        plane = r * np.float32(kr)
        plane += g * np.float32(kg)
        plane += b * np.float32(kb)
        plane += np.float32(offset)
        planes.append(plane)
    return planes


def _to_int(x: np.ndarray, dtype) -> np.ndarray:
    x = np.rint(x)
    np.clip(x, 0, np.iinfo(dtype).max, out=x)
    return x.astype(dtype)
