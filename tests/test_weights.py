import argparse
import json
import os

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

from layert2v_core.weights.checkpoint import load_checkpoint
from layert2v_core.weights.layert2v_adapter import (
    CONFIG_FILE,
    DIT_FILE,
    load_layert2v_adapter,
    save_layert2v_adapter,
)
from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.mask_vae import MaskVAE
from layert2v_core.tiny import TINY_TRANSFORMER_CONFIG, NARROW_WAN21_VAE_CONFIG, build_tiny_transformer, build_tiny_vae
from layert2v_core.weights.wan_keys import dit_key_to_original, vae_key_to_original
from layert2v_core.weights.files import CorruptWeightsError, UnsafePickleError, WeightsError, WrongModelError
from layert2v_core.weights.wan_single_file import (
    build_transformer_from_config,
    build_vae_from_config,
    load_wan_transformer,
    load_wan_vae,
    shipped_config,
)

COMFY_PREFIX = "model.diffusion_model."


def distinct_values(state: dict) -> dict:
    """Every tensor filled with its own constant (exact in bf16), so a swapped or misnamed tensor shows up."""
    assert len(state) <= 256
    return {k: torch.full(v.shape, i / 4.0) for i, (k, v) in enumerate(state.items())}


def first_values(model) -> dict:
    return {k: float(v.flatten()[0]) for k, v in model.state_dict().items()}


# ---- shipped configs ------------------------------------------------------------------------------
def test_shipped_transformer_config_is_wan21_t2v_1_3b():
    model = build_transformer_from_config(shipped_config("transformer"), device="meta")
    c = model.config
    assert (tuple(c.patch_size), c.num_attention_heads, c.attention_head_dim, c.num_layers) == ((1, 2, 2), 12, 128, 30)
    assert (c.in_channels, c.out_channels, c.text_dim, c.freq_dim, c.ffn_dim) == (16, 16, 4096, 256, 8960)
    assert c.cross_attn_norm and c.qk_norm == "rms_norm_across_heads" and c.eps == 1e-6 and c.rope_max_seq_len == 1024
    assert sum(p.numel() for p in model.parameters()) == 1_418_996_800  # the published 1.3B (1.42B with embeddings)


def test_shipped_vae_config_is_the_wan21_vae():
    shipped = shipped_config("vae")
    defaults = dict(build_vae_from_config({}, device="meta").config)  # AutoencoderKLWan() = the Wan2.1 VAE
    for key, value in shipped.items():
        if not key.startswith("_"):
            assert defaults[key] == pytest.approx(value), key
    model = build_vae_from_config(shipped, device="meta")
    assert sum(p.numel() for p in model.parameters()) == 126_892_531


# ---- Wan2.1 DiT ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_width_dit_file(tmp_path_factory):
    """2 blocks of the real 1.3B at full width, in ComfyUI's original key names with its prefix, bf16."""
    config = {**shipped_config("transformer"), "num_layers": 2}
    reference = distinct_values(build_transformer_from_config(config, device="meta").state_dict())
    path = tmp_path_factory.mktemp("dit") / "wan2.1_t2v_1.3B_bf16.safetensors"
    save_file({COMFY_PREFIX + dit_key_to_original(k): v.bfloat16() for k, v in reference.items()}, str(path))
    return path, {k: float(v.flatten()[0].bfloat16()) for k, v in reference.items()}


def test_real_width_comfy_dit_file_loads_every_tensor_in_place(real_width_dit_file):
    path, expected = real_width_dit_file
    model = load_wan_transformer(path, dtype=torch.bfloat16, num_layers=2)
    assert set(model.state_dict()) == set(expected)  # nothing missing, nothing unexpected
    assert first_values(model) == expected           # and each tensor under its own name
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.scale_shift_table.dtype == torch.float32  # diffusers' keep-in-fp32 modules, as from_pretrained


def test_dit_file_without_prefix_and_diffusers_folder(tmp_path):
    source = build_tiny_transformer(seed=3)
    plain = tmp_path / "dit.safetensors"
    save_file({dit_key_to_original(k): v for k, v in source.state_dict().items()}, str(plain))
    loaded = load_wan_transformer(plain, dtype=torch.float32, **TINY_TRANSFORMER_CONFIG)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.state_dict().items())

    source.save_pretrained(tmp_path / "pipeline" / "transformer")
    from_folder = load_wan_transformer(tmp_path / "pipeline", dtype=torch.float32)
    assert all(torch.equal(from_folder.state_dict()[k], v) for k, v in source.state_dict().items())


def test_dit_file_for_other_block_count_names_the_mismatch(real_width_dit_file):
    path, _ = real_width_dit_file
    with pytest.raises(WrongModelError, match=r"missing .*1.3B DiT with 16 input channels, 2 blocks.*30 blocks"):
        load_wan_transformer(path)  # shipped config: 30 blocks


def test_dit_file_with_a_missing_tensor_is_refused(tmp_path):
    state = {dit_key_to_original(k): v for k, v in build_tiny_transformer().state_dict().items()}
    del state["blocks.1.ffn.2.weight"]
    save_file(state, str(tmp_path / "dit.safetensors"))
    with pytest.raises(WrongModelError, match=r"1 missing \(e.g. blocks.1.ffn.net.2.weight\)"):
        load_wan_transformer(tmp_path / "dit.safetensors", **TINY_TRANSFORMER_CONFIG)


# ---- Wan2.1 VAE ---------------------------------------------------------------------------------------
def test_real_vae_original_names_convert_to_every_diffusers_tensor():
    """Full-size Wan2.1 VAE on the meta device: original names -> diffusers' converter -> the model's own."""
    model = build_vae_from_config(shipped_config("vae"), device="meta")
    state = model.state_dict()
    original = {vae_key_to_original(k): v for k, v in state.items()}
    assert "decoder.upsamples.4.shortcut.weight" in original and "encoder.downsamples.0.residual.2.weight" in original
    converted = convert_wan_vae_to_diffusers(original)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def narrow_vae_files(tmp_path_factory):
    source = build_tiny_vae(seed=5, narrow_wan21=True)
    folder = tmp_path_factory.mktemp("vae")
    original = {vae_key_to_original(k): v for k, v in distinct_values(source.state_dict()).items()}
    save_file(original, str(folder / "wan_2.1_vae.safetensors"))
    torch.save(original, folder / "Wan2.1_VAE.pth")
    return folder, {k: float(v.flatten()[0]) for k, v in distinct_values(source.state_dict()).items()}


@pytest.mark.parametrize("name", ["wan_2.1_vae.safetensors", "Wan2.1_VAE.pth"])
def test_vae_single_file_loads_every_tensor_in_place(narrow_vae_files, name):
    folder, expected = narrow_vae_files
    model = load_wan_vae(folder / name, **NARROW_WAN21_VAE_CONFIG)
    assert first_values(model) == expected


def test_vae_given_as_dit_and_dit_given_as_vae(narrow_vae_files, real_width_dit_file):
    folder, _ = narrow_vae_files
    with pytest.raises(WrongModelError, match="looks like a Wan VAE, not a Wan2.1 transformer"):
        load_wan_transformer(folder / "wan_2.1_vae.safetensors")
    dit_path, _ = real_width_dit_file
    with pytest.raises(WrongModelError, match="looks like a Wan2.1 1.3B DiT .*not a Wan2.1 vae"):
        load_wan_vae(dit_path)


# ---- bad files ----------------------------------------------------------------------------------------
def test_truncated_file_names_the_file(tmp_path):
    path = tmp_path / "wan2.1_t2v_1.3B_fp16.safetensors"
    save_file({dit_key_to_original(k): v for k, v in build_tiny_transformer().state_dict().items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match=r"wan2.1_t2v_1.3B_fp16.safetensors.*truncated"):
        load_wan_transformer(path, **TINY_TRANSFORMER_CONFIG)


def test_scaled_fp8_and_missing_and_unknown_files(tmp_path):
    state = {COMFY_PREFIX + dit_key_to_original(k): v for k, v in build_tiny_transformer().state_dict().items()}
    state[COMFY_PREFIX + "scaled_fp8"] = torch.zeros(2)
    save_file(state, str(tmp_path / "fp8.safetensors"))
    with pytest.raises(WeightsError, match="scaled-fp8"):
        load_wan_transformer(tmp_path / "fp8.safetensors", **TINY_TRANSFORMER_CONFIG)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_wan_transformer(tmp_path / "nope.safetensors")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(WeightsError, match="expected a .safetensors file"):
        load_wan_vae(tmp_path / "model.gguf")


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"decoder.conv1.weight": torch.zeros(1), "opts": argparse.Namespace(x=1)}, path)
    with pytest.raises(UnsafePickleError, match=r"Wan2.1_VAE.pth.*argparse.Namespace"):
        load_wan_vae(path)


# ---- LayerT2V adapter format --------------------------------------------------------------------------
def make_trained(seed: int, max_foregrounds: int = 1, narrow_vae: bool = False):
    """A tiny LayeredWanTransformer + MaskVAE whose adapter tensors are all random (as if trained)."""
    config = LayerT2VConfig(max_foregrounds=max_foregrounds, dit_lora_rank=4, dit_lora_alpha=8.0,
                            mask_vae_lora_rank=2, mask_vae_lora_alpha=2.0)
    dit = LayeredWanTransformer(build_tiny_transformer(seed=0), config)
    dit.add_lora()
    mask_vae = MaskVAE.from_config(build_tiny_vae(seed=0, narrow_wan21=narrow_vae), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dit.trainable_parameters() + mask_vae.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return dit, mask_vae


def fresh_like(config: LayerT2VConfig, narrow_vae: bool = False):
    return (LayeredWanTransformer(build_tiny_transformer(seed=0), config),
            MaskVAE.from_config(build_tiny_vae(seed=0, narrow_wan21=narrow_vae), config))


def assert_same_tensors(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.parametrize("name", ["adapter", "layert2v_adapter.safetensors"])
def test_adapter_save_load_round_trip(tmp_path, name):
    dit, mask_vae = make_trained(seed=1, max_foregrounds=2)
    path = save_layert2v_adapter(tmp_path / name, dit, mask_vae)
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary files left behind

    adapter = load_checkpoint(path)
    assert adapter.config == dit.config
    new_dit, new_mask = fresh_like(adapter.config)
    adapter.apply(new_dit, new_mask)
    assert_same_tensors(new_dit.adapter_state_dict(), dit.adapter_state_dict())
    assert_same_tensors(new_mask.mask_adapter_state_dict(), mask_vae.mask_adapter_state_dict())


def test_adapter_folder_is_replaced_whole_and_foreign_folders_are_kept(tmp_path):
    first, mask_vae = make_trained(seed=1)
    second, _ = make_trained(seed=2)
    save_layert2v_adapter(tmp_path / "ckpt", first, mask_vae)
    save_layert2v_adapter(tmp_path / "ckpt", second)  # overwrite, now without a mask part
    assert sorted(os.listdir(tmp_path / "ckpt")) == sorted([CONFIG_FILE, DIT_FILE])
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]
    assert_same_tensors(load_layert2v_adapter(tmp_path / "ckpt").dit_state, second.adapter_state_dict())

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(WeightsError, match="notes.txt"):
        save_layert2v_adapter(tmp_path / "mine", first)


def test_bad_adapters_are_named(tmp_path):
    dit, _ = make_trained(seed=1)
    folder = save_layert2v_adapter(tmp_path / "a", dit)
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(WeightsError, match=f"{CONFIG_FILE}': the LayerT2V config is not valid JSON"):
        load_layert2v_adapter(folder)
    (folder / CONFIG_FILE).write_text(json.dumps({"max_foregrounds": 2}))  # adaln has 4 rows, config wants 6
    with pytest.raises(WeightsError, match=r"layer_adaln has shape \(4, 6, 32\).*max_foregrounds=2"):
        load_layert2v_adapter(folder)
    save_file({"blocks.0.attn1.to_q.lora_A.weight": torch.zeros(2, 2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(WeightsError, match="not a LayerT2V adapter .*looks like a LoRA"):
        load_layert2v_adapter(tmp_path / "lora.safetensors")
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        load_layert2v_adapter(tmp_path)


def test_mask_part_missing_is_reported_when_asked_for(tmp_path):
    dit, mask_vae = make_trained(seed=1)
    adapter = load_layert2v_adapter(save_layert2v_adapter(tmp_path / "a", dit))
    with pytest.raises(WeightsError, match="no mask-VAE adapter"):
        adapter.apply(fresh_like(adapter.config)[0], mask_vae)


def test_adapter_for_another_lora_setup_is_refused(tmp_path):
    dit, mask_vae = make_trained(seed=1)
    adapter = load_layert2v_adapter(save_layert2v_adapter(tmp_path / "a", dit, mask_vae))
    other = LayerT2VConfig(max_foregrounds=1, dit_lora_rank=8, dit_lora_alpha=8.0,
                           mask_vae_lora_rank=2, mask_vae_lora_alpha=4.0)
    other_dit, other_mask = fresh_like(other)
    with pytest.raises(WeightsError, match="dit_lora_rank: model 8 vs adapter 4"):
        adapter.apply(other_dit)
    with pytest.raises(WeightsError, match=r"mask-VAE LoRA rank/alpha \(2, 2.0\) but the MaskVAE has \(2, 4.0\)"):
        adapter.apply(fresh_like(adapter.config)[0], other_mask)


# ---- header schema: configs read from files are bounded before anything is built -------------------
from layert2v_core.weights.header_schema import SchemaError  # noqa: E402


def tiny_dit_file_with_config(path, **config_changes):
    model = build_tiny_transformer()
    config = {k: v for k, v in dict(model.config).items() if not k.startswith("_")}
    config.update(config_changes)
    save_file({dit_key_to_original(k): v for k, v in model.state_dict().items()}, str(path),
              metadata={"diffusers_config": json.dumps(config)})
    return path


@pytest.mark.parametrize("value, expected", [
    (10_000_000, r"num_layers = 10000000 is not valid: expected an integer in \[1, 256\]"),
    ("abc", r"num_layers = 'abc' is not valid"),
    (-3, r"num_layers = -3 is not valid"),
    (2.0, r"num_layers = 2.0 is not valid"),
    (True, r"num_layers = True is not valid"),
])
def test_dit_header_with_absurd_config_is_refused_at_once(tmp_path, value, expected):
    import time

    path = tiny_dit_file_with_config(tmp_path / "dit.safetensors", num_layers=value)
    start = time.perf_counter()
    with pytest.raises(SchemaError, match=r"dit.safetensors': DiT config " + expected) as err:
        load_wan_transformer(path, dtype=torch.float32)
    assert time.perf_counter() - start < 1.0
    assert "\n" not in str(err.value)


def test_in_bounds_fields_that_multiply_into_an_impossible_model_are_refused(tmp_path):
    path = tiny_dit_file_with_config(tmp_path / "dit.safetensors", num_layers=256, num_attention_heads=256,
                                     attention_head_dim=1024)
    with pytest.raises(SchemaError, match=r"about \d+B parameters, more than any Wan model"):
        load_wan_transformer(path, dtype=torch.float32)


def test_vae_header_with_bad_latent_statistics_is_refused(tmp_path):
    source = build_tiny_vae(seed=5, narrow_wan21=True)
    state = {vae_key_to_original(k): v for k, v in source.state_dict().items()}
    config = {k: v for k, v in dict(source.config).items() if not k.startswith("_")}
    for change, expected in [({"latents_mean": [0.0, 0.1, 0.2]}, r"latents_mean has 3 values; z_dim=16 needs 16"),
                             ({"latents_std": [0.0] * 16}, r"latents_std = \[0.0, .* expected a list of 1..64 number > 0s"),
                             ({"z_dim": "16"}, r"z_dim = '16' is not valid")]:
        save_file(state, str(tmp_path / "vae.safetensors"), metadata={"diffusers_config": json.dumps({**config, **change})})
        with pytest.raises(SchemaError, match=expected):
            load_wan_vae(tmp_path / "vae.safetensors")


@pytest.mark.parametrize("change, expected", [
    ({"text_len": 0}, r"text_len = 0 is not valid: expected an integer in \[1, 4096\]"),
    ({"text_len": -5}, r"text_len = -5 is not valid"),
    ({"text_len": "abc"}, r"text_len = 'abc' is not valid"),
    ({"dit_lora_rank": "32"}, r"dit_lora_rank = '32' is not valid"),
    ({"max_foregrounds": 10_000_000}, r"max_foregrounds = 10000000 is not valid"),
    ({"text_padding": "sometimes"}, r"text_padding = 'sometimes' is not valid: expected one of 'attend', 'mask'"),
    ({"extra": {"latents_mean": [0.0] * 3, "latents_std": [1.0] * 16}}, r"latents_mean has 3 values and latents_std 16"),
    ({"extra": {"latents_mean": [0.0] * 16, "latents_std": [0.0] * 16}}, r"latents_std = \[0.0"),
])
def test_adapter_config_out_of_bounds_is_one_line(tmp_path, change, expected):
    dit, _ = make_trained(seed=1)
    path = save_layert2v_adapter(tmp_path / "adapter.safetensors", dit)
    tensors = {k: v for k, v in load_safetensors_file(path).items()}
    config = {**dit.config.to_dict(), **change}
    save_file(tensors, str(path), metadata={"format": "layert2v-adapter", "layert2v_config": json.dumps(config)})
    with pytest.raises(SchemaError, match=expected) as err:
        load_layert2v_adapter(path)
    assert "adapter.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_latent_statistics_must_match_the_model_channels(tmp_path):
    from layert2v_core.weights.loading import LayerT2VModel

    dit, _ = make_trained(seed=1)
    dit.config.extra = {"latents_mean": [0.0] * 3, "latents_std": [1.0] * 3}
    with pytest.raises(SchemaError, match=r"latent has 16 channels, so both need 16"):
        LayerT2VModel.from_dit(dit, name="my adapter")


def test_adapter_tensors_of_the_wrong_shape_are_one_line_naming_the_file(tmp_path):
    dit, _ = make_trained(seed=1)
    folder = save_layert2v_adapter(tmp_path / "adapter", dit)
    state = load_safetensors_file(folder / DIT_FILE)
    key = next(k for k in state if k.endswith("attn1.to_q.lora_A.weight"))
    state[key] = torch.zeros(4, 7)
    save_file(state, str(folder / DIT_FILE))
    adapter = load_layert2v_adapter(folder)
    with pytest.raises(WeightsError, match=r"adapter': the DiT adapter does not fit this model: 1 of another shape "
                                           r"\(e.g. .*to_q.lora_A.weight \(4, 7\) vs model \(4, 32\)\)") as err:
        adapter.apply(fresh_like(adapter.config)[0])
    assert "\n" not in str(err.value)


def load_safetensors_file(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_configs_nested_too_deeply_are_one_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = tiny_dit_file_with_config(tmp_path / "dit.safetensors")
    save_file(load_safetensors_file(path), str(path), metadata={"diffusers_config": deep})
    with pytest.raises(SchemaError, match=r"dit.safetensors': the embedded diffusers_config is nested too deeply"):
        load_wan_transformer(path, dtype=torch.float32)
    dit, _ = make_trained(seed=1)
    folder = save_layert2v_adapter(tmp_path / "adapter", dit)
    (folder / CONFIG_FILE).write_text(deep)
    with pytest.raises(SchemaError, match=r"layert2v_config.json': the LayerT2V config is nested too deeply"):
        load_layert2v_adapter(folder)
    (folder / CONFIG_FILE).write_text("[1, 2]")
    with pytest.raises(SchemaError, match=r"the LayerT2V config is list, expected a JSON object"):
        load_layert2v_adapter(folder)
