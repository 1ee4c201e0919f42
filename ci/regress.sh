#!/usr/bin/env bash
# Run a quick sweep and compare it with the stored baseline: exit 0 no regression, 1 a
# regression, 2 bad input or a failed run.
#
#   ci/regress.sh [NAME] [extra `ctxcost compare` flags...]
#
# NAME (default cpu-quick) picks the sweep (ci/sweeps/NAME.toml, else the preset NAME) and the
# baseline (ci/baselines/NAME.jsonl). The run is measured the way the baseline was
# (ci/baselines/NAME.conf: cargo profile, RAYON_NUM_THREADS). Environment:
#   CTXCOST_BIN        built ctxcost binary [default: `cargo run` with the baseline's profile,
#                      `--release` unless NAME.conf says otherwise]
#   CTXCOST_THRESHOLD  noise threshold for compare [default 0.05]
#   CTXCOST_OUT_DIR    where the run and the comparison go [default target/ci]
# Outputs: OUT_DIR/NAME-current.jsonl, OUT_DIR/NAME-compare.{md,json}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="${1:-cpu-quick}"
[[ $# -gt 0 ]] && shift
baseline="$CI_DIR/baselines/$name.jsonl"
if [[ ! -f "$baseline" ]]; then
  echo "error: no baseline $baseline; record one with: ci/update-baseline.sh $name" >&2
  exit 2
fi
out_dir="${CTXCOST_OUT_DIR:-$REPO_DIR/target/ci}"
mkdir -p "$out_dir"
current="$out_dir/$name-current.jsonl"

baseline_conf "$name"
ctxcost_cmd "$BASE_PROFILE" || exit 2
if [[ -n "$BASE_THREADS" ]]; then export RAYON_NUM_THREADS="$BASE_THREADS"; fi
echo "== measuring sweep '$name' ($BASE_PROFILE profile, RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-all}) -> $current" >&2
measure_sweep "$name" "$current" "${CTXCOST[@]}" || exit 2

echo "== comparing with $baseline" >&2
set +e
"${CTXCOST[@]}" compare "$baseline" "$current" \
  --threshold "${CTXCOST_THRESHOLD:-0.05}" \
  --markdown "$out_dir/$name-compare.md" --json "$out_dir/$name-compare.json" "$@"
code=$?
set -e
exit "$code"
