import pytest
import torch

from layert2v_core.layout import LayerLayout
from layert2v_core.sampler import SamplerConfig, initial_noise, sample

LAYOUT = LayerLayout(1, 5, 32, 32)
P, N, D = len(LAYOUT.prompt_names), 4, 8


def contexts():
    g = torch.Generator().manual_seed(5)
    return torch.randn(1, P, N, D, generator=g), torch.randn(1, P, N, D, generator=g)


@pytest.mark.parametrize("name", ["euler", "unipc"])
def test_single_point_flow_is_recovered(name):
    cond, _ = contexts()
    x0 = torch.randn(LAYOUT.latent_shape(), generator=torch.Generator().manual_seed(9))[0]
    noise = initial_noise(LAYOUT, seed=3)[0]
    den = lambda x, t, c: (noise - x0).expand_as(x)
    out = sample(den, LAYOUT, cond, None, SamplerConfig(steps=6, cfg=1.0, sampler=name, seed=3))
    torch.testing.assert_close(out[0], x0, rtol=1e-4, atol=1e-4)


def test_cfg_batches_cond_uncond_and_extrapolates():
    cond, uncond = contexts()
    g = torch.Generator().manual_seed(2)
    x0_c, x0_u = torch.randn(LAYOUT.latent_shape(), generator=g)[0], torch.randn(LAYOUT.latent_shape(), generator=g)[0]
    noise = initial_noise(LAYOUT, seed=1)[0]
    calls = []

    def den(x, t, c):
        calls.append(x.shape[0])
        x0 = torch.stack([x0_c if torch.equal(ci, cond[0]) else x0_u for ci in c])
        return noise - x0
    out = sample(den, LAYOUT, cond, uncond, SamplerConfig(steps=5, cfg=3.0, sampler="euler", seed=1))
    assert calls == [2] * 5  # one batched forward per step
    torch.testing.assert_close(out[0], x0_u + 3.0 * (x0_c - x0_u), rtol=1e-4, atol=1e-4)


def test_same_seed_bit_identical_different_seed_differs():
    cond, uncond = contexts()
    den = lambda x, t, c: torch.tanh(x * 0.5 + c.mean()) * (t.float().mean() / 1000)
    cfg = SamplerConfig(steps=4, cfg=4.0, sampler="unipc", seed=11)
    a = sample(den, LAYOUT, cond, uncond, cfg)
    b = sample(den, LAYOUT, cond, uncond, cfg)
    assert torch.equal(a, b)
    c = sample(den, LAYOUT, cond, uncond, SamplerConfig(steps=4, cfg=4.0, sampler="unipc", seed=12))
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("mode", ["replace", "native"])
def test_given_segments_are_kept_and_seen_by_the_model(mode):
    cond, _ = contexts()
    given = torch.randn(LAYOUT.segment_latent_shape(), generator=torch.Generator().manual_seed(4))
    seen = []

    def den(x, t, c):
        seen.append((x[:, :, LAYOUT.time_slice("full")].clone(), t.clone()))
        return torch.zeros_like(x) + 0.1
    cfg = SamplerConfig(steps=3, cfg=1.0, sampler="euler", seed=0, given_mode=mode)
    out = sample(den, LAYOUT, cond, None, cfg, given={"full": given})
    assert torch.equal(out[:, :, LAYOUT.time_slice("full")], given)
    noise = initial_noise(LAYOUT, 0)[:, :, LAYOUT.time_slice("full")]
    x_first, t_first = seen[0]
    if mode == "native":
        assert torch.equal(x_first, given) and t_first[0, 0] == 0 and t_first[0, 1] == 1000
    else:
        torch.testing.assert_close(x_first, noise)  # sigma = 1 at the first step
        x_second, t_second = seen[1]
        sigma = float(t_second[0, 0]) / 1000
        torch.testing.assert_close(x_second, sigma * noise + (1 - sigma) * given, rtol=1e-5, atol=1e-5)


def test_callback_sees_every_step_and_can_cancel():
    cond, _ = contexts()
    steps = []
    den = lambda x, t, c: torch.zeros_like(x)
    sample(den, LAYOUT, cond, None, SamplerConfig(steps=4, cfg=1.0, seed=0), callback=lambda s: steps.append(s.step))
    assert steps == [1, 2, 3, 4]

    class Cancelled(Exception):
        pass
    calls = []

    def stop(state):
        raise Cancelled

    with pytest.raises(Cancelled):
        sample(lambda x, t, c: calls.append(1) or torch.zeros_like(x), LAYOUT, cond, None,
               SamplerConfig(steps=10, cfg=1.0, seed=0), callback=stop)
    assert len(calls) == 1


@pytest.mark.parametrize("bad, match", [
    (dict(steps=0), "steps=0"), (dict(sampler="ddim"), "sampler='ddim'"), (dict(shift=0.0), "shift=0.0"),
    (dict(given_mode="x"), "given_mode='x'"), (dict(seed=-1), "seed=-1"),
])
def test_bad_config_names_the_parameter(bad, match):
    cond, _ = contexts()
    with pytest.raises(ValueError, match=match):
        sample(lambda x, t, c: x, LAYOUT, cond, None, SamplerConfig(**bad))
