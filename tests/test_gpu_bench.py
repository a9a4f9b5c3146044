"""The GPU benchmark's CPU dry run, on a Python path that holds only what the lent GPU machine has
(torch, transformers, peft, accelerate and their requirements; no diffusers, no Pillow, no requests),
and the benchmark's own arithmetic (FLOPs, timing that leaves offload transfers out)."""

import importlib.metadata as md
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
GPU_IMAGE = ("torch", "transformers", "peft", "accelerate")


def requirement_closure(roots) -> dict:
    seen, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def bare_site(target: Path) -> list[str]:
    """Symlinks to the installed files of the GPU image's packages only."""
    dists = requirement_closure(GPU_IMAGE)
    for dist in dists.values():
        base = Path(dist.locate_file(""))
        for top in {f.parts[0] for f in dist.files or []}:
            link = target / top
            if top.endswith(".pth") or top in ("..", "__pycache__") or link.exists() or not (base / top).exists():
                continue
            link.symlink_to(base / top)
    return sorted(dists)


def test_dry_run_passes_on_the_gpu_machines_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    packages = bare_site(site)
    assert "diffusers" not in packages and "pillow" not in packages and "requests" not in packages
    out = tmp_path / "gpu.json"
    res = subprocess.run([sys.executable, "-S", "bench/gpu_generation.py", "--dry-run", "--json", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900,
                         env={"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    vendor = report["results"]["vendor"]
    assert "diffusers-0.42.1-py3-none-any.whl" in vendor["unpacked"] and vendor["placeholders"] == ["PIL"]
    assert not vendor["diffusers_at"].startswith(str(ROOT))  # the carried wheel, not the venv
    failed = [row for row in report["rows"] if "FAILED" in str(row[-1]) or "skipped: " in str(row[-1]) and "budget" in str(row[-1])]
    assert not failed, failed
    results = report["results"]
    assert {"K=1", "K=2", "vanilla", "decode", "step_kinds", "text_encoder"} <= set(results)
    assert {"sdpa", "math"} <= set(results["attention"])
    assert results["K=2"]["tokens"] == results["K=1"]["tokens"] * 6 // 4
    names = [row[0] for row in report["rows"]]
    assert any(n.startswith("setting baseline") for n in names)  # the cache settings from the quality results
    assert "| measurement |" in res.stdout and "DRY RUN" in res.stdout


def test_flops_match_the_papers_job():
    """480.5 TFLOP per DiT forward at 384x672x41, K=1 (DESIGN.md; 961 per CFG-batched step)."""
    from gpu_generation import dit_flops

    from layert2v_core.layout import LayerLayout
    from layert2v_core.weights.wan_single_file import shipped_config

    dit = SimpleNamespace(base=SimpleNamespace(config=SimpleNamespace(**shipped_config("transformer"))))
    flops = dit_flops(LayerLayout(1, 41, 384, 672), dit, text_len=512, batch=1)
    assert flops == pytest.approx(480.5e12, rel=0.01)


def test_sampling_time_leaves_the_offload_out(tmp_path):
    from generation import timed_sample

    from layert2v_core.pipeline import LayerPrompts, LayerT2VPipeline
    from layert2v_core.sampler import SamplerConfig
    from layert2v_core.tiny import TINY_TEXT_LEN, write_tiny_model_files
    from layert2v_core.weights.loading import load_layer_vae, load_layered_dit, load_text_encoder

    paths = write_tiny_model_files(tmp_path, max_foregrounds=1)
    vae = load_layer_vae(paths["vae"], paths["adapter"])
    dit = load_layered_dit(paths["dit"], paths["adapter"], dtype="fp32")
    pipe = LayerT2VPipeline(dit, vae.vae, vae.mask_vae, load_text_encoder(paths["text_encoder"], text_len=TINY_TEXT_LEN),
                            dit_offload_device="cpu")
    moves = []
    real_to = dit.to

    def slow_to(*args, **kwargs):  # a 2.8 GB transfer, as on the GPU, costs real time
        moves.append(args)
        time.sleep(0.5)
        return real_to(*args, **kwargs)
    dit.to = slow_to
    layout = pipe.layout(1, 5, 32, 32)
    cond = pipe.encode_prompts(LayerPrompts("a red cat on grass", "grass", ["a red cat"]))
    start = time.perf_counter()
    latent, seconds = timed_sample(pipe, layout, cond, SamplerConfig(steps=2, cfg=4.0), "cpu")
    wall = time.perf_counter() - start
    assert len(moves) == 2 and torch.isfinite(latent).all()  # moved before and offloaded after
    assert wall - seconds >= 1.0 and seconds < wall - 0.9
