#!/usr/bin/env bash
# Latency tables and their checks for every runtime (docs/search.md, "How well the tables predict"): for each
# RUNTIME x FAMILY a table (1 thread, CPU-time clock, minimum statistic, 224 px, the proxy configs' spaces), its
# check on the published models + 30 random subnets (leave-one-out), and the check repeated (the noise floor).
#
#   OUT=runs/lut_accuracy RUNTIMES="onnxruntime onnxruntime-int8 openvino deploy" FAMILIES="v2 v1" \
#       bash benchmarks/lut_tables.sh
#   python benchmarks/lut_accuracy.py runs/lut_accuracy/check_*/lut_check.json \
#       --repeat runs/lut_accuracy/check_onnxruntime_v2/lut_check.json runs/lut_accuracy/repeat_onnxruntime_v2/lut_check.json
#
# Every step's wall time and the load average go to $OUT/log.txt. EXPORTS (default $OUT/exports) is the exports
# cache: empty on the first run, so the first table's time is a first-time build.
set -euo pipefail
OUT=${OUT:-runs/lut_accuracy}
RUNTIMES=${RUNTIMES:-"onnxruntime onnxruntime-int8 openvino deploy"}
FAMILIES=${FAMILIES:-"v2 v1"}
RANDOM_NETS=${RANDOM_NETS:-30}
REPEAT=${REPEAT:-1}               # 1: also repeat each check (noise floor)
FOR_CHECK=${FOR_CHECK:-}          # e.g. "--for-check 30": only the checked networks' entries
PY=${PY:-python}
export EFFICIENTFORMER_EXPORT_CACHE=${EXPORTS:-$OUT/exports}
mkdir -p "$OUT"
step() {  # step NAME COMMAND...: run it, log its wall time and the load average before and after
  local name=$1; shift
  local load0; load0=$(cut -d' ' -f1-3 /proc/loadavg)
  local t0; t0=$(date +%s)
  "$@"
  echo "$name: $(( $(date +%s) - t0 )) s, load $load0 -> $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%H:%M:%S)" \
    | tee -a "$OUT/log.txt"
}
for fam in $FAMILIES; do
  space=configs/search/${fam}_proxy.yaml
  for rt in $RUNTIMES; do
    t=$OUT/${rt}_${fam}.json
    step "table $rt $fam" $PY -m efficientformer search lut --family "$fam" --runtime "$rt" --threads 1 --clock cpu \
      --statistic min --space "$space" $FOR_CHECK --output "$t"
    step "check $rt $fam" $PY -m efficientformer search lut-check --lut "$t" --random "$RANDOM_NETS" --runs 25 \
      --output-dir "$OUT/check_${rt}_${fam}" --update-lut
    if [ "$REPEAT" = 1 ]; then
      step "repeat $rt $fam" $PY -m efficientformer search lut-check --lut "$t" --random "$RANDOM_NETS" --runs 25 \
        --output-dir "$OUT/repeat_${rt}_${fam}"
    fi
  done
done
