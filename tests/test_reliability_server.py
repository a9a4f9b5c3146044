"""Reliability through the real ComfyUI server (issue 9): bad workflows, cancel during export, long runs.

Every bad workflow must come back as a 400 at validation or as one readable line in /history that
names the input, leave nothing in the output folder, and leave the server answering the next prompt.
Run with `-s` to see the table of cases and the memory curve.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import pytest

from comfyhost.client import PromptRejected
from test_comfy_nodes import api_workflow, error_message

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")
LONG_PROMPT = ("a red circle moving right over blue stripes, " * 500)[:20_000]
PREFIX = "reliability_"  # every model file this module adds starts with it, and is removed afterwards


# ---- helpers -----------------------------------------------------------------------------------------
def snapshot(folder: Path) -> set[str]:
    """Every file and folder under the output folder, hidden ones (partial writes) included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.exists() else set()


def execution_error(entry: dict) -> dict:
    for kind, data in entry["status"].get("messages", []):
        if kind == "execution_error":
            return data
    return {}


def validation_text(body) -> str:
    """The node errors of a 400 answer as one string (what the UI shows next to the nodes)."""
    if not isinstance(body, dict):
        return str(body)
    parts = []
    for node_id, node in (body.get("node_errors") or {}).items():
        for err in node.get("errors", []):
            parts.append(f"[{node_id} {node.get('class_type', '')}] {err.get('message', '')}: {err.get('details', '')}")
    return " | ".join(parts) or json.dumps(body.get("error", body))


def base(server, **sampler) -> dict:
    """The shipped K = 1 workflow at test size (32x32, 5 frames, 2 steps) on the tiny random model
    files of tests/comfyhost/models.py (max_foregrounds=2), whatever model the shipped file names."""
    api = api_workflow(server, "layered_t2v", **sampler)
    edit(api, first_of(api, "LayerT2VLoadModel"), dit_name="tiny_wan_dit.safetensors", adapter_name="tiny_layert2v")
    edit(api, first_of(api, "LayerT2VLoadVAE"), vae_name="tiny_wan_vae.safetensors", adapter_name="tiny_layert2v")
    edit(api, first_of(api, "LayerT2VLoadTextEncoder"), folder="tiny_umt5", text_len=16)
    return api


def with_nodes(api: dict, drop: tuple[str, ...] = (), **nodes) -> dict:
    for node_id in drop:
        del api[node_id]
    api.update({node_id.lstrip("n"): spec for node_id, spec in nodes.items()})
    return api


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def edit(api: dict, node_id: str, **inputs) -> dict:
    api[node_id]["inputs"].update(inputs)
    return api


def drop_input(api: dict, node_id: str, name: str) -> dict:
    del api[node_id]["inputs"][name]
    return api


def first_of(api: dict, class_type: str) -> str:
    return next(k for k, v in api.items() if v["class_type"] == class_type)


def memory_estimate_wired() -> bool:
    """layert2v_core/memory.py exists and LayerT2VPipeline uses it (another change adds it)."""
    return (ROOT / "layert2v_core" / "memory.py").is_file() and \
        "memory" in (ROOT / "layert2v_core" / "pipeline.py").read_text()


@dataclass
class Case:
    name: str
    build: Callable[[object], dict]
    names: tuple[str, ...] = ()           # what the message must contain: the input, and the value when useful
    ok: bool = False                      # a valid edge case: must succeed
    check: Optional[Callable[[object, dict], str]] = None   # extra check of a success; returns a problem or ""
    guard: Optional[Callable[[], str]] = None               # returns why the case must not be sent, or ""


@dataclass
class Outcome:
    case: Case
    got: str = ""
    message: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def truncation_warned(server, entry) -> str:
    log = server.log_text()
    if "prompt 'foreground_1'" in log and "it is cut" in log:
        return ""
    return "no truncation warning naming prompt 'foreground_1' in the server log"


def absurd_size_guard() -> str:
    if memory_estimate_wired():
        return ""
    return ("layert2v_core/memory.py is not wired into LayerT2VPipeline.sample_latent yet: a 4096x4096x1025 "
            "request would allocate ~17 GB of noise and could OOM-kill the server, so it was not sent")


def split_of(latent_source: list, index: int = 1, output=3) -> dict:
    return {"n10": node("LayerT2VSplitLayers", layered_latent=latent_source, foreground_index=index),
            "n11": node("PreviewAny", source=["10", output])}


def nan_compose(image_nan: bool) -> Callable:
    def build(server) -> dict:
        return {
            "1": node("EmptyImage", width=32, height=32, batch_size=1, color=0),
            "2": node("ImageBlend", image1=["1", 0], image2=["1", 0], blend_factor=NAN if image_nan else 0.5,
                      blend_mode="normal"),
            "3": node("SolidMask", value=1.0 if image_nan else NAN, width=32, height=32),
            "4": node("LayerT2VComposeRGBA", foreground=["2", 0], alpha=["3", 0], input_is="premultiplied"),
            "5": node("PreviewImage", images=["4", 0]),
        }
    return build


def k_prompts(server, k: int) -> dict:
    api = base(server)
    return edit(api, first_of(api, "LayerT2VPrompts"), num_foregrounds=k, foreground_2="a blue square",
                foreground_3="a green star")


CASES = [
    # -- frames, size, steps, guidance (Layered Sampler)
    Case("frames=6", lambda s: base(s, frames=6), ("frames",)),  # 0 is "the model's own" (issue 22)
    Case("frames=-3", lambda s: base(s, frames=-3), ("frames",)),
    Case("frames=8 (not 4k+1)", lambda s: base(s, frames=8), ("frames=8", "4k+1")),
    Case("frames=2 (not 4k+1)", lambda s: base(s, frames=2), ("frames=2", "4k+1")),
    Case("width=40 (not x16)", lambda s: base(s, width=40), ("width=40", "multiple of 16")),
    Case("height=24 (not x16)", lambda s: base(s, height=24), ("height=24", "multiple of 16")),
    Case("width=8 (below min)", lambda s: base(s, width=8), ("width",)),
    Case("width=8192 (above max)", lambda s: base(s, width=8192), ("width",)),
    Case("4096x4096x1025 (memory estimate)", lambda s: base(s, width=4096, height=4096, frames=1025),
         ("width=4096", "height=4096", "frames=1025", "GiB needed"), guard=absurd_size_guard),
    Case("cfg=NaN", lambda s: base(s, cfg=NAN), ("cfg=nan",)),
    Case("seed=-1", lambda s: base(s, seed=-1), ("seed",)),
    Case("sampler='dpm'", lambda s: base(s, sampler="dpm"), ("sampler",)),
    # -- prompts and K
    Case("K=3 above the model's max (2)", lambda s: k_prompts(s, 3), ("num_foregrounds=3", "max_foregrounds=2")),
    Case("K=4 above the node's max", lambda s: k_prompts(s, 4), ("num_foregrounds",)),
    Case("empty full prompt", lambda s: edit(base(s), "4", full=""), ("'full'", "empty")),
    Case("whitespace background prompt", lambda s: edit(base(s), "4", background="  \n\t "), ("'background'", "empty")),
    Case("K=2 with empty foreground_2", lambda s: edit(k_prompts(s, 2), "4", foreground_2=""), ("'foreground_2'", "empty")),
    Case("no text encoder connected", lambda s: drop_input(base(s), "4", "text_encoder"), ("text encoder",)),
    Case("20,000-character prompt (cut, warned)", lambda s: edit(base(s, seed=101), "4", foreground_1=LONG_PROMPT),
         ok=True, check=truncation_warned),
    Case("emoji prompt", lambda s: edit(base(s, seed=102), "4", foreground_1="🐱 a cat 🚀🌈 ✨", full="🌊🏖️ beach 🐱"),
         ok=True),
    Case("mixed scripts", lambda s: edit(base(s, seed=103), "4", full="a cat 猫 кошка قطة बिल्ली on the beach",
                                         background="砂浜 пляж شاطئ"), ok=True),
    # -- model files
    Case("missing DiT file", lambda s: edit(base(s), "1", dit_name="wan2.1_t2v_1.3B_fp16.safetensors"), ("dit_name",)),
    Case("missing text encoder folder", lambda s: edit(base(s), "3", folder="umt5_xxl"), ("folder",)),
    Case("missing adapter", lambda s: edit(base(s), "1", adapter_name="no_such_adapter"), ("adapter", "no_such_adapter")),
    Case("truncated DiT safetensors", lambda s: edit(base(s), "1", dit_name=PREFIX + "truncated_dit.safetensors"),
         ("truncated_dit.safetensors", "truncated")),
    Case("empty DiT file", lambda s: edit(base(s), "1", dit_name=PREFIX + "empty_dit.safetensors"),
         ("empty_dit.safetensors",)),
    Case("VAE file given as DiT", lambda s: edit(base(s), "1", dit_name=PREFIX + "vae_as_dit.safetensors"),
         ("vae_as_dit.safetensors", "not a Wan2.1 transformer")),
    Case("DiT file given as VAE", lambda s: edit(base(s), "2", vae_name=PREFIX + "dit_as_vae.safetensors"),
         ("dit_as_vae.safetensors", "not a Wan2.1 vae")),
    Case("random bytes as VAE", lambda s: edit(base(s), "2", vae_name=PREFIX + "garbage_vae.safetensors"),
         ("garbage_vae.safetensors",)),
    Case("adapter with broken layert2v_config.json", lambda s: edit(base(s), "1", adapter_name=PREFIX + "bad_json_adapter"),
         ("layert2v_config.json", "not valid JSON")),
    # -- latents of another layout (Split Layers, Decode Alpha)
    Case("plain LATENT to Split Layers", lambda s: with_nodes(base(s), ("6", "7"),
         n9=node("EmptyLatentImage", width=32, height=32, batch_size=1), **split_of(["9", 0])),
         ("layered_latent", "no layer layout")),
    Case("time-trimmed latent to Split Layers", lambda s: with_nodes(base(s), ("6", "7"),
         n9=node("TrimVideoLatent", samples=["5", 0], trim_amount=1), **split_of(["9", 0])),
         ("layered_latent", "does not match its layout")),
    Case("upscaled latent to Split Layers", lambda s: with_nodes(base(s), ("6", "7"),
         n9=node("LatentUpscaleBy", samples=["5", 0], upscale_method="nearest-exact", scale_by=2.0), **split_of(["9", 0])),
         ("layered_latent", "does not match its layout")),
    Case("split foreground to Split Layers", lambda s: with_nodes(base(s), ("6", "7"),
         n9=node("LayerT2VSplitLayers", layered_latent=["5", 0], foreground_index=1), **split_of(["9", 2])),
         ("layered_latent", "no layer layout")),
    Case("foreground_index=2 with K=1", lambda s: with_nodes(base(s), ("6", "7"), **split_of(["5", 0], index=2)),
         ("foreground_index=2",)),
    Case("whole latent to Decode Alpha", lambda s: with_nodes(base(s), ("6", "7"),
         n9=node("LayerT2VDecodeAlpha", layert2v_vae=["2", 0], mask_latent=["5", 0]),
         n11=node("PreviewAny", source=["9", 0])), ("mask_latent", "Split Layers")),
    # -- images
    Case("NaN in foreground image", nan_compose(image_nan=True), ("foreground", "NaN")),
    Case("NaN in alpha mask", nan_compose(image_nan=False), ("alpha", "NaN")),
    # -- the workflow JSON itself (validated by the server before anything runs)
    Case("unknown node type", lambda s: with_nodes(base(s), n9=node("LayerT2VNoSuchNode", x=1)), ("LayerT2VNoSuchNode",)),
    Case("link to a missing node", lambda s: edit(base(s), "6", layered_latent=["99", 0]), ("99",)),
    # -- export (Save Layers)
    Case("fps=0", lambda s: edit(base(s), "7", fps=0.0), ("fps",)),
    Case("fps=NaN", lambda s: edit(base(s), "7", fps=NAN), ("fps", "nan")),
    Case("filename_prefix '../../x'", lambda s: edit(base(s), "7", filename_prefix="../../x"), ("filename_prefix", "'..'")),
    Case("filename_prefix absolute", lambda s: edit(base(s), "7", filename_prefix="/tmp/layert2v_abs/x"),
         ("filename_prefix", "absolute")),
    Case("filename_prefix empty", lambda s: edit(base(s), "7", filename_prefix=""), ("filename_prefix", "empty")),
    Case("filename_prefix 'new_folder/my layers'", lambda s: edit(base(s), "7", filename_prefix="new_folder/my layers"),
         ("filename_prefix", "my layers")),
    Case("every export format off", lambda s: edit(base(s), "7", png16=False, png8=False, exr_half=False,
                                                   prores_4444=False, webm_alpha=False, h264_preview=False),
         ("format",)),
]


@pytest.fixture(scope="module")
def bad_model_files(comfy_server):
    models = comfy_server.base_dir / "models"
    dit = (models / "diffusion_models" / "tiny_wan_dit.safetensors").read_bytes()
    vae = (models / "vae" / "tiny_wan_vae.safetensors").read_bytes()
    files = {
        models / "diffusion_models" / f"{PREFIX}truncated_dit.safetensors": dit[: len(dit) // 2],
        models / "diffusion_models" / f"{PREFIX}empty_dit.safetensors": b"",
        models / "diffusion_models" / f"{PREFIX}vae_as_dit.safetensors": vae,
        models / "vae" / f"{PREFIX}dit_as_vae.safetensors": dit,
        models / "vae" / f"{PREFIX}garbage_vae.safetensors": bytes(range(256)) * 64,
    }
    adapter = models / "layert2v" / f"{PREFIX}bad_json_adapter"
    adapter.mkdir()
    shutil.copy(models / "layert2v" / "tiny_layert2v" / "dit_adapter.safetensors", adapter)
    (adapter / "layert2v_config.json").write_text('{"max_foregrounds": 2, ')
    for path, data in files.items():
        path.write_bytes(data)
    yield
    for path in files:
        path.unlink(missing_ok=True)
    shutil.rmtree(adapter, ignore_errors=True)


def run_case(server, case: Case) -> Outcome:
    out = Outcome(case)
    if case.guard and (why := case.guard()):
        out.got, out.problems = "not sent", [why]
        return out
    before = snapshot(server.output_dir)
    try:
        entry = server.wait(server.queue_prompt(case.build(server)), timeout=180)
    except PromptRejected as rejected:
        out.got, out.message = "400 at validation", validation_text(rejected.body)
        text = json.dumps(rejected.body)
        if case.ok:
            out.problems.append("a valid request was refused")
        out.problems += [f"400 does not mention {n!r}" for n in case.names if n not in text]
    else:
        status = entry["status"]["status_str"]
        error = execution_error(entry)
        out.message = error.get("exception_message", "").strip()
        if status == "success":
            out.got = "success"
            if not case.ok:
                out.problems.append("bad input ran to success")
            elif case.check and (problem := case.check(server, entry)):
                out.problems.append(problem)
        else:
            out.got = f"error in /history ({error.get('node_type', '?')})"
            if case.ok:
                out.problems.append(f"failed: {out.message}")
            else:
                out.problems += [f"message does not mention {n!r}" for n in case.names if n not in out.message]
                if not error.get("exception_type", "").endswith("LayerT2VInputError"):
                    out.problems.append(f"not a readable input error but {error.get('exception_type')}")
                if "\n" in out.message or "Traceback" in out.message or len(out.message) > 700:
                    out.problems.append("message is not one short line")
    if not case.ok:
        left = snapshot(server.output_dir) - before
        if left:
            out.problems.append(f"left in the output folder: {sorted(left)[:5]}")
    try:
        server.get("/queue")
    except Exception as exc:  # the server must survive every case
        out.problems.append(f"server stopped answering: {exc}")
    return out


def print_table(outcomes: list[Outcome]) -> None:
    print(f"\n{len(outcomes)} bad-input cases through /prompt "
          f"({sum(o.passed for o in outcomes)} pass, {sum(not o.passed for o in outcomes)} fail)")
    print(f"{'#':>3}  {'case':<42} {'outcome':<44} result  message")
    for i, o in enumerate(outcomes, 1):
        message = re.sub(r"\s+", " ", o.message)[:150]
        print(f"{i:>3}  {o.case.name:<42} {o.got:<44} {'PASS' if o.passed else 'FAIL':<6}  {message}")
        for problem in o.problems:
            print(f"{'':>5} !! {problem}")


def test_bad_workflows_are_refused_readably(comfy_server, bad_model_files):
    assert len(CASES) >= 25
    outcomes = [run_case(comfy_server, case) for case in CASES]
    print_table(outcomes)
    entry = comfy_server.wait(comfy_server.queue_prompt(base(comfy_server, seed=104)), timeout=180)
    assert entry["status"]["status_str"] == "success", error_message(entry)  # the next good prompt runs
    failed = [f"{o.case.name}: {'; '.join(o.problems)}" for o in outcomes if not o.passed]
    assert not failed, "\n".join(failed)


# ---- cancel during export ------------------------------------------------------------------------------
def test_interrupt_during_export_stops_the_write_and_leaves_nothing(comfy_server):
    """A long export (every format, 96x96x17) is cancelled once its temporary folder exists."""
    out = comfy_server.output_dir / "LayerT2V"
    api = base(comfy_server, width=96, height=96, frames=17, steps=1, seed=201)
    edit(api, "7", filename_prefix="LayerT2V/cancelled", png16=True, png8=True, exr_half=True, prores_4444=True,
         webm_alpha=True, h264_preview=True)
    before = snapshot(comfy_server.output_dir)
    queued = time.monotonic()
    prompt_id = comfy_server.queue_prompt(api)
    deadline, partial = time.monotonic() + 240, None
    while time.monotonic() < deadline and partial is None:
        partial = next(iter(out.glob(".cancelled*.partial-*")), None) if out.exists() else None
        if comfy_server.history(prompt_id) is not None:
            break
        time.sleep(0.05)
    assert partial is not None, "the export never started (or finished before it could be seen)"
    time.sleep(0.2)  # some frames on disk
    written_at_cancel = sum(1 for p in partial.rglob("*") if p.is_file())
    started = time.monotonic()
    comfy_server.interrupt()
    entry = comfy_server.wait(prompt_id, timeout=120)
    stopped_after = time.monotonic() - started
    print(f"\ninterrupt during export ({started - queued:.1f} s after queueing): {written_at_cancel} file(s) in the temporary folder at Cancel, "
          f"stopped {stopped_after:.2f} s later")
    interrupted = [data for kind, data in entry["status"]["messages"] if kind == "execution_interrupted"]
    assert entry["status"]["status_str"] == "error" and interrupted, entry["status"]
    assert interrupted[0]["node_type"] == "LayerT2VSaveLayers", interrupted[0]  # it landed in the export
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"
    assert snapshot(comfy_server.output_dir) - before == set()  # no partial, nothing under a final name

    entry = comfy_server.wait(comfy_server.queue_prompt(base(comfy_server, seed=202)), timeout=180)
    assert entry["status"]["status_str"] == "success", error_message(entry)


# ---- long runs -------------------------------------------------------------------------------------------
RUNS = 20
RSS_GROWTH_LIMIT_MB = 32.0  # after the first run (which loads the models): allocator noise, not a leak


def test_back_to_back_generations_keep_server_memory_flat(comfy_server):
    curve = []
    started = time.monotonic()
    for i in range(RUNS):
        api = base(comfy_server, seed=1000 + i, steps=2)
        edit(api, "7", filename_prefix="LayerT2V/longrun", png16=False, png8=True, prores_4444=False,
             h264_preview=False)
        entry = comfy_server.wait(comfy_server.queue_prompt(api), timeout=180)
        assert entry["status"]["status_str"] == "success", error_message(entry)
        curve.append(comfy_server.rss_bytes() / 2**20)
    elapsed = time.monotonic() - started
    growth = max(curve[1:]) - curve[0]
    print(f"\nserver RSS after each of {RUNS} generations (MiB, {elapsed:.1f} s in all): "
          + " ".join(f"{v:.0f}" for v in curve))
    print(f"growth after the first run: {growth:+.1f} MiB (max {max(curve):.0f}, limit +{RSS_GROWTH_LIMIT_MB:.0f}); "
          f"last 10 runs: {curve[-1] - curve[-10]:+.1f} MiB")
    assert growth < RSS_GROWTH_LIMIT_MB, curve
    assert not math.isnan(growth)
