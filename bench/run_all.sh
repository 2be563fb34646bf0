#!/usr/bin/env bash
# Every benchmark in sequence, full settings: numbers to stdout, JSON under outputs/bench/ (ALZ_OUTPUTS_DIR moves it).
# Run on an otherwise idle machine; each step's output is also kept in outputs/bench/logs/.
#
#   bash bench/run_all.sh            # TensorFlow benchmarks (input pipeline, train step, inference, notebook times)
#   BENCH_BACKENDS=1 bash bench/run_all.sh  # also images/s per Keras backend installed, and the baseline's parity
#
# Hours on a 2-core CPU (train_step and inference at 224 px dominate); minutes on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2
outputs="${ALZ_OUTPUTS_DIR:-outputs}"
logs="$outputs/bench/logs"
mkdir -p "$logs"

run() {
  local name="$1"; shift
  echo "== $name: $* ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?'))"
  "$@" 2>&1 | tee "$logs/$name.log"
}

run input_pipeline_64 python bench/input_pipeline.py --images 1500 --image-size 64 --epochs 3 \
  --output "$outputs/bench/input_pipeline_64.json"
run input_pipeline_224 python bench/input_pipeline.py --images 1500 --image-size 224 --epochs 3 --model efficientnetb0 \
  --output "$outputs/bench/input_pipeline_224.json"
run train_step python bench/train_step.py --sizes 64,224
run inference python bench/inference.py --sizes 64,224
run notebook_times python bench/notebook_times.py --profile cpu
if [[ "${BENCH_BACKENDS:-0}" == "1" ]]; then
  run backends python bench/backends.py --sizes 64,224 --parity
fi
echo "== done: JSON files in $outputs/bench/"
