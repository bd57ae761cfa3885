#!/usr/bin/env bash
# The GPU check: the cifar10 config on one accelerator, float32 and bfloat16, with and without
# rematerialisation (5 steps per jitted call), then sampling and Inception scoring, as Markdown
# tables for RESULTS.md.
# Finishes within 8 minutes on an H100/H200 (the benchmarks are capped at 80 s and 120 s):
#
#   bash benchmarks/gpu_check.sh                      # on the GPU machine, from anywhere
#   PEAK_TFLOPS=989 bash benchmarks/gpu_check.sh      # MFU against another peak
#   DRY_RUN=1 CONFIG=configs/digits.py BATCH=64 bash benchmarks/gpu_check.sh   # any device
#
# It installs nothing when JAX already sees a GPU (or with DRY_RUN); otherwise it installs this
# repository with the `cuda12` extra (JAX with CUDA) and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/cifar10.py}
BATCH=${BATCH:-128}
PEAK_TFLOPS=${PEAK_TFLOPS:-790}  # dense bfloat16 peak of an H100/H200-class GPU, roughly

on_gpu() { $PY -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; }
if [ -z "${DRY_RUN:-}" ] && ! on_gpu; then
  $PY -m pip install -q -e ".[cuda12]"
fi
$PY -c "import jax; print('devices:', jax.devices())"

# bench SECONDS ARGS...: one benchmark.py run, stopped after SECONDS.
bench() {
  local limit=$1
  shift
  timeout "$limit" $PY benchmarks/benchmark.py --config="$CONFIG" --batch_size="$BATCH" \
    --peak_tflops="$PEAK_TFLOPS" --train_steps=10 --repeats=3 --config.training.steps_per_call=5 \
    "$@" 2>&1 | grep -v '^[IW][0-9]' || true
}
echo "## Training"
bench 80 --sample=false --score=false --config.model.dtype=float32
bench 80 --sample=false --score=false --config.model.dtype=bfloat16
bench 80 --sample=false --score=false --config.model.dtype=float32 --config.model.remat=true
bench 80 --sample=false --score=false --config.model.dtype=bfloat16 --config.model.remat=true
echo "## Sampling (bfloat16) and scoring"
# 1000 images a batch; each sampler's chain extrapolated from 20 timed network calls.
bench 120 --train_steps=1 --repeats=2 --config.model.dtype=bfloat16 --sample_batch=1000 \
  --sample_steps=20 --score_batch=500
