"""VidLayer as published: the layouts the authors' loader reads (sample folders, also grouped by source,
and JSONL records), the optional foreground clip, and one-line errors naming the sample and the field."""

import json

import numpy as np
import pytest

from training.data.video_io import write_alpha_video, write_rgb_video
from training.data.vidlayer import ClipSpec, VidLayerDataset, VidLayerFormatError, find_samples

FRAMES, H, W = 5, 16, 16


def clip(value):
    return np.full((FRAMES, H, W, 3), value, np.uint8)


def alpha():
    a = np.zeros((FRAMES, H, W), np.uint8)
    a[:, 4:12, 4:12] = 255
    return a


def write_folder_sample(folder, captions=None, paths=None, foreground=False):
    folder.mkdir(parents=True)
    write_rgb_video(folder / "full_video.mp4", clip(200))
    write_rgb_video(folder / "background.mp4", clip(40))
    write_alpha_video(folder / "mask.mp4", alpha())
    if foreground:
        write_rgb_video(folder / "foreground.mp4", clip(100))
    meta = {"captions": captions if captions is not None else
            {"full": "a dog on grass", "background": "grass", "foreground": "a dog"}}
    if paths:
        meta["paths"] = paths
    (folder / "metadata.json").write_text(json.dumps(meta))


def write_jsonl_sample(root, name, record_changes=None, entry_changes=None):
    write_rgb_video(root / f"{name}.mp4", clip(200))
    write_rgb_video(root / f"{name}_bg.mp4", clip(40))
    write_alpha_video(root / f"{name}_pha.mp4", alpha())
    record = {"vid": f"{name}.mp4", "entry": {"pha_video_path": f"{name}_pha.mp4", "bg_path": f"{name}_bg.mp4",
                                              **(entry_changes or {})},
              "overall_description": "a cat on a sofa", "foreground_prompt": "a cat", "background_prompt": "a sofa",
              **(record_changes or {})}
    return {k: v for k, v in record.items() if v is not None}


def test_published_layout_grouped_by_source_with_folders_and_jsonl(tmp_path):
    write_folder_sample(tmp_path / "VIDGEN" / "clip_0001", foreground=True)
    write_folder_sample(tmp_path / "MOSEv2" / "clip_0002")
    moved = tmp_path / "GOT-10K" / "clip_0003"
    write_folder_sample(moved)
    (moved / "full_video.mp4").rename(moved / "orig.mp4")   # their metadata `paths` point elsewhere
    (moved / "metadata.json").write_text(json.dumps({"captions": {"full": "a car", "background": "a road",
                                                                  "foreground": "a car"},
                                                     "paths": {"full_video": "orig.mp4"}}))
    yvos = tmp_path / "Youtube-VOS"
    yvos.mkdir()
    records = [write_jsonl_sample(yvos, "v1"), write_jsonl_sample(yvos, "v2", entry_changes={"fgr_path": "v2.mp4"})]
    (yvos / "train.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")

    samples = find_samples(tmp_path)
    assert [s.name for s in samples] == ["GOT-10K/clip_0003", "MOSEv2/clip_0002", "VIDGEN/clip_0001",
                                         "Youtube-VOS/v1", "Youtube-VOS/v2"]
    by_name = {s.name: s for s in samples}
    assert by_name["VIDGEN/clip_0001"].foreground is not None and by_name["MOSEv2/clip_0002"].foreground is None
    assert by_name["GOT-10K/clip_0003"].full.name == "orig.mp4"
    assert by_name["Youtube-VOS/v1"].prompts() == {"full": "a cat on a sofa", "background": "a sofa",
                                                   "foreground_1": "a cat"}
    assert by_name["Youtube-VOS/v2"].foreground.name == "v2.mp4"

    item = VidLayerDataset(samples, ClipSpec(FRAMES, H, W, random_start=False))[(3, 0)]
    assert item["name"] == "Youtube-VOS/v1"
    inside, outside = item["foreground"][0, :, 8, 8], item["foreground"][0, :, 0, 0]
    assert float(outside.abs().max()) == 0.0                              # FG = full x mask: black outside
    assert abs(float(inside.mean()) - 200 / 255) < 0.02                   # and the full clip inside


@pytest.mark.parametrize("captions, expected", [
    ({"full": "x", "background": "y"}, r"sample 'clip_1': field 'captions.foreground' is missing"),
    ({"full": "", "background": "y", "foreground": "z"}, r"sample 'clip_1': field 'captions.full' is empty"),
    ({}, r"sample 'clip_1': field 'captions.full' is missing"),
])
def test_folder_sample_missing_caption_is_named(tmp_path, captions, expected):
    write_folder_sample(tmp_path / "clip_1", captions=captions)
    with pytest.raises(VidLayerFormatError, match=expected) as err:
        find_samples(tmp_path)
    assert "\n" not in str(err.value)


def test_folder_sample_missing_clip_is_named(tmp_path):
    write_folder_sample(tmp_path / "MOSEv1" / "clip_7")
    (tmp_path / "MOSEv1" / "clip_7" / "background.mp4").unlink()
    with pytest.raises(VidLayerFormatError, match=r"sample 'MOSEv1/clip_7': background clip .*'background.mp4' "
                                                  r"does not exist"):
        find_samples(tmp_path)


@pytest.mark.parametrize("record_changes, entry_changes, expected", [
    ({"overall_description": None}, None, r"'train.jsonl line 1 \(v1\)': field 'overall_description' is missing"),
    ({"background_prompt": 3}, None, r"'train.jsonl line 1 \(v1\)': field 'background_prompt' is empty or not text"),
    (None, {"bg_path": None}, r"'train.jsonl line 1 \(v1\)': field 'entry.bg_path' is missing"),
    ({"vid": None}, None, r"'train.jsonl line 1': field 'vid' \(the original clip\) is missing"),
])
def test_jsonl_record_missing_field_is_named(tmp_path, record_changes, entry_changes, expected):
    record = write_jsonl_sample(tmp_path, "v1", record_changes, entry_changes)
    if entry_changes:
        record["entry"] = {k: v for k, v in record["entry"].items() if v is not None}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(VidLayerFormatError, match=expected):
        find_samples(tmp_path)


def test_empty_root_says_what_a_sample_looks_like(tmp_path):
    (tmp_path / "VIDGEN").mkdir()
    with pytest.raises(VidLayerFormatError, match=r"no VidLayer samples \(folders with metadata.json, or \*.jsonl"):
        find_samples(tmp_path)
