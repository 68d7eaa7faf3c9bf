#!/usr/bin/env bash
# Training-step time and peak CUDA memory of every family's trainer at nnU-Net's reference plans, next to
# nnUNetTrainer, eager and compiled (benchmarks/gpu_training_step.py). On a machine without CUDA it says so
# and exits 0. Uses $VENV (default .venv) if it exists, else the python on PATH.
#   bash benchmarks/gpu.sh [--configurations 3d_fullres 2d] [--repeats 10] [--output docs/gpu_table.md]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="python3"
[ -x "$VENV/bin/python" ] && PYTHON="$VENV/bin/python"
exec "$PYTHON" benchmarks/gpu_training_step.py "$@"
