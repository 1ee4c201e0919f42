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
# NOISE_THRESHOLDS (default "0.05 0.10 0.20 0.30 0.50 0.75 1.00"),
# NOISE_MODE=abba (study the gate's same-machine rounds instead of pairs; below).
#
# Columns of the result, per threshold:
#   cases     case comparisons (ordered pairs x cases)
#   false     of which `regressed` (the per-case false-alarm rate)
#   pairs     ordered pairs of runs; alarm: pairs with at least one `regressed` case (what a
#             gate would see: the per-run false-alarm rate)
#   triples   (baseline b, run c, re-run d), all distinct; confirmed: one case regressed in
#             both (b, c) and (b, d) (what ci/ci-gate.sh, which re-measures once before
#             failing, would see)
#
# NOISE_MODE=abba models ci/ci-gate.sh with a built baseline: every 4 consecutive runs
# i..i+3 form a round, runs i and i+3 pooled as the baseline and i+1, i+2 pooled as the
# current side (and, the code being the same, the other way round as well); confirmed: rounds
# i and i+4 (the gate's re-measuring round) flag one case alike.
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

# Compare BASE with CURRENT at threshold $t: add to the tallies `cases`, `false` and `alarms`,
# and keep the regressed cases in hits[KEY].
tally() {
  local key="$1" base="$2" current="$3" line n k
  line=$("${CTXCOST[@]}" compare --quiet --threshold "$t" "$base" "$current" 2>/dev/null | tail -n 1) || true
  read -r n k < <(sed -E 's/^[A-Z]+: ([0-9]+) compared, ([0-9]+) regressed.*/\1 \2/' <<<"$line")
  cases=$((cases + n)) false=$((false + k))
  if ((k > 0)); then
    alarms=$((alarms + 1))
    hits[$key]=$(regressed_cases "$t" "$base" "$current")
  fi
}
# Whether the comparisons KEY1 and KEY2 flagged a case in common.
confirms() {
  [[ -n "${hits[$1]:-}" && -n "${hits[$2]:-}" ]] && [[ -n "$(comm -12 <(echo "${hits[$1]}") <(echo "${hits[$2]}"))" ]]
}
# One line of the result: threshold, case tallies, comparison tallies, confirmation tallies.
result_row() {
  printf '%-9s %7d %6d %7s %6d %6d %7s %8d %10d %7s\n' "$t" "$cases" "$false" "$(rate "$false" "$cases")" \
    "$1" "$alarms" "$(rate "$alarms" "$1")" "$2" "$3" "$(rate "$3" "$2")"
}

if [[ "${NOISE_MODE:-pairs}" == abba ]]; then
  ((runs >= 8)) || { echo "error: NOISE_MODE=abba needs at least 8 runs" >&2; exit 2; }
  # Round i, direction o: the two sides as folders of copies of the runs.
  for ((i = 1; i + 3 <= runs; i++)); do
    for o in fwd rev; do
      r="$dir/abba/$i-$o"
      rm -rf "$r"
      mkdir -p "$r/base" "$r/current"
      # fwd: base = runs i, i+3; current = i+1, i+2. rev: the other way round.
      if [[ $o == fwd ]]; then outer=base inner=current; else outer=current inner=base; fi
      cp "$dir/run-$i.jsonl" "$r/$outer/a.jsonl"
      cp "$dir/run-$((i + 3)).jsonl" "$r/$outer/b.jsonl"
      cp "$dir/run-$((i + 1)).jsonl" "$r/$inner/a.jsonl"
      cp "$dir/run-$((i + 2)).jsonl" "$r/$inner/b.jsonl"
    done
  done
  printf '%-9s %7s %6s %7s %6s %6s %7s %8s %10s %7s\n' threshold cases false rate rounds alarm rate pairs confirmed rate
  for t in $thresholds; do
    declare -A hits=()
    cases=0 false=0 rounds=0 alarms=0
    for ((i = 1; i + 3 <= runs; i++)); do
      for o in fwd rev; do
        tally "$i,$o" "$dir/abba/$i-$o/base" "$dir/abba/$i-$o/current"
        rounds=$((rounds + 1))
      done
    done
    confirmed=0 pairs=0
    for ((i = 1; i + 7 <= runs; i++)); do
      for o in fwd rev; do
        pairs=$((pairs + 1))
        if confirms "$i,$o" "$((i + 4)),$o"; then confirmed=$((confirmed + 1)); fi
      done
    done
    unset hits
    result_row "$rounds" "$pairs" "$confirmed"
  done
  exit 0
fi

printf '%-9s %7s %6s %7s %6s %6s %7s %8s %10s %7s\n' threshold cases false rate pairs alarm rate triples confirmed rate
for t in $thresholds; do
  declare -A hits=()
  cases=0 false=0 pairs=0 alarms=0
  for ((b = 1; b <= runs; b++)); do
    for ((c = 1; c <= runs; c++)); do
      ((b == c)) && continue
      tally "$b,$c" "$dir/run-$b.jsonl" "$dir/run-$c.jsonl"
      pairs=$((pairs + 1))
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
        if confirms "$b,$c" "$b,$d"; then confirmed=$((confirmed + 1)); fi
      done
    done
  done
  unset hits
  result_row "$pairs" "$triples" "$confirmed"
done
