"""The authors' checkpoint folder, written as their training writes it (real PEFT save_pretrained, real
diffusers EMAModel), imported through the same loaders the nodes and the CLI use, and checked against
their model's math computed independently in tests/authors_reference.py."""

import json
import logging

import pytest
import torch
from safetensors.torch import save_file

from layert2v_core.layout import LayerLayout
from layert2v_core.tiny import build_tiny_vae
from layert2v_core.weights.checkpoint import load_checkpoint
from layert2v_core.weights.files import WeightsError
from layert2v_core.weights.loading import load_layer_vae, load_layered_dit
from layert2v_core.weights.wan_keys import vae_key_to_original
from tests.authors_reference import (
    AuthorsWan,
    base_state,
    merged_reference,
    randomize,
    reference_forward,
    reference_mask_decode,
    write_authors_folder,
    write_mask_vae_lora,
)

RANK, ALPHA = 4, 8
MASK_RANK, MASK_ALPHA = 2, 3.0
COMFY_PREFIX = "model.diffusion_model."


def write_user_files(root, num_layers, ema_extra_frozen_copy=True):
    """What a user has: ComfyUI's DiT file (prefixed original names), the VAE file, the authors' folder."""
    g = torch.Generator().manual_seed(num_layers)
    model = AuthorsWan(num_layers=num_layers)
    randomize(model, g)
    with torch.no_grad():
        model.layer_adaln.layer_modulation.zero_()   # their init; training moves it (set by the adapter)
    dit_file = root / f"wan_{num_layers}blocks.safetensors"
    save_file({COMFY_PREFIX + k: v for k, v in base_state(model).items()}, str(dit_file),
              metadata={"diffusers_config": json.dumps(model.diffusers_config())})
    folder = root / f"step-{num_layers}"
    peft_model, ema_values = write_authors_folder(folder, model, rank=RANK, alpha=ALPHA, seed=num_layers + 1,
                                                  ema_extra_frozen_copy=ema_extra_frozen_copy)
    return dit_file, folder, peft_model, ema_values


def inputs(seed=0, text_dim=32):
    """A cond + uncond batch as their sampler builds it: (full, fg, bg) prompts of real lengths."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(2, 16, 4 * 2, 4, 6, generator=g)        # 4 layers x T'=2, 8x12 latent
    t = torch.tensor([700.0, 700.0])
    cond = [torch.randn(n, text_dim, generator=g) for n in (9, 5, 6)]
    neg = torch.randn(3, text_dim, generator=g)
    return latent, t, [cond, [neg, neg, neg]]


def ours(dit, latent, t, prompts, text_len=512):
    """Our forward on the same inputs: prompt slots in layout order (full, background, foreground_1),
    each zero-padded to text_len, as the encoders and the sampler hand them over."""
    layout = LayerLayout(num_foregrounds=1, num_frames=5, height=32, width=48, routing=dit.config.routing)

    def pad(e):
        return torch.cat([e, e.new_zeros(text_len - e.shape[0], e.shape[1])])

    context = torch.stack([torch.stack([pad(full), pad(bg), pad(fg)]) for full, fg, bg in prompts])
    with torch.no_grad():
        return dit(latent, t, context, layout).double()


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory):
    return write_user_files(tmp_path_factory.mktemp("authors2"), 2)


@pytest.fixture(scope="module")
def thirty_blocks(tmp_path_factory):
    return write_user_files(tmp_path_factory.mktemp("authors30"), 30)


def assert_matches(actual, expected):
    scale = expected.abs().max()
    err = (actual - expected).abs().max()
    assert err <= 5e-5 * scale, f"max error {err:.3g} at output scale {scale:.3g}"


@pytest.mark.parametrize("files", ["two_blocks", "thirty_blocks"])
def test_forward_matches_their_model(files, request):
    dit_file, folder, peft_model, _ = request.getfixturevalue(files)
    dit = load_layered_dit(dit_file, folder, dtype="fp32")
    c = dit.config
    assert (c.routing, c.text_padding, c.rope_mode, c.text_len) == ("official", "mask", "continuous", 512)
    assert (c.dit_lora_rank, c.dit_lora_alpha, c.max_foregrounds, c.extra["weights"]) == (RANK, ALPHA, 1, "adapter")

    adapter_tensors = len(load_checkpoint(folder).dit_state)
    placed = dit.adapter_state_dict()
    assert len(placed) == adapter_tensors == 1 + 2 * (10 * len(dit.base.blocks) + 6)  # every tensor has a place

    latent, t, prompts = inputs()
    expected = reference_forward(merged_reference(peft_model), latent, t, prompts)
    assert_matches(ours(dit, latent, t, prompts), expected)

    # The padding treatment is what the check hinges on: attending to the padding is measurably off.
    dit.config.text_padding = "attend"
    err = (ours(dit, latent, t, prompts) - expected).abs().max() / expected.abs().max()
    assert err > 1e-3, err


@pytest.mark.parametrize("frozen_copy", [True, False], ids=["their-apply_lora", "trainable-only"])
def test_ema_option_loads_their_shadow_params(tmp_path, frozen_copy):
    dit_file, folder, peft_model, ema_values = write_user_files(tmp_path, 2, ema_extra_frozen_copy=frozen_copy)
    latent, t, prompts = inputs(seed=1)
    expected = reference_forward(merged_reference(peft_model, ema_values), latent, t, prompts)
    dit = load_layered_dit(dit_file, folder, dtype="fp32", use_ema=True)
    assert dit.config.extra["weights"] == "ema"
    assert_matches(ours(dit, latent, t, prompts), expected)
    plain = ours(load_layered_dit(dit_file, folder, dtype="fp32"), latent, t, prompts)
    assert (plain - expected).abs().max() > 1e-3 * expected.abs().max()  # default: adapter weights, as theirs


def test_ema_file_of_another_run_is_refused(tmp_path, two_blocks):
    import shutil

    _, folder, _, _ = two_blocks
    copy = tmp_path / "ckpt"
    shutil.copytree(folder, copy)
    state = torch.load(copy / "ema" / "ema_model.pt", weights_only=True)
    state["shadow_params"] = state["shadow_params"][:-3]
    torch.save(state, copy / "ema" / "ema_model.pt")
    with pytest.raises(WeightsError, match=r"ema_model.pt' holds \d+ EMA tensors but the adapter has \d+"):
        load_checkpoint(copy, use_ema=True)
    shutil.rmtree(copy / "ema")
    with pytest.raises(FileNotFoundError, match="ema_model.pt"):
        load_checkpoint(copy, use_ema=True)


def test_partial_adapter_is_refused_with_counts(two_blocks, thirty_blocks):
    _, small_folder, _, _ = two_blocks
    big_file, _, _, _ = thirty_blocks
    with pytest.raises(WeightsError, match=r"step-2'.*560 of the model's 613 tensors missing.*covers 2 blocks and "
                                           r"this DiT has 30"):
        load_layered_dit(big_file, small_folder, dtype="fp32")


# ---- mask VAE -------------------------------------------------------------------------------------
def write_vae_and_mask_lora(root, folder):
    """ComfyUI's VAE file (original names) and their mask_vae_lora.pt (LoRA on every causal conv of the
    decoder and on conv2) in `folder`."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

    vae = build_tiny_vae(seed=4, narrow_wan21=True)
    vae_file = root / "wan_2.1_vae_narrow.safetensors"
    save_file({vae_key_to_original(k): v for k, v in vae.state_dict().items()}, str(vae_file),
              metadata={"diffusers_config": json.dumps({k: v for k, v in dict(vae.config).items() if not k.startswith("_")})})
    g = torch.Generator().manual_seed(11)
    convs = {f"decoder.{n}": m for n, m in vae.decoder.named_modules() if isinstance(m, WanCausalConv3d)}
    convs["post_quant_conv"] = vae.post_quant_conv
    decoder_lora = {}
    for name, conv in convs.items():
        original = "conv2" if name == "post_quant_conv" else vae_key_to_original(name + ".weight")[: -len(".weight")]
        decoder_lora[f"model.{original}.lora_down.weight"] = torch.randn(
            MASK_RANK, conv.in_channels, *conv.kernel_size, generator=g) * 0.1
        decoder_lora[f"model.{original}.lora_up.weight"] = torch.randn(
            conv.out_channels, MASK_RANK, 1, 1, 1, generator=g) * 0.1
    write_mask_vae_lora(folder / "mask_vae_lora.pt", decoder_lora, MASK_RANK, MASK_ALPHA)
    return vae, vae_file, decoder_lora


@pytest.fixture(scope="module")
def mask_files(tmp_path_factory, two_blocks):
    _, folder, _, _ = two_blocks
    vae, vae_file, decoder_lora = write_vae_and_mask_lora(tmp_path_factory.mktemp("vae"), folder)
    return vae, vae_file, folder, decoder_lora


def test_mask_decode_matches_their_decoder(mask_files, caplog):
    vae, vae_file, folder, decoder_lora = mask_files
    with caplog.at_level(logging.INFO, logger="layert2v"):
        layer_vae = load_layer_vae(vae_file, folder)
    assert "project_in not imported" in caplog.text
    mask_vae = layer_vae.mask_vae
    assert (mask_vae.lora_rank, mask_vae.lora_alpha) == (MASK_RANK, MASK_ALPHA)
    decoder_convs = len(mask_vae.mask_adapter_state_dict()) - 2      # minus the (identity) head
    assert decoder_convs + 2 == len(decoder_lora)                      # + the post-quant conv: every tensor placed
    latent = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        alpha = mask_vae.decode_alpha(latent).double()
    expected = reference_mask_decode(vae, decoder_lora, MASK_RANK, MASK_ALPHA, latent)
    assert alpha.shape == expected.shape == (1, 1, 5, 32, 32)
    assert (alpha - expected).abs().max() < 1e-5
    no_lora = load_layer_vae(vae_file, None).mask_vae
    with torch.no_grad():
        assert (no_lora.decode_alpha(latent).double() - expected).abs().max() > 1e-3  # the LoRA is what matches


def test_mask_lora_for_another_vae_is_refused(mask_files, tmp_path):
    vae, _, folder, decoder_lora = mask_files
    other = tmp_path / "ckpt"
    import shutil

    shutil.copytree(folder, other)
    partial = {k: v for k, v in decoder_lora.items() if "upsamples" not in k}
    write_mask_vae_lora(other / "mask_vae_lora.pt", partial, MASK_RANK, MASK_ALPHA)
    vae_file = mask_files[1]
    with pytest.raises(WeightsError, match=r"ckpt'.*mask-VAE adapter does not fit this model: \d+ of the model's "
                                           r"\d+ tensors missing"):
        load_layer_vae(vae_file, other)


# ---- the CLI ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("blocks", [2, 30])
def test_cli_generates_from_the_authors_folder_with_ema(tmp_path, blocks):
    from layert2v_core.cli import main
    from layert2v_core.tiny import save_tiny_text_encoder

    dit_file, folder, _, _ = write_user_files(tmp_path, blocks)
    _, vae_file, _ = write_vae_and_mask_lora(tmp_path, folder)
    text_encoder = save_tiny_text_encoder(tmp_path / "te")
    argv = ["generate", "--prompt", "a red cat on a beach", "--bg-prompt", "a beach", "--fg-prompt", "a red cat",
            "--dit", str(dit_file), "--vae", str(vae_file), "--adapter", str(folder), "--text-encoder",
            str(text_encoder), "--use-ema", "--frames", "5", "--width", "32", "--height", "32", "--steps", "2",
            "--formats", "png16", "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    pngs = sorted((tmp_path / "out").rglob("*.png"))
    assert pngs, "no layer frames written"
    from PIL import Image

    with Image.open(pngs[0]) as image:
        assert image.size == (32, 32)
