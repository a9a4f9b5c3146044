"""Untrusted files and the process boundary (issue 9): crafted pickles never run, manifests and
configs are validated before use, generation makes no network request, and it is deterministic."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from layert2v_core import cli
from layert2v_core.export import LayerSetError, load_layer_set, write_layer_set
from layert2v_core.export.synthetic import soft_rgba_clip
from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder
from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline
from layert2v_core.sampler import SamplerConfig
from layert2v_core.tiny import write_tiny_model_files
from layert2v_core.weights.files import UnsafePickleError, WeightsError, load_any_weights, load_pickle_weights
from layert2v_core.weights.wan_single_file import load_wan_vae
from training.checkpoint import load_checkpoint as load_training_checkpoint


# ---- crafted pickles ---------------------------------------------------------------------------------
class Payload:
    """Unpickling this calls exec(), which writes a marker file: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",)


def crafted(path: Path, marker: Path) -> Path:
    torch.save({"weight": torch.zeros(2), "evil": Payload(marker)}, path)
    return path


def test_the_crafted_pickle_is_armed(tmp_path):
    """Control: an unsafe load really runs the payload, so the refusals below mean something."""
    marker = tmp_path / "control_marker"
    torch.load(crafted(tmp_path / "control.pt", marker), weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("loader", ["load_pickle_weights", "load_any_weights", "wan_vae_pth", "training_checkpoint"])
def test_a_crafted_pickle_is_refused_and_never_runs(tmp_path, loader):
    marker = tmp_path / "marker"
    if loader == "training_checkpoint":  # a resume reads optimizer.pt and rng_rank0.pt
        folder = tmp_path / "step_000002"
        folder.mkdir()
        (folder / "trainer_state.json").write_text('{"step": 2, "batches_per_rank": 2, "seed": 0}')
        crafted(folder / "optimizer.pt", marker)
        call = lambda: load_training_checkpoint(folder, 0)
        name = "optimizer.pt"
    else:
        path = crafted(tmp_path / ("Wan2.1_VAE.pth" if loader == "wan_vae_pth" else "weights.ckpt"), marker)
        call = {"load_pickle_weights": lambda: load_pickle_weights(path),
                "load_any_weights": lambda: load_any_weights(path),
                "wan_vae_pth": lambda: load_wan_vae(path)}[loader]
        name = path.name
    with pytest.raises(UnsafePickleError) as refused:
        call()
    message = str(refused.value)
    print(f"\n[{loader}] {message}")
    assert name in message and "arbitrary code" in message and "exec" in message
    assert not marker.exists()


def test_truncated_pickle_is_a_clear_error(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(WeightsError, match="weights.pt"):
        load_any_weights(path)


# ---- JSON read from disk ---------------------------------------------------------------------------------
@pytest.fixture
def layer_set(tmp_path):
    clip = soft_rgba_clip(frames=5, height=16, width=16)
    return write_layer_set(tmp_path, {"background": clip.background, "foreground_1": clip.premultiplied},
                           {"foreground_1": clip.alpha}, fps=16, formats=["png8"], name="set")


def tamper(layer_set, change) -> Path:
    manifest = json.loads((layer_set.path / "layers.json").read_text())
    change(manifest)
    (layer_set.path / "layers.json").write_text(json.dumps(manifest))
    return layer_set.path


def first_output(m):
    return m["layers"][1]["outputs"][0]


@pytest.mark.parametrize("name, change, expected", [
    ("path leaves the set", lambda m: first_output(m).update(path="../../../etc"), "relative path inside the set"),
    ("absolute path", lambda m: first_output(m).update(path="/etc"), "relative path inside the set"),
    ("pattern with folders", lambda m: first_output(m).update(pattern="../../x.%05d.png"), "without folders"),
    ("pattern with %s", lambda m: first_output(m).update(pattern="%s%s.png"), "one frame number"),
    ("negative first frame", lambda m: first_output(m).update(first_frame=-3), "first_frame"),
    ("frame count differs", lambda m: m.update(frame_count=6), "frame_count"),
    ("string width", lambda m: m.update(width="16"), "width"),
    ("unknown schema", lambda m: m.update(schema="something.else"), "schema"),
    ("layers not a list", lambda m: m.update(layers={"a": 1}), "layers"),
    ("unknown format", lambda m: first_output(m).update(format="gif"), "format"),
])
def test_tampered_manifest_is_refused_with_the_problem_named(layer_set, name, change, expected):
    folder = tamper(layer_set, change)
    with pytest.raises(LayerSetError) as refused:
        load_layer_set(folder)
    assert expected in str(refused.value), str(refused.value)


def test_manifest_that_is_not_json_is_refused(layer_set):
    (layer_set.path / "layers.json").write_text('{"schema": "layert2v.layer_set", ')
    with pytest.raises(LayerSetError, match="not valid JSON"):
        load_layer_set(layer_set.path)


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    return write_tiny_model_files(tmp_path_factory.mktemp("models"), max_foregrounds=2)


@pytest.mark.parametrize("text, expected", [
    ('{"max_foregrounds": 2, ', "not valid JSON"),
    ('{"max_foregrounds": 2, "run_this": "rm -rf /"}', "unknown LayerT2V config key"),
    ('["not", "an", "object"]', "LayerT2V config is list, expected a JSON object"),
])
def test_adapter_config_json_is_validated_before_use(tiny_files, tmp_path, text, expected):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_files["adapter"], adapter)
    (adapter / "layert2v_config.json").write_text(text)
    with pytest.raises((WeightsError, ValueError), match=expected):
        load_layered_dit(tiny_files["dit"], adapter, dtype="fp32")


# ---- no network, determinism ---------------------------------------------------------------------------
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


def _is_loopback(host) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture
def network_blocked(monkeypatch):
    """HF_HUB_OFFLINE=1 and a socket guard: any non-loopback connect or DNS lookup is refused and recorded."""
    attempts: list[str] = []
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def guard(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            attempts.append(f"connect {address}")
            raise OSError(f"network blocked by the test: connect to {address}")

    def connect(sock, address):
        guard(sock, address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        guard(sock, address)
        return real_connect_ex(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            attempts.append(f"getaddrinfo {host!r}")
            raise socket.gaierror(f"network blocked by the test: lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def test_the_socket_guard_catches_a_request(network_blocked):
    """Control: the guard really sees an outgoing request (so an empty record below means none was made)."""
    import urllib.request

    with pytest.raises(Exception):
        urllib.request.urlopen("https://huggingface.co/api/models", timeout=5)
    assert network_blocked


def cli_generate(files, out: Path, seed: int) -> Path:
    code = cli.main(["generate", "--prompt", "a dog and a bird on a beach", "--bg-prompt", "beach",
                     "--fg-prompt", "a dog", "--fg-prompt", "a bird", "--frames", "5", "--width", "32",
                     "--height", "32", "--steps", "3", "--seed", str(seed), "--formats", "png16",
                     "--dit", str(files["dit"]), "--vae", str(files["vae"]), "--adapter", str(files["adapter"]),
                     "--text-encoder", str(files["text_encoder"]), "--out", str(out)])
    assert code == 0
    (folder,) = [p for p in out.iterdir() if not p.name.startswith(".")]
    return folder


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_cli_generation_is_offline_and_deterministic(tiny_files, tmp_path, network_blocked):
    first = png_bytes(cli_generate(tiny_files, tmp_path / "a", seed=7))
    again = png_bytes(cli_generate(tiny_files, tmp_path / "b", seed=7))
    other = png_bytes(cli_generate(tiny_files, tmp_path / "c", seed=8))
    assert network_blocked == []  # no connection and no DNS lookup from loading or generating
    assert len(first) == 4 * 5  # full, background, 2 foregrounds x 5 frames
    assert first == again  # same seed: byte-identical 16-bit frames
    differ = [name for name in first if first[name] != other[name]]
    assert len(differ) == len(first), f"only {len(differ)} of {len(first)} frames changed with the seed"


def test_pipeline_layers_are_bit_identical_for_a_seed(tiny_files, network_blocked):
    dit = load_layered_dit(tiny_files["dit"], tiny_files["adapter"], dtype="fp32")
    layer_vae = load_layer_vae(tiny_files["vae"], tiny_files["adapter"])
    text = load_text_encoder(tiny_files["text_encoder"], text_len=dit.config.text_len, dtype="fp32")
    pipe = LayerT2VPipeline(dit, layer_vae.vae, layer_vae.mask_vae, text)
    prompts = LayerPrompts("a cat on grass", "grass", ["a cat"], negative="blurry")

    def generate(seed):
        layers = pipe(prompts, 5, 32, 32, SamplerConfig(steps=3, cfg=4.0, shift=3.0, sampler="unipc", seed=seed))
        return {**layers.rgb, **layers.alpha}

    a, b, c = generate(11), generate(11), generate(12)
    assert network_blocked == []
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs between two runs with the same seed"
        assert not torch.equal(a[name], c[name]), f"{name} did not change with the seed"
