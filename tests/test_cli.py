import json
import subprocess
import sys
from pathlib import Path

import pytest

from layert2v_core.tiny import write_tiny_model_files

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "layert2v_core", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_cli_uses_the_built_in_demo_model_without_weights(tmp_path):
    res = run_cli("generate", "--prompt", "a red circle moving right over blue stripes", "--bg-prompt", "blue stripes",
                  "--fg-prompt", "a red circle moving right", "--steps", "2", "--formats", "png8", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-2000:]
    assert "built-in demo model" in res.stderr
    folder = Path(res.stdout.strip().split("wrote ", 1)[1])
    manifest = json.loads((folder / "layers.json").read_text())
    assert manifest["frame_count"] == 17  # the demo model's native size is the default
    assert {"full", "background", "foreground_1"} <= {layer["name"] for layer in manifest["layers"]}


def test_cli_refuses_a_partial_set_of_weights(tmp_path):
    paths = write_tiny_model_files(tmp_path / "models", max_foregrounds=1)
    out = tmp_path / "out"
    res = run_cli("generate", "--prompt", "a cat", "--bg-prompt", "grass", "--fg-prompt", "a cat",
                  "--dit", str(paths["dit"]), "--out", str(out))
    assert res.returncode != 0
    assert "--vae" in res.stderr and "--adapter" in res.stderr and "nothing is downloaded" in res.stderr
    assert not out.exists()


def test_cli_generates_a_layer_set(tmp_path):
    paths = write_tiny_model_files(tmp_path / "models", max_foregrounds=2)
    out = tmp_path / "out"
    res = run_cli("generate", "--prompt", "a dog and a bird", "--bg-prompt", "beach", "--fg-prompt", "a dog",
                  "--fg-prompt", "a bird", "--frames", "5", "--width", "32", "--height", "32", "--steps", "2",
                  "--formats", "png8,prores", "--dit", str(paths["dit"]), "--vae", str(paths["vae"]),
                  "--adapter", str(paths["adapter"]), "--text-encoder", str(paths["text_encoder"]), "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    folder = Path(res.stdout.strip().split("wrote ", 1)[1])
    manifest = json.loads((folder / "layers.json").read_text())
    names = {layer["name"] for layer in manifest["layers"]}
    assert {"full", "background", "foreground_1", "foreground_2"} <= names
    assert manifest["frame_count"] == 5 and manifest["seed"] == 0


def test_cli_bad_frames_names_parameter_and_writes_nothing(tmp_path):
    paths = write_tiny_model_files(tmp_path / "models", max_foregrounds=1)
    out = tmp_path / "out"
    res = run_cli("generate", "--prompt", "a", "--bg-prompt", "b", "--fg-prompt", "c", "--frames", "8",
                  "--dit", str(paths["dit"]), "--vae", str(paths["vae"]), "--adapter", str(paths["adapter"]),
                  "--text-encoder", str(paths["text_encoder"]), "--out", str(out))
    assert res.returncode == 2 and "frames=8" in res.stderr
    assert not out.exists() or not any(out.iterdir())


def test_cli_variants_decompose_and_trajectory(tmp_path):
    """Decompose a given video and guide two foregrounds with crossing boxes, on the built-in demo model."""
    import torch

    from layert2v_core.export import write_prores

    clip = tmp_path / "full.mov"
    write_prores(clip, torch.rand(17, 64, 64, 3), None, fps=8)
    boxes = '{"1": [[0, 0.0, 0.3, 0.4, 0.7], [16, 0.6, 0.3, 1.0, 0.7]], "2": [[0, 0.6, 0.3, 1.0, 0.7], [16, 0.0, 0.3, 0.4, 0.7]]}'
    res = run_cli("generate", "--prompt", "a red circle and a blue square", "--bg-prompt", "green stripes",
                  "--fg-prompt", "a red circle", "--fg-prompt", "a blue square", "--steps", "2",
                  "--full-video", str(clip), "--trajectories", boxes, "--formats", "png8", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((Path(res.stdout.strip().split("wrote ", 1)[1]) / "layers.json").read_text())
    assert {"foreground_1", "foreground_2"} <= {layer["name"] for layer in manifest["layers"]}


def test_cli_fg_video_without_alpha_is_refused(tmp_path):
    import torch

    from layert2v_core.export import write_prores

    clip = tmp_path / "opaque.mov"
    write_prores(clip, torch.rand(17, 64, 64, 3), None, fps=8)
    res = run_cli("generate", "--prompt", "a", "--bg-prompt", "b", "--fg-prompt", "c", "--steps", "1",
                  "--fg-video", str(clip), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "no alpha channel" in res.stderr


@pytest.mark.parametrize("flag", ["--fg-video", "--bg-video"])
def test_cli_background_for_foreground_and_foreground_for_background(tmp_path, flag):
    import torch

    from layert2v_core.export import write_prores

    clip = tmp_path / "given.mov"
    alpha = torch.linspace(0, 1, 64).expand(17, 64, 64).contiguous() if flag == "--fg-video" else None
    rgb = torch.rand(17, 64, 64, 3)
    write_prores(clip, rgb if alpha is None else rgb * alpha[..., None], alpha, fps=8,
                 **({"alpha_mode": "straight"} if alpha is not None else {}))
    res = run_cli("generate", "--prompt", "a red circle over blue stripes", "--bg-prompt", "blue stripes",
                  "--fg-prompt", "a red circle", "--steps", "2", flag, str(clip), "--formats", "png8",
                  "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr[-2000:]
