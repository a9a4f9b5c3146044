"""Save layers: every layer through the export library into ComfyUI's output folder, with previews."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..layert2v_core.export import write_layer_set
from ..layert2v_core.preview import WEB_PREVIEW_DIR, write_web_previews
from ..layert2v_core.export.atomic import output_errors

from .errors import LayerT2VInputError, readable_errors
from .types import CATEGORY, LayerSet

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # what write_layer_set accepts as a set name

FORMAT_SWITCHES = {  # node input -> export format; defaults are what a compositor usually wants
    "png16": ("png16", True), "png8": ("png8", False), "exr_half": ("exr_half", False),
    "prores_4444": ("prores", True), "webm_alpha": ("webm", False), "h264_preview": ("h264", True),
    "exr_multilayer": ("exr_multilayer", False),  # one EXR per frame, every layer a channel group (Nuke)
}
OPTIONAL_SWITCHES = {"exr_multilayer"}  # added later: prompts saved before it still validate


def viewer_entries(strips, output_dir: str) -> list[dict]:
    """The layer viewer's input: each film strip as a /view address (type, subfolder, filename)
    plus how to play it. Not under "images": the frontend's own gallery would show the strips as
    stills next to the viewer."""
    entries = []
    for strip in strips:
        record = strip.to_json(Path(output_dir).resolve())
        subfolder, _, filename = record.pop("path").rpartition("/")
        entries.append({"filename": filename, "subfolder": subfolder, "type": "output", **record})
    return entries


_DATE_PARTS = re.compile(r"dd?|MM?|hh?|mm?|ss?|yyy?y?")
_NOT_IN_FILENAMES = re.compile(r'[/?<>\\:*|"\x00-\x1F\x7F]')


def expand_filename_tokens(prefix: str, width: int, height: int, prompt: dict | None = None, now=None) -> str:
    """ComfyUI's filename tokens, as its frontend and its save nodes expand them together:
    %date:yyyy-MM-dd hh:mm:ss% and %<node title or type>.<widget>% (the frontend does these for its
    own save nodes before queueing; here they also work when a prompt arrives through the API), then
    %year% %month% %day% %hour% %minute% %second% %width% %height% (ComfyUI's get_save_image_path)."""
    now = now or time.localtime()
    values = {"d": now.tm_mday, "M": now.tm_mon, "h": now.tm_hour, "m": now.tm_min, "s": now.tm_sec}

    def date(fmt: str) -> str:
        def part(match):
            token = match.group()
            if token == "yyyy":
                return str(now.tm_year)
            if token == "yy":
                return str(now.tm_year)[2:]
            return str(values[token[0]]).zfill(len(token)) if token[0] in values else token
        return _DATE_PARTS.sub(part, fmt)

    def replace(match):
        token = match.group(1)
        if token.startswith("date:"):
            return date(token[5:])
        node_name, dot, widget = token.partition(".")
        if dot and prompt:
            for node in prompt.values():
                if node_name in (node.get("_meta", {}).get("title"), node.get("class_type")):
                    value = node.get("inputs", {}).get(widget)
                    if value is not None and not isinstance(value, list):  # a link has no value yet
                        return _NOT_IN_FILENAMES.sub("_", str(value))
        return match.group()

    prefix = re.sub(r"%([^%]+)%", replace, prefix)
    for token, value in (("width", width), ("height", height), ("year", now.tm_year)):
        prefix = prefix.replace(f"%{token}%", str(value))
    for token, value in (("month", now.tm_mon), ("day", now.tm_mday), ("hour", now.tm_hour),
                         ("minute", now.tm_min), ("second", now.tm_sec)):
        prefix = prefix.replace(f"%{token}%", str(value).zfill(2))
    return prefix


def check_filename_prefix(node: str, prefix) -> None:
    """A relative path inside the output folder whose last part can name a folder; names the input."""
    text = prefix if isinstance(prefix, str) else ""
    parts = text.replace("\\", "/").split("/")
    why = None
    if not text.strip():
        why = "is empty"
    elif any(ord(c) < 32 for c in text):
        why = "contains control characters"
    elif os.path.isabs(text) or text.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", text):
        why = "is an absolute path"
    elif ".." in parts:
        why = "contains '..'"
    elif not _SAFE_PART.match(parts[-1]):
        why = f"ends in {parts[-1]!r}, not a plain name (letters, digits, _ . -, starting with a letter or digit)"
    if why:
        raise LayerT2VInputError(f"{node}: filename_prefix {prefix!r} {why}; give a relative path inside the "
                                 "output folder such as 'LayerT2V/layers' (no '..', not absolute)")


def export_progress(pbar):
    """write_layer_set's progress callback: the node's progress bar, and Cancel stops a long write
    within one frame (the export library then removes its temporary folder)."""
    def progress(done: int, total: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        pbar.update_absolute(done, total)
    return progress


def _missing_dirs(folder: str, output_dir: str) -> list[str]:
    """Folders between output_dir and folder that do not exist yet (deepest first)."""
    missing, path = [], os.path.abspath(folder)
    output_dir = os.path.abspath(output_dir)
    while path != output_dir and path.startswith(output_dir + os.sep) and not os.path.exists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def _remove_if_empty(folders: list[str]) -> None:
    for path in folders:  # deepest first; a folder something else wrote into stays
        try:
            os.rmdir(path)
        except OSError:
            break


class SaveLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        switches = [io.Boolean.Input(name, default=default, optional=name in OPTIONAL_SWITCHES)
                    for name, (_, default) in FORMAT_SWITCHES.items()]
        return io.Schema(
            node_id="LayerT2VSaveLayers",
            display_name="LayerT2V Save Layers",
            category=CATEGORY,
            description="Writes one folder per generation: the chosen formats per layer + layers.json manifest.",
            inputs=[
                LayerSet.Input("layers"),
                io.String.Input("filename_prefix", default="LayerT2V/layers"),
                io.Float.Input("fps", default=16.0, min=0.01, max=240.0, step=0.01),
                io.Combo.Input("alpha_mode", options=["straight", "premultiplied"], default="straight",
                               tooltip="How ProRes/WebM store colour; PNG is always straight and EXR premultiplied (their specs); layers.json and a sidecar per file record it"),
                *switches,
            ],
            outputs=[io.String.Output(display_name="folder")],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, layers, filename_prefix, fps, alpha_mode, **switches) -> io.NodeOutput:
        node = "LayerT2V Save Layers"
        formats = [fmt for name, (fmt, _) in FORMAT_SWITCHES.items() if switches.get(name)]
        if not formats:
            raise LayerT2VInputError(f"{node}: every format is switched off; switch on at least one")
        height, width = next(iter(layers.rgb.values())).shape[1:3]
        if isinstance(filename_prefix, str):
            filename_prefix = expand_filename_tokens(filename_prefix, width, height, getattr(cls.hidden, "prompt", None))
        check_filename_prefix(node, filename_prefix)
        output_dir = folder_paths.get_output_directory()
        target = os.path.dirname(os.path.join(output_dir, os.path.normpath(filename_prefix)))
        created = _missing_dirs(target, output_dir)  # removed again if this run writes nothing
        try:
            with readable_errors(node, output_input="filename_prefix", aliases={output_dir: "output"}):
                with output_errors(Path(output_dir, os.path.normpath(filename_prefix))):  # it lists the folder
                    folder, name, _, _, _ = folder_paths.get_save_image_path(filename_prefix, output_dir)
                generation = dict(layers.generation)
                prompts, seed = generation.pop("prompts", None), generation.pop("seed", None)
                result = write_layer_set(folder, layers.rgb, layers.alpha_by_layer(), fps=fps, formats=formats,
                                         name=name, alpha_mode=alpha_mode, prompts=prompts, seed=seed,
                                         metadata={"source": "ComfyUI", **generation},
                                         progress=export_progress(comfy.utils.ProgressBar(1)))
        except BaseException:
            _remove_if_empty(created)
            raise
        preview_dir = result.path / WEB_PREVIEW_DIR
        try:  # the layer set is complete by now; previews are all or nothing beside it
            with readable_errors(node, output_input="filename_prefix", aliases={output_dir: "output"}):
                with output_errors(preview_dir):
                    strips = write_web_previews(preview_dir, layers.rgb, layers.alpha_by_layer(), fps,
                                                on_layer=mm.throw_exception_if_processing_interrupted)
        except BaseException:
            shutil.rmtree(preview_dir, ignore_errors=True)
            raise
        rel = os.path.relpath(result.path, output_dir)
        return io.NodeOutput(rel, ui={"layert2v_viewer": viewer_entries(strips, output_dir), "layert2v_folder": [rel]})
