"""Wan2.1 base weights: build the DiT and VAE from the shipped configs and load them, offline, from
ComfyUI split files (`wan2.1_t2v_1.3B_*.safetensors`, `wan_2.1_vae.safetensors`) or diffusers folders.

Before any conversion the file's header is checked against the model the config describes, so a
truncated download, a VAE given as DiT, a 14B file for the 1.3B config or missing tensors each fail
with a message naming the file and what it looks like, instead of a shape error deep in diffusers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers

from . import wan_keys
from .header_schema import check_dit_config, check_vae_config, parse_json
from .files import (
    PICKLE_SUFFIXES,
    CorruptWeightsError,
    WeightsError,
    TensorIndex,
    WrongModelError,
    atomic_save_safetensors,
    load_any_weights,
    read_safetensors_index,
    read_safetensors_tensors,
    tensor_set_diff,
)

CONFIGS_DIR = Path(__file__).parent.parent / "configs"
WAN21_T2V_1_3B = CONFIGS_DIR / "wan2.1_t2v_1.3B"


class _Component:
    def __init__(self, name, cls, kind, converter, example, check):
        self.name, self.cls, self.kind, self.converter, self.example = name, cls, kind, converter, example
        self.check = check  # header_schema check of this component's config


TRANSFORMER = _Component("transformer", WanTransformer3DModel, wan_keys.WAN_DIT,
                         convert_wan_transformer_to_diffusers, "wan2.1_t2v_1.3B_fp16.safetensors", check_dit_config)
VAE = _Component("vae", AutoencoderKLWan, wan_keys.WAN_VAE, convert_wan_vae_to_diffusers, "wan_2.1_vae.safetensors",
                 check_vae_config)


# ---- configs and construction -------------------------------------------------------------------
def shipped_config(component: str, config_dir: str | Path = WAN21_T2V_1_3B) -> dict:
    """The diffusers config dict of a shipped component ("transformer" or "vae")."""
    path = Path(config_dir) / component / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist; shipped configs live in {str(CONFIGS_DIR)!r}")
    return json.loads(path.read_text())


def _config_dict(config: dict | str | Path, component: str) -> dict:
    if isinstance(config, dict):
        return dict(config)
    path = Path(config)
    if path.is_dir():
        path = path / component / "config.json" if (path / component).is_dir() else path / "config.json"
    return parse_json(path.read_bytes(), str(path), "config")


def build_transformer_from_config(config: dict | str | Path, device=None, dtype=None) -> WanTransformer3DModel:
    """A randomly initialised (or, with device="meta", empty) WanTransformer3DModel."""
    return _build(TRANSFORMER, _config_dict(config, "transformer"), device, dtype)


def build_vae_from_config(config: dict | str | Path, device=None, dtype=None) -> AutoencoderKLWan:
    return _build(VAE, _config_dict(config, "vae"), device, dtype)


def _build(component: _Component, config: dict, device, dtype):
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device(device or "cpu"):
        model = component.cls.from_config(config)
    return model.to(dtype) if dtype is not None else model


# ---- loading -------------------------------------------------------------------------------------
def load_wan_transformer(
    path: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device="cpu",
    config_dir: str | Path = WAN21_T2V_1_3B,
    **config_overrides,
) -> WanTransformer3DModel:
    """Wan2.1 T2V DiT from a ComfyUI/original single file (with or without `model.diffusion_model.`)
    or a diffusers folder (pipeline root or its transformer/ folder). `config_overrides` change the
    shipped config (e.g. num_layers for a test file)."""
    return _load(TRANSFORMER, path, dtype, device, config_dir, config_overrides)


def load_wan_vae(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    config_dir: str | Path = WAN21_T2V_1_3B,
    **config_overrides,
) -> AutoencoderKLWan:
    """Wan2.1 VAE from `wan_2.1_vae.safetensors` (or the original `Wan2.1_VAE.pth`) or a diffusers folder."""
    return _load(VAE, path, dtype, device, config_dir, config_overrides)


def _load(component: _Component, path, dtype, device, config_dir, overrides):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{component.name} weights {str(path)!r} do not exist; give a single file such as "
            f"{component.example} or a diffusers folder"
        )
    if path.is_dir():  # a diffusers folder carries its own config
        model = _load_diffusers_folder(component, path, dtype)
    else:
        index, source = _read_single_file(path)
        # The file's kind before its config: a VAE given as the DiT is named as such, not by its config keys.
        _check_kind(component, path, index.shapes)
        overrides = {**embedded_config(index, component), **overrides}
        config = component.check({**shipped_config(component.name, config_dir), **overrides}, str(path))
        model = _load_single_file(component, path, index, source, dtype, device, config_dir, overrides, config)
    _check_nothing_left_empty(model, path, component)
    return model.to(device).eval()


EMBEDDED_CONFIG_KEY = "diffusers_config"


def embedded_config(index: TensorIndex, component: _Component) -> dict:
    """Config stored in a single file's safetensors header by `save_with_config` (small and demo
    models whose widths differ from Wan2.1-1.3B); empty for ComfyUI's files and for pickles."""
    text = index.metadata.get(EMBEDDED_CONFIG_KEY)
    if not text:
        return {}
    path = str(index.path)
    config = parse_json(text, path, f"embedded {EMBEDDED_CONFIG_KEY}")
    component.check(config, path)  # bounds first: a damaged header must not build for minutes
    return {k: v for k, v in config.items() if not k.startswith("_")}


def save_with_config(model: torch.nn.Module, path: str | Path) -> None:
    """One .safetensors with diffusers key names and the model config in the header, atomically."""
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_save_safetensors(tensors, path, metadata={EMBEDDED_CONFIG_KEY: json.dumps(config)})


def _expected_shapes(component: _Component, config: dict) -> dict[str, tuple[int, ...]]:
    empty = _build(component, config, "meta", None)
    return {k: tuple(v.shape) for k, v in empty.state_dict().items()}


def _read_single_file(path: Path) -> tuple[TensorIndex, object]:
    """The file's tensor index, and what to load the weights from (its path, or a pickle's tensors)."""
    if path.suffix == ".safetensors":
        return read_safetensors_index(path), str(path)  # header only: no tensor data read yet
    if path.suffix in PICKLE_SUFFIXES:  # a pickle has no header: read it once (weights_only) and hand the tensors on
        tensors = load_any_weights(path)
        return TensorIndex(path, {k: tuple(v.shape) for k, v in tensors.items()}), tensors
    raise WeightsError(f"{str(path)!r}: expected a .safetensors file (or {', '.join(PICKLE_SUFFIXES)})")


def _load_single_file(component, path: Path, index: TensorIndex, source, dtype, device, config_dir, overrides, config):
    _refuse_scaled_fp8(path, index.shapes)
    expected = _expected_shapes(component, config)
    if set(index.shapes) == set(expected):  # already diffusers names: diffusers skips conversion too
        converted = index.shapes
    else:  # convert names only: meta tensors carry the shapes, no data is read
        as_meta = {k: torch.empty(s, device="meta") for k, s in index.shapes.items()}
        converted = {k: tuple(v.shape) for k, v in component.converter(checkpoint=as_meta, config=None).items()}
    _compare(component, path, converted, expected, index.shapes, config)
    if path.suffix == ".safetensors" and component is TRANSFORMER:
        return build_in_dtype(component, config, path, dtype)

    # dtype is applied afterwards: from_single_file casts everything (keeping fp32 modules only for
    # fp16), from_pretrained keeps them for any dtype; _cast_like_from_pretrained makes both agree.
    model = component.cls.from_single_file(
        source,
        config=str(config_dir),
        subfolder=component.name,
        local_files_only=True,
        device=str(device),
        **overrides,
    )
    return _cast_like_from_pretrained(model, dtype)


def build_in_dtype(component: _Component, config: dict, path: Path, dtype: torch.dtype | None) -> torch.nn.Module:
    """Build on the meta device and assign each tensor read straight from the file in its final dtype:
    the peak is the model once in the target dtype plus one tensor (diffusers' single-file loader builds
    in fp32 first: 8.3 GiB RSS for the 2.65 GiB fp16 1.3B file). Reads go through plain file reads, not
    a memory map, so the file's pages are not counted twice."""
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = component.cls.from_config(clean)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    expected = set(model.state_dict())
    state = {}
    for key, tensor in read_safetensors_tensors(path):
        name = key if key in expected else _converted_name(component, key)
        target = torch.float32 if any(m in name.split(".") for m in keep) else (dtype or tensor.dtype)
        state[name] = tensor.to(target) if tensor.is_floating_point() else tensor
    model.load_state_dict(state, strict=True, assign=True)
    if component is TRANSFORMER:  # the RoPE tables are computed buffers, never in a file
        from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

        model.rope = WanRotaryPosEmbed(clean["attention_head_dim"], clean["patch_size"], clean["rope_max_seq_len"])
    return model


def _converted_name(component: _Component, key: str) -> str:
    converted = component.converter(checkpoint={key: torch.empty(0, device="meta")}, config=None)
    if len(converted) != 1:
        raise WeightsError(f"cannot map {key!r} to one {component.name} tensor")
    return next(iter(converted))


def _cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype | None) -> torch.nn.Module:
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point():
            target = torch.float32 if any(m in name.split(".") for m in keep) else (dtype or tensor.dtype)
            tensor.data = tensor.data.to(target)
    return model


def _load_diffusers_folder(component, folder: Path, dtype):
    model_dir = folder / component.name if (folder / component.name).is_dir() else folder
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise WeightsError(
            f"{str(folder)!r} is not a diffusers model folder: no config.json in it or in {component.name}/"
        )
    config = parse_json(config_path.read_bytes(), str(config_path), "config.json")
    class_name = config.get("_class_name") if isinstance(config, dict) else None
    if class_name != component.cls.__name__:
        raise WrongModelError(
            f"{str(model_dir)!r} holds a {class_name}; expected a {component.cls.__name__} ({component.name})"
        )
    component.check(config, str(config_path))
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise WeightsError(f"no .safetensors weights in {str(model_dir)!r} (pickled .bin weights are not loaded)")
    shapes = {}
    for shard in shards:
        shapes.update(read_safetensors_index(shard).shapes)
    _compare(component, model_dir, shapes, _expected_shapes(component, config), shapes, config)
    return component.cls.from_pretrained(model_dir, torch_dtype=dtype, local_files_only=True, use_safetensors=True)


# ---- checks --------------------------------------------------------------------------------------
def _check_kind(component: _Component, path: Path, shapes: dict) -> None:
    kind = wan_keys.classify_keys(shapes)
    if kind != component.kind:
        raise WrongModelError(
            f"{str(path)!r} looks like {wan_keys.describe_keys(shapes, shapes)}, not a Wan2.1 {component.name}; "
            f"expected a file such as {component.example}"
        )


def _refuse_scaled_fp8(path: Path, shapes: dict) -> None:
    if any(wan_keys.strip_prefix(k) == "scaled_fp8" or k.endswith(".scale_weight") for k in shapes):
        raise WeightsError(
            f"{str(path)!r} is a ComfyUI scaled-fp8 file: its weights need per-tensor scales this loader does not "
            f"apply. Use the fp16 or bf16 file (e.g. wan2.1_t2v_1.3B_fp16.safetensors)"
        )


def _compare(component, path, found: dict, expected: dict, raw_shapes: dict, config: dict) -> None:
    missing, unexpected, wrong = tensor_set_diff(expected, found)
    wrong = [f"{k} {found[k]} (config wants {expected[k]})" for k in wrong]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        parts.append(f"{len(wrong)} of another shape (e.g. {'; '.join(wrong[:2])})")
    raise WrongModelError(
        f"{str(path)!r} does not match the {component.name} config: {', '.join(parts)} tensor(s). "
        f"The file looks like {wan_keys.describe_keys(raw_shapes, raw_shapes)}; "
        f"the config describes {_describe_config(config)}"
    )


def _describe_config(config: dict) -> str:
    if "num_layers" in config:
        width = config["num_attention_heads"] * config["attention_head_dim"]
        return f"a DiT of width {width} with {config['num_layers']} blocks and {config['in_channels']} input channels"
    return f"a VAE with base_dim {config.get('base_dim', 96)} and z_dim {config.get('z_dim', 16)}"


def _check_nothing_left_empty(model: torch.nn.Module, path: Path, component: _Component) -> None:
    empty = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if empty:
        raise WeightsError(
            f"loading {str(path)!r} left {len(empty)} {component.name} tensor(s) without weights "
            f"(e.g. {', '.join(empty[:3])})"
        )
