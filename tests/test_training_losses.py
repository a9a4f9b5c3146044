"""training: losses, objective plumbing, metrics, timesteps, schedule, EMA, config, checkpoints."""

from pathlib import Path

import pytest
import torch
import torch.nn as nn

from layert2v_core.config import LayerT2VConfig
from layert2v_core.dit import LayeredWanTransformer
from layert2v_core.layout import LayerLayout
from layert2v_core.mask_vae import MaskVAE
from layert2v_core.tiny import build_tiny_transformer, build_tiny_vae
from training import losses
from training.checkpoint import TMP_SUFFIX, find_latest
from training.config import LossConfig, load_config
from training.ema import EMA
from training.metrics import alpha_metrics, boundary_f_score
from training.objectives import JointObjective
from training.optim import warmup_cosine
from training.stage3_multi_fg import extend_layer_adaln
from training.timesteps import given_segments, logit_normal, per_frame

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OracleDiT(nn.Module):
    """Returns a fixed velocity and records the timesteps it was called with."""
    dtype = torch.float32

    def __init__(self, velocity):
        super().__init__()
        self.velocity = velocity
        self.seen_t = None

    def forward(self, x, t, context, layout):
        self.seen_t = t
        return self.velocity


def composited_latent(layout, batch=2, seed=0):
    """A serialized latent whose full segment is exactly fg + bg * (1 - A~), and its GT alpha."""
    g = torch.Generator().manual_seed(seed)
    alpha = torch.rand(batch, 1, layout.num_frames, layout.height, layout.width, generator=g)
    a = losses.alpha_to_latent_grid(alpha, layout)
    shape = layout.segment_latent_shape(batch)
    fg, bg, mask = (torch.randn(shape, generator=g) for _ in range(3))
    parts = {"full": fg + bg * (1 - a), "background": bg, "foreground_1": fg, "mask_1": mask}
    return layout.join(parts), alpha


@pytest.fixture(scope="module")
def mask_vae():
    return MaskVAE(build_tiny_vae(), lora_rank=2, lora_alpha=2.0)


def test_objective_with_exact_velocity_has_zero_flow_and_consistency_loss(mask_vae):
    layout = LayerLayout(1, 5, 16, 16)
    latent, alpha = composited_latent(layout)
    noise = torch.randn_like(latent)
    t = torch.tensor([0.3, 0.9])
    given = torch.zeros(2, layout.num_segments, dtype=torch.bool)
    oracle = OracleDiT(noise - latent)
    objective = JointObjective(oracle, mask_vae, LossConfig(mask=0.0))
    context = torch.zeros(2, 3, 4, 32)
    out = objective(latent, noise, t, given, context, alpha, layout)
    assert float(out["flow"]) < 1e-10 and float(out["consistency"]) < 1e-10
    torch.testing.assert_close(oracle.seen_t, (t[:, None] * 1000).expand(2, layout.num_segments))

    # A wrong foreground velocity is seen by both the flow loss and the compositing loss.
    wrong = (noise - latent).clone()
    wrong[:, :, layout.time_slice("foreground_1")] += 0.5
    out = JointObjective(OracleDiT(wrong), mask_vae, LossConfig(mask=0.0))(latent, noise, t, given, context, alpha, layout)
    assert float(out["flow"]) > 0.01 and float(out["consistency"]) > 0.01


def test_given_segments_sit_at_t0_and_are_left_out_of_the_flow_loss(mask_vae):
    layout = LayerLayout(1, 5, 16, 16)
    latent, alpha = composited_latent(layout, seed=1)
    noise = torch.randn_like(latent)
    given = torch.zeros(2, layout.num_segments, dtype=torch.bool)
    given[:, layout.segment("full").position] = True
    velocity = (noise - latent).clone()
    velocity[:, :, layout.time_slice("full")] = 123.0  # garbage where the segment is given
    oracle = OracleDiT(velocity)
    out = JointObjective(oracle, mask_vae, LossConfig(mask=0.0))(
        latent, noise, torch.tensor([0.5, 0.7]), given, torch.zeros(2, 3, 4, 32), alpha, layout)
    assert float(out["flow"]) < 1e-10
    assert float(out["consistency"]) < 1e-10  # at t=0, x0_hat = x_t = the clean given latent
    assert torch.all(oracle.seen_t[:, layout.segment("full").position] == 0)
    assert torch.all(oracle.seen_t[:, layout.segment("mask_1").position] > 0)


def test_mask_loss_decodes_through_the_mask_vae_and_skips_given_masks(mask_vae):
    layout = LayerLayout(1, 5, 16, 16)
    latent, _ = composited_latent(layout, seed=2)
    alpha = torch.rand(2, 1, 5, 16, 16)
    weight = torch.ones(2, layout.num_segments)
    x0_hat = latent.clone().requires_grad_(True)
    loss = losses.mask_decoding(mask_vae.decode_alpha, x0_hat, alpha, layout, weight)
    loss.backward()
    grad = x0_hat.grad
    assert float(loss.detach()) > 0 and grad[:, :, layout.time_slice("mask_1")].abs().sum() > 0
    assert grad[:, :, layout.time_slice("full")].abs().sum() == 0  # only mask segments are decoded
    x0_hat.grad = None
    losses.mask_decoding(mask_vae.decode_alpha, x0_hat, alpha, layout, weight, latent_frames=1).backward()
    mask_grad = x0_hat.grad[:, :, layout.time_slice("mask_1")]
    assert mask_grad[:, :, :1].abs().sum() > 0 and mask_grad[:, :, 1:].abs().sum() == 0  # frame 0 only
    weight[:, layout.segment("mask_1").position] = 0
    assert float(losses.mask_decoding(mask_vae.decode_alpha, latent, alpha, layout, weight)) == 0.0


def test_early_backward_mask_loss_has_the_same_value_and_gradient(mask_vae):
    """Decoding each (sample, mask) with its backward run at once is the same objective, exactly."""
    layout = LayerLayout(1, 5, 16, 16)
    latent, _ = composited_latent(layout, seed=4)
    alpha = torch.rand(2, 1, 5, 16, 16)
    weight = torch.ones(2, layout.num_segments)
    results = []
    for early in (False, True):
        x0_hat = (latent * 1.0).requires_grad_(True)
        loss = losses.mask_decoding(mask_vae.decode_alpha, x0_hat * 2.0, alpha, layout, weight, early_backward=early)
        (3.0 * loss).backward()
        results.append((float(loss.detach()), x0_hat.grad.clone()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert results[0][1].abs().sum() > 0
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-7)


def test_mask_loss_on_a_crop_decodes_only_that_square_and_scores_its_interior(mask_vae):
    layout = LayerLayout(1, 5, 64, 64)                   # 8x8 latent pixels per frame
    latent, _ = composited_latent(layout, seed=3)
    alpha = torch.rand(1, 1, 5, 64, 64)
    weight = torch.ones(1, layout.num_segments)
    seen = []

    def decode(z):
        seen.append(tuple(z.shape[-2:]))
        return mask_vae.decode_alpha(z)

    x0_hat = latent[:1].clone().requires_grad_(True)
    crop = (2, 3, 4, 1)                                  # top, left, size, margin (latent pixels)
    loss = losses.mask_decoding(decode, x0_hat, alpha, layout, weight, crop=crop)
    loss.backward()
    assert seen == [(4, 4)]
    grad = x0_hat.grad[:, :, layout.time_slice("mask_1")].abs().sum(dim=(0, 1, 2))
    outside = grad.clone()
    outside[2:6, 3:7] = 0                                # (comparing two float sums failed now and then)
    assert grad[2:6, 3:7].sum() > 0 and outside.abs().sum() == 0  # nothing outside the crop
    # the same number, computed by hand: decode the cut, score 8 px in from every cut edge
    z = latent[:1][:, :, layout.time_slice("mask_1")][..., 2:6, 3:7]
    pred = mask_vae.decode_alpha(z)[..., 8:24, 8:24]
    target = alpha[:, :1, :, 16:48, 24:56][..., 8:24, 8:24]
    expected = losses.reconstruction(pred, target) + 0.1 * losses.gradient_l1(pred, target)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # a crop that covers the frame is no crop; edges at the image border are kept
    assert losses.draw_mask_crop(layout, 8, 1, torch.Generator()) is None
    full = losses.mask_decoding(mask_vae.decode_alpha, latent[:1], alpha, layout, weight)
    border = losses.mask_decoding(mask_vae.decode_alpha, latent[:1], alpha, layout, weight, crop=(0, 0, 8, 1))
    assert float(border) == pytest.approx(float(full), rel=1e-6)


def test_alpha_latent_grid_follows_the_vae_grouping():
    layout = LayerLayout(2, 9, 16, 32)
    alpha = torch.zeros(1, 2, 9, 16, 32)
    alpha[:, 0] = 0.25
    alpha[:, 1, 0] = 1.0               # only frame 0 -> only latent frame 0
    alpha[:, 1, 5:9, :8, :8] = 1.0     # frames 5..8 -> latent frame 2, one 8x8 cell
    grid = losses.alpha_to_latent_grid(alpha, layout)
    assert grid.shape == (1, 2, 3, 2, 4)
    torch.testing.assert_close(grid[:, 0], torch.full((1, 3, 2, 4), 0.25))
    assert float(grid[0, 1, 0].min()) == 1.0 and float(grid[0, 1, 1].max()) == 0.0
    assert float(grid[0, 1, 2, 0, 0]) == 1.0 and float(grid[0, 1, 2].sum()) == 1.0


def test_multi_foreground_consistency_uses_the_sum_of_visible_mattes():
    layout = LayerLayout(2, 5, 16, 16)
    g = torch.Generator().manual_seed(0)
    shape = layout.segment_latent_shape(1)
    a = torch.rand(1, 2, *shape[2:], generator=g) * 0.5
    fg1, fg2, bg, m = (torch.randn(shape, generator=g) for _ in range(4))
    full = fg1 + fg2 + bg * (1 - a.sum(1, keepdim=True))
    z = layout.join({"full": full, "background": bg, "foreground_1": fg1, "mask_1": m, "foreground_2": fg2, "mask_2": m})
    assert float(losses.compositing_consistency(z, z, a, layout)) < 1e-10
    assert float(losses.compositing_consistency(z, z, a.flip(1) * 0, layout)) > 0.01


def test_image_space_losses_and_alpha_metrics():
    alpha = torch.zeros(1, 1, 3, 32, 32)
    alpha[..., 8:24, 8:24] = 1.0
    shifted = torch.roll(alpha, shifts=4, dims=-1)
    assert float(losses.gradient_l1(alpha, alpha)) == 0.0 and float(losses.gradient_l1(shifted, alpha)) > 0
    same = alpha_metrics(alpha, alpha)
    assert same == {"alpha_mae": 0.0, "boundary_f": 1.0, "grad_error": 0.0}
    moved = alpha_metrics(shifted, alpha)
    assert moved["alpha_mae"] > 0 and moved["grad_error"] > 0 and moved["boundary_f"] < 0.7
    assert boundary_f_score(torch.roll(alpha, 1, -1), alpha, tolerance=1) > moved["boundary_f"]
    assert float(losses.reconstruction(shifted, alpha, "l1")) == pytest.approx(moved["alpha_mae"])


def test_logit_normal_follows_the_configured_location():
    g = torch.Generator().manual_seed(0)
    t = logit_normal(20000, 0.5, 1.0, g)
    assert 0 < float(t.min()) and float(t.max()) < 1
    assert float(t.median()) == pytest.approx(float(torch.sigmoid(torch.tensor(0.5))), abs=0.02)
    assert float(logit_normal(20000, 0.0, 1.0, g).median()) == pytest.approx(0.5, abs=0.02)


def test_given_segments_follow_the_conditional_tasks():
    layout = LayerLayout(2, 5, 16, 16)
    g = torch.Generator().manual_seed(0)
    never = given_segments(layout, 4, 0.0, [["full"]], g)
    assert not never.any()
    fg = given_segments(layout, 4, 1.0, [["foreground", "mask"]], g)
    names = [s.name for s in layout.segments if fg[0, s.position]]
    assert names == ["foreground_1", "mask_1", "foreground_2", "mask_2"] and bool(fg.all(0).eq(fg[0]).all())
    frames = per_frame(fg.float(), layout)
    assert frames.shape == (4, 1, layout.num_segments * layout.latent_frames, 1, 1)
    assert float(frames[0, 0, layout.time_slice("full")].sum()) == 0


def test_warmup_cosine_schedule():
    values = [warmup_cosine(s, 4, 20, 0.1) for s in range(20)]
    assert values[0] == pytest.approx(0.25) and values[3] == pytest.approx(1.0)
    assert values == sorted(values[:4]) + sorted(values[4:], reverse=True)
    assert warmup_cosine(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_ema_update_and_swap():
    p = nn.Parameter(torch.zeros(3))
    ema = EMA({"p": p}, decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()  # warm-up decay min(0.5, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow["p"], torch.full((3,), 0.9))
    with ema.swapped_in():
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))
    torch.testing.assert_close(p.detach(), torch.ones(3))
    clone = EMA({"p": p}, decay=0.5)
    clone.load_state_dict(ema.state_dict())
    assert clone.num_updates == 1 and torch.equal(clone.shadow["p"], ema.shadow["p"])


def test_extend_layer_adaln_copies_trained_foreground_rows():
    dit = LayeredWanTransformer(build_tiny_transformer(), LayerT2VConfig(max_foregrounds=3))
    with torch.no_grad():
        dit.layer_adaln[:4].normal_()
    before = dit.layer_adaln.detach().clone()
    assert extend_layer_adaln(dit, 1) == ["foreground_2", "mask_2", "foreground_3", "mask_3"]
    rows = dit.layer_adaln.detach()
    torch.testing.assert_close(rows[:4], before[:4])
    for k in (2, 3):
        torch.testing.assert_close(rows[2 * k], before[2])      # foreground_k <- foreground_1
        torch.testing.assert_close(rows[2 * k + 1], before[3])  # mask_k <- mask_1


def test_shipped_configs_load_and_describe_valid_layouts():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_config(path)
        k = LayerT2VConfig.from_dict(cfg.model.layert2v).max_foregrounds
        for phase in cfg.phases:
            LayerLayout(k, phase.num_frames, phase.height, phase.width)  # raises on an invalid clip size
    paper = load_config(CONFIGS / "stage2_wan1.3b.yaml")
    assert (paper.optim.lr, paper.optim.weight_decay, paper.optim.warmup_steps) == (1e-4, 0.01, 500)
    assert (paper.loss.consistency, paper.loss.mask, paper.loss.mask_gradient) == (0.1, 0.1, 0.1)
    assert (paper.timesteps.mean, paper.timesteps.std) == (0.5, 1.0)
    assert [(p.height, p.width, p.num_frames) for p in paper.phases] == [(192, 336, 9), (384, 672, 41)]
    assert load_config(CONFIGS / "stage3_wan1.3b.yaml").total_steps == 5000


def test_config_rejects_unknown_keys_and_applies_overrides(tmp_path):
    cfg = load_config(CONFIGS / "stage2_cpu_tiny.yaml", ["optim.lr=5e-3", "output_dir=/x", "loss.mask=0"])
    assert cfg.optim.lr == 5e-3 and cfg.output_dir == "/x" and cfg.loss.mask == 0
    assert cfg.phase_at(0)[0] == 0 and cfg.phase_at(cfg.phases[0].steps)[0] == 1
    with pytest.raises(ValueError, match="unknown key"):
        load_config(CONFIGS / "stage2_cpu_tiny.yaml", ["optim.learning_rate=1"])


def test_find_latest_ignores_unfinished_checkpoints(tmp_path):
    ckpts = tmp_path / "checkpoints"
    (ckpts / "step_000002").mkdir(parents=True)
    (ckpts / "step_000002" / "trainer_state.json").write_text("{}")
    (ckpts / ("step_000004" + TMP_SUFFIX)).mkdir()  # a crash while writing step 4
    (ckpts / ("step_000004" + TMP_SUFFIX) / "trainer_state.json").write_text("{}")
    assert find_latest(tmp_path).name == "step_000002"
    assert find_latest(tmp_path / "none") is None


@pytest.mark.parametrize("time_stride", [4, 2])
def test_alpha_latent_grid_at_a_4x_vae_matches_block_means(time_stride):
    """Issue 24: the consistency loss's A~ at another VAE's strides, against a plain loop over the cells
    (frame 0 alone, then groups of time_stride frames; 4x4 pixel blocks)."""
    import numpy as np

    layout = LayerLayout(1, 9, 32, 16, time_stride=time_stride, space_stride=4)
    alpha = torch.rand(2, 1, 9, 32, 16, generator=torch.Generator().manual_seed(5))
    grid = losses.alpha_to_latent_grid(alpha, layout)
    assert grid.shape == (2, 1, layout.latent_frames, 8, 4)
    a = alpha.numpy()
    groups = [[0]] + [list(range(1 + time_stride * (t - 1), 1 + time_stride * t)) for t in range(1, layout.latent_frames)]
    expected = np.zeros(tuple(grid.shape), dtype=np.float64)
    for t, frames in enumerate(groups):
        for i in range(8):
            for j in range(4):
                expected[:, 0, t, i, j] = a[:, 0, frames, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(axis=(1, 2, 3))
    np.testing.assert_allclose(grid.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_objective_at_a_4x_vae_has_zero_consistency_for_composited_layers(mask_vae):
    layout = LayerLayout(1, 5, 32, 32, space_stride=4)           # 8x8 latent pixels per frame
    latent, alpha = composited_latent(layout, batch=1, seed=4)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(1))
    objective = JointObjective(OracleDiT(noise - latent), mask_vae, LossConfig(mask=0.0))
    out = objective(latent, noise, torch.tensor([0.4]), torch.zeros(1, layout.num_segments, dtype=torch.bool),
                    torch.zeros(1, 3, 4, 8), alpha, layout)
    assert float(out["flow"]) < 1e-10 and float(out["consistency"]) < 1e-10
    off = objective(latent, noise * 1.5, torch.tensor([0.4]), torch.zeros(1, layout.num_segments, dtype=torch.bool),
                    torch.zeros(1, 3, 4, 8), alpha, layout)
    assert float(off["consistency"]) > 1e-3
