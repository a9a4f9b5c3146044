"""The error standard below the server (issue 17): hostile trajectory JSON, given layers that do not
fit, broken prompt text, the output folder's OS refusals, and leftovers of a killed writer.

Each refusal is one line that names the input and what to do; none recurses, overflows or leaves a
file behind. The same inputs go through the real server in tests/test_fuzz_server.py.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from layert2v_core.export import write_layer_set
from layert2v_core.export.atomic import OutputFolderError, atomic_output, remove_stale_partials, write_bytes_atomic
from layert2v_core.export.synthetic import soft_rgba_clip
from layert2v_core.layout import LayerLayout
from layert2v_core.text import check_prompt_text
from layert2v_core.trajectory import MAX_KEYFRAME_FRAME, check_foregrounds, parse_trajectories
from layert2v_core.variants import GivenLayers, encode_given

ROOT = Path(__file__).resolve().parents[1]


def load_errors_module():
    """nodes/errors.py on its own: nodes/__init__.py imports ComfyUI, this module does not."""
    from tools.pack_module import load_node_module

    return load_node_module("errors", ("layert2v_core.export.atomic",))


errors = load_errors_module()


def raised_line(node: str, exc: BaseException, **options) -> str:
    with pytest.raises(errors.LayerT2VInputError) as caught:
        with errors.readable_errors(node, **options):
            raise exc
    line = str(caught.value)
    assert "\n" not in line and "Traceback" not in line and len(line) <= errors.MAX_MESSAGE_CHARS, line
    assert line.startswith(node + ": "), line
    return line


# ---- the standard itself -------------------------------------------------------------------------
def test_one_line_hides_work_names_temporary_and_pack_paths():
    text = (f"cannot write /data/out/.layers.partial-0a1b2c3d/png16/x.png\n  (see {errors.PACK_ROOT}/layert2v_core/"
            "export/atomic.py line 3) and /tmp/tmpab12/model.safetensors")
    line = errors.one_line(text, aliases={"/data/out": "output"})
    assert line == "cannot write output/layers/png16/x.png (see atomic.py line 3) and model.safetensors", line


def test_one_line_caps_the_length():
    assert len(errors.one_line("x" * 10_000)) == errors.MAX_MESSAGE_CHARS


@pytest.mark.parametrize("exc, expected", [
    (ValueError("frames=8 is not 4k+1"), "Node: frames=8 is not 4k+1"),
    (KeyError("no segment 'mask_2'"), "Node: no segment 'mask_2'"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/models/x.safetensors"),
     "Node: x.safetensors: No such file or directory; check the name"),
    (RecursionError("maximum recursion depth exceeded"), "Node: the value is nested too deeply"),
    (FileNotFoundError("adapter folder 'x' has no dit_adapter.safetensors"),  # our sentence, not the OS's
     "Node: adapter folder 'x' has no dit_adapter.safetensors"),
])
def test_core_errors_become_one_line(exc, expected):
    assert raised_line("Node", exc).startswith(expected)


def test_a_size_mismatch_dump_names_the_file_and_the_fix():
    dump = ("Error(s) in loading state_dict for LayeredWanTransformer:\n\tsize mismatch for blocks.0.attn1.to_q."
            "lora_A.weight: copying a param with shape torch.Size([8, 32]) from checkpoint, the shape in current model "
            "is torch.Size([4, 32]).\n\tsize mismatch for blocks.0.attn1.to_k.lora_A.weight: copying a param with "
            "shape torch.Size([8, 32]) from checkpoint, the shape in current model is torch.Size([4, 32]).")
    line = raised_line("LayerT2V Load Model", RuntimeError(dump), file="adapter 'my_adapter'")
    assert "adapter 'my_adapter' has 2 tensor(s) of the wrong shape" in line
    assert "(8, 32) but the model needs (4, 32)" in line and "choose the file" in line


def test_a_bug_keeps_its_traceback():
    """Without a user file in play a RuntimeError is not the user's doing: it must stay visible."""
    with pytest.raises(RuntimeError):
        with errors.readable_errors("Node"):
            raise RuntimeError("shape '[2, 3]' is invalid for input of size 5")


# ---- trajectory JSON -------------------------------------------------------------------------------
@pytest.mark.parametrize("text, match", [
    ("[" * 100_000 + "]" * 100_000, "nested 100000 levels"),
    ('{"1": ' + "[" * 50 + "]" * 50 + "}", "nested 51 levels"),
    ('{"1": [[0, 0, 0, Infinity, 1]]}', "Infinity is not a usable number"),
    ('{"1": [[NaN, 0, 0, 1, 1]]}', "NaN is not a usable number"),
    ('{"1": [[0, -Infinity, 0, 1, 1]]}', "-Infinity is not a usable number"),
    ('{"1": [[1e300, 0, 0, 1, 1]]}', "frame 1e+300 must be a whole number"),
    ('{"1": [[1e400, 0, 0, 1, 1]]}', "is not [frame, x0, y0, x1, y1] of finite numbers"),  # parses to inf
    ('{"1": [[-1, 0, 0, 1, 1]]}', "frame -1 must be"),
    ('{"1": [[2.5, 0, 0, 1, 1]]}', "frame 2.5 must be a whole number"),
    ('{"1": [[' + "9" * 5000 + ', 0, 0, 1, 1]]}', "a number is out of range"),
    ('{"1": [[true, 0, 0, 1, 1]]}', "is not [frame"),
    ('{"1": [[0, 0, 0, 1, 1]], "01": [[0, 0, 0, 1, 1]]}', "foreground 1 is given twice"),
    ('{"99999999999999999999": [[0, 0, 0, 1, 1]]}', "foreground '99999999999999999999' is not valid"),
    ('{"١": [[0, 0, 0, 1, 1]]}', "is not valid; use 1..2"),
    ('{"1": "' + "x" * 300_000 + '"}', "characters is more than"),
    ('{"1": [[0, 0, 0, 1, 1]] ', "not valid JSON"),
    ('"\\ud800"', "expected an object"),
])
def test_hostile_trajectory_json_is_refused_fast_in_one_line(text, match):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=match.replace("[", r"\[").replace("(", r"\(").replace("+", r"\+")) as caught:
        parse_trajectories(text, num_foregrounds=2)
    assert time.perf_counter() - started < 1.0
    assert "\n" not in str(caught.value)


def test_a_keyframe_at_the_last_allowed_frame_parses():
    keys = parse_trajectories(json.dumps({"1": [[0, 0, 0, 1, 1], [MAX_KEYFRAME_FRAME, 0, 0, 0.5, 0.5]]}), 1)
    assert keys[1][-1].frame == MAX_KEYFRAME_FRAME


def test_boxes_for_a_foreground_the_generation_lacks_are_reported_on_the_trajectory():
    keys = parse_trajectories('{"2": [[0, 0, 0, 1, 1]]}', num_foregrounds=3)
    with pytest.raises(ValueError, match=r"trajectory input has boxes for foreground 2 but this generation has 1"):
        check_foregrounds(keys, LayerLayout(1, 5, 32, 32))


# ---- given layers ------------------------------------------------------------------------------------
def test_a_foreground_and_alpha_of_different_sizes_are_refused_by_name():
    given = GivenLayers(foregrounds={1: torch.rand(5, 32, 32, 3)}, alphas={1: torch.rand(5, 48, 32)})
    with pytest.raises(ValueError, match=r"given foreground 1 is 5 frame\(s\) of 32x32 but its alpha is 5 frame\(s\) of 32x48"):
        given.segment_frames()


def test_a_given_foreground_beyond_k_is_reported_on_the_given_input():
    given = GivenLayers(foregrounds={2: torch.rand(5, 32, 32, 3)}, alphas={2: torch.rand(5, 32, 32)})
    with pytest.raises(ValueError, match=r"given input has foreground 2 but this generation has 1"):
        encode_given(None, LayerLayout(1, 5, 32, 32), given)  # refused before any encoding


# ---- prompt text ---------------------------------------------------------------------------------------
def test_a_lone_surrogate_is_refused_naming_the_prompt_and_position():
    with pytest.raises(ValueError, match=r"prompt 'foreground_1' has a broken character at position 6"):
        check_prompt_text("foreground_1", "a cat \ud83d on a mat")
    check_prompt_text("full", "a cat 🐱 猫 on a mat")  # whole characters of any script pass


# ---- the output folder's OS refusals ---------------------------------------------------------------------
CLIP = soft_rgba_clip(frames=5, height=16, width=16)


def export(out: Path, name: str = "layers"):
    return write_layer_set(out, {"background": CLIP.background, "foreground_1": CLIP.premultiplied},
                           {"foreground_1": CLIP.alpha}, fps=16, formats=["png8"], name=name)


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_name_too_long_names_the_folder_the_limit_and_the_fix(tmp_path):
    with pytest.raises(OutputFolderError) as caught:
        export(tmp_path, name="n" * 250)
    message = str(caught.value)
    assert f"output folder {tmp_path}" in message and "(250 characters) is too long" in message
    assert "(at most 237 here); use a shorter name" in message and ".partial-" not in message
    assert caught.value.errno == errno.ENAMETOOLONG and everything_under(tmp_path) == []


def test_a_folder_path_through_a_file_names_the_file(tmp_path):
    (tmp_path / "blocker").write_text("not a folder")
    with pytest.raises(OutputFolderError, match=r"blocker is a file, not a folder; choose another name, or move"):
        export(tmp_path / "blocker" / "sub")
    assert everything_under(tmp_path) == ["blocker"]


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "is on a full disk; the partial export was removed; free some space"),
    (errno.EROFS, "is on a read-only file system; choose an output folder on a writable disk"),
    (errno.EACCES, "cannot be written (permission denied)"),
    (errno.EDQUOT, "is over its disk quota"),
])
def test_a_write_refused_mid_export_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, code, words):
    """The file system refuses the third frame, as a disk filling up mid-export does. (The real
    read-only and full file systems are mounted in tests/test_fuzz_server.py where root may mount.)"""
    real_open, writes = io.open, []

    def refusing_open(path, mode="r", *args, **kwargs):
        if "w" in mode and ".partial-" in str(path) and str(path).endswith(".png"):
            writes.append(path)
            if len(writes) == 3:
                raise OSError(code, os.strerror(code), str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", refusing_open)
    with pytest.raises(OutputFolderError) as caught:
        export(tmp_path)
    monkeypatch.undo()
    assert len(writes) == 3, "the writer never opened a third frame: the fault was not injected"
    message = str(caught.value)
    assert message.startswith(f"the output folder {tmp_path} ") and words in message, message
    assert ".partial-" not in message and "\n" not in message and caught.value.errno == code
    assert everything_under(tmp_path) == []


# ---- leftovers of a killed writer --------------------------------------------------------------------------
HOLDER = r"""
import sys, time
from layert2v_core.export.atomic import atomic_output
with atomic_output(sys.argv[1], is_dir=True) as target:
    (target.tmp / "frame.png").write_bytes(b"x")
    print(target.tmp.name, flush=True)
    time.sleep(120)
"""


def start_holder(path: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, proc.stdout.readline().strip()


def test_only_a_dead_writers_own_leftovers_are_removed(tmp_path):
    live, live_name = start_holder(tmp_path / "live")
    dead, dead_name = start_holder(tmp_path / "dead")
    try:
        os.kill(dead.pid, signal.SIGKILL)  # what kill -9 during an export leaves
        dead.wait(30)
        (tmp_path / ".notes.partial-xyz").mkdir()           # not our work name (not 8 hex digits)
        (tmp_path / ".cache").mkdir()                        # someone else's hidden folder
        (tmp_path / "clip.partial-0123abcd").write_text("x")  # not hidden: not ours either
        assert live_name.startswith(".live.partial-") and dead_name.startswith(".dead.partial-")
        assert remove_stale_partials(tmp_path) == [dead_name]
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [live_name, ".notes.partial-xyz", ".cache", "clip.partial-0123abcd"])
    finally:
        live.kill()
        live.wait(30)
    export(tmp_path)  # the next export cleans up after the now-dead holder too
    assert not any(p.name.startswith(".live.partial-") for p in tmp_path.iterdir())


def test_a_small_file_write_holds_its_work_name_until_it_lands(tmp_path):
    path = write_bytes_atomic(tmp_path / "sidecar.json", b"{}")
    assert path.read_bytes() == b"{}" and [p.name for p in tmp_path.iterdir()] == ["sidecar.json"]
    with atomic_output(tmp_path / "clip.mov") as target:
        assert target.tmp.exists()  # created and locked up front, so no cleaner can take it
        assert remove_stale_partials(tmp_path) == []
        target.tmp.write_bytes(b"movie")
    assert target.path.read_bytes() == b"movie"


# ---- given clips on disk (the CLI's --full-video / --fg-video / --bg-video) ------------------------------
def test_a_damaged_image_in_a_clip_folder_is_named(tmp_path):
    from layert2v_core.video_in import read_clip

    (tmp_path / "frame_000.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    with pytest.raises(ValueError, match=r"frame_000.png' cannot be read .*; replace it or remove it from the folder"):
        read_clip(tmp_path, num_frames=1, height=8, width=8)
