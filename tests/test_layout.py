import pytest
import torch

from layert2v_core.layout import LayerLayout, LayoutError


def test_segment_order_and_geometry():
    layout = LayerLayout(2, 17, 64, 96)
    assert layout.names == ["full", "background", "foreground_1", "mask_1", "foreground_2", "mask_2"]
    assert layout.latent_frames == 5
    assert layout.latent_shape() == (1, 16, 30, 8, 12)
    assert layout.tokens_per_segment == 5 * 4 * 6
    assert layout.time_slice("mask_1") == slice(15, 20)
    ids = layout.token_segment_ids()
    assert ids.shape == (layout.num_tokens,)
    assert ids[layout.token_slice("foreground_2")].unique().tolist() == [4]


def test_split_join_round_trip_and_order():
    layout = LayerLayout(1, 9, 32, 32)
    latent = torch.arange(layout.num_segments * 3, dtype=torch.float32).view(1, 1, -1, 1, 1).expand(1, 16, -1, 4, 4)
    parts = layout.split(latent)
    assert list(parts) == layout.names
    assert parts["background"][0, 0, :, 0, 0].tolist() == [3.0, 4.0, 5.0]
    assert torch.equal(layout.join(parts), latent)
    with pytest.raises(LayoutError, match="needs 18"):
        LayerLayout(2, 9, 32, 32).split(latent)
    with pytest.raises(LayoutError, match="missing segment"):
        layout.join({k: v for k, v in parts.items() if k != "mask_1"})


def test_routing_presets():
    paper = LayerLayout(2, 5, 32, 32, routing="paper")
    assert paper.prompt_names == ["full", "background", "foreground_1", "foreground_2"]
    assert paper.visible_prompts("full") == ("full", "background", "foreground_1", "foreground_2")
    assert paper.visible_prompts("background") == ("background",)
    assert paper.visible_prompts("mask_2") == ("foreground_2",)
    official = LayerLayout(2, 5, 32, 32, routing="official")
    assert official.visible_prompts("foreground_1") == ("full", "foreground_1")
    assert official.visible_prompts("mask_1") == ("full", "foreground_1")
    groups = {vis: [s.name for s in segs] for vis, segs in paper.routing_groups()}
    assert groups[("foreground_1",)] == ["foreground_1", "mask_1"]
    table = paper.visibility_table()
    assert table[0] == [True] * 4 and table[3] == [False, False, True, False]


@pytest.mark.parametrize("args, match", [
    ((1, 8, 32, 32), "frames=8"), ((1, 0, 32, 32), "frames=0"), ((1, 9, 40, 32), "height=40"),
    ((1, 9, 32, 0), "width=0"), ((0, 9, 32, 32), "num_foregrounds=0"),
])
def test_bad_layouts_name_the_parameter(args, match):
    with pytest.raises(LayoutError, match=match):
        LayerLayout(*args)


def test_dict_round_trip():
    layout = LayerLayout(3, 13, 48, 80, routing="official")
    assert LayerLayout.from_dict(layout.to_dict()) == layout


def test_strides_and_patch_are_the_models_fields():
    """A 4x VAE with a 1x4x4 patch (issue 24): latent 16x16 for 64x64, 4x4 tokens per latent frame."""
    layout = LayerLayout(1, 17, 64, 64, patch_size=(1, 4, 4), time_stride=4, space_stride=4)
    assert layout.latent_shape() == (1, 16, 4 * 5, 16, 16)
    assert layout.tokens_per_segment == 5 * 4 * 4
    assert LayerLayout(1, 9, 64, 64, time_stride=2, space_stride=4).latent_shape() == (1, 16, 4 * 5, 16, 16)
    with pytest.raises(LayoutError, match=r"width=40 .* multiple of 16 \(the VAE downsamples by 4 and the DiT patch is 4\)"):
        LayerLayout(1, 9, 32, 40, patch_size=(1, 4, 4), space_stride=4)
    with pytest.raises(LayoutError, match="time_stride=3"):
        LayerLayout(1, 9, 32, 32, time_stride=3)
    with pytest.raises(LayoutError, match="space_stride=0"):
        LayerLayout(1, 9, 32, 32, space_stride=0)
    assert LayerLayout.from_dict(layout.to_dict()) == layout
    old = {k: v for k, v in layout.to_dict().items() if k not in ("time_stride", "space_stride")}
    assert LayerLayout.from_dict({**old, "patch_size": [1, 2, 2]}).latent_height == 8  # older latents: Wan2.1's 8
