#!/usr/bin/env bash
# The one prepared GPU run of issue #13 (inference + training, S0/S2/L1 vs timm): run from the repository root on
# the lent GPU machine. Results go to $OUT (the device tool brings that folder back) or to ./gpu_out.
set -euo pipefail
OUT="${OUT:-gpu_out}"
PY="${PY:-python}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/nvidia-smi.csv" 2>/dev/null || true
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" timeout "${GPU_BENCH_TIMEOUT:-540}" \
    "$PY" benchmarks/gpu_bench.py --out "$OUT" "$@" || echo "gpu_bench ended early (rc $?); partial rows are in $OUT"
cat "$OUT/gpu_results.md" 2>/dev/null || tail -n 50 "$OUT/gpu_results.jsonl"
