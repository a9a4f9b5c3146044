"""Loader nodes: the layered DiT (+ adapter), the Wan VAE (+ mask adapter), the pack's text encoder."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..layert2v_core import demo_model
from ..layert2v_core.attention_backend import BACKENDS, DEFAULT_BACKEND, describe, set_attention_backend
from ..layert2v_core.config import LayerT2VConfig
from ..layert2v_core.recommended import AUTO, AUTO_DTYPE, SamplingSettings
from ..layert2v_core.weights.authors_folder import ADAPTER_CONFIG, EMA_FILE
from ..layert2v_core.weights.checkpoint import is_checkpoint_folder
from ..layert2v_core.weights.layert2v_adapter import CONFIG_FILE
from ..layert2v_core.weights.loading import DTYPES, LayerT2VModel, load_layer_vae, load_layered_dit, load_text_encoder

from .errors import LayerT2VInputError, readable_errors
from .model_management import manage_dit, manage_text_encoder, manage_vae
from .types import CATEGORY, LayerModel, LayerTextEncoder, LayerVAE

ADAPTER_FOLDER = "layert2v"
NO_ADAPTER = "none (untrained layers)"
EMA_SUFFIX = " (EMA weights)"  # an authors' folder listed a second time: its ema/ema_model.pt instead of the adapter
DEMO = demo_model.DEMO_NAME  # the built-in demo model: listed first in every loader, so it is the default
DEMO_KEYS = {"diffusion_models": "dit", "vae": "vae", ADAPTER_FOLDER: "adapter", "text_encoders": "text_encoder"}
DTYPE_CHOICES = [AUTO_DTYPE, *DTYPES]  # auto: what the model's checkpoint config recommends (recommended.py)


def with_demo(options: list[str]) -> list[str]:
    return ([DEMO] if demo_model.is_available() else []) + options


def demo_path(folder: str) -> str:
    try:
        return demo_model.demo_model_paths()[DEMO_KEYS[folder]]
    except FileNotFoundError as exc:
        raise LayerT2VInputError(str(exc)) from None


def register_model_folder() -> None:
    """models/layert2v/ holds LayerT2V adapters: folders with layert2v_config.json, the authors' checkpoint
    folders (adapter_config.json + adapter_model.*), or single .safetensors."""
    path = os.path.join(folder_paths.models_dir, ADAPTER_FOLDER)
    folder_paths.add_model_folder_path(ADAPTER_FOLDER, path, is_default=True)
    folder_paths.folder_names_and_paths[ADAPTER_FOLDER][1].update({".safetensors", ".json"})


def list_adapters() -> list[str]:
    """Adapter folders, ours and the authors' (by folder name), and single-file adapters, across every
    layert2v path. Files inside a listed folder (adapter_model.safetensors, ...) are not offered alone."""
    files = folder_paths.get_filename_list(ADAPTER_FOLDER)
    candidates = {os.path.dirname(f) for f in files if os.path.basename(f) in (CONFIG_FILE, ADAPTER_CONFIG)}
    folders = {d for d in candidates if d and any(is_checkpoint_folder(os.path.join(base, d))
                                                   for base in folder_paths.get_folder_paths(ADAPTER_FOLDER))}
    singles = {f for f in files if f.endswith(".safetensors")
               and not any(f.startswith(d + os.sep) or f.startswith(d + "/") for d in folders)}
    with_ema = {d + EMA_SUFFIX for d in folders
                if any(os.path.isfile(os.path.join(base, d, EMA_FILE)) for base in folder_paths.get_folder_paths(ADAPTER_FOLDER))}
    return sorted(folders | singles | with_ema)


def _resolve_adapter(name: str) -> str:
    for base in folder_paths.get_folder_paths(ADAPTER_FOLDER):
        base = os.path.abspath(base)
        candidate = os.path.abspath(os.path.join(base, name))
        if os.path.commonpath([candidate, base]) == base and os.path.exists(candidate):
            return candidate  # never outside the models folder
    raise LayerT2VInputError(f"adapter {name!r} was not found in {folder_paths.get_folder_paths(ADAPTER_FOLDER)}")


def resolve_adapter(name: str):
    if name == DEMO:
        return demo_path(ADAPTER_FOLDER)
    return None if name == NO_ADAPTER else _resolve_adapter(name.removesuffix(EMA_SUFFIX))


def resolve_model_file(folder: str, name: str, what: str) -> str:
    if name == DEMO:
        return demo_path(folder)
    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise LayerT2VInputError(f"{what}: {name!r} is not in ComfyUI's models/{folder}/ folder")
    return path


class LoadLayerT2VModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VLoadModel",
            display_name="LayerT2V Load Model",
            category=CATEGORY,
            description="A Wan2.1 T2V DiT from models/diffusion_models plus a LayerT2V adapter from models/layert2v. "
                        f"'{DEMO}' is the pack's own miniature model (64x64, 17 frames, synthetic shapes). "
                        "The LayerT2V authors' checkpoint folders are listed too; "
                        f"'<folder>{EMA_SUFFIX}' loads their EMA file instead of the adapter weights.",
            inputs=[
                io.Combo.Input("dit_name", options=with_demo(folder_paths.get_filename_list("diffusion_models"))),
                io.Combo.Input("adapter_name", options=with_demo(list_adapters()) + [NO_ADAPTER]),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default=AUTO_DTYPE,
                               tooltip="auto: the one the adapter's config recommends (else Wan2.1's bf16)"),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto"),
                io.Combo.Input("attention", options=list(BACKENDS), default=DEFAULT_BACKEND, optional=True,
                               tooltip="attention kernel; " + describe()),
            ],
            outputs=[LayerModel.Output(display_name="layert2v_model")],
        )

    @classmethod
    def execute(cls, dit_name, adapter_name, dtype, device, attention=DEFAULT_BACKEND) -> io.NodeOutput:
        with readable_errors("LayerT2V Load Model"):
            path = resolve_model_file("diffusion_models", dit_name, "dit_name")
            dit = load_layered_dit(path, resolve_adapter(adapter_name), dtype=dtype, device="cpu",
                                   use_ema=adapter_name.endswith(EMA_SUFFIX))
            model = LayerT2VModel.from_dit(dit, name=f"{dit_name} + {adapter_name}")
            manage_dit(model, device)  # ComfyUI moves it from here on
            if attention != DEFAULT_BACKEND:  # checked on the device it will run on
                set_attention_backend(dit, attention, device=model.device)
        return io.NodeOutput(model)


class LoadLayerT2VVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VLoadVAE",
            display_name="LayerT2V Load VAE + Mask VAE",
            category=CATEGORY,
            description="The Wan VAE from models/vae for RGB layers plus the adapter's mask VAE for alpha.",
            inputs=[
                io.Combo.Input("vae_name", options=with_demo(folder_paths.get_filename_list("vae"))),
                io.Combo.Input("adapter_name", options=with_demo(list_adapters()) + [NO_ADAPTER]),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto"),
            ],
            outputs=[LayerVAE.Output(display_name="layert2v_vae")],
        )

    @classmethod
    def execute(cls, vae_name, adapter_name, device) -> io.NodeOutput:
        with readable_errors("LayerT2V Load VAE + Mask VAE"):
            path = resolve_model_file("vae", vae_name, "vae_name")
            layer_vae = load_layer_vae(path, resolve_adapter(adapter_name), device="cpu")
            manage_vae(layer_vae, device)
        return io.NodeOutput(layer_vae)


def list_text_encoder_folders() -> list[str]:
    found = []
    for base in folder_paths.get_folder_paths("text_encoders"):
        if not os.path.isdir(base):
            continue
        for entry in sorted(os.listdir(base)):
            if os.path.isfile(os.path.join(base, entry, "config.json")):
                found.append(entry)
    return found


class LoadLayerT2VTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerT2VLoadTextEncoder",
            display_name="LayerT2V Load Text Encoder",
            category=CATEGORY,
            description="A UMT5 encoder folder (config.json, weights, tokenizer) from models/text_encoders. "
                        "To use ComfyUI's own umt5 file instead, connect a CLIPLoader (type wan) to Layer Prompts. "
                        f"'{DEMO}' is the demo model's encoder. The sampler fits every prompt to the "
                        "model's own text length (Wan2.1: 512, the demo model: 32), so text_len only caps "
                        "how many tokens are encoded.",
            inputs=[
                io.Combo.Input("folder", options=with_demo(list_text_encoder_folders())),
                io.Int.Input("text_len", default=AUTO, min=0, max=512,
                             tooltip="most tokens per prompt; 0 = the model's own text length"),
                io.Combo.Input("dtype", options=DTYPE_CHOICES, default=AUTO_DTYPE,
                               tooltip="auto: the model's own"),
            ],
            outputs=[LayerTextEncoder.Output(display_name="text_encoder")],
        )

    @classmethod
    def execute(cls, folder, text_len, dtype) -> io.NodeOutput:
        with readable_errors("LayerT2V Load Text Encoder"):
            # An encoder folder has no LayerT2V config: the demo's is its model's, any other is Wan2.1's.
            model = demo_model.checkpoint_config() if folder == DEMO else LayerT2VConfig()
            text_len = text_len if text_len != AUTO else model.text_len
            dtype = SamplingSettings.of(model).fill(dtype=dtype)["dtype"]
            encoder = load_text_encoder(find_text_encoder_folder(folder), text_len=text_len, dtype=dtype)
            manage_text_encoder(encoder)
        return io.NodeOutput(encoder)


def find_text_encoder_folder(folder: str) -> str:
    if folder == DEMO:
        return demo_path("text_encoders")
    for base in folder_paths.get_folder_paths("text_encoders"):
        path = os.path.join(base, folder)
        if os.path.isdir(path):
            return path
    raise LayerT2VInputError(f"folder: {folder!r} is not in models/text_encoders/")
