"""One folder per generation: every layer in the formats asked for, plus `layers.json`.

    <out_dir>/<name>_00001_/
        layers.json
        png16/<layer>/<layer>.00000.png ...    one folder per layer (png8 likewise)
        exr_half/<layer>/<layer>.00000.exr ... (exr_float likewise)
        exr_multilayer/layers.00000.exr ...    every layer as channels full.R ... foreground_1.A
        prores/<layer>.mov                     4444 + alpha for foregrounds, 422 HQ otherwise
        webm/<layer>.webm                      VP9, with alpha for foregrounds
        preview/<layer>.mp4                    H.264 of the opaque layers and the recomposite
        blender_comp.py                        the ready comp: `blender -b --python blender_comp.py`
                                               (when Blender can read a format of the set; layers.json
                                               says which it reads, or why there is none)

Every sequence folder holds a `sequence.json` and every movie a `<file>.json` sidecar, so a file
copied out of the set still says its alpha mode, transfer and the model's composite convention.

The whole folder is written under a temporary name and renamed when complete, so a compositor
template or a script never sees half a set.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from .atomic import atomic_output, write_bytes_atomic
from .blender_comp import COMP_NAME, blender_comp
from .conventions import (ALPHA_POLARITY, BACKGROUND, COMPOSITE_RULE, DEFAULT_EPS,
                          MODEL_FOREGROUND_CONVENTION, PREMULTIPLIED, STRAIGHT, check_alpha_mode,
                          composite_convention, composite_over)
from .exr import TRANSFERS, write_exr_sequence
from .exr_multilayer import layer_channels, write_multilayer_exr_sequence
from .manifest import MANIFEST_NAME, RECOMPOSITE, SCHEMA, SCHEMA_VERSION, LayerSet, validate_manifest
from .png import write_png_sequence
from .records import fps_to_json, software_info
from .validate import as_alpha_frames, as_rgb_frames, check_choice, check_fps, check_progress
from .video import write_h264_preview, write_prores, write_webm

FORMATS = ("png8", "png16", "exr_half", "exr_float", "exr_multilayer", "prores", "webm", "h264")
DEFAULT_FORMATS = ("png16", "prores", "h264")
ALL_LAYERS = "*"           # a job whose one output holds every layer (multi-layer EXR)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def write_layer_set(
    out_dir,
    layers: dict,
    alphas: dict | None = None,
    *,
    fps,
    formats: Sequence[str] = DEFAULT_FORMATS,
    name: str = "layert2v",
    alpha_mode: str = STRAIGHT,
    exr_transfer: str = "linear",
    prompts=None,
    seed: int | None = None,
    metadata: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LayerSet:
    """Write a layer set and return it (its final folder and manifest).

    `layers` maps layer names ("full", "background", "foreground_1", ...) to (F, H, W, 3) RGB;
    `alphas` maps the names of layers that have alpha to (F, H, W). Foreground RGB is in the
    model's convention, premultiplied. Foregrounds are composited in the order they appear in
    `layers`, first lowest, over "background". `alpha_mode` is what ProRes files store; PNG and
    WebM files are always straight and EXR files always premultiplied, as their specifications and
    readers define (each output records its mode). `progress(done, total)` counts frames written over
    all outputs; an exception raised from it cancels the write and leaves no output behind.
    """
    rgb, alpha = _check_layers(layers, alphas)
    formats = _check_formats(formats)
    rate = check_fps(fps)
    check_alpha_mode(alpha_mode)
    check_choice(exr_transfer, TRANSFERS, "exr_transfer")
    check_progress(progress)
    height, width = next(iter(rgb.values())).shape[1:3]
    if "h264" in formats and (width % 2 or height % 2):
        raise ValueError(f"formats: 'h264' needs an even width and height, got {width}x{height}")
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(f"name must be a plain folder name (letters, digits, _ . -), got {name!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    for arg, value in (("prompts", prompts), ("metadata", metadata)):
        try:
            json.dumps(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{arg} must be JSON-serialisable: {e}") from None

    order = ([BACKGROUND] if BACKGROUND in rgb else []) + [n for n in rgb if n in alpha]
    jobs = _plan(rgb, alpha, formats, rate, alpha_mode, exr_transfer, order)
    frames = next(iter(rgb.values())).shape[0]
    total, done = frames * len(jobs), 0

    with atomic_output(Path(out_dir) / name, is_dir=True, always_counter=True) as target:
        outputs: dict[str, list] = {n: [] for n in rgb}
        previews = []
        for layer, subpath, write in jobs:
            def report(d, _t, base=done):
                if progress:
                    progress(base + d, total)
            record = write(target.tmp / subpath, progress=report, sidecar=True)
            done += frames
            entry = record.to_json(relative_to=target.tmp)
            if layer == RECOMPOSITE:
                previews.append({"layer": layer, **entry})
            elif layer == ALL_LAYERS:
                for name in rgb:
                    outputs[name].append(_one_layer_of(entry, name, name in alpha))
            else:
                outputs[layer].append(entry)
        comp = blender_comp(outputs, order, width, height, frames, rate)
        if comp.script is not None:
            write_bytes_atomic(target.tmp / COMP_NAME, comp.script.encode())
        manifest = _manifest(rgb, alpha, rate, order, outputs, previews, prompts, seed, metadata,
                             comp.manifest_entry())
        problems = validate_manifest(manifest, target.tmp)
        if problems:  # a bug in this module, never the caller's fault
            raise RuntimeError("layer set failed its own validation: " + "; ".join(problems))
        write_bytes_atomic(target.tmp / MANIFEST_NAME, json.dumps(manifest, indent=2).encode())
    return LayerSet(target.path, manifest)


def _plan(rgb, alpha, formats, rate, alpha_mode, exr_transfer, order):
    """(layer, path inside the set, writer(path, progress)) for every output, in writing order."""
    jobs = []
    for fmt in formats:
        if fmt == "exr_multilayer":
            write = partial(write_multilayer_exr_sequence, layers=rgb, alphas=alpha, prefix="layers")
            jobs.append((ALL_LAYERS, "exr_multilayer", write))
            continue
        for layer, pixels in rgb.items():
            a = alpha.get(layer)
            mode = alpha_mode if a is not None else None
            if fmt in ("png8", "png16"):  # the PNG specification allows straight alpha only
                write = partial(write_png_sequence, rgb=pixels, alpha=a,
                                alpha_mode=STRAIGHT if a is not None else None,
                                bit_depth=int(fmt[3:]))
                jobs.append((layer, f"{fmt}/{layer}", write))
            elif fmt in ("exr_half", "exr_float"):
                write = partial(write_exr_sequence, rgb=pixels, alpha=a,
                                alpha_mode=PREMULTIPLIED if a is not None else None,
                                precision=fmt[4:], transfer=exr_transfer)
                jobs.append((layer, f"{fmt}/{layer}", write))
            elif fmt == "prores":
                write = partial(write_prores, rgb=pixels, alpha=a, fps=rate, alpha_mode=mode)
                jobs.append((layer, f"prores/{layer}.mov", write))
            elif fmt == "webm":
                write = partial(write_webm, rgb=pixels, alpha=a, fps=rate,  # straight only
                                alpha_mode=STRAIGHT if a is not None else None)
                jobs.append((layer, f"webm/{layer}.webm", write))
            elif fmt == "h264" and a is None:  # previews are opaque; foregrounds show in the recomposite
                write = partial(write_h264_preview, rgb=pixels, fps=rate)
                jobs.append((layer, f"preview/{layer}.mp4", write))
        if fmt == "h264" and len(order) > 1 and order[0] == BACKGROUND:
            jobs.append((RECOMPOSITE, f"preview/{RECOMPOSITE}.mp4", partial(_write_recomposite, rgb,
                                                                            alpha, order, rate)))
    return jobs


def _write_recomposite(rgb, alpha, order, rate, path, progress=None, sidecar=False):
    top = order[1:]
    comp = composite_over([rgb[n] for n in top], [alpha[n] for n in top], rgb[BACKGROUND])
    return write_h264_preview(path, comp, fps=rate, progress=progress, sidecar=sidecar)


def _one_layer_of(entry: dict, name: str, has_alpha: bool) -> dict:
    """A multi-layer output as seen from one layer: its channel group, whether that group holds
    the layer's alpha (an opaque layer's A is 1) and its alpha mode; not the whole file's."""
    one = {k: v for k, v in entry.items() if k not in ("channels", "alpha_layers")}
    one["has_alpha"] = has_alpha
    one["alpha_mode"] = PREMULTIPLIED if has_alpha else None
    one["channels"] = layer_channels(name)
    return one


def _manifest(rgb, alpha, rate, order, outputs, previews, prompts, seed, metadata, comp) -> dict:
    first = next(iter(rgb.values()))
    frames, height, width = first.shape[:3]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "software": software_info(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "prompts": prompts,
        "seed": seed,
        "width": width,
        "height": height,
        "frame_count": frames,
        "fps": fps_to_json(rate),
        "alpha": {
            "polarity": ALPHA_POLARITY,
            "model_foreground": MODEL_FOREGROUND_CONVENTION,
            "composite": COMPOSITE_RULE,
            "unpremultiply_eps": DEFAULT_EPS,
            "file_modes": "each output's alpha_mode and transfer say what its colour holds",
        },
        "composite": composite_convention(),
        "composite_order": order,
        "comp": comp,
        "layers": [{"name": n, "has_alpha": n in alpha, "outputs": outputs[n]} for n in rgb],
        "previews": previews,
        "metadata": metadata or {},
    }


def _check_layers(layers, alphas):
    if not isinstance(layers, dict) or not layers:
        raise ValueError("layers must be a non-empty dict of name -> (F, H, W, 3) RGB")
    alphas = {} if alphas is None else alphas
    if not isinstance(alphas, dict):
        raise ValueError("alphas must be a dict of layer name -> (F, H, W) alpha, or None")
    rgb = {}
    for name, pixels in layers.items():
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name == RECOMPOSITE:
            raise ValueError(f"layers: {name!r} is not a usable layer name (letters, digits, _ . -; "
                             f"{RECOMPOSITE!r} is reserved)")
        rgb[name] = as_rgb_frames(pixels, f"layers[{name!r}]")
    shapes = {n: x.shape for n, x in rgb.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"layers must all have the same (frames, height, width), got {shapes}")
    unknown = set(alphas) - set(rgb)
    if unknown:
        raise ValueError(f"alphas: {sorted(unknown)} have no RGB layer in layers")
    alpha = {n: as_alpha_frames(alphas[n], rgb[n], f"alphas[{n!r}]") for n in rgb if n in alphas}
    return rgb, alpha


def _check_formats(formats):
    if isinstance(formats, str):
        formats = [formats]
    formats = list(dict.fromkeys(formats))  # drop duplicates, keep order
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be a non-empty list from {FORMATS}, got unknown {unknown}")
    return formats
