"""Two CPU processes (gloo DDP) through `accelerate launch`: the multi-process training path."""

import json
import os
import subprocess
import sys
from pathlib import Path

from layert2v_core.weights.layert2v_adapter import load_layert2v_adapter

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "scripts" / "accelerate_cpu_2proc.sh"


def test_stage2_runs_as_two_gloo_processes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(SCRIPT), str(out), "2"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # written once (rank 0), not once per process
    assert all(r["processes"] == 2 for r in records)
    checkpoint = out / "checkpoints" / "step_000002"
    assert (checkpoint / "rng_rank0.pt").is_file() and (checkpoint / "rng_rank1.pt").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["batches_per_rank"] == 2
    adapter = load_layert2v_adapter(out / "adapter")
    assert adapter.dit_state["layer_adaln"].abs().sum() > 0  # trained, and synchronised before export
