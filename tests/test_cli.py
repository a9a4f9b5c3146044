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


# ---- issue 24: the VAE's strides come from the VAE, the patch from the DiT ----------------------------
def weight_args(paths, **swap) -> list[str]:
    chosen = {**paths, **swap}
    return [arg for key in ("dit", "vae", "adapter", "text_encoder")
            for arg in (f"--{key.replace('_', '-')}", str(chosen[key]))]


@pytest.fixture(scope="module")
def model_4x(tmp_path_factory):
    """A tiny model whose VAE downsamples space by 4 (dim_mult [1, 2, 2], scale_factor_spatial 4), as the demo's."""
    from layert2v_core.tiny import TINY_VAE_4X_CONFIG

    return write_tiny_model_files(tmp_path_factory.mktemp("models_4x"), max_foregrounds=1,
                                  vae_config=TINY_VAE_4X_CONFIG, stem="tiny4x")


def test_cli_4x_vae_model_writes_the_requested_size(tmp_path, model_4x):
    from PIL import Image

    res = run_cli("generate", "--prompt", "a dog on a beach", "--bg-prompt", "beach", "--fg-prompt", "a dog",
                  "--frames", "5", "--width", "64", "--height", "64", "--steps", "2", "--formats", "png8",
                  *weight_args(model_4x), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-2000:]
    folder = Path(res.stdout.strip().split("wrote ", 1)[1])
    manifest = json.loads((folder / "layers.json").read_text())
    assert (manifest["width"], manifest["height"], manifest["frame_count"]) == (64, 64, 5)
    for layer in ("full", "background", "foreground_1"):
        frames = sorted((folder / "png8" / layer).glob("*.png"))
        assert len(frames) == 5, layer
        for frame in frames:
            with Image.open(frame) as image:
                assert image.size == (64, 64), (frame.name, image.size)


def test_cli_size_refusal_names_the_models_strides(tmp_path, model_4x):
    res = run_cli("generate", "--prompt", "a", "--bg-prompt", "b", "--fg-prompt", "c", "--frames", "5",
                  "--width", "36", "--height", "64", *weight_args(model_4x), "--out", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr[-2000:]
    assert "width=36 is not valid: it must be a positive multiple of 8 (the VAE downsamples by 4 and the DiT patch is 2)" \
        in res.stderr


def test_cli_refuses_a_vae_the_model_was_not_trained_with(tmp_path, model_4x):
    from layert2v_core.tiny import TINY_VAE_CONFIG

    plain = write_tiny_model_files(tmp_path / "plain", max_foregrounds=1)  # its VAE downsamples space by 8
    res = run_cli("generate", "--prompt", "a", "--bg-prompt", "b", "--fg-prompt", "c", "--frames", "5",
                  "--width", "64", "--height", "64", *weight_args(model_4x, vae=plain["vae"]), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    error = res.stderr.strip().splitlines()[-1]
    assert error == (f"error: the adapter '{model_4x['adapter']}' was trained with a VAE that downsamples space by 4 "
                     f"and time by 4, but the VAE '{plain['vae']}' downsamples space by 8 and time by 4: load the VAE "
                     "the adapter was trained with"), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and not (tmp_path / "o").exists()

    narrow = write_tiny_model_files(tmp_path / "z8", max_foregrounds=1, stem="z8",
                                    vae_config={**TINY_VAE_CONFIG, "z_dim": 8, "latents_mean": [0.0] * 8,
                                                "latents_std": [1.0] * 8})
    res = run_cli("generate", "--prompt", "a", "--bg-prompt", "b", "--fg-prompt", "c", "--frames", "5",
                  *weight_args(plain, vae=narrow["vae"]), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: the VAE '{narrow['vae']}' makes 8-channel latents but the DiT '{plain['dit']}' takes 16-channel ones: "
        "load the VAE this DiT was trained with")
