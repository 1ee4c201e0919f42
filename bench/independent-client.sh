#!/usr/bin/env bash
# The same endpoint cases measured by ctxcost and by an independent, well-known client
# (guidellm), against `ctxcost serve-mock` on loopback; TTFT and TPOT medians compared.
# Not part of CI (it installs guidellm with pip, torch included): run it by hand.
#
#   bench/independent-client.sh            # cases 1K, 4K, 16K; prefill (TTFT) and decode (TPOT)
#
# Settings (environment): CTXCOST (the binary; default target/debug/ctxcost, built if missing),
# VENV (where guidellm is installed; default /tmp/ctxcost-guidellm), GUIDELLM (version,
# default 0.8.1), OUT (results; default a new folder under /tmp), PORT (default 18931),
# CONTEXTS (default 1k,4k,16k), REQUESTS (per case, default 8), OUTPUT_TOKENS (decode, 32),
# MOCK_ARGS (the server's delays; default --ttft-ms 40 --ttft-ms-per-1k 10 --tpot-ms 8).
#
# Both clients: /v1/completions, one request at a time (ctxcost --concurrency 1, guidellm
# profile synchronous), no warm-up, the same prompts: the shipped corpus behind a unique
# nonce, of the lengths ctxcost fitted (bench/independent_client.py builds guidellm's).
# Exit 1 when a median differs by more than 5% or 2 ms, whichever is larger.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CTXCOST=${CTXCOST:-$ROOT/target/debug/ctxcost}
VENV=${VENV:-/tmp/ctxcost-guidellm}
GUIDELLM=${GUIDELLM:-0.8.1}
OUT=${OUT:-$(mktemp -d /tmp/ctxcost-independent.XXXXXX)}
PORT=${PORT:-18931}
CONTEXTS=${CONTEXTS:-1k,4k,16k}
REQUESTS=${REQUESTS:-8}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-32}
MOCK_ARGS=${MOCK_ARGS:---ttft-ms 40 --ttft-ms-per-1k 10 --tpot-ms 8}
mkdir -p "$OUT"

if [ ! -x "$CTXCOST" ]; then
    (cd "$ROOT" && cargo build --workspace)
fi
if [ ! -x "$VENV/bin/guidellm" ]; then
    echo "installing guidellm $GUIDELLM into $VENV (several minutes: it brings torch)" >&2
    python3 -m venv "$VENV"
    timeout 1200 "$VENV/bin/pip" install -q "guidellm==$GUIDELLM"
fi
echo "guidellm $("$VENV/bin/pip" show guidellm 2>/dev/null | sed -n 's/^Version: //p'); results in $OUT" >&2

# The server, on loopback only; stopped on exit.
# shellcheck disable=SC2086
"$CTXCOST" serve-mock --host 127.0.0.1 --port "$PORT" $MOCK_ARGS > "$OUT/mock.log" 2>&1 &
MOCK_PID=$!
trap 'kill "$MOCK_PID" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    grep -q "http://" "$OUT/mock.log" 2>/dev/null && break
    sleep 0.1
done
URL="http://127.0.0.1:$PORT"
echo "serve-mock $MOCK_ARGS at $URL/v1" >&2

timeout 600 "$CTXCOST" endpoint --a "$URL/v1" --a-model mock --a-label mock --api completions \
    --contexts "$CONTEXTS" --phase both --output-tokens "$OUTPUT_TOKENS" --requests "$REQUESTS" \
    --concurrency 1 --warmup 0 --prompt-text default --no-report --out "$OUT/ctxcost.jsonl" \
    > "$OUT/ctxcost.txt" 2> "$OUT/ctxcost.err"

python3 "$ROOT/bench/independent_client.py" prompts --records "$OUT/ctxcost.jsonl" --out "$OUT/cases" --requests "$REQUESTS" >&2

for data in "$OUT"/cases/*.jsonl; do
    name=$(basename "$data" .jsonl)
    echo "guidellm: $name" >&2
    timeout 600 "$VENV/bin/guidellm" run \
        --backend "kind=openai_http,target=$URL,request_format=/v1/completions,validate_backend=false,model=mock" \
        --profile kind=synchronous \
        --constraint "kind=max_requests,count=$REQUESTS" \
        --data "kind=json_file,path=$data" \
        --data-column-mapper kind=generative_column_mapper,column_mappings.text_column=prompt,column_mappings.output_tokens_count_column=output_tokens_count \
        --output "kind=json,path=$OUT/guidellm-$name.json" \
        --disable-console-interactive > "$OUT/guidellm-$name.log" 2>&1
done

python3 "$ROOT/bench/independent_client.py" compare --records "$OUT/ctxcost.jsonl" --dir "$OUT" | tee "$OUT/comparison.md"
