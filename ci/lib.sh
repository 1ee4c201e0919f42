# Shared helpers of the ci/ scripts (sourced, not run).
#
# A baseline ci/baselines/NAME.jsonl comes with ci/baselines/NAME.conf, which says how it was
# measured, because timings depend on it and a comparison must measure the same way:
#   profile=release|test|dev   the cargo profile of the binary
#   threads=N                  RAYON_NUM_THREADS of the run (empty: all cores)
#   commit=SHA                 the commit whose code the records measure (ci-gate.sh builds it
#                              and measures it beside the current tree on the same machine)

CI_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$CI_DIR/.." && pwd)"

# Set the array CTXCOST to the command that runs ctxcost: $CTXCOST_BIN when set (a path to a
# built binary), else `cargo run` with the given profile (default release).
ctxcost_cmd() {
  local profile="${1:-release}"
  if [[ -n "${CTXCOST_BIN:-}" ]]; then
    if [[ ! -x "$CTXCOST_BIN" ]]; then
      echo "error: CTXCOST_BIN=$CTXCOST_BIN is not an executable file" >&2
      return 2
    fi
    CTXCOST=("$CTXCOST_BIN")
  else
    case "$profile" in
      release) CTXCOST=(cargo run --quiet --release --manifest-path "$REPO_DIR/Cargo.toml" --bin ctxcost --) ;;
      dev | test) CTXCOST=(cargo run --quiet --profile "$profile" --manifest-path "$REPO_DIR/Cargo.toml" --bin ctxcost --) ;;
      *)
        echo "error: unknown profile '$profile' (use release, test or dev)" >&2
        return 2
        ;;
    esac
  fi
}

# Read ci/baselines/NAME.conf into BASE_PROFILE (default release), BASE_THREADS and
# BASE_COMMIT.
baseline_conf() {
  BASE_PROFILE=release
  BASE_THREADS=""
  BASE_COMMIT=""
  local f="$CI_DIR/baselines/$1.conf" key value
  [[ -f "$f" ]] || return 0
  while IFS='=' read -r key value; do
    case "$key" in
      profile) BASE_PROFILE="$value" ;;
      threads) BASE_THREADS="$value" ;;
      commit) BASE_COMMIT="$value" ;;
    esac
  done < <(grep -E '^[a-z]+=' "$f")
}

# `ctxcost run` arguments of a named sweep: ci/sweeps/NAME.toml if present, else the preset NAME.
sweep_args() {
  local name="$1"
  if [[ -f "$CI_DIR/sweeps/$name.toml" ]]; then
    SWEEP_ARGS=(--sweep "$CI_DIR/sweeps/$name.toml")
  else
    SWEEP_ARGS=(--preset "$name")
  fi
}

# Measure sweep NAME once with the command given after OUT, writing its records to OUT (and
# the run's output to OUT.log); on failure print the log and return 2.
measure_sweep() {
  local name="$1" out="$2"
  shift 2
  sweep_args "$name"
  if ! "$@" run "${SWEEP_ARGS[@]}" --out "$out" --force --no-report >"$out.log" 2>&1; then
    cat "$out.log" >&2
    echo "error: the sweep failed (log above)" >&2
    return 2
  fi
}
