"""Layer set folders, layers.json, atomic never-overwriting writes and progress."""

from __future__ import annotations

import json

import numpy as np
import pytest

from layert2v_core.export import (FORMATS, LayerSetError, load_layer_set, validate_manifest,
                                  write_layer_set, write_png_sequence, write_prores)
from layert2v_core.export.atomic import atomic_output
from layert2v_core.export.synthetic import soft_rgba_clip

F, H, W = 5, 32, 48


@pytest.fixture(scope="module")
def two_fg():
    a, b = soft_rgba_clip(F, H, W, seed=3), soft_rgba_clip(F, H, W, seed=4)
    alpha2 = np.flip(b.alpha, axis=2).copy()
    fg2 = b.straight * alpha2[..., None]
    full = fg2 + a.full * (1 - alpha2[..., None])
    layers = {"full": full, "background": a.background, "foreground_1": a.premultiplied,
              "foreground_2": fg2}
    return layers, {"foreground_1": a.alpha, "foreground_2": alpha2}


def test_layer_set_all_formats_manifest_and_loader(tmp_path, two_fg):
    layers, alphas = two_fg
    calls = []
    ls = write_layer_set(tmp_path, layers, alphas, fps=16, formats=FORMATS,
                         prompts={"full": "a cat and a dog", "foreground_1": "a cat"}, seed=7,
                         metadata={"steps": 30}, progress=lambda d, t: calls.append((d, t)))
    assert ls.path == tmp_path / "layert2v_00001_"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layert2v_00001_"]  # no temp left

    loaded = load_layer_set(ls.path / "layers.json")
    m = loaded.manifest
    assert m == json.loads((ls.path / "layers.json").read_text())
    assert (m["width"], m["height"], m["frame_count"], m["fps"]["value"]) == (W, H, F, 16.0)
    assert m["seed"] == 7 and m["prompts"]["foreground_1"] == "a cat" and m["metadata"] == {"steps": 30}
    assert m["software"]["version"] and m["alpha"]["polarity"].startswith("1 = opaque")
    assert m["composite_order"] == ["background", "foreground_1", "foreground_2"]
    assert loaded.layer_names == list(layers)

    fg = loaded.layer("foreground_1")
    assert fg["has_alpha"] is True
    modes = {o["format"]: (o["alpha_mode"], o["transfer"]) for o in fg["outputs"]}
    assert modes == {"png8": ("straight", "srgb"), "png16": ("straight", "srgb"),
                     "exr_half": ("premultiplied", "linear"), "exr_float": ("premultiplied", "linear"),
                     "exr_multilayer": ("premultiplied", "linear"),
                     "prores_4444": ("straight", "srgb"), "webm_vp9": ("straight", "srgb")}
    assert {o["format"] for o in loaded.layer("full")["outputs"]} == {
        "png8", "png16", "exr_half", "exr_float", "exr_multilayer", "prores_422_hq", "webm_vp9",
        "h264"}
    assert m["composite"]["space"] == "srgb_encoded" and "over" in m["composite"]["rule"]
    multi = loaded.output("foreground_2", "exr_multilayer")
    assert multi["channels"] == [f"foreground_2.{c}" for c in "RGBA"]
    assert loaded.output("full", "exr_multilayer")["alpha_mode"] is None
    assert m["comp"]["blender"] == "blender_comp.py" and (ls.path / "blender_comp.py").is_file()

    # Every file inside the set carries its own convention (a copied-out file still says it).
    seq_side = json.loads((ls.path / "png16" / "foreground_1" / "sequence.json").read_text())
    mov_side = json.loads((ls.path / "prores" / "foreground_1.mov.json").read_text())
    webm_side = json.loads((ls.path / "webm" / "background.webm.json").read_text())
    assert (seq_side["alpha_mode"], seq_side["transfer"]) == ("straight", "srgb")
    assert (mov_side["alpha_mode"], mov_side["transfer"], mov_side["path"]) == (
        "straight", "srgb", "foreground_1.mov")
    assert webm_side["alpha_mode"] is None and "libvpx" in webm_side["decoder"]
    for side in (seq_side, mov_side, webm_side):
        assert side["composite"]["space"] == "srgb_encoded"
        assert side["composite"]["alpha_polarity"].startswith("1 = opaque")
    assert [p["layer"] for p in m["previews"]] == ["recomposite"]
    png = loaded.output("foreground_2", "png16")
    files = loaded.files(png)
    assert [f.name for f in files] == [f"foreground_2.{i:05d}.png" for i in range(F)]
    assert all(f.is_file() for f in files)
    assert loaded.files(loaded.output("background", "prores_422_hq"))[0].name == "background.mov"

    # Progress: monotonic frame counts over every output, ending exactly at the total.
    total = calls[-1][1]
    assert all(t == total for _, t in calls) and calls[-1][0] == total
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    n_files = sum(o["format"] != "exr_multilayer" for layer in m["layers"] for o in layer["outputs"])
    assert total == F * (n_files + 1 + len(m["previews"]))  # + 1: the one multi-layer EXR sequence


def test_second_set_gets_next_counter_and_first_is_untouched(tmp_path, two_fg):
    layers, alphas = two_fg
    first = write_layer_set(tmp_path, layers, alphas, fps=8, formats=["png8"], name="shot")
    stamp = (first.path / "layers.json").read_bytes()
    second = write_layer_set(tmp_path, layers, alphas, fps=8, formats=["png8"], name="shot")
    assert (first.path.name, second.path.name) == ("shot_00001_", "shot_00002_")
    assert (first.path / "layers.json").read_bytes() == stamp


def test_validator_reports_tampering(tmp_path, two_fg):
    layers, alphas = two_fg
    ls = write_layer_set(tmp_path, layers, alphas, fps=8, formats=["png16", "prores"])
    assert validate_manifest(ls.manifest, ls.path) == []

    (ls.path / "png16" / "foreground_1" / "foreground_1.00002.png").unlink()
    (ls.path / "prores" / "full.mov").unlink()
    with pytest.raises(LayerSetError) as err:
        load_layer_set(ls.path)
    assert "1 frame files missing, first foreground_1.00002.png" in str(err.value)
    assert "prores/full.mov" in str(err.value) and "file is missing" in str(err.value)

    bad = json.loads(json.dumps(ls.manifest))
    bad["layers"][2]["outputs"][0]["alpha_mode"] = "associated"
    bad["layers"][0]["outputs"][0]["path"] = "../../etc/passwd"
    bad["composite_order"].append("nobody")
    problems = validate_manifest(bad)
    assert any("alpha_mode must be one of" in p for p in problems)
    assert any("relative path inside the set" in p for p in problems)
    assert any("composite_order" in p for p in problems)
    assert validate_manifest({"schema": "other"})[0].startswith("schema must be")
    with pytest.raises(LayerSetError, match="no layers.json"):
        load_layer_set(tmp_path)


def test_cancelled_write_leaves_nothing(tmp_path, two_fg):
    layers, alphas = two_fg

    def cancel(done, total):
        if done > 7:
            raise KeyboardInterrupt("user pressed cancel")

    with pytest.raises(KeyboardInterrupt):
        write_layer_set(tmp_path, layers, alphas, fps=8, formats=["png16"], progress=cancel)
    assert list(tmp_path.iterdir()) == []


def test_single_writers_never_overwrite(tmp_path, two_fg):
    layers, alphas = two_fg
    a = write_prores(tmp_path / "fg.mov", layers["foreground_1"], alphas["foreground_1"], fps=8,
                     alpha_mode="straight")
    b = write_prores(tmp_path / "fg.mov", layers["foreground_1"], alphas["foreground_1"], fps=8,
                     alpha_mode="straight")
    assert (a.path.name, b.path.name) == ("fg.mov", "fg_00001_.mov")
    assert json.loads((tmp_path / "fg.mov.json").read_text())["alpha_mode"] == "straight"
    nuke = write_png_sequence(tmp_path / "n", layers["full"], prefix="plate", first_frame=1001)
    assert [p.name for p in nuke.frame_paths()][:2] == ["plate.01001.png", "plate.01002.png"]
    assert all(p.is_file() for p in nuke.frame_paths())
    s1 = write_png_sequence(tmp_path / "seq", layers["full"])
    s2 = write_png_sequence(tmp_path / "seq", layers["full"])
    assert (s1.path.name, s2.path.name) == ("seq", "seq_00001_")
    # The frame files keep the requested prefix; the sidecar sits inside the folder.
    assert (s2.path / "seq.00000.png").is_file() and (s2.path / "sequence.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_atomic_output_hides_partial_files(tmp_path):
    target_path = tmp_path / "clip.bin"
    with atomic_output(target_path) as t:
        t.tmp.write_bytes(b"half")
        assert not target_path.exists() and t.tmp.name.startswith(".clip.bin.partial-")
    assert target_path.read_bytes() == b"half" and t.path == target_path
    with pytest.raises(RuntimeError):
        with atomic_output(target_path) as t:
            t.tmp.write_bytes(b"broken")
            raise RuntimeError("encoder failed")
    assert [p.name for p in tmp_path.iterdir()] == ["clip.bin"]
    # An existing empty folder of the wanted name is skipped too (never merged into).
    (tmp_path / "frames").mkdir()
    with atomic_output(tmp_path / "frames", is_dir=True) as t:
        (t.tmp / "a").write_bytes(b"x")
    assert t.path.name == "frames_00001_"


def test_blender_comp_only_over_a_background_and_multilayer_sidecar(tmp_path, two_fg):
    layers, alphas = two_fg
    no_bg = {k: v for k, v in layers.items() if k != "background"}
    ls = write_layer_set(tmp_path, no_bg, alphas, fps=8, formats=["exr_multilayer"])
    assert ls.manifest["comp"]["blender"] is None and not (ls.path / "blender_comp.py").exists()
    side = json.loads((ls.path / "exr_multilayer" / "sequence.json").read_text())
    assert side["channels"]["foreground_2"] == [f"foreground_2.{c}" for c in "RGBA"]
    assert (side["alpha_mode"], side["transfer"], side["pattern"]) == (
        "premultiplied", "linear", "layers.%05d.exr")
    assert side["composite"]["space"] == "srgb_encoded"


def test_every_output_states_its_own_layers_alpha(tmp_path, two_fg):
    """One truth per layer: an output's has_alpha and alpha_mode are its layer's, the multi-layer
    EXR included (whose file-wide sidecar lists the groups with a matte), and the pixels agree."""
    import OpenEXR

    layers, alphas = two_fg
    ls = write_layer_set(tmp_path, layers, alphas, fps=16, formats=FORMATS)
    for layer in ls.manifest["layers"]:
        for out in layer["outputs"]:
            claim = (out["format"], out["has_alpha"], out["alpha_mode"] is not None)
            assert claim == (out["format"], layer["has_alpha"], layer["has_alpha"]), layer["name"]
    side = json.loads((ls.path / "exr_multilayer" / "sequence.json").read_text())
    assert side["has_alpha"] is True and side["alpha_layers"] == ["foreground_1", "foreground_2"]
    assert "alpha_layers" not in ls.output("foreground_1", "exr_multilayer")
    frame = OpenEXR.File(str(ls.files(ls.output("full", "exr_multilayer"))[2]),
                         separate_channels=True).channels()
    for name in layers:  # a layer that says has_alpha false has A = 1 everywhere in its group
        a = frame[f"{name}.A"].pixels
        if ls.layer(name)["has_alpha"]:
            assert np.abs(a - alphas[name][2]).max() < 1e-6 and a.min() == 0.0
        else:
            assert np.all(a == 1.0)

    bad = json.loads(json.dumps(ls.manifest))
    full = next(o for o in bad["layers"][0]["outputs"] if o["format"] == "exr_multilayer")
    full["has_alpha"] = True  # what schema 2 wrote: the whole file's flag
    assert any("has_alpha must be the layer's own (False)" in p for p in validate_manifest(bad))


@pytest.mark.parametrize("formats, reads, why", [
    (["png16", "prores"], {"background": "png16", "foreground_1": "png16", "foreground_2": "png16"},
     None),
    (["prores", "webm"], {"background": "prores_422_hq", "foreground_1": "prores_4444",
                          "foreground_2": "prores_4444"}, None),
    (["webm"], None, "decodes VP9 WebM without its alpha"),
    (["h264"], None, "the foregrounds have no file in this set"),
    (["webm", "h264"], None, "decodes VP9 WebM without its alpha"),
])
def test_comp_says_what_it_reads_or_why_none(tmp_path, two_fg, formats, reads, why):
    layers, alphas = two_fg
    ls = write_layer_set(tmp_path, layers, alphas, fps=16, formats=formats)
    comp = ls.manifest["comp"]
    assert (comp["reads"], (ls.path / "blender_comp.py").is_file()) == (reads, why is None)
    if why is None:
        assert comp["blender"] == "blender_comp.py" and comp["why_none"] is None
        script = (ls.path / "blender_comp.py").read_text()
        for fmt in set(reads.values()):  # the script reads what the manifest says
            assert f"'format': '{fmt}'" in script
    else:
        assert comp["blender"] is None and why in comp["why_none"]
        assert "add png16, an exr format or prores" in comp["why_none"]
    no_bg = write_layer_set(tmp_path, {k: v for k, v in layers.items() if k != "background"},
                            alphas, fps=16, formats=formats)
    assert "no 'background' layer" in no_bg.manifest["comp"]["why_none"]

    bad = json.loads(json.dumps(ls.manifest))
    bad["comp"] = {"blender": None}
    assert any("must say why in comp.why_none" in p for p in validate_manifest(bad))
