#!/usr/bin/env bash
# The GPU checks of minclip, in one run (about 8 minutes on an H200):
#   1. the whole test suite with MINCLIP_BACKEND=cupy,
#   2. CuPy vs NumPy parity of a training step (loss 1e-5, gradients 1e-4),
#   3. a short `python -m minclip.train --backend cupy` on the built-in dataset,
#   4. training-step and inference benchmarks against PyTorch CUDA.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR   (results and logs are written there)
set -uo pipefail
if [ $# -ne 1 ]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
  exit 64
fi
out=$1
cd "$(dirname "$0")/.."
if ! python -c "import cupy, sys; sys.exit(0 if cupy.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: these checks need CuPy and an NVIDIA GPU, and none is usable here" >&2
  exit 2
fi
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
run() {  # run NAME COMMAND...: log to OUT/NAME.log, remember a failure, go on
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "   exit $rc after $((SECONDS - start)) s; last lines:"
  tail -n 5 "$out/$name.log" | sed 's/^/   /'
  [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
run tests_cupy env MINCLIP_BACKEND=cupy timeout 300 python -m pytest -q -x --ignore=tests/test_notebooks.py \
    --ignore=tests/test_08_exercises.py -p no:cacheprovider
run parity timeout 120 python benchmarks/gpu_parity.py --against cupy --out "$out/parity.json"
run train_cupy timeout 180 python -m minclip.train --backend cupy --max-steps 60 --logs "$out/logs" \
    --name gpu-smoke --no-progress
run bench_gpu timeout 240 python benchmarks/bench_gpu.py --out "$out/bench_gpu.json"
exit $status
