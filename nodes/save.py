"""Save layers: every layer through the export library into ComfyUI's output folder, with previews."""

from __future__ import annotations

import os
import re

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from layert2v_core.export import write_layer_set

from .errors import LayerT2VInputError, readable_errors
from .types import CATEGORY, LayerSet

_SAFE_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # what write_layer_set accepts as a set name

FORMAT_SWITCHES = {  # node input -> export format; defaults are what a compositor usually wants
    "png16": ("png16", True), "png8": ("png8", False), "exr_half": ("exr_half", False),
    "prores_4444": ("prores", True), "webm_alpha": ("webm", False), "h264_preview": ("h264", True),
}


def preview_entries(layer_set, output_dir: str) -> list[dict]:
    """Middle frame of each PNG layer, as ComfyUI UI image entries (the layer viewer reads 'layer')."""
    entries = []
    for layer in layer_set.manifest["layers"]:
        for output in layer.get("outputs", []):
            if output.get("format", "").startswith("png"):
                frame = output["first_frame"] + output["frame_count"] // 2
                path = layer_set.path / (output["pattern"] % frame)
                rel = os.path.relpath(path, output_dir)
                entries.append({"filename": os.path.basename(rel), "subfolder": os.path.dirname(rel),
                                "type": "output", "layer": layer["name"], "has_alpha": bool(layer.get("has_alpha"))})
                break
    return entries


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
    elif not _SAFE_PART.match(re.sub(r"%[a-z]+%", "0", parts[-1])):  # ComfyUI's %date% variables are fine
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
        switches = [io.Boolean.Input(name, default=default) for name, (_, default) in FORMAT_SWITCHES.items()]
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
                               tooltip="How PNG/ProRes/WebM store colour; EXR is always premultiplied"),
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
        check_filename_prefix(node, filename_prefix)
        output_dir = folder_paths.get_output_directory()
        target = os.path.dirname(os.path.join(output_dir, os.path.normpath(filename_prefix)))
        created = _missing_dirs(target, output_dir)  # removed again if this run writes nothing
        try:
            with readable_errors(node):
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
        previews = preview_entries(result, output_dir)
        rel = os.path.relpath(result.path, output_dir)
        return io.NodeOutput(rel, ui={"images": previews, "layert2v_folder": [rel]})
