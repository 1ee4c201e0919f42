#!/usr/bin/env bash
# The repository's own CPU regression gate (for .ci/run, after `cargo test --workspace`).
#
#   ci/ci-gate.sh
#
# Compares the current tree with the baseline code on the same machine, in the same job:
# builds the commit named by ci/baselines/cpu-quick.conf (`commit=`), then measures the
# ci/sweeps/cpu-quick.toml sweep with both binaries in the order baseline, current, current,
# baseline (so that a drift of the machine's speed during the job weighs on both sides alike),
# pools the two runs of each side and compares them at the gate's threshold. A regression
# fails the gate only when the same case regresses again on a second such round.
#
# Why not the stored timings of ci/baselines/cpu-quick.jsonl: CI machines of one model and
# one label differ by up to 1.6x from host to host on these memory-bound cases (ci/README.md,
# "Why the gate builds its baseline"), which no threshold separates from a regression. When the
# baseline commit cannot be had (a shallow clone, CTXCOST_GATE_STORED=1), the gate compares
# with the stored timings instead, and a failure there is advisory (exit 0) unless
# CTXCOST_GATE_STRICT=1.
#
# A case that breaks (ok in the baseline, failed now) or goes missing fails at once.
# Exit status: 0 pass, 1 regression, 2 bad input, a failed build or a failed run.
#
# Environment: CTXCOST_GATE_THRESHOLD (default 0.50); CTXCOST_BIN (a full binary of the
# current tree in the baseline's profile, which runs `compare`; default: build it with cargo,
# a no-op after `cargo test --workspace`); CTXCOST_BASE_BIN and CTXCOST_CURRENT_BIN (binaries
# that measure the baseline and the current tree; default: slim builds of the baseline commit
# and of the tree under OUT_DIR/target, kept between runs); CTXCOST_OUT_DIR (default
# target/ci/gate).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name=cpu-quick
threshold="${CTXCOST_GATE_THRESHOLD:-0.50}"
out_root="${CTXCOST_OUT_DIR:-$REPO_DIR/target/ci/gate}"
start=$SECONDS
mkdir -p "$out_root"

baseline_conf "$name"
case "$BASE_PROFILE" in
  release) profile_dir=release ;;
  *) profile_dir=debug ;; # the dev and test profiles both build into target/debug
esac
if [[ -n "$BASE_THREADS" ]]; then export RAYON_NUM_THREADS="$BASE_THREADS"; fi

# Both binaries are built the same way, slim (`run` is all a sweep needs; no polars, no CUDA,
# no HTTP), in one target directory of the gate's own, so the dependencies build once. The two
# trees' crates get identical unit hashes there (cargo hashes a workspace relative to its root),
# so before each build the workspace crates' fingerprints are removed: they are rebuilt from the
# tree at hand, never taken for fresh from the other tree's build.
gate_target="$out_root/target"
build_slim() { # SRC_DIR DEST_BIN
  rm -rf "$gate_target/$profile_dir/.fingerprint"/ctxcost*
  (cd "$1" && cargo build --quiet --profile "$BASE_PROFILE" -p ctxcost --no-default-features --target-dir "$gate_target") \
    && cp "$gate_target/$profile_dir/ctxcost" "$2"
}

mode=stored
if [[ -n "${CTXCOST_BASE_BIN:-}" ]]; then
  [[ -x "$CTXCOST_BASE_BIN" ]] || { echo "error: CTXCOST_BASE_BIN=$CTXCOST_BASE_BIN is not an executable file" >&2; exit 2; }
  base_bin="$CTXCOST_BASE_BIN"
  mode=built
elif [[ "${CTXCOST_GATE_STORED:-0}" != 1 && -n "$BASE_COMMIT" ]] \
  && git -C "$REPO_DIR" cat-file -e "$BASE_COMMIT^{commit}" 2>/dev/null; then
  src="$out_root/base-src"
  if [[ "$(cat "$src/.ctxcost-commit" 2>/dev/null)" != "$BASE_COMMIT" ]]; then
    rm -rf "$src"
    mkdir -p "$src"
    git -C "$REPO_DIR" archive "$BASE_COMMIT" | tar -x -C "$src"
    echo "$BASE_COMMIT" >"$src/.ctxcost-commit"
  fi
  echo "== building the baseline commit ${BASE_COMMIT:0:12} ($BASE_PROFILE profile, slim) in $gate_target" >&2
  base_bin="$out_root/ctxcost-base"
  if ! build_slim "$src" "$base_bin"; then
    echo "error: the baseline commit $BASE_COMMIT does not build (above)" >&2
    exit 2
  fi
  mode=built
elif [[ -n "$BASE_COMMIT" && "${CTXCOST_GATE_STORED:-0}" != 1 ]]; then
  echo "warning: the baseline commit $BASE_COMMIT is not in this clone (shallow?); comparing with the stored timings of ci/baselines/$name.jsonl" >&2
fi

# The full binary of the current tree compares (and, against stored timings, measures):
# CTXCOST_BIN, or the `cargo test --workspace` build (a no-op after it).
if [[ -z "${CTXCOST_BIN:-}" ]]; then
  echo "== building the current tree ($BASE_PROFILE profile)" >&2
  (cd "$REPO_DIR" && cargo build --quiet --workspace --profile "$BASE_PROFILE")
  export CTXCOST_BIN="$REPO_DIR/target/$profile_dir/ctxcost"
fi
ctxcost_cmd "$BASE_PROFILE" || exit 2
compare_cmd=("${CTXCOST[@]}")
current_cmd=("${CTXCOST[@]}")
# Beside a built baseline the current tree is measured with a binary built like it (slim,
# same profile, same target directory): CTXCOST_CURRENT_BIN, or built here.
if [[ "$mode" == built ]]; then
  if [[ -n "${CTXCOST_CURRENT_BIN:-}" ]]; then
    [[ -x "$CTXCOST_CURRENT_BIN" ]] || { echo "error: CTXCOST_CURRENT_BIN=$CTXCOST_CURRENT_BIN is not an executable file" >&2; exit 2; }
    current_cmd=("$CTXCOST_CURRENT_BIN")
  else
    echo "== building the current tree ($BASE_PROFILE profile, slim) in $gate_target" >&2
    current_cmd=("$out_root/ctxcost-current")
    build_slim "$REPO_DIR" "$out_root/ctxcost-current" || { echo "error: the current tree does not build (above)" >&2; exit 2; }
  fi
fi

cores=$(nproc 2>/dev/null || echo 1)
busy() { [[ -r /proc/loadavg ]] && awk -v c="$cores" '{ exit !($1 > c) }' /proc/loadavg; }
for ((waited = 0; waited < 90; waited += 10)); do
  busy || break
  sleep 10
done

# Stored timings were measured on another machine at another time: a failure against them is
# only advisory unless CTXCOST_GATE_STRICT=1.
advisory=0
if [[ "$mode" == stored && "${CTXCOST_GATE_STRICT:-0}" != 1 ]]; then
  advisory=1
  echo "warning: comparing with stored timings from another machine: a failure will be advisory" >&2
fi

fail() {
  if ((advisory)); then
    echo "ci-gate: ADVISORY (stored baseline, not failing): $*"
    exit 0
  fi
  echo "ci-gate: FAIL: $*"
  exit 1
}

# One round: measure and compare; prints the comparison, leaves the regressed and broken
# cases in $1/cases, returns compare's exit status (or 2 when a sweep failed).
attempt() {
  local out="$1" code baseline
  rm -rf "$out"
  mkdir -p "$out/base" "$out/current"
  if [[ "$mode" == built ]]; then
    echo "== round $(basename "$out"): sweep '$name' x4 (baseline, current, current, baseline; RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-all})" >&2
    measure_sweep "$name" "$out/base/1.jsonl" "$base_bin" || return 2
    measure_sweep "$name" "$out/current/1.jsonl" "${current_cmd[@]}" || return 2
    measure_sweep "$name" "$out/current/2.jsonl" "${current_cmd[@]}" || return 2
    measure_sweep "$name" "$out/base/2.jsonl" "$base_bin" || return 2
    baseline="$out/base"
  else
    echo "== round $(basename "$out"): sweep '$name' against the stored timings (RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-all})" >&2
    measure_sweep "$name" "$out/current/1.jsonl" "${current_cmd[@]}" || return 2
    baseline="$CI_DIR/baselines/$name.jsonl"
  fi
  set +e
  "${compare_cmd[@]}" compare "$baseline" "$out/current" --threshold "$threshold" --fail-on-missing \
    --markdown "$out/compare.md" --json "$out/compare.json" | tee "$out/compare.txt"
  code=${PIPESTATUS[0]}
  set -e
  awk '$1 ~ /^(regressed|broken)/ { print $1, $2, $3, $4, $5, $6, $7, $8 }' "$out/compare.txt" | sort >"$out/cases"
  return "$code"
}

code=0
attempt "$out_root/1" || code=$?
if ((code == 0)); then
  echo "ci-gate: pass ($mode baseline, threshold ${threshold}, $((SECONDS - start)) s)"
  exit 0
elif ((code != 1)); then
  echo "ci-gate: error (exit $code)" >&2
  exit "$code"
fi
if grep -q '^broken' "$out_root/1/cases" || ! [[ -s "$out_root/1/cases" ]]; then
  fail "a case broke or went missing (see above)"
fi

echo "== regression at threshold ${threshold}; re-measuring to confirm" >&2
code=0
attempt "$out_root/2" || code=$?
if ((code != 0 && code != 1)); then
  echo "ci-gate: error (exit $code)" >&2
  exit "$code"
fi
confirmed=$(comm -12 "$out_root/1/cases" "$out_root/2/cases")
if [[ -n "$confirmed" ]]; then
  sed 's/^/  /' <<<"$confirmed"
  fail "the cases above regressed in both rounds (threshold ${threshold})"
fi
echo "ci-gate: pass: the first round's regression did not repeat (noise); $((SECONDS - start)) s"
