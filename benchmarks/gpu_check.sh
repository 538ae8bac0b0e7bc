#!/usr/bin/env bash
# The GPU checks of minclip, in one run (under 8 minutes on an H200: the time limits below add up to 7.75 minutes):
#   1. the whole test suite with MINCLIP_BACKEND=cupy (every failure listed, not just the first),
#   2. CuPy vs NumPy parity of a training step, the reference on NumPy (loss 1e-5, gradients 1e-4),
#   3. a short `python -m minclip.train --backend cupy` on the built-in dataset, then `--resume latest`,
#   4. training-step and inference benchmarks against PyTorch CUDA.
# Usage: bash benchmarks/gpu_check.sh OUT_DIR
# Everything lands in OUT_DIR; OUT_DIR/report.txt sums it up. Exit 0 only if every check passed.
set -uo pipefail
if [ $# -ne 1 ] || [ -z "$1" ] || [[ "$1" == -* ]]; then
  echo "usage: bash benchmarks/gpu_check.sh OUT_DIR" >&2
  exit 64
fi
out=$1
if [ -e "$out" ] && [ ! -d "$out" ]; then
  echo "error: OUT_DIR $out exists and is not a directory" >&2
  exit 64
fi
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
cd "$(dirname "$0")/.."
if ! python -c "import cupy, sys; sys.exit(0 if cupy.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: these checks need CuPy and an NVIDIA GPU, and none is usable here" >&2
  exit 2
fi
mkdir -p "$out"
report="$out/report.txt"
export PYTHONUNBUFFERED=1
status=0
run() {  # run NAME COMMAND...: log to OUT/NAME.log, add a line to the report, go on after a failure
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$report"
  tail -n 8 "$out/$name.log" | sed 's/^/    /' | tee -a "$report"
  [ $rc -eq 0 ] || status=1
}
: > "$report"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/gpu: /' >> "$report"
python -c "import cupy; print('cupy:', cupy.__version__)" >> "$report" 2>&1
run tests_cupy env MINCLIP_BACKEND=cupy timeout 200 python -m pytest -q -p no:cacheprovider \
    --ignore=tests/test_notebooks.py --ignore=tests/test_exercises_tool.py --ignore=tests/test_gpu_standin.py
run parity timeout 40 python benchmarks/gpu_parity.py --against cupy --out "$out/parity.json"
train=(python -m minclip.train --backend cupy --train-num-samples 2048 --epochs 2 --logs "$out/logs"
       --name gpu-smoke --no-progress)
run train_cupy timeout 45 "${train[@]}" --max-steps 20 --no-eval
run resume_cupy timeout 60 "${train[@]}" --resume latest
run bench_gpu timeout 120 python benchmarks/bench_gpu.py --out "$out/bench_gpu.json"
echo "overall: $([ $status -eq 0 ] && echo PASS || echo FAIL)" | tee -a "$report"
exit $status
