import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from layert2v_core.config import LayerT2VConfig
from layert2v_core.lora_conv import CausalConvLoRA
from layert2v_core.mask_vae import MaskVAE
from layert2v_core.vae_io import denormalize_latent, latent_stats, normalize_latent
from layert2v_core.tiny import build_tiny_vae


@pytest.fixture(scope="module")
def vae():
    return build_tiny_vae(seed=0)


@pytest.fixture()
def alpha():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 1, 5, 32, 48, generator=g)
    a[:, :, :, :8] = 0.0  # exact 0 and 1 regions, as real mattes have
    a[:, :, :, -8:] = 1.0
    return a


def plain_vae_round_trip(vae, alpha):
    """The reference: Wan VAE on the 3-channel replicated alpha, mean channel back to [0, 1]."""
    rgb = alpha.expand(-1, 3, -1, -1, -1) * 2 - 1
    out = vae.decode(vae.encode(rgb).latent_dist.mode()).sample
    return ((out.mean(dim=1, keepdim=True) + 1) / 2).clamp(0, 1)


def randomize_adapter(mask_vae, seed=2, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mask_vae.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


@torch.no_grad()
def test_zero_head_and_lora_reproduce_plain_vae_round_trip(vae, alpha):
    mask_vae = MaskVAE(vae, lora_rank=4, lora_alpha=4.0)
    out = mask_vae.decode_alpha(mask_vae.encode_alpha(alpha))
    ref = plain_vae_round_trip(vae, alpha)
    assert out.shape == alpha.shape
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@torch.no_grad()
def test_encode_is_normalized_posterior_mode_plus_head(vae, alpha):
    mask_vae = MaskVAE(vae, lora_rank=4, lora_alpha=4.0)
    randomize_adapter(mask_vae)
    mode = vae.encode(alpha.expand(-1, 3, -1, -1, -1) * 2 - 1).latent_dist.mode()
    headed = mode + F.conv3d(mode, mask_vae.head.weight, mask_vae.head.bias)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(mask_vae.encode_alpha(alpha), (headed - mean) / std, atol=1e-5, rtol=1e-5)


def test_latent_normalization_round_trip(vae):
    z = torch.randn(1, 16, 2, 4, 6)
    mean, std = latent_stats(vae)
    torch.testing.assert_close(normalize_latent(z, vae), (z - mean) / std)
    torch.testing.assert_close(denormalize_latent(normalize_latent(z, vae), vae), z)


def test_rgb_vae_is_left_untouched(vae):
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    mask_vae = MaskVAE(vae, lora_rank=4, lora_alpha=4.0)
    randomize_adapter(mask_vae)
    assert isinstance(vae.decoder.conv_in, WanCausalConv3d)
    assert set(vae.state_dict()) == set(before)
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in before.items())
    assert mask_vae.decoder_vae.encoder is None  # the copy holds the decoder side only


def test_lora_wrapper_equals_merged_and_sequential_conv():
    torch.manual_seed(0)
    conv = WanCausalConv3d(6, 5, 3, padding=1)
    lora = CausalConvLoRA(conv, rank=3, alpha=6.0)
    with torch.no_grad():
        lora.lora_B.weight.normal_()
    x, cache = torch.randn(1, 6, 3, 8, 8), torch.randn(1, 6, 2, 8, 8)

    merged = WanCausalConv3d(6, 5, 3, padding=1)
    with torch.no_grad():
        merged.bias.copy_(conv.bias)
        merged.weight.copy_(conv.weight + 2.0 * torch.einsum("or,rikhw->oikhw", lora.lora_B.weight[..., 0, 0, 0],
                                                             lora.lora_A.weight))
    # peft-style reference: down conv with the layer's kernel on the causally padded input, then 1x1x1 up.
    padded = F.pad(torch.cat([cache, x], dim=2), (1, 1, 1, 1, 0, 0))
    sequential = conv(x, cache) + 2.0 * F.conv3d(F.conv3d(padded, lora.lora_A.weight), lora.lora_B.weight)

    out = lora(x, cache)
    torch.testing.assert_close(out, merged(x, cache), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, sequential, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lora(x), merged(x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_nonzero_lora_changes_decoded_alpha(vae, alpha):
    mask_vae = MaskVAE(vae, lora_rank=4, lora_alpha=4.0)
    latent = mask_vae.encode_alpha(alpha)
    before = mask_vae.decode_alpha(latent)
    with torch.no_grad():
        for layer in mask_vae.lora_layers.values():
            layer.lora_B.weight.normal_(std=0.05)
    after = mask_vae.decode_alpha(latent)
    assert (after - before).abs().max() > 1e-3


def test_trainable_parameters_are_head_and_lora_only(vae, alpha):
    mask_vae = MaskVAE.from_config(vae, LayerT2VConfig(mask_vae_lora_rank=4, mask_vae_lora_alpha=8.0))
    assert mask_vae.lora_rank == 4 and mask_vae.lora_alpha == 8.0
    trainable = {id(p) for p in mask_vae.trainable_parameters()}
    expected = {id(mask_vae.head.weight), id(mask_vae.head.bias)}
    for layer in mask_vae.lora_layers.values():
        expected |= {id(layer.lora_A.weight), id(layer.lora_B.weight)}
    assert trainable == expected
    assert not trainable & {id(p) for p in vae.encoder.parameters()}
    assert {id(p) for p in mask_vae.parameters() if p.requires_grad} == trainable

    randomize_adapter(mask_vae)
    mask_vae.decode_alpha(mask_vae.encode_alpha(alpha)).mean().backward()
    assert all(p.grad is None for p in vae.parameters())
    assert mask_vae.head.weight.grad is not None and mask_vae.head.weight.grad.abs().sum() > 0
    assert all(layer.lora_B.weight.grad is not None for layer in mask_vae.lora_layers.values())


@torch.no_grad()
def test_mask_adapter_state_dict_round_trip(vae, alpha):
    source = MaskVAE(vae, lora_rank=4, lora_alpha=4.0)
    randomize_adapter(source)
    state = source.mask_adapter_state_dict()
    assert all(k.startswith("head.") or ".lora_" in k for k in state)
    assert len(state) == 2 + 2 * len(source.lora_layers)

    target = MaskVAE(vae, lora_rank=4, lora_alpha=4.0)
    target.load_mask_adapter_state_dict(state)
    torch.testing.assert_close(target(alpha), source(alpha))

    with pytest.raises(ValueError, match="missing"):
        target.load_mask_adapter_state_dict({k: v for k, v in state.items() if k != "head.bias"})
    with pytest.raises(ValueError, match="wrong shape"):
        MaskVAE(vae, lora_rank=2, lora_alpha=2.0).load_mask_adapter_state_dict(state)


@pytest.mark.parametrize(
    "shape, scale, message",
    [
        ((1, 1, 4, 32, 32), 1.0, "frames=4"),
        ((1, 3, 5, 32, 32), 1.0, "expected \\(batch, 1"),
        ((1, 1, 5, 30, 32), 1.0, "height=30"),
        ((1, 1, 5, 32, 32), 255.0, "divide 8-bit masks by 255"),
    ],
)
def test_bad_alpha_is_refused_with_a_named_reason(vae, shape, scale, message):
    mask_vae = MaskVAE(vae, lora_rank=2, lora_alpha=2.0)
    with pytest.raises(ValueError, match=message):
        mask_vae.encode_alpha(torch.ones(shape) * scale)


def test_bad_latent_is_refused(vae):
    mask_vae = MaskVAE(vae, lora_rank=2, lora_alpha=2.0)
    with pytest.raises(ValueError, match="expected \\(batch, 16"):
        mask_vae.decode_alpha(torch.zeros(1, 4, 2, 4, 4))
