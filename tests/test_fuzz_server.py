"""Fuzzing through the real ComfyUI server's POST /prompt (issue 17).

Two parts, both against one graph that wires every LayerT2V node (tiny random model files, 32x32,
5 frames, 2 steps), with only the node under test connected to an output so that ComfyUI's cache
serves everything upstream and each case costs one node's run:

- named cases, one group per failure class the issue lists (hostile model headers, wrong-shape
  adapter tensors, trajectory JSON, given layers that do not fit, lone surrogates, the output
  folder's OS refusals, batched layered latents, a killed export's leftovers) and a few more;
- generated cases: every widget input of every LayerT2V node gets each malformed value of its
  type (wrong type, NaN/inf, out of range, lone surrogate, control characters, 100,000 characters,
  unknown option), a table derived from the live /object_info.

Each case must end as a 400 at validation, a success, or ONE line naming the node and the input (or
file), of type LayerT2VInputError; nothing may be added to the output folder by a refused case, no
hidden work name may stay, and the server must answer afterwards. `-s` prints every case.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import time
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest

from comfyhost.client import PromptRejected
from test_reliability_server import execution_error, node, snapshot, validation_text

ROOT = Path(__file__).resolve().parents[1]
NAN, INF = float("nan"), float("inf")
FUZZ = "fuzz17_"  # every file and folder this module adds starts with it
SINK = "90"

DIT, VAE, ADAPTER, TEXT = "tiny_wan_dit.safetensors", "tiny_wan_vae.safetensors", "tiny_layert2v", "tiny_umt5"
BOXES = '{"1": [[0, 0.1, 0.2, 0.5, 0.8], [4, 0.5, 0.2, 0.9, 0.8]]}'


# ---- the graph -----------------------------------------------------------------------------------------
def graph(**changes) -> dict:
    """Every LayerT2V node, wired; `changes` = {node_id: {input: value}} (a None value drops the input)."""
    sampler = dict(layert2v_model=["1", 0], layer_conditioning=["4", 0], width=32, height=32, frames=5, steps=2,
                   cfg=4.0, shift=3.0, sampler="euler", seed=0)
    api = {
        "1": node("LayerT2VLoadModel", dit_name=DIT, adapter_name=ADAPTER, dtype="fp32", device="cpu"),
        "2": node("LayerT2VLoadVAE", vae_name=VAE, adapter_name=ADAPTER, device="cpu"),
        "3": node("LayerT2VLoadTextEncoder", folder=TEXT, text_len=16, dtype="fp32"),
        "4": node("LayerT2VPrompts", num_foregrounds=1, full="a red circle over blue stripes", background="blue stripes",
                  foreground_1="a red circle", foreground_2="", foreground_3="", negative="", text_encoder=["3", 0]),
        "5": node("LayerT2VSampler", **sampler),
        "6": node("LayerT2VDecodeLayers", layered_latent=["5", 0], layert2v_vae=["2", 0]),
        "7": node("LayerT2VSaveLayers", layers=["6", 0], filename_prefix="LayerT2V/" + FUZZ + "layers", fps=16.0,
                  alpha_mode="straight", png16=False, png8=True, exr_half=False, prores_4444=False, webm_alpha=False,
                  h264_preview=False),
        "8": node("LayerT2VSplitLayers", layered_latent=["5", 0], foreground_index=1),
        "9": node("LayerT2VDecodeAlpha", layert2v_vae=["2", 0], mask_latent=["8", 3]),
        "10": node("LayerT2VGetForeground", layers=["6", 0], foreground_index=1, alpha_mode="straight"),
        "11": node("LayerT2VComposeRGBA", foreground=["10", 0], alpha=["10", 1], input_is="straight"),
        "12": node("LayerT2VRecomposite", background=["6", 2], foreground=["11", 1], alpha=["10", 1]),
        "13": node("LayerT2VGivenLayers", layert2v_vae=["2", 0], foreground=["10", 0], alpha=["10", 1],
                   foreground_index=1, foreground_is="straight", mode="replace"),
        "14": node("LayerT2VTrajectory", layert2v_vae=["2", 0], boxes_json=BOXES, strength=0.8, end_step=1),
        "15": node("LayerT2VSampler", **{**sampler, "seed": 1, "given": ["13", 0], "trajectory": ["14", 0]}),
    }
    for node_id, inputs in changes.items():
        for name, value in inputs.items():
            if value is None:
                api[node_id]["inputs"].pop(name, None)
            else:
                api[node_id]["inputs"][name] = value
    return api


OUTPUT_NODES = {"7"}  # Save Layers is an output itself
# ComfyUI keeps only the current prompt's results cached: these previews keep the expensive chains
# (sampling, decoding, the conditional sampler) in every prompt that leaves them unchanged.
KEEPERS = {"91": ["12", 0], "92": ["9", 0], "93": ["15", 0]}


def ancestors(api: dict, start: str) -> set[str]:
    found, todo = set(), [start]
    while todo:
        current = todo.pop()
        if current in found or current not in api:
            continue
        found.add(current)
        todo += [v[0] for v in api[current]["inputs"].values() if isinstance(v, list) and len(v) == 2
                 and isinstance(v[0], str)]
    return found


def run_only(api: dict, node_id: str, output: int = 0, **extra) -> dict:
    """`node_id` (or a PreviewAny on its output) as the output, what it needs, and the keepers whose
    chains neither hold `node_id` nor change here (a keeper over the node under test would recompute
    its whole chain after each case that evicted it)."""
    api.update(extra)
    default = graph()
    changed = {k for k in default if api.get(k) != default[k]}
    sinks = [node_id] if node_id in OUTPUT_NODES else [SINK]
    if node_id not in OUTPUT_NODES:
        api[SINK] = node("PreviewAny", source=[node_id, output])
    for keeper, source in KEEPERS.items():
        chain = ancestors(default, source[0])
        if node_id not in chain and not chain & changed:
            api[keeper] = node("PreviewAny", source=source)
            sinks.append(keeper)
    wanted = set().union(*(ancestors(api, sink) for sink in sinks))
    return {k: v for k, v in api.items() if k in wanted}


# ---- cases and their outcomes ---------------------------------------------------------------------------
@dataclass
class Case:
    group: str
    name: str
    build: Callable[[object], dict]
    names: tuple[str, ...] = ()          # the message must contain each (input, file, value)
    ok: bool = False                     # a valid edge case: must succeed
    node_type: str = ""                  # the node that must report it (when it matters)
    check: Optional[Callable[[object, dict], str]] = None   # extra check; returns a problem or ""
    skip: Optional[Callable[[], str]] = None                # why it cannot run here, or ""
    depends: Optional[Callable[[], str]] = None             # "#14 ..." while a dependency is missing


@dataclass
class Outcome:
    case: Case
    got: str = ""
    message: str = ""
    seconds: float = 0.0
    problems: tuple[str, ...] = ()
    waived: str = ""   # a failure reported but not counted (its dependency has not landed)

    @property
    def counted_failure(self) -> bool:
        return bool(self.problems) and not self.waived


def partial_names(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".partial-" in p.name) if folder.exists() else []


def run_case(server, case: Case) -> Outcome:
    out = Outcome(case)
    if case.skip and (why := case.skip()):
        out.got, out.waived = "not run", why
        return out
    problems = []
    before = snapshot(server.output_dir)
    started = time.monotonic()
    try:
        prompt_id, node_errors = submit(server, case.build(server))
        entry = server.wait(prompt_id, timeout=120)
        if node_errors:  # the case's output failed validation; ComfyUI ran only the keepers
            raise PromptRejected(200, {"node_errors": node_errors})
    except PromptRejected as rejected:
        out.got, out.message = "400 at validation", validation_text(rejected.body)
        if case.ok:
            problems.append("a valid request was refused")
        problems += [f"400 does not mention {n!r}" for n in case.names if n not in json.dumps(rejected.body)]
    except TimeoutError as exc:
        out.got = "no answer"
        problems.append(f"still running after 120 s: {exc}")
        server.interrupt()
    else:
        error = execution_error(entry)
        out.message = error.get("exception_message", "").strip()
        if entry["status"]["status_str"] == "success":
            out.got = "success"
            if not case.ok:
                problems.append("bad input ran to success")
            elif case.check and (problem := case.check(server, entry)):
                problems.append(problem)
        else:
            out.got = f"error ({error.get('node_type', '?')})"
            problems += standard_problems(error, case)
    out.seconds = time.monotonic() - started
    if out.got != "success" and (added := snapshot(server.output_dir) - before):
        problems.append(f"left in the output folder: {sorted(added)[:4]}")
    if leftovers := partial_names(server.output_dir):
        problems.append(f"work names in the output folder: {leftovers[:4]}")
    try:
        server.get("/queue")
    except Exception as exc:  # noqa: BLE001 - any failure here means the server is gone
        problems.append(f"server stopped answering: {exc}")
    out.problems = tuple(problems)
    if problems and case.depends and (why := case.depends()):
        out.waived = why
    return out


def submit(server, api: dict) -> tuple[str, dict]:
    """POST /prompt -> (prompt_id, node_errors). ComfyUI drops an output that fails validation and
    runs the others (here: the keepers), answering 200 with that output's node_errors."""
    try:
        answer = server.post("/prompt", {"prompt": api, "client_id": server.client_id})
    except urllib.error.HTTPError as error:
        body = error.read().decode("utf-8", errors="replace")
        raise PromptRejected(error.code, json.loads(body) if body.startswith("{") else body) from None
    return answer["prompt_id"], answer.get("node_errors") or {}


def standard_problems(error: dict, case: Case) -> list[str]:
    """What the one-line standard asks of an execution error."""
    message = error.get("exception_message", "").strip()
    problems = []
    if case.ok:
        return [f"failed: {message[:300]}"]
    if not error.get("exception_type", "").endswith("LayerT2VInputError"):
        problems.append(f"not a readable input error but {error.get('exception_type')}: {message[:200]!r}")
    if "\n" in message or "Traceback" in message or len(message) > 700:
        problems.append("not one short line")
    if not message.startswith("LayerT2V "):
        problems.append("does not start with the node's name")
    if ".partial-" in message or re.search(r"/tmp/|pytest-of-|site-packages", message):
        problems.append("names a temporary or internal path")
    if case.node_type and error.get("node_type") != case.node_type:
        problems.append(f"reported by {error.get('node_type')}, not {case.node_type}")
    problems += [f"does not mention {n!r}" for n in case.names if n not in message]
    return problems


def print_table(outcomes: list[Outcome], title: str) -> None:
    counted = [o for o in outcomes if o.got != "not run"]
    print(f"\n{title}: {len(outcomes)} cases, {len(counted)} run, "
          f"{sum(not o.problems for o in counted)} pass, {sum(o.counted_failure for o in counted)} fail, "
          f"{sum(bool(o.waived) for o in outcomes)} waived or not run; {sum(o.seconds for o in outcomes):.1f} s")
    for i, o in enumerate(outcomes, 1):
        verdict = "PASS" if not o.problems and o.got != "not run" else ("WAIVED" if o.waived else "FAIL")
        message = re.sub(r"\s+", " ", o.message)[:160]
        print(f"{i:>4} {o.case.group:<12} {o.case.name[:46]:<46} {o.got[:32]:<32} {o.seconds:5.1f}s {verdict:<6} {message}")
        for problem in o.problems:
            print(f"{'':>6}!! {problem}")
        if o.waived:
            print(f"{'':>6}-- {o.waived}")


# ---- files a hostile user brings ---------------------------------------------------------------------
def header_schema_wired(module: str) -> str:
    """'' once #14's header schema checks the configs `module` reads, else why the case is waived."""
    source = (ROOT / "layert2v_core" / "weights" / module).read_text() if (ROOT / "layert2v_core" / "weights" / module).exists() else ""
    if "header_schema" in source or "check_dit_config" in source or "check_layert2v_config" in source:
        return ""
    return f"depends on #14: layert2v_core/weights/{module} does not check headers with header_schema.py yet"


def unguarded() -> str:
    why = header_schema_wired("wan_single_file.py")
    return (why + "; not sent: without the schema a 10,000,000-block DiT builds for minutes and could OOM the "
            "machine") if why else ""


def hostile_copy(source: Path, target: Path, content) -> Path:
    """`source` rewritten: a dict merges into its embedded config, a str replaces the config text, a
    callable rewrites the file's bytes."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if callable(content):
        target.write_bytes(content(source.read_bytes()))
        return target
    with safe_open(str(source), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = dict(handle.metadata() or {})
    if isinstance(content, dict):
        content = json.dumps({**json.loads(metadata["diffusers_config"]), **content})
    metadata["diffusers_config"] = content
    save_file(tensors, str(target), metadata=metadata)
    return target


def header_length(value: int) -> Callable[[bytes], bytes]:
    return lambda raw: struct.pack("<Q", value) + raw[8:]


def first_tensor_shape(shape: list) -> Callable[[bytes], bytes]:
    """The header claims another shape for its first tensor (data left as it is)."""
    def rewrite(raw: bytes) -> bytes:
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + length])
        header[next(k for k in header if k != "__metadata__")]["shape"] = shape
        text = json.dumps(header).encode()
        return struct.pack("<Q", len(text)) + text + raw[8 + length:]
    return rewrite


def set_config(**changes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        path = folder / "layert2v_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return edit


def config_text(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / "layert2v_config.json").write_text(text)


def without(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def widen_lora(name: str) -> Callable[[Path], None]:
    """Every LoRA pair in `name` gets twice the rank the config says."""
    def edit(folder: Path) -> None:
        from safetensors import safe_open
        from safetensors.torch import save_file
        import torch

        with safe_open(str(folder / name), "pt") as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            metadata = handle.metadata()
        for key, value in tensors.items():
            if "lora_A" in key:
                tensors[key] = torch.cat([value, value])
            elif "lora_B" in key:
                tensors[key] = torch.cat([value, value], dim=1)
        save_file(tensors, str(folder / name), metadata=metadata)
    return edit


DEEP = "[" * 100_000 + "]" * 100_000
# label, which file, its name, the change (dict: config fields, str: config text, callable: bytes),
# what the refusal must name besides the file, and a known issue that waives it
HOSTILE_HEADERS = [
    ("DiT num_layers 10,000,000", "dit", "layers_1e7", {"num_layers": 10_000_000}, ("num_layers",), ""),
    ("DiT num_layers 'abc'", "dit", "layers_abc", {"num_layers": "abc"}, ("num_layers",), ""),
    ("DiT num_attention_heads -2", "dit", "heads_negative", {"num_attention_heads": -2}, ("num_attention_heads",), ""),
    ("VAE latents_mean with 3 values", "vae", "mean_3", {"latents_mean": [0.0, 0.1, 0.2]}, ("latents_mean",), ""),
    ("VAE latents_std all zero", "vae", "std_zero", {"latents_std": [0.0] * 16}, ("latents_std",), ""),
    ("DiT config a list", "dit", "config_list", "[1, 2]", ("JSON object",), ""),
    ("DiT config nested 100,000 deep", "dit", "config_deep", DEEP, ("nested",), ""),
    ("DiT header length 2^62", "dit", "header_2e62", header_length(2**62), ("not a readable safetensors",), ""),
    ("DiT tensor shape 2^31 x 2^31", "dit", "shape_2e31", first_tensor_shape([2**31, 2**31]),
     ("not a readable safetensors",), ""),
]
DIT_ADAPTER, MASK_ADAPTER = "dit_adapter.safetensors", "mask_adapter.safetensors"
# label, loader node, adapter folder name, edit, what the refusal must name besides the folder, known issue
HOSTILE_ADAPTERS = [
    ("adapter text_len 'abc'", "1", "text_len_abc", set_config(text_len="abc"), ("text_len",), ""),
    ("adapter text_len 0", "1", "text_len_0", set_config(text_len=0), ("text_len",), ""),
    ("adapter text_len -5", "1", "text_len_minus5", set_config(text_len=-5), ("text_len",), ""),
    ("adapter dit_lora_rank '32'", "1", "rank_string", set_config(dit_lora_rank="32"), ("dit_lora_rank",), ""),
    ("adapter config nested 100,000 deep", "1", "adapter_deep", config_text(DEEP), ("nested",), ""),
    ("DiT LoRA tensors of twice the rank", "1", "wide_dit_lora", widen_lora(DIT_ADAPTER), (), ""),
    ("mask LoRA tensors of twice the rank", "2", "wide_mask_lora", widen_lora(MASK_ADAPTER), (), ""),
    ("adapter folder without its DiT file", "1", "no_dit_file", without(DIT_ADAPTER), (DIT_ADAPTER,), ""),
]


@pytest.fixture(scope="module")
def hostile_files(comfy_server):
    models = comfy_server.base_dir / "models"
    sources = {"dit": models / "diffusion_models" / DIT, "vae": models / "vae" / VAE}
    made = [hostile_copy(sources[kind], sources[kind].with_name(f"{FUZZ}{stem}.safetensors"), change)
            for _, kind, stem, change, _, _ in HOSTILE_HEADERS]
    adapters = []
    for _, _, stem, edit, _, _ in HOSTILE_ADAPTERS:
        adapters.append(models / "layert2v" / (FUZZ + stem))
        shutil.copytree(models / "layert2v" / ADAPTER, adapters[-1])
        edit(adapters[-1])
    yield
    for path in made:
        path.unlink(missing_ok=True)
    for folder in adapters:
        shutil.rmtree(folder, ignore_errors=True)


# ---- output folders that refuse writes ---------------------------------------------------------------------
@contextlib.contextmanager
def mounted_tmpfs(folder: Path, options: str):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    try:
        yield "" if done.returncode == 0 else f"cannot mount a tmpfs here ({done.stderr.strip()[:80] or 'needs root'})"
    finally:
        if done.returncode == 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)


MOUNT_PROBLEM: dict[str, str] = {}


@pytest.fixture(scope="module")
def refusing_folders(comfy_server):
    out = comfy_server.output_dir
    blocker = out / f"{FUZZ}blocker"
    blocker.write_text("a file where a folder is wanted")
    with mounted_tmpfs(out / f"{FUZZ}readonly", "ro,size=64k") as ro, \
            mounted_tmpfs(out / f"{FUZZ}full", "size=16k") as full:
        MOUNT_PROBLEM.update(readonly=ro, full=full)
        yield
    blocker.unlink(missing_ok=True)


# ---- the named cases ------------------------------------------------------------------------------------------
def save_into(prefix: str, **switches) -> Callable:
    return lambda s: run_only(graph(**{"7": {"filename_prefix": prefix, **switches}}), "7")


def load_case(node_id: str, name: str, value) -> Callable:
    return lambda s: run_only(graph(**{node_id: {name: value}}), node_id)


LOADER_INPUT = {"dit": ("1", "dit_name"), "vae": ("2", "vae_name")}


def trajectory(text: str, **more) -> Callable:
    return lambda s: run_only(graph(**{"14": {"boxes_json": text, **more}}), "14")


def prompts(**inputs) -> Callable:
    return lambda s: run_only(graph(**{"4": inputs}), "4")


def given_alpha_of_size(width: int, height: int) -> Callable:
    def build(s):
        api = graph(**{"13": {"alpha": ["80", 0]}})
        return run_only(api, "13", **{"80": node("SolidMask", value=1.0, width=width, height=height)})
    return build


def given_full_of_size(size: int) -> Callable:
    def build(s):
        api = graph(**{"13": {"full": ["80", 0], "foreground": None, "alpha": None}})
        api["80"] = node("EmptyImage", width=size, height=size, batch_size=5, color=0)
        return run_only(api, "15")
    return build


def batched(target: str) -> Callable:
    """Two layered latents through ComfyUI's Latent Batch, into new Decode / Split nodes."""
    def build(s):
        api = graph()
        api["81"] = node("LatentBatch", samples1=["5", 0], samples2=["5", 0])
        if target == "alpha":  # Decode Alpha's MASK -> image -> its batch size (frames) in the preview
            api["84"] = node("LayerT2VSplitLayers", layered_latent=["81", 0], foreground_index=1)
            api["85"] = node("LayerT2VDecodeAlpha", layert2v_vae=["2", 0], mask_latent=["84", 3])
            api["82"] = node("MaskToImage", mask=["85", 0])
            api["83"] = node("GetImageSize", image=["82", 0])
            return run_only(api, "83", output=2)
        api["86"] = node("LayerT2VDecodeLayers", layered_latent=["81", 0], layert2v_vae=["2", 0])
        return run_only(api, "86")
    return build


def preview_text(entry: dict) -> str:
    return "".join(entry["outputs"].get(SINK, {}).get("text", []))


def frames_are(expected: int) -> Callable:
    return lambda server, entry: "" if preview_text(entry) == str(expected) else \
        f"Decode Alpha gave {preview_text(entry)!r} frames, expected {expected} (both generations)"


LEFTOVERS = {"dead": f".{FUZZ}layers.partial-0123abcd", "live": f".{FUZZ}layers.partial-0badc0de",
             "foreign": f".{FUZZ}layers.partial-notours"}
_held_lock: list = []


def plant_leftovers(server) -> dict:
    """What a kill -9 mid-export leaves, one held by a live writer (this process), and a look-alike."""
    folder = server.output_dir / "LayerT2V"
    folder.mkdir(exist_ok=True)
    for key, name in LEFTOVERS.items():
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "frame.00000.png").write_bytes(b"half a frame")
    fd = os.open(folder / LEFTOVERS["live"], os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held_lock.append(fd)
    return run_only(graph(**{"7": {"filename_prefix": "LayerT2V/" + FUZZ + "layers"}}), "7")


def leftovers_handled(server, entry) -> str:
    folder = server.output_dir / "LayerT2V"
    present = {key: (folder / name).exists() for key, name in LEFTOVERS.items()}
    for fd in _held_lock:
        os.close(fd)
    _held_lock.clear()
    for name in LEFTOVERS.values():
        shutil.rmtree(folder / name, ignore_errors=True)
    wanted = {"dead": False, "live": True, "foreign": True}
    return "" if present == wanted else f"after the export: {present}, wanted {wanted}"


def mount_skip(which: str) -> Callable:
    return lambda: MOUNT_PROBLEM.get(which, "the mount fixture did not run")


# Ordered so that cases changing nothing upstream run first and those changing the loaders last:
# each change of an upstream node costs one recomputation of what follows it.
NAMED = [
    # -- the output folder's OS refusals
    Case("output", "name too long (250 characters)", save_into("LayerT2V/" + "n" * 250),
         ("filename_prefix", "output/LayerT2V", "too long", "shorter name")),
    Case("output", "prefix through an existing file", save_into(f"{FUZZ}blocker/layers"),
         ("filename_prefix", f"output/{FUZZ}blocker is a file", "move that file")),
    Case("output", "read-only folder", save_into(f"{FUZZ}readonly/layers"),
         ("filename_prefix", f"output/{FUZZ}readonly", "read-only", "writable"), skip=mount_skip("readonly")),
    Case("output", "disk full mid-export", save_into(f"{FUZZ}full/layers", png16=True, prores_4444=True),
         ("filename_prefix", f"output/{FUZZ}full", "full disk", "free some space"), skip=mount_skip("full")),
    # -- batches of layered latents
    Case("batch", "LatentBatch of two -> Decode Layers", batched("decode"), ("layered_latent", "batch of 2")),
    Case("batch", "LatentBatch of two -> Split -> Decode Alpha", batched("alpha"), ok=True, check=frames_are(10)),
    # -- a killed export's leftovers
    Case("leftovers", "dead writer's partial removed, live one kept", plant_leftovers, ok=True, check=leftovers_handled),
    # -- found while fuzzing
    Case("found", "foreground_index 3 with K=1 (Get Foreground)", load_case("10", "foreground_index", 3),
         ("foreground_index=3",)),
    Case("found", "K=0 prompts", prompts(num_foregrounds=0), ("num_foregrounds",)),
    # -- trajectory JSON
    Case("trajectory", "100,000-deep nesting", trajectory("[" * 100_000 + "]" * 100_000), ("boxes_json", "nested")),
    Case("trajectory", "Infinity in a box", trajectory('{"1": [[0, 0, 0, Infinity, 1]]}'), ("boxes_json", "Infinity")),
    Case("trajectory", "NaN frame", trajectory('{"1": [[NaN, 0, 0, 1, 1]]}'), ("boxes_json", "NaN")),
    Case("trajectory", "frame 1e300", trajectory('{"1": [[1e300, 0, 0, 1, 1]]}'), ("boxes_json", "frame")),
    Case("trajectory", "5,000-digit frame", trajectory('{"1": [[' + "9" * 5000 + ', 0, 0, 1, 1]]}'), ("boxes_json",)),
    Case("trajectory", "300 KB of JSON", trajectory('{"1": "' + "x" * 300_000 + '"}'), ("boxes_json", "characters")),
    Case("trajectory", "boxes for foreground 2 with K=1", lambda s: run_only(
        graph(**{"14": {"boxes_json": '{"2": [[0, 0, 0, 0.5, 0.5]]}'}}), "15"),
        ("trajectory", "foreground 2", "1 foreground"), node_type="LayerT2VSampler"),
    Case("trajectory", "strength NaN", trajectory(BOXES, strength=NAN), ("strength",), node_type="LayerT2VTrajectory"),
    Case("trajectory", "a valid path runs", lambda s: run_only(graph(), "15"), ok=True),
    # -- given layers that do not fit
    Case("given", "alpha 48x48 for a 32x32 foreground", given_alpha_of_size(48, 48), ("foreground and alpha", "48x48"),
         node_type="LayerT2VGivenLayers"),
    Case("given", "given full 48x48 for a 32x32 generation", given_full_of_size(48), ("given full", "resize")),
    Case("given", "given foreground 2 with K=1", lambda s: run_only(graph(**{"13": {"foreground_index": 2}}), "15"),
         ("given input", "foreground 2")),
    # -- prompts
    Case("prompt", "lone surrogate in full", prompts(full="a cat \ud83d on a mat"), ("'full'", "broken character")),
    Case("prompt", "lone surrogate in background", prompts(background="\udfff"), ("'background'",)),
    Case("prompt", "lone surrogate in foreground_1", prompts(foreground_1="cat\ud800"), ("'foreground_1'",)),
    Case("prompt", "lone surrogate in negative", prompts(negative="blurry \udc00"), ("'negative'",)),
    Case("prompt", "emoji pair (valid)", prompts(foreground_1="a cat 🐱 on a mat"), ok=True),
]


def known(why: str) -> Optional[Callable[[], str]]:
    return (lambda: why) if why else None


NAMED += [Case("header", label, load_case(*LOADER_INPUT[kind], f"{FUZZ}{stem}.safetensors"), names + (stem,),
               node_type="LayerT2VLoadModel" if kind == "dit" else "LayerT2VLoadVAE", skip=unguarded,
               depends=known(why))
          for label, kind, stem, _, names, why in HOSTILE_HEADERS]
NAMED += [Case("adapter", label, load_case(node_id, "adapter_name", FUZZ + stem), names + (stem,), depends=known(why))
          for label, node_id, stem, _, names, why in HOSTILE_ADAPTERS]


# ---- the generated cases ------------------------------------------------------------------------------------
MALFORMED = {
    "INT": ["12abc", 2.5, NAN, -(2**70), 2**70, None],  # (true is coerced like 2.5: left out for time)
    "FLOAT": ["abc", NAN, INF, -INF, 1e308, -1e308, None],
    "STRING": ["\ud800 lone surrogate", "", "\x00\x01\x1b[31m control", "x" * 100_000, 12345, None, "\u202e%year%/../.."],
    "COMBO": ["no_such_option", "", None, 7, "../../../etc/passwd"],
    "BOOLEAN": ["yes", None],
}
NODE_IDS = {  # downstream first (see NAMED)
    "LayerT2VSaveLayers": "7", "LayerT2VTrajectory": "14", "LayerT2VGivenLayers": "13",
    "LayerT2VRecomposite": "12", "LayerT2VComposeRGBA": "11", "LayerT2VDecodeAlpha": "9",
    "LayerT2VSplitLayers": "8", "LayerT2VGetForeground": "10", "LayerT2VDecodeLayers": "6", "LayerT2VSampler": "5",
    "LayerT2VPrompts": "4", "LayerT2VLoadTextEncoder": "3", "LayerT2VLoadVAE": "2", "LayerT2VLoadModel": "1"}
# Failures found here in other issues' inputs, reported and waived until fixed there.
KNOWN: dict[str, str] = {}


def widget_kind(spec: list) -> Optional[str]:
    kind = spec[0]
    if isinstance(kind, list) or kind == "COMBO":
        return "COMBO"
    return kind if kind in MALFORMED else None


def generated_cases(object_info: dict) -> list[Case]:
    cases = []
    for class_type, node_id in NODE_IDS.items():
        info = object_info[class_type]
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                kind = widget_kind(spec)
                for value in MALFORMED.get(kind, []) if kind else []:
                    label = f"{class_type[8:]}.{name}={_label(value)}"
                    cases.append(Case("generated", label, _setter(node_id, name, value),
                                      depends=known(KNOWN.get(f"{class_type}.{name}", ""))))
    return cases


def _setter(node_id: str, name: str, value) -> Callable:
    def build(server):
        api = graph()
        if value is None:
            api[node_id]["inputs"].pop(name, None)
        else:
            api[node_id]["inputs"][name] = value
        return run_only(api, node_id)
    return build


def _label(value) -> str:
    text = repr(value)
    return text if len(text) <= 18 else text[:15] + "..."


def generated_outcome_ok(outcome: Outcome) -> Outcome:
    """A generated value may be valid after all (ComfyUI coerces, a prompt may be anything): success is
    fine as long as nothing partial is left; a refusal must meet the standard and name the input."""
    if outcome.got == "success":
        outcome.problems = tuple(p for p in outcome.problems if p != "bad input ran to success")
        outcome.waived = outcome.waived if outcome.problems else ""
    return outcome


# ---- the tests ----------------------------------------------------------------------------------------------
def test_named_groups_meet_the_error_standard(comfy_server, hostile_files, refusing_folders):
    outcomes = [run_case(comfy_server, case) for case in NAMED]
    print_table(outcomes, "named cases through POST /prompt")
    assert comfy_server.wait(comfy_server.queue_prompt(run_only(graph(), "7")), timeout=120)["status"]["status_str"] \
        == "success"  # and the next good prompt still runs
    failed = [f"{o.case.group}/{o.case.name}: {'; '.join(o.problems)}" for o in outcomes if o.counted_failure]
    assert not failed, "\n".join(failed)


def test_every_node_input_survives_malformed_values(comfy_server):
    cases = generated_cases(comfy_server.object_info())
    outcomes = []
    info = comfy_server.object_info()
    for case in cases:
        outcome = generated_outcome_ok(run_case(comfy_server, case))
        class_type, name = "LayerT2V" + case.name.split(".", 1)[0], case.name.split(".", 1)[1].split("=", 1)[0]
        # ComfyUI may coerce the value into a valid one (num_foregrounds 2.5 -> 2) that exposes another
        # input's problem (foreground_2 empty): the line must name an input of the node, this one or that.
        inputs = [n for section in info[class_type]["input"].values() if isinstance(section, dict) for n in section]
        if outcome.got.startswith("error") and not any(n in outcome.message for n in inputs):
            outcome.problems += (f"names none of the node's inputs (fuzzed: {name!r})",)
            outcome.waived = case.depends() if case.depends else ""
        outcomes.append(outcome)
    print_table(outcomes, "generated malformed values through POST /prompt")
    kinds = [o.got.split(" (")[0] for o in outcomes]
    print("outcomes: " + ", ".join(f"{kinds.count(k)} {k}" for k in sorted(set(kinds))))
    assert len(cases) >= 200
    failed = [f"{o.case.name}: {'; '.join(o.problems)}" for o in outcomes if o.counted_failure]
    assert not failed, "\n".join(failed[:40])
