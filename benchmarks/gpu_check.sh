#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): parity on the device by the suite's rule (seed models and one
# model of every block kind; logits, features, one training step), then throughput of the seed models at
# matched precision (TF32 on both sides, strict fp32 on both, bf16; batch 256 and batch 1) against timm
# eager and torch.compile; at most 8 minutes on one H200.
#   benchmarks/gpu_check.sh               # writes benchmarks/results/gpu-<device>.{md,json}
#   benchmarks/gpu_check.sh --cpu-smoke   # the same code paths at tiny sizes on CPU (the test suite)
# Needs torch with CUDA, timm, and jax[cuda13] (or jax[cuda12]) in $PYTHON (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# XLA takes 75% of GPU memory up front by default; torch runs beside it in this process.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.45}"
export TORCHINDUCTOR_COMPILE_THREADS="${TORCHINDUCTOR_COMPILE_THREADS:-8}"
# 480 s in all: the script starts no step after --budget-s (default 440) and writes what it has.
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
