"""The built-in demo model, end to end, in one command (CPU, see manifest.json for the measured time):

    python -m training.demo_recipe                 # or: make demo-model
    python -m training.demo_recipe --ablation      # also trains and scores ablation arms a and b
    python -m training.demo_recipe --smoke         # every step at a few optimizer steps (minutes)

Steps (each an ordinary stage entry point with a `training/configs/demo_*.yaml` config):
  stage 0a tiny Wan VAE -> VAE gate (training/demo_vae_gate.py) -> stage 0b tiny Wan T2V DiT (+ its text
  embeddings) -> caption probe (training/caption_probe.py) -> stage 1 mask VAE -> stage 2 (= ablation arm c)
  -> stage 3 (1 to 3 foregrounds) -> evaluation of the final model (training/demo_report.py) -> files into
  layert2v_core/demo_model/. With --ablation: arms a and b and their evaluation after that.
The gates are measured and recorded (<out>/gates/, the manifest); they do not stop the recipe, so a rerun
shows where a recipe breaks. A step whose output already exists is skipped, so a crashed run continues
where it stopped. Resolved configs go to <out>/configs/, logs to <out>/logs/, wall times to <out>/timings.json
(written after every step), loss curves to <out>/loss_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"
DEFAULT_OUT = "output/demo"          # the prefix every demo config's paths start with
DEMO_MODEL_DIR = REPO / "layert2v_core" / "demo_model"


def run_model_files(out: str | Path) -> dict[str, str]:
    """The model files a run folder holds once its stages are done (the final model's adapter: stage 3)."""
    out = Path(out)
    return {"dit": str(out / "stage0_dit/adapter/dit.safetensors"), "vae": str(out / "stage0_vae/adapter/vae.safetensors"),
            "text_encoder": str(out / "stage0_dit/text_encoder"), "adapter": str(out / "stage3/adapter")}


@dataclass
class Step:
    name: str
    module: str
    config: str
    done: str                         # relative to <out>: present -> the step is skipped
    overrides: dict = field(default_factory=dict)


# The ablation (paper Table 3 in miniature), all with stage 2's budget: only the overrides differ.
ARMS = {
    "a_concat": {"output_dir": "output/demo/ablation_a_concat", "model.layert2v.routing": "all",
                 "model.train_layer_adaln": False},
    "b_adaln": {"output_dir": "output/demo/ablation_b_adaln", "model.layert2v.routing": "all"},
}

# The shipped model first (stage 3 on arm c), then the other two ablation arms, so a run cut short still
# leaves a complete model. One process at a time: the two cores give no more throughput to two one-thread
# processes than to one (measured: each ran at half speed).
MODEL_STEPS = [
    Step("stage0_vae", "training.stage0_base", "demo_stage0_vae.yaml", "stage0_vae/adapter/vae.safetensors"),
    Step("stage0_dit", "training.stage0_base", "demo_stage0_dit.yaml", "stage0_dit/adapter/dit.safetensors"),
    Step("stage1", "training.stage1_mask_vae", "demo_stage1.yaml", "stage1/adapter/mask_adapter.safetensors"),
    Step("stage2_c_paper", "training.stage2_joint", "demo_stage2.yaml", "stage2/adapter/layert2v_config.json"),
    Step("stage3", "training.stage3_multi_fg", "demo_stage3.yaml", "stage3/adapter/layert2v_config.json"),
]
ABLATION_STEPS = [
    Step("ablation_a_concat", "training.stage2_joint", "demo_stage2.yaml",
         "ablation_a_concat/adapter/layert2v_config.json", ARMS["a_concat"]),
    Step("ablation_b_adaln", "training.stage2_joint", "demo_stage2.yaml",
         "ablation_b_adaln/adapter/layert2v_config.json", ARMS["b_adaln"]),
]

SMOKE = {"steps": 3, "num_samples": 24, "max_samples": 4}


def resolve_config(step: Step, out: str, smoke: bool, steps_scale: float = 1.0) -> dict:
    """The YAML with its output/demo/ paths moved under `out`, the step's overrides applied and every
    phase's optimizer steps (and checkpoint interval) multiplied by `steps_scale`."""
    text = (CONFIGS / step.config).read_text().replace(DEFAULT_OUT + "/", out.rstrip("/") + "/")
    config = yaml.safe_load(text)
    for key, value in step.overrides.items():
        node = config
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value.replace(DEFAULT_OUT + "/", out.rstrip("/") + "/") if isinstance(value, str) else value
    if steps_scale != 1.0:  # a shorter (or longer) run of the same recipe: schedules follow the step count
        for phase in config["phases"]:
            phase["steps"] = max(1, round(phase["steps"] * steps_scale))
        every = config.get("checkpoint", {}).get("every", 0)
        if every:
            config["checkpoint"]["every"] = max(1, round(every * steps_scale))
    if smoke:  # same code paths, a few steps each
        for phase in config["phases"]:
            # Batches never mix foreground counts, and 4 smoke samples may leave no bucket a full batch of 4.
            phase.update(steps=SMOKE["steps"], batch_size=1)
        config["data"]["synthetic"]["num_samples"] = SMOKE["num_samples"]
        if config["data"].get("max_samples"):
            config["data"]["max_samples"] = SMOKE["max_samples"]
        config.setdefault("eval", {}).update({"num_prompts": 1, "steps": 2})
    return config


def launch(step: Step, out: Path, smoke: bool, steps_scale: float = 1.0):
    config = resolve_config(step, str(out), smoke, steps_scale)
    path = out / "configs" / f"{step.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    log = out / "logs" / f"{step.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", step.module, "--config", str(path), "--resume", "auto"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_MININTERVAL": "30"}
    print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {' '.join(cmd)} > {log}", flush=True)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def save_timings(out: Path, timings: dict) -> None:
    (out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")


def run_step(step: Step, out: Path, smoke: bool, timings: dict, steps_scale: float = 1.0) -> None:
    if (out / step.done).exists():
        print(f"{step.name}: done already ({out / step.done})", flush=True)
        return
    started = time.time()
    proc = launch(step, out, smoke, steps_scale)
    if proc.wait() != 0:
        raise SystemExit(f"{step.name} failed (exit {proc.returncode}); see {out / 'logs' / (step.name + '.log')}")
    timings[step.name] = round(time.time() - started, 1)
    save_timings(out, timings)  # a run stopped later still knows what its finished steps cost
    print(f"[{time.strftime('%H:%M:%S')}] {step.name}: finished after {timings[step.name]:.0f} s", flush=True)


# Gates measured right after the step they judge (module, the step they follow, result file under <out>/gates/).
GATES = {
    "stage0_vae": ("training.demo_vae_gate", "vae_gate.json"),
    "stage0_dit": ("training.caption_probe", "caption_probe.json"),
}


def run_gate(after: str, out: Path, smoke: bool, timings: dict) -> None:
    module, result = GATES[after]
    target = out / "gates" / result
    if target.exists():
        return
    started = time.time()
    cmd = [sys.executable, "-m", module, "--run", str(out), "--json", str(target)] + (["--smoke"] if smoke else [])
    print(f"[{time.strftime('%H:%M:%S')}] gate after {after}: {' '.join(cmd)}", flush=True)
    log = out / "logs" / f"gate_{after}.log"
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f, stderr=subprocess.STDOUT,
                       check=True)
    timings[f"gate_{after}"] = round(time.time() - started, 1)
    save_timings(out, timings)


def _eval_args(out: Path, smoke: bool) -> tuple[list[str], list[str]]:
    files = run_model_files(out)
    base = ["--dit", files["dit"], "--vae", files["vae"], "--text-encoder", files["text_encoder"]]
    count = ["--prompts", "2", "--steps", "4"] if smoke else []
    return base, count


def evaluate_arms(out: Path, smoke: bool, timings: dict) -> None:
    """The three ablation arms on held-out prompt combinations (training/eval_demo.py)."""
    started = time.time()
    base, count = _eval_args(out, smoke)
    arms = {"(a) temporal concat only": "ablation_a_concat", "(b) + LayerAdaLN": "ablation_b_adaln",
            "(c) + LayerAdaLN + routed cross-attn": "stage2"}
    results = []
    for label, folder in arms.items():
        target = out / "eval" / f"{folder}.json"
        subprocess.run([sys.executable, "-m", "training.eval_demo", *base, "--adapter", str(out / folder / "adapter"),
                        "--name", label, "--json", str(target), *count], cwd=REPO, check=True)
        results.append(str(target))
    timings["evaluation_ablation"] = round(time.time() - started, 1)


def evaluate_final(out: Path, smoke: bool, timings: dict) -> None:
    """Every row of the issue-13 report on the final model (training/demo_report.py, a fresh process)."""
    started = time.time()
    cmd = [sys.executable, "-m", "training.demo_report", "--run", str(out)] + (["--smoke"] if smoke else [])
    print(f"[{time.strftime('%H:%M:%S')}] final evaluation: {' '.join(cmd)}", flush=True)
    with open(out / "logs" / "evaluation_final.log", "w") as f:
        subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=f, stderr=subprocess.STDOUT,
                       check=True)
    timings["evaluation_final"] = round(time.time() - started, 1)
    save_timings(out, timings)


def install(out: Path, timings: dict, command: str) -> None:
    """Copy the shipped files into layert2v_core/demo_model/ with a manifest of how they were made."""
    DEMO_MODEL_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / "stage0_dit/adapter/dit.safetensors", DEMO_MODEL_DIR / "dit.safetensors")
    shutil.copy2(out / "stage0_vae/adapter/vae.safetensors", DEMO_MODEL_DIR / "vae.safetensors")
    for name, src in (("adapter", out / "stage3/adapter"), ("text_encoder", out / "stage0_dit/text_encoder")):
        shutil.rmtree(DEMO_MODEL_DIR / name, ignore_errors=True)
        shutil.copytree(src, DEMO_MODEL_DIR / name)
    for p in DEMO_MODEL_DIR.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # atomic saves write 0600 temp files; these ship
    files = sorted(p for p in DEMO_MODEL_DIR.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json", ".txt")
                   and p.name != "manifest.json")
    manifest = {
        "command": command,
        "wall_seconds": timings,
        "files": {str(p.relative_to(DEMO_MODEL_DIR)): p.stat().st_size for p in files},
        "total_bytes": sum(p.stat().st_size for p in files),
        "machine": f"{os.cpu_count()} CPU cores (shared), torch threads 1 per process",
    }
    # The gates and the final report travel with the weights: a rerun shows where a recipe breaks.
    for key, path in (("gates", out / "gates"), ("report", out / "eval")):
        found = sorted(path.glob("*.json")) if path.is_dir() else []
        if key == "report":
            found = [p for p in found if p.name == "report.json"]
        for p in found:
            manifest.setdefault(key, {})[p.stem] = json.loads(p.read_text()).get("summary", {})
    (DEMO_MODEL_DIR / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"installed the demo model in {DEMO_MODEL_DIR} ({manifest['total_bytes'] / 1e6:.1f} MB)", flush=True)


def publish(out: Path) -> None:
    """The README's material, from the final evaluation: docs/demo_contact_sheet.png (+ its prompts) and
    docs/demo_eval.md (every table with its intervals and commands)."""
    docs = REPO / "docs"
    docs.mkdir(exist_ok=True)
    for name in ("demo_contact_sheet.png", "demo_contact_sheet.txt", "demo_eval.md"):
        shutil.copyfile(out / "eval" / name, docs / name)
    print(f"wrote {docs / 'demo_contact_sheet.png'} and {docs / 'demo_eval.md'}", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help=f"run folder (default {DEFAULT_OUT}, or output/demo_smoke with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="a few steps per stage: checks the recipe runs")
    parser.add_argument("--no-install", action="store_true", help="leave layert2v_core/demo_model/ as it is")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every stage's optimizer steps (e.g. 0.3: a shortened run of the same recipe)")
    parser.add_argument("--ablation", action="store_true",
                        help="also train ablation arms a (concat only) and b (+ LayerAdaLN) and score all three")
    args = parser.parse_args(argv)
    out = Path(args.out or ("output/demo_smoke" if args.smoke else DEFAULT_OUT))
    if not out.is_absolute():
        out = REPO / out
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    started = time.time()
    for step in MODEL_STEPS:
        run_step(step, out, args.smoke, timings, args.steps_scale)
        if step.name in GATES:
            run_gate(step.name, out, args.smoke, timings)
    from .demo_curves import plot_run

    plot_run(out)  # <out>/loss_curves.png: every stage's loss against its step
    if not args.no_eval:
        evaluate_final(out, args.smoke, timings)
    arms = ABLATION_STEPS if args.ablation else []
    for step in arms:
        run_step(step, out, args.smoke, timings, args.steps_scale)
    # Training alone (gates and the final evaluation sit between its steps): every step's recorded time,
    # including steps an earlier, resumed invocation trained.
    timings["training_total"] = round(sum(timings.get(s.name, 0.0) for s in MODEL_STEPS + arms), 1)
    save_timings(out, timings)
    if arms and not args.no_eval:
        evaluate_arms(out, args.smoke, timings)
    timings["total_this_invocation"] = round(time.time() - started, 1)
    save_timings(out, timings)
    if not (args.smoke or args.no_install):
        install(out, timings, "python -m training.demo_recipe" + (f" --steps-scale {args.steps_scale:g}"
                                                                   if args.steps_scale != 1.0 else ""))
        if not args.no_eval:
            publish(out)
    print(json.dumps(timings, indent=2), flush=True)


if __name__ == "__main__":
    main()
