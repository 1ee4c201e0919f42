#!/usr/bin/env bash
# bench/h200-whole-model.sh: the records of the whole-model report on one GPU, in one command.
#   1. `rest-cuda` (and any `rest` peer in REST_ENGINES): one layer's non-attention GEMMs at
#      decode B = 16, 64, 256 and a prefill chunk of 4096, EP 1 and 8, in each precision of
#      REST_PRECISION.
#   2. Attention: ours beside the library peers (bench/gpu.sh's run step) at CONTEXTS, decode
#      then prefill, each phase with half of ATTENTION_TIMEOUT.
# Build here, carry the runner, run from the repository root on the GPU machine:
#   cargo build --profile runner -p ctxcost --no-default-features --features cuda
#   OUT=bench-out bash bench/h200-whole-model.sh
#   ctxcost report bench-out/whole-model.jsonl --out report/
# Env: OUT, CTXCOST_BIN, REST_ENGINES (default rest-cuda), REST_PRECISION (default bf16,fp8),
# REST_ARGS (default --max-seconds 2s), CONTEXTS (default 16k,32k,64k,128k), ENGINES, RUN_ARGS,
# ATTENTION_TIMEOUT (seconds, default 420),
# STEPS ("rest attention" by default).
set -u
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
BIN=${CTXCOST_BIN:-target/runner/ctxcost}
STEPS=${STEPS:-"rest attention"}
REST_ENGINES=${REST_ENGINES:-rest-cuda}
REST_PRECISION=${REST_PRECISION:-bf16,fp8}
REST_ARGS=${REST_ARGS:---max-seconds 2s}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/peers${PYTHONPATH:+:$PYTHONPATH}"
has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# cuBLAS and cuBLASLt: the toolkit's, else the one PyTorch ships.
. "$(dirname "$0")/cuda-libs.sh"

if has rest; then
    for ep in 1 8; do
        echo "== rest: $REST_ENGINES decode B=16,64,256 and prefill chunk 4096, EP $ep, $REST_PRECISION"
        "$BIN" run --shape deepseek-v3.2-exp --engines "$REST_ENGINES" --contexts 4k --phase decode --batch 16,64,256 \
            --precision "$REST_PRECISION" --ep "$ep" $REST_ARGS --out "$OUT/rest-decode-ep$ep.jsonl" --force --no-report 2>&1 | tail -n 30
        "$BIN" run --shape deepseek-v3.2-exp --engines "$REST_ENGINES" --contexts 4k --phase prefill --batch 1 --chunk 4096 \
            --precision "$REST_PRECISION" --ep "$ep" $REST_ARGS --out "$OUT/rest-prefill-ep$ep.jsonl" --force --no-report 2>&1 | tail -n 20
    done
fi

if has attention; then
    # One run per phase, each with half the time, so a time limit never leaves a phase out.
    for phase in decode prefill; do
        echo "== attention, $phase: ours beside the peers"
        STEPS="run" CTXCOST_BIN="$BIN" OUT="$OUT" RECORDS="attention-$phase.jsonl" PHASE="$phase" \
            CONTEXTS="${CONTEXTS:-16k,32k,64k,128k}" PRECISION="${PRECISION:-bf16,fp8}" \
            ENGINES="${ENGINES:-dense-cuda,dsa-cuda,cudnn-sdpa,flash-sdpa,efficient-sdpa,torch-eager-dense,torch-eager-dsa}" \
            RUN_ARGS="${RUN_ARGS:---max-seconds 2s --max-samples 12}" timeout $(( ${ATTENTION_TIMEOUT:-420} / 2 )) bash bench/gpu.sh
    done
fi

cat "$OUT"/rest-*.jsonl "$OUT"/attention-*.jsonl > "$OUT/whole-model.jsonl" 2>/dev/null
echo "== $(wc -l < "$OUT/whole-model.jsonl") records in $OUT/whole-model.jsonl"
