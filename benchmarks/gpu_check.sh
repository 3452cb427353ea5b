#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): parity of the seed models on the GPU, then throughput at
# batch 256 in fp32 and bf16 against timm eager and torch.compile; at most 8 minutes on one H200.
#   benchmarks/gpu_check.sh               # writes benchmarks/results/gpu-<device>.{md,json}
#   benchmarks/gpu_check.sh --cpu-smoke   # every step at tiny settings on CPU (the test suite)
# Needs torch with CUDA and jax[cuda12] in $PYTHON (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# XLA takes 75% of GPU memory up front by default; torch runs beside it in this process.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-8}"
# 480 s in all: the script stops starting steps after --budget-s (default 450) and writes what it has.
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
