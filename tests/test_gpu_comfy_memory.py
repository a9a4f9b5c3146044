"""bench/gpu_comfy_memory.py's CPU dry run (ComfyUI 0.30.0 under --cpu, toy sizes) on a Python path holding
only what the lent GPU machine has (torch, transformers, peft, accelerate and their requirements): the
script imports ComfyUI's model management there, runs the whole workflow through the nodes' own memory
calls, and reports every model ComfyUI lists at each step. Eviction, streaming and VRAM need the GPU."""

import json
import subprocess
import sys
from pathlib import Path

from comfyhost.install import MAIN_HOST, ensure_installed
from test_gpu_bench import bare_site

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_lists_our_models_through_each_step_on_the_gpu_machines_packages(tmp_path):
    ensure_installed()
    site = tmp_path / "site"
    site.mkdir()
    packages = bare_site(site)
    assert "pillow" not in packages and "comfy-aimdo" not in packages
    out = tmp_path / "memory.json"
    run = subprocess.run([sys.executable, "-S", "bench/gpu_comfy_memory.py", "--dry-run", "--only", "stock-first",
                          "--comfy", str(MAIN_HOST.comfy_dir), "--worker-timeout", "1800", "--json", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=2400,
                         env={"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == []
    (result,) = report["results"]
    assert report["vendor"]["placeholders"] == ["PIL"] and "comfy_aimdo" in result["placeholders"]
    steps = {row["step"].split(" (")[0]: [m["name"] for m in row["models"]] for row in result["rows"]}
    assert steps["stock model loaded"] == ["Stock"]
    assert steps["DiT loaded for sampling"] == ["LayerT2VDiT", "LayerT2VTextEncoder", "Stock"]
    assert steps["VAE loaded, every layer decoded"][0] == "LayerT2VVAE"
    assert "LayerT2VVAE" not in steps["after the decode"]
    assert steps["after unload_all_models"] == []
    assert set(result["checks"]) >= {"VAE left after decoding", "decoded every layer"}
    assert "| step | allocated GB |" in run.stdout and "all checks passed" in run.stdout
