"""Two CPU processes (gloo): the DDP path through `accelerate launch`, and FSDP against one process.

Every launch gets a free port, bounded collectives (distributed.timeout_s / a gloo timeout) and its
own process group, which is killed and reaped whatever happens: a stuck rank fails the test, it
cannot hang CI or hold a port for the next run."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from layert2v_core.weights.layert2v_adapter import load_layert2v_adapter

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "training" / "scripts"
LAUNCH_TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], env: dict | None = None, timeout: int = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """Run a launcher in its own session; on timeout or any error the whole group is killed and reaped."""
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "PYTHON": sys.executable, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(f"{args[:3]} still running after {timeout} s (killed):\n{out[-2000:]}\n{err[-2000:]}")
    finally:
        _kill_group(proc)  # ranks the launcher left behind
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def two_process_stage2(out: Path, steps: int, *sets: str) -> list[dict]:
    proc = launch(["bash", str(SCRIPTS / "accelerate_cpu_2proc.sh"), str(out), str(steps), *sets],
                  env={"PORT": str(free_port()), "TIMEOUT_S": "120"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    return out, two_process_stage2(out, 2, "--set", "optim.grad_accum=2")


def test_stage2_runs_as_two_gloo_processes(ddp_run):
    out, records = ddp_run
    assert [r["step"] for r in records] == [1, 2]  # written once (rank 0), not once per process
    assert all(r["processes"] == 2 for r in records)
    checkpoint = out / "checkpoints" / "step_000002"
    assert (checkpoint / "rng_rank0.pt").is_file() and (checkpoint / "rng_rank1.pt").is_file()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["batches_per_rank"] == 4  # 2 steps x 2
    adapter = load_layert2v_adapter(out / "adapter")
    assert adapter.dit_state["layer_adaln"].abs().sum() > 0  # trained, and synchronised before export


def test_fsdp_two_processes_match_one_process_losses_and_weights(tmp_path):
    """The layered forward sharded per block (FSDP2) over 2 gloo processes: same losses and trained
    weights after 3 AdamW steps as one process seeing both processes' batches."""
    single, sharded = tmp_path / "single.json", tmp_path / "sharded.json"
    parity = str(SCRIPTS / "fsdp_parity.py")
    proc = launch([sys.executable, parity, str(single)], env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = launch([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                   "127.0.0.1", "--master_port", str(free_port()), parity, str(sharded)],
                  env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert two["world"] == 2 and two["sharded"] and not one["sharded"]
    assert len(one["losses"]) == 3 and one["losses"][-1] < one["losses"][0]  # it trained
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) <= 1e-5 * abs(a)
    assert one["weights"].keys() == two["weights"].keys() and len(one["weights"]) > 10
    for key, (s1, a1) in one["weights"].items():
        s2, a2 = two["weights"][key]
        assert abs(a1 - a2) <= 1e-4 * a1 + 1e-7, key      # sum of |w|
        assert abs(s1 - s2) <= 1e-4 * a1 + 1e-7, key      # signed sum, relative to the magnitude


def test_fsdp_through_the_engine_matches_ddp_and_exports(tmp_path, ddp_run):
    """Same data, noise and accumulation (2 micro-batches, reduce-scatter skipped on the first) as the
    DDP run: the same logged losses, and an adapter gathered from the shards."""
    out = tmp_path / "fsdp"
    records = two_process_stage2(out, 2, "--set", "optim.grad_accum=2", "--set", "distributed.strategy=fsdp",
                                 "--set", "ema.enabled=false")
    assert [r["step"] for r in records] == [1, 2] and all(r["processes"] == 2 for r in records)
    for ours, ddp in zip(records, ddp_run[1]):
        assert ours["loss"] == pytest.approx(ddp["loss"], rel=1e-5)
    adapter = load_layert2v_adapter(out / "adapter")  # gathered whole tensors, loadable by the pipeline
    assert adapter.dit_state["layer_adaln"].abs().sum() > 0
