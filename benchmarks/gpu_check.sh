#!/usr/bin/env bash
# The GPU benchmark set in one go (about 8-9 minutes on one H100; budgeted for < 12), the table printed last.
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--tiny] [--out DIR]
#
#   --device cuda  (default) every figure on the GPU: bobkit bf16+channels_last extraction vs a raw timm bf16
#                  loop, FLOP/s utilisation against the measured bf16 matmul peak, execution modes, the probe
#                  solver on the GPU, cache reuse, peak memory over Fashion-MNIST 60k @ 224 px, fine-tuning
#                  with/without gradient checkpointing; extraction near the peak (raw timm loop beside bobkit over
#                  batches 256-1024, torch.compile default and reduce-overhead (CUDA graphs), fused attention);
#                  the per-architecture throughput table `bob plan` uses (every architecture of the paper suites).
#   --device cpu   the same scripts with their CPU-sized defaults (the CPU figures).
#   --tiny         minute-sized settings, for testing this script (tests/test_fast_paths.py runs it on CPU).
#   --out DIR      where the JSON files and table.md go (default: benchmarks/results).
#
# Needs only torch, torchvision, timm, numpy, pandas, pyyaml, pillow, scikit-learn on the machine; bobkit is
# taken from this checkout (PYTHONPATH), Fashion-MNIST from $BOB_DATA_DIR or the Debian package path.
# Each step has its own time limit, so one slow step cannot take the others down; a failed step is reported
# and the rest still run (exit status 1 at the end).
set -u -o pipefail

DEVICE=cuda
TINY=0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
OUT="$HERE/results"
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export BOB_CACHE_DIR="${BOB_CACHE_DIR:-$(mktemp -d -t bob-gpu-check-XXXXXX)}"
FAILED=()
START=$(date +%s)
# The --tiny steps test the scripts, they measure nothing: two run at a time (each is mostly one thread importing
# torch), each with a cache folder of its own. Every real measurement runs alone.
JOBS=1
[ "$TINY" = 1 ] && JOBS=2
rm -f "$OUT"/*.failed

run_step() {  # run_step NAME LIMIT_SECONDS SCRIPT ARGS...
  local name="$1" limit="$2" script="$3"; shift 3
  local t0=$(date +%s) cache="$BOB_CACHE_DIR"
  [ "$JOBS" -gt 1 ] && cache="$BOB_CACHE_DIR/$name"
  echo "=== $name ($(($t0 - START)) s in)"
  if ! BOB_CACHE_DIR="$cache" timeout "$limit" "$PY" "$HERE/$script" "$@" --out-dir "$OUT" > "$OUT/$name.log" 2>&1
  then
    echo "!!! $name failed (log: $OUT/$name.log)"; tail -n 15 "$OUT/$name.log"; : > "$OUT/$name.failed"
  fi
  echo "    $name took $(( $(date +%s) - t0 )) s"
}

step() {  # step NAME LIMIT_SECONDS SCRIPT ARGS...
  if [ "$JOBS" -gt 1 ]; then
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
    run_step "$@" &
  else
    run_step "$@"
  fi
}

if [ "$DEVICE" != "cpu" ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia_smi.txt" 2>&1 || true
fi

if [ "$TINY" = 1 ]; then
  R18=resnet18.random_init
  step feature_throughput 300 feature_throughput.py --device "$DEVICE" --backbone $R18 --n 64 --image-size 32 \
    --batch-size 32 --repeats 1
  step flops_utilization 300 flops_utilization.py --device "$DEVICE" --backbones $R18 --image-size 32 --n 32 \
    --batch-size 16 --repeats 1
  step execution_modes 300 execution_modes.py --device "$DEVICE" --backbones $R18 --image-size 32 --n 32 \
    --batch-size 16 --repeats 1
  step probe_solver 300 probe_solver.py --device "$DEVICE" --backbone $R18 --dataset fashion_mnist --image-size 32 \
    --n-train 200 --n-test 100 --epochs 5 --repeats 1
  step cache_reuse 300 cache_reuse.py --device "$DEVICE" --backbone $R18 --n 64 --n-test 32 --image-size 32
  step memory 300 memory.py --device "$DEVICE" --model tiny --n 512 --image-size 64
  step finetune_step 300 finetune_step.py --device "$DEVICE" --backbone $R18 --image-size 32 --batch-size 8 \
    --steps 2
  step extraction_peak 300 extraction_peak.py --device "$DEVICE" --backbones $R18 --image-size 32 --n 32 \
    --batch-sizes 8 16 --repeats 1
  step plan_throughput 300 plan_throughput.py --device "$DEVICE" --backbones $R18 --image-size 32 \
    --train-backbone $R18 --fp32-backbones CNN=$R18 --name tiny
elif [ "$DEVICE" = "cpu" ]; then
  step feature_throughput 1800 feature_throughput.py --device cpu
  step execution_modes 1800 execution_modes.py --device cpu --gray
  step flops_utilization 1800 flops_utilization.py --device cpu --image-size 64
  step probe_solver 1800 probe_solver.py --device cpu
  step cache_reuse 1800 cache_reuse.py --device cpu
  step memory 3600 memory.py --device cpu
  step finetune_step 1800 finetune_step.py --device cpu
  step extraction_peak 1800 extraction_peak.py --device cpu --image-size 64 --n 256
  step plan_throughput 3600 plan_throughput.py --device cpu --grids "$REPO/params/bob-small.yaml"
else
  # bf16 + channels_last (the GPU defaults) against a raw timm loop in the same precision and memory format.
  step feature_throughput 120 feature_throughput.py --device "$DEVICE" --backbone resnet50.random_init \
    --n 8192 --image-size 224 --batch-size 256 --repeats 3 --precision bf16 --channels-last on
  step flops_utilization 150 flops_utilization.py --device "$DEVICE" --image-size 224 --n 4096 --batch-size 256
  step execution_modes 120 execution_modes.py --device "$DEVICE" --image-size 224 --n 2048 --batch-size 256 \
    --repeats 2
  step probe_solver 90 probe_solver.py --device "$DEVICE" --backbone resnet50.random_init --dataset fashion_mnist \
    --image-size 64 --n-train 10000 --n-test 5000
  step memory 90 memory.py --device "$DEVICE" --model resnet18.random_init --image-size 224
  step cache_reuse 60 cache_reuse.py --device "$DEVICE" --backbone resnet50.random_init --n 4096 --n-test 2048 \
    --image-size 64
  step finetune_step 90 finetune_step.py --device "$DEVICE" --backbone vit_base_patch16_224.random_init \
    --batch-size 64 --steps 20
  # Extraction near the peak: bobkit beside the raw timm loop over larger batches, compiled (default and CUDA
  # graphs), fused attention switched on where a model lacks it; % of the measured bf16 matmul peak.
  step extraction_peak 240 extraction_peak.py --device "$DEVICE" --n 8192 --batch-sizes 256 512 1024 --repeats 2
  # The throughput table `bob plan --device <name>` reads: every architecture of the paper suites at 224 px.
  step plan_throughput 300 plan_throughput.py --device "$DEVICE" --grids "$REPO/params/bob-small.yaml" \
    "$REPO/params/bob-full.yaml"
fi

wait
for marker in "$OUT"/*.failed; do
  [ -e "$marker" ] && FAILED+=("$(basename "$marker" .failed)") && rm -f "$marker"
done
echo "=== done in $(( $(date +%s) - START )) s; failed: ${FAILED[*]:-none}"
"$PY" "$HERE/make_table.py" --dir "$OUT" > "$OUT/table.md" 2> "$OUT/make_table.log" || FAILED+=(make_table)
cat "$OUT/table.md"
[ ${#FAILED[@]} -eq 0 ]
