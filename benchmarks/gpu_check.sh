#!/usr/bin/env bash
# On a GPU machine: build the runtime from this tree, run the GPU tests that need no compiler, and
# the GPU benchmark on bundles prepared elsewhere (python benchmarks/gpu_bench.py prepare DIR).
#   bash benchmarks/gpu_check.sh DIR [RESULTS_DIR] [extra gpu_bench run args...]
set -uo pipefail
dir=${1:?bundle directory}; out=${2:-.}; shift 2 || shift $#
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
site=/tmp/mlrt-site
if ! PYTHONPATH=$site python3 -c "import mlrt" 2>/dev/null; then
  t0=$(date +%s)
  python3 -m pip install -q --no-build-isolation --no-deps --no-compile --target $site . > $out/pip.log 2>&1 \
    || { tail -30 $out/pip.log; exit 1; }
  echo "runtime built in $(( $(date +%s) - t0 )) s"
fi
export PYTHONPATH=$site
python3 benchmarks/gpu_bench.py run "$dir" --json "$out/gpu_bench.json" "$@"
# The same numerics with CUDA graphs off (plain launches every run).
# (fp16/bf16 bundles store half-precision weights: one of each kind checked here too)
MLRT_CUDA_GRAPHS=0 python3 benchmarks/gpu_bench.py run "$dir" --repeats 3 --warmup 1 \
  --only small_cnn,mobilenet_v2-b1-fp32,mobilenet_v2-b1-bf16
