#!/usr/bin/env bash
# Stage 2 on the tiny config with two CPU processes (gloo): proves the multi-process path.
#   training/scripts/accelerate_cpu_2proc.sh [output_dir] [steps] [--set key=value ...]
# model.init_adapter is cleared (no stage-1 run needed): the mask VAE starts plain.
# PORT (default 29500): the rendezvous port; tests pass a free one so parallel runs never collide.
# TIMEOUT_S (default 300): every collective raises after this instead of blocking forever.
# Extra arguments go to the stage, e.g. --set distributed.strategy=fsdp --set ema.enabled=false.
#
# Why `--multi_gpu` and not `--cpu`: in accelerate 1.x, `accelerate launch --num_processes 2 --cpu`
# starts ONE process unless an MPI hostfile is given (--mpirun_hostfile). The torchrun-based
# launcher selected by --multi_gpu starts two; with no CUDA the engine builds Accelerator(cpu=True),
# which makes them a gloo MULTI_CPU group (checked: metrics show "processes": 2, and the checkpoint
# holds rng_rank0.pt and rng_rank1.pt).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-output/training/stage2_cpu_2proc}"
STEPS="${2:-4}"
shift $(( $# < 2 ? $# : 2 ))
PY="${PYTHON:-.venv/bin/python}"
rm -rf "$OUT"
CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=1 "$PY" -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
  --main_process_ip 127.0.0.1 --main_process_port "${PORT:-29500}" \
  --dynamo_backend no -m training.stage2_joint --config training/configs/stage2_cpu_tiny.yaml \
  --set output_dir="$OUT" --set data.root="$OUT/synthetic_data" --set model.init_adapter=null \
  --set "phases=[{steps: $STEPS, height: 32, width: 32, num_frames: 5, batch_size: 1}]" \
  --set checkpoint.every=2 --set eval.enabled=false --set distributed.timeout_s="${TIMEOUT_S:-300}" "$@"
echo "--- metrics (rank 0) ---"
cat "$OUT/metrics.jsonl"
ls "$OUT/checkpoints/$(cat "$OUT/checkpoints/latest")"
