#!/usr/bin/env bash
# Measure this machine's run-to-run noise: run the same sweep RUNS times, compare every
# ordered pair of runs (each one in turn as the baseline) at several thresholds and count the
# false alarms: no code changed, so every `regressed` verdict is one.
#
#   ci/noise-study.sh [RUNS] [NAME]
#
# RUNS defaults to 5, NAME to cpu-quick (ci/sweeps/NAME.toml, else the preset NAME).
# Environment: CTXCOST_BIN (a built binary; otherwise `cargo run --release --`),
# CTXCOST_OUT_DIR (default target/ci; runs go to OUT_DIR/noise-NAME/run-N.jsonl),
# NOISE_REUSE=1 (reuse run files already there instead of measuring),
# NOISE_THRESHOLDS (default "0.05 0.10 0.20 0.30 0.50 0.75 1.00").
#
# Columns of the result, per threshold:
#   cases     case comparisons (ordered pairs x cases)
#   false     of which `regressed` (the per-case false-alarm rate)
#   pairs     ordered pairs of runs; alarm: pairs with at least one `regressed` case (what a
#             gate would see: the per-run false-alarm rate)
#   triples   (baseline b, run c, re-run d), all distinct; confirmed: one case regressed in
#             both (b, c) and (b, d) (what ci/ci-gate.sh, which re-measures once before
#             failing, would see)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

runs="${1:-5}"
name="${2:-cpu-quick}"
thresholds="${NOISE_THRESHOLDS:-0.05 0.10 0.20 0.30 0.50 0.75 1.00}"
dir="${CTXCOST_OUT_DIR:-$REPO_DIR/target/ci}/noise-$name"
mkdir -p "$dir"
ctxcost_cmd "${CTXCOST_PROFILE:-release}" || exit 2
sweep_args "$name"

for ((i = 1; i <= runs; i++)); do
  f="$dir/run-$i.jsonl"
  if [[ "${NOISE_REUSE:-0}" == 1 && -s "$f" ]]; then continue; fi
  echo "== run $i/$runs ($(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?') load)" >&2
  "${CTXCOST[@]}" run "${SWEEP_ARGS[@]}" --out "$f" --force --no-report >/dev/null
done

# The cases a comparison calls regressed, one `engine shape phase context batch q precision`
# per line (from the terminal table).
regressed_cases() {
  "${CTXCOST[@]}" compare --threshold "$1" "$2" "$3" 2>/dev/null | awk '$1 ~ /^(regressed|broken)/ { print $2, $3, $4, $5, $6, $7, $8 }' | sort || true
}
rate() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }'; }

printf '%-9s %7s %6s %7s %6s %6s %7s %8s %10s %7s\n' threshold cases false rate pairs alarm rate triples confirmed rate
for t in $thresholds; do
  declare -A hits=()
  cases=0 false=0 pairs=0 alarms=0
  for ((b = 1; b <= runs; b++)); do
    for ((c = 1; c <= runs; c++)); do
      ((b == c)) && continue
      line=$("${CTXCOST[@]}" compare --quiet --threshold "$t" "$dir/run-$b.jsonl" "$dir/run-$c.jsonl" 2>/dev/null | tail -n 1) || true
      read -r n r < <(sed -E 's/^[A-Z]+: ([0-9]+) compared, ([0-9]+) regressed.*/\1 \2/' <<<"$line")
      cases=$((cases + n)) false=$((false + r)) pairs=$((pairs + 1))
      if ((r > 0)); then
        alarms=$((alarms + 1))
        hits[$b,$c]=$(regressed_cases "$t" "$dir/run-$b.jsonl" "$dir/run-$c.jsonl")
      fi
    done
  done
  # Confirmation: of the triples (baseline b, run c, re-run d), all distinct, those where one
  # case regressed against b in both c and d: what a gate that fails only on a regression
  # seen again after re-measuring (ci/ci-gate.sh) would report.
  confirmed=0 triples=0
  for ((b = 1; b <= runs; b++)); do
    for ((c = 1; c <= runs; c++)); do
      ((c == b)) && continue
      for ((d = 1; d <= runs; d++)); do
        ((d == b || d == c)) && continue
        triples=$((triples + 1))
        if [[ -n "${hits[$b,$c]:-}" && -n "${hits[$b,$d]:-}" ]] &&
          [[ -n "$(comm -12 <(echo "${hits[$b,$c]}") <(echo "${hits[$b,$d]}"))" ]]; then
          confirmed=$((confirmed + 1))
        fi
      done
    done
  done
  unset hits
  printf '%-9s %7d %6d %7s %6d %6d %7s %8d %10d %7s\n' "$t" "$cases" "$false" "$(rate "$false" "$cases")" \
    "$pairs" "$alarms" "$(rate "$alarms" "$pairs")" "$triples" "$confirmed" "$(rate "$confirmed" "$triples")"
done
