#!/usr/bin/env bash
# bench/dsa_attention.sh: the DSA sparse attention kernels through the runner on a GPU machine, with
# the ceilings in the same run: the default wgmma kernel (sm_90) against the mma.sync kernel (the named
# baseline) and the cp.async gather, interleaved in the same points (`--variant sparse=split,mma,cpa`);
# FP8 caches run mma.sync in every case. (The __syncthreads-per-tile build of an earlier run is a
# timing switch now: kernels/experiments/.)
#
#   cargo build --profile runner -p ctxcost --no-default-features --features cuda
#   OUT=<dir> bash bench/dsa_attention.sh      # CTXCOST_BIN overrides target/runner/ctxcost
#
# Writes $OUT/log.txt (per-case summary lines from bench/dsa_summary.py) and $OUT/all.jsonl.
set -u
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
B=${CTXCOST_BIN:-target/runner/ctxcost}
HERE=$(dirname "$0")
LOG=$OUT/log.txt
R=$(mktemp -d)
common="--engines dsa-cuda --shape deepseek-v3.2-exp --force --no-report"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv >> "$LOG" 2>&1
echo "== ctxcost ceilings" >> "$LOG"
timeout 45 "$B" ceilings >> "$LOG" 2>&1
step() {
  local name=$1 to=$2; shift 2
  echo "== $name: ctxcost run $common --out $name.jsonl $*" >> "$LOG"
  local t0=$SECONDS
  timeout "$to" "$B" run $common --out "$R/$name.jsonl" "$@" >> "$LOG" 2>&1
  echo "rc=$? wall=$((SECONDS - t0))s" >> "$LOG"
  [ -f "$R/$name.jsonl" ] && python3 "$HERE/dsa_summary.py" "$R/$name.jsonl" >> "$LOG" 2>&1
}
D="--phase decode --batch 64"
P="--phase prefill --batch 1 --chunk 4096"
step new-decode 70 $D --contexts 1000,3000,16k,128k --precision bf16,fp8
step variants-decode 90 $D --contexts 16k,128k --precision bf16 --variant sparse=split,mma,cpa
step new-prefill 50 $P --contexts 3000,128k --precision bf16
step variants-prefill 60 $P --contexts 128k --precision bf16 --variant sparse=split,mma
cat "$R"/*.jsonl > "$OUT/all.jsonl"
