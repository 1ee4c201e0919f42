#!/usr/bin/env bash
# Record (or re-record) the baseline of a named sweep: ci/baselines/NAME.jsonl, and
# ci/baselines/NAME.conf saying how it was measured (cargo profile, RAYON_NUM_THREADS) and
# which commit's code it measured (HEAD; ci-gate.sh builds that commit to measure it again).
#
#   ci/update-baseline.sh [NAME] [--runs K] [--from FILE]
#
# NAME defaults to cpu-quick. --runs K measures the sweep K times and keeps all records
# (compare pools the samples of repeated runs, which steadies the baseline on a noisy
# machine). --from FILE takes an existing record file instead of measuring.
# Environment: CTXCOST_BIN (a built binary; otherwise `cargo run` with CTXCOST_PROFILE),
# CTXCOST_PROFILE (release, test or dev: the profile of the binary [default release]),
# RAYON_NUM_THREADS (worker threads of the CPU engines; recorded, and reused by regress.sh).
# Measure on the machine the comparisons will run on; commit both files with a message that
# says why the baseline moved.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name="cpu-quick"
from=""
runs=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --from) from="$2"; shift 2 ;;
    --runs) runs="$2"; shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) name="$1"; shift ;;
  esac
done
profile="${CTXCOST_PROFILE:-release}"
mkdir -p "$CI_DIR/baselines"
baseline="$CI_DIR/baselines/$name.jsonl"
tmp="$baseline.tmp"
: >"$tmp"

if [[ -n "$from" ]]; then
  cat "$from" >"$tmp"
else
  ctxcost_cmd "$profile" || exit 2
  sweep_args "$name"
  for ((i = 1; i <= runs; i++)); do
    echo "== measuring sweep '$name' ($profile profile, RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-all}), run $i/$runs" >&2
    "${CTXCOST[@]}" run "${SWEEP_ARGS[@]}" --out "$tmp.run" --force --no-report >/dev/null
    cat "$tmp.run" >>"$tmp"
    rm -f "$tmp.run"
  done
fi
if ! grep -q '"status":"ok"' "$tmp"; then
  echo "error: the new baseline holds no ok record; keeping the old one" >&2
  rm -f "$tmp"
  exit 2
fi
mv "$tmp" "$baseline"
commit=$(git -C "$REPO_DIR" rev-parse HEAD 2>/dev/null || true)
if [[ -n "$commit" ]] && [[ -n "$(git -C "$REPO_DIR" status --porcelain --untracked-files=no -- ':!ci/baselines' 2>/dev/null)" ]]; then
  echo "warning: the tree has uncommitted changes; the conf names HEAD ($commit), which may not be the code just measured" >&2
fi
{
  echo "# How ci/baselines/$name.jsonl was measured (read by ci/regress.sh and ci/ci-gate.sh)."
  echo "profile=$profile"
  echo "threads=${RAYON_NUM_THREADS:-}"
  echo "commit=$commit"
} >"$CI_DIR/baselines/$name.conf"
echo "baseline written: $baseline ($(wc -l <"$baseline") records, $profile profile, RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-all})" >&2
