"""training/data: synthetic generator, VidLayer reader, codecs, resumable batch order, latent cache."""

import json

import numpy as np
import pytest
import torch

from training.data.order import BatchOrder
from training.data.synthetic import SyntheticSpec, generate, held_out_prompts
from training.data.video_io import read_frames, write_alpha_video, write_rgb_video
from training.data.vidlayer import (ClipSpec, VidLayerDataset, collate_layered, cover_resize_crop, find_samples,
                                    frame_indices, read_sample_info)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def multi_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_multi")
    generate(root, SyntheticSpec(num_samples=6, height=32, width=48, num_frames=9, min_foregrounds=1,
                                 max_foregrounds=3, seed=3))
    return root


def test_synthetic_writes_vidlayer_layout_with_per_layer_captions(multi_root):
    samples = find_samples(multi_root)
    assert len(samples) == 6
    ks = {s.num_foregrounds for s in samples}
    assert len(ks) > 1 and ks <= {1, 2, 3}
    for info in samples:
        folder = multi_root / info.name
        names = {p.name for p in folder.iterdir()}
        assert {"metadata.json", "full_video.mp4", "background.mp4", "mask.mp4"} <= names
        expected_masks = {"mask.mp4"} | {f"mask_{k}.mp4" for k in range(2, info.num_foregrounds + 1)}
        assert {n for n in names if n.startswith("mask")} == expected_masks
        prompts = info.prompts()
        assert list(prompts) == ["full", "background"] + [f"foreground_{k}" for k in range(1, info.num_foregrounds + 1)]
        assert prompts["full"].endswith(" over " + prompts["background"])
        for k in range(1, info.num_foregrounds + 1):
            assert prompts[f"foreground_{k}"] in prompts["full"]
            assert " moving " in prompts[f"foreground_{k}"]


def test_alpha_codec_is_lossless_and_rgb_codec_is_near_lossless(tmp_path):
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, (5, 16, 24), dtype=np.uint8)
    write_alpha_video(tmp_path / "mask.mp4", alpha)
    back = read_frames(tmp_path / "mask.mp4", list(range(5)))
    assert np.array_equal(back.mean(axis=-1), alpha)
    smooth = np.stack([np.full((16, 24, 3), (40 * i, 120, 250 - 30 * i), dtype=np.uint8) for i in range(5)])
    write_rgb_video(tmp_path / "rgb.mp4", smooth)
    rgb = read_frames(tmp_path / "rgb.mp4", [4, 0, 0])
    assert rgb.shape == (3, 16, 24, 3)
    assert np.abs(rgb[1].astype(int) - smooth[0]).max() <= 3
    assert np.abs(rgb[0].astype(int) - smooth[4]).max() <= 3
    with pytest.raises(ValueError, match="decodable frames"):
        read_frames(tmp_path / "rgb.mp4", [7])


def test_reader_premultiplies_foreground_and_layers_recomposite(multi_root):
    samples = find_samples(multi_root)
    dataset = VidLayerDataset(samples, ClipSpec(num_frames=5, height=32, width=48, random_start=False))
    for i, info in enumerate(samples):
        item = dataset[(i, 0)]
        k = info.num_foregrounds
        assert item["full"].shape == (5, 32, 48, 3) and item["alpha"].shape == (k, 5, 32, 48)
        torch.testing.assert_close(item["foreground"], item["full"][None] * item["alpha"][..., None])
        assert 0 <= float(item["alpha"].min()) and float(item["alpha"].max()) <= 1
        assert float(item["alpha"].max()) > 0.99  # every clip shows an opaque shape
        # visible mattes: full = sum_k fg_k + bg * (1 - sum_k alpha_k), up to soft edges and the codec
        recomposite = item["foreground"].sum(0) + item["background"] * (1 - item["alpha"].sum(0))[..., None]
        assert float((recomposite - item["full"]).abs().mean()) < 0.03


def test_reader_resizes_crops_and_samples_4k_plus_1_frames(multi_root):
    samples = find_samples(multi_root)
    clip = ClipSpec(num_frames=5, height=16, width=16, frame_stride=2, random_start=True, random_crop=True)
    dataset = VidLayerDataset(samples, clip)
    a, b = dataset[(0, 11)], dataset[(0, 11)]
    assert a["full"].shape == (5, 16, 16, 3)
    torch.testing.assert_close(a["full"], b["full"])  # same key, same clip: resumable augmentation
    rng = np.random.default_rng(0)
    assert frame_indices(9, ClipSpec(5, 16, 16, frame_stride=2), rng) == [0, 2, 4, 6, 8]
    assert frame_indices(6, ClipSpec(5, 16, 16, frame_stride=2, random_start=False), rng) == [0, 1, 2, 3, 4]
    assert frame_indices(3, ClipSpec(5, 16, 16), rng) == [0, 1, 2, 2, 2]  # short clip: last frame repeated
    video = torch.arange(2 * 3 * 8 * 12, dtype=torch.float32).view(2, 3, 8, 12) / 1000
    out = cover_resize_crop(video, 8, 8, (0.5, 0.5))
    torch.testing.assert_close(out, video[..., :, 2:10])  # no resize needed: centred 8x8 crop


def test_reader_accepts_authors_metadata_and_list_captions(tmp_path):
    alpha = np.zeros((5, 16, 16), dtype=np.uint8)
    alpha[:, 4:12, 4:12] = 255
    rgb = np.full((5, 16, 16, 3), 128, dtype=np.uint8)
    single = tmp_path / "single"
    single.mkdir()
    write_rgb_video(single / "full_video.mp4", rgb)
    write_rgb_video(single / "background.mp4", rgb)
    write_alpha_video(single / "mask.mp4", alpha)
    (single / "metadata.json").write_text(json.dumps(
        {"captions": {"full": "a cat on grass", "foreground": "a cat", "background": "grass"}}))
    info = read_sample_info(single)
    assert info.prompts() == {"full": "a cat on grass", "background": "grass", "foreground_1": "a cat"}
    multi = tmp_path / "multi"
    multi.mkdir()
    for name in ("full_video.mp4", "background.mp4"):
        write_rgb_video(multi / name, rgb)
    write_alpha_video(multi / "mask.mp4", alpha)
    write_alpha_video(multi / "mask_2.mp4", 255 - alpha)
    (multi / "metadata.json").write_text(json.dumps(
        {"captions": {"full": "x", "background": "y", "foreground": ["a", "b"]}}))
    info = read_sample_info(multi)
    assert info.num_foregrounds == 2 and info.foreground_captions == ("a", "b")
    item = VidLayerDataset([info], ClipSpec(5, 16, 16))[(0, 0)]
    torch.testing.assert_close(item["alpha"][0] + item["alpha"][1], torch.ones(5, 16, 16))
    (multi / "metadata.json").write_text(json.dumps({"captions": {"full": "x", "background": "y", "foreground": ["a"]}}))
    with pytest.raises(ValueError, match="2 masks but 1 foreground captions"):
        read_sample_info(multi)


def test_batch_order_is_deterministic_resumable_sharded_and_bucketed():
    buckets = [1, 1, 2, 2, 2, 1, 3, 3, 1, 2]
    order = BatchOrder(buckets, batch_size=2, seed=5)
    stream = order.stream(0)
    first = [next(stream) for _ in range(12)]  # spans 3 epochs (4 full batches per epoch)
    assert first == [order.global_batch(g) for g in range(12)]
    resumed = order.stream(7)
    assert [next(resumed) for _ in range(5)] == first[7:12]
    for batch in first:
        assert len({buckets[i] for i, _ in batch}) == 1  # never mixes foreground counts
    assert first[:4] != first[4:8]  # reshuffled per epoch
    r0, r1 = order.stream(0, rank=0, world=2), order.stream(0, rank=1, world=2)
    sharded = [b for pair in zip(*[[next(r) for _ in range(6)] for r in (r0, r1)]) for b in pair]
    assert sharded == first
    assert BatchOrder(buckets, 2, seed=6).epoch(0) != order.epoch(0)
    with pytest.raises(ValueError, match="no full batch"):
        BatchOrder([1, 2, 3], batch_size=2, seed=0)


def test_collate_refuses_mixed_foreground_counts(multi_root):
    samples = find_samples(multi_root)
    dataset = VidLayerDataset(samples, ClipSpec(5, 16, 16))
    by_k = {}
    for i, s in enumerate(samples):
        by_k.setdefault(s.num_foregrounds, i)
    ks = sorted(by_k)
    with pytest.raises(ValueError, match="mixes foreground counts"):
        collate_layered([dataset[(by_k[ks[0]], 0)], dataset[(by_k[ks[1]], 0)]])


def test_held_out_prompts_are_not_training_captions(multi_root):
    train = {s.full_caption for s in find_samples(multi_root)}
    held = held_out_prompts(3, 4, 2)
    assert len(held) == 4 and all(len(p["foregrounds"]) == 2 for p in held)
    assert not train & {p["full"] for p in held}


def test_latent_cache_equals_on_the_fly_encoding(tmp_path, multi_root):
    from layert2v_core.config import LayerT2VConfig
    from training.config import ModelConfig
    from training.data.latent_cache import LatentCacheDataset, build_latent_cache
    from training.layer_encoding import LayerEncoder
    from training.models import build_mask_vae, build_text_encoder, build_vae

    cfg = ModelConfig(kind="tiny")
    lt = LayerT2VConfig(max_foregrounds=3, text_len=32, mask_vae_lora_rank=2)
    vae = build_vae(cfg, "cpu")
    encoder = LayerEncoder(vae, build_mask_vae(vae, lt), build_text_encoder(cfg, 32, "cpu"), lt)
    samples = find_samples(multi_root)[:2]
    dataset = VidLayerDataset(samples, ClipSpec(5, 16, 16, random_start=False))
    paths = build_latent_cache(dataset, encoder, tmp_path / "cache")
    assert all(p.exists() for p in paths)
    cached = LatentCacheDataset(paths, [s.name for s in samples])
    for i, info in enumerate(samples):
        layout = encoder.layout(info.num_foregrounds, 5, 16, 16)
        item = dataset[(i, 0)]
        got = cached[(i, 99)]
        assert got["latent"].shape == (16, layout.num_segments * layout.latent_frames, 2, 2)
        torch.testing.assert_close(got["latent"], encoder.latent(item, layout), atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(got["context"], encoder.context(item["prompts"], layout), atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(got["alpha"], item["alpha"], atol=2e-3, rtol=0)
