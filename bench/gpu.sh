#!/usr/bin/env bash
# bench/gpu.sh: measure dense-cuda and dsa-cuda on a GPU machine beside the library peers
# (cuDNN and FlashAttention SDPA, plain PyTorch, and FlashInfer / FlashMLA where installed),
# all interleaved in one run and verified alike, with the ceilings in the same run; print achieved rates next to the ceilings,
# DSA's per-component times, and the DSA/dense ratio per context and phase with its 95% CI.
#
# Build here (no GPU or CUDA toolkit needed), then run this script on the GPU machine from
# the repository root with the binaries carried along:
#   cargo build --profile runner -p ctxcost --no-default-features --features cuda
#   cargo build --release -p ctxcost-engines --features cuda --example cuda_smoke
#   bash bench/gpu.sh            # OUT=<dir> keeps the outputs (default bench-out/)
#
# Steps: device facts; kernel checks on fresh seeds + timing (cuda_smoke, if present);
# `ctxcost ceilings` (copy kernel and cuBLAS GEMM); the `h200` preset's dense cases through
# the real runner (verify, then time); PyTorch baselines (cuDNN SDPA prefill, cuBLAS decode).
# Env: STEPS="smoke ceilings run baseline" picks steps; CONTEXTS/PHASE/PRECISION narrow the
# run; ENGINES (default: ours and every peer in `ctxcost engines`) picks the engines;
# RUN_ARGS adds flags to `run`; RECORDS names the records file under OUT (default h200.jsonl). Peers run as `python3 -m ctxcost_peers ID` from `peers/`.
set -u
OUT=${OUT:-bench-out}
mkdir -p "$OUT"
BIN=${CTXCOST_BIN:-target/runner/ctxcost}
SMOKE=${CTXCOST_SMOKE:-target/release/examples/cuda_smoke}
STEPS=${STEPS:-"smoke ceilings run baseline"}
RECORDS=${RECORDS:-h200.jsonl}

# cuBLAS and cuBLASLt: the toolkit's, else the one PyTorch ships.
. "$(dirname "$0")/cuda-libs.sh"

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,memory.used --format=csv | tee "$OUT/gpu.txt"

has() { case " $STEPS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if has smoke && [ -x "$SMOKE" ]; then
    echo "== cuda_smoke (checks and kernel timings)"
    "$SMOKE" all 2>&1 | tee "$OUT/smoke.txt"
fi

if has ceilings && [ -x "$BIN" ]; then
    echo "== ctxcost ceilings"
    "$BIN" ceilings 2>&1 | tee "$OUT/ceilings.txt"
fi

if has run && [ -x "$BIN" ]; then
    ENGINES=${ENGINES:-dense-cuda,dsa-cuda,cudnn-sdpa,flash-sdpa,efficient-sdpa,torch-eager-dense,torch-eager-dsa,flashinfer,flash-mla,flash-mla-dsa,deep-gemm}
    echo "== ctxcost run --preset h200 --engines $ENGINES"
    args=(run --preset h200 --engines "$ENGINES" --out "$OUT/$RECORDS" --force --no-report)
    [ -n "${CONTEXTS:-}" ] && args+=(--contexts "$CONTEXTS")
    [ -n "${PHASE:-}" ] && args+=(--phase "$PHASE")
    [ -n "${PRECISION:-}" ] && args+=(--precision "$PRECISION")
    # shellcheck disable=SC2206
    [ -n "${RUN_ARGS:-}" ] && args+=($RUN_ARGS)
    "$BIN" "${args[@]}" 2>&1 | tail -n 60 | tee "$OUT/run.txt"
fi

if has baseline; then
    echo "== library baselines (PyTorch)"
    python3 bench/baseline.py 2>&1 | tee "$OUT/baseline.txt"
fi

# Summary: achieved rates of the runner's records next to the ceilings.
if [ -f "$OUT/$RECORDS" ]; then
    python3 - "$OUT" "$RECORDS" <<'EOF'
import json, re, sys
out = sys.argv[1]
ceil = {}
try:
    for line in open(f"{out}/ceilings.txt"):
        m = re.match(r"(copy_tbps|gemm_bf16_tflops) ([0-9.]+)", line)
        if m:
            ceil[m.group(1)] = float(m.group(2))
except OSError:
    pass
copy, gemm = ceil.get("copy_tbps"), ceil.get("gemm_bf16_tflops")
print(f"== summary: ceilings copy {copy} TB/s, gemm {gemm} TFLOP/s")
print(f"{'case':<44} {'status':<8} {'median ms':>10} {'TFLOP/s':>8} {'%gemm':>6} {'TB/s':>7} {'%copy':>6} verify")
import statistics
recs = [json.loads(l) for l in open(f"{out}/{sys.argv[2]}")]
for r in recs:
    c = r["case"]
    name = f"{r['engine']} {c['phase']} {c['precision']} L={c['context']} B={c['batch']} q={c['query_len']}"
    st = r["status"]
    med = (r.get("stats") or {}).get("median", float("nan"))
    tf, tb = r["rates"]["tflops"], r["rates"]["tbps"]
    v = r.get("verification")
    ver = "-" if not v else ("pass" if v["passed"] else "FAIL") + f" norm {v['output']['norm_rel_err']:.1e}"
    if st != "ok":
        print(f"{name:<44} {st:<8} {r.get('reason', '')}")
        continue
    pg = f"{100 * tf / gemm:.0f}" if gemm else "-"
    pc = f"{100 * tb / copy:.0f}" if copy else "-"
    comp = r.get("components_ms") or {}
    split = " ".join(f"{k} {statistics.median(v):.3f}" for k, v in sorted(comp.items()) if v)
    print(f"{name:<44} {st:<8} {med:>10.3f} {tf:>8.1f} {pg:>6} {tb:>7.3f} {pc:>6} {ver} {split}")

# DSA/dense per point: ratio of medians, 95% CI by a paired bootstrap (samples of a point are
# interleaved A B A B by the runner), the same method as ctxcost-core's ratio_ci.
import random
def med(x):
    return statistics.median(x)
def ratio_ci(num, den, n=2000):
    rng = random.Random(7)
    paired = len(num) == len(den)
    rs = []
    for _ in range(n):
        if paired:
            idx = [rng.randrange(len(num)) for _ in num]
            a, b = [num[i] for i in idx], [den[i] for i in idx]
        else:
            a = [rng.choice(num) for _ in num]
            b = [rng.choice(den) for _ in den]
        rs.append(med(a) / med(b))
    rs.sort()
    return med(num) / med(den), rs[int(0.025 * n)], rs[int(0.975 * n) - 1]
OURS = {"dense-cuda", "dsa-cuda", "dense-cpu", "dsa-cpu"}
pts = {}
for r in recs:
    if r["status"] != "ok" or not r["samples_ms"]:
        continue
    c = r["case"]
    k = (c["phase"], c["precision"], c["batch"], c["query_len"], c["context"])
    pts.setdefault(k, {})[r["engine"]] = r
print()
print("== per point: every verified engine, and ours against the fastest library peer of the same method")
print(f"{'phase':<8} {'prec':<5} {'B':>3} {'context':>7} {'method':<6} {'engine':<18} {'median ms':>10} {'TFLOP/s':>8} {'TB/s':>7} {'vs fastest peer':>16}")
for k in sorted(pts):
    p = pts[k]
    for method in ("dense", "dsa"):
        es = {e: r for e, r in p.items() if r["case"].get("method", "dsa" if e.startswith("dsa") else "dense") == method}
        if not es:
            continue
        peers = {e: r for e, r in es.items() if e not in OURS}
        best_peer = min(peers, key=lambda e: med(peers[e]["samples_ms"])) if peers else None
        for e in sorted(es, key=lambda e: med(es[e]["samples_ms"])):
            r = es[e]
            vs = "-"
            if e in OURS and best_peer:
                vs = f"{med(r['samples_ms']) / med(peers[best_peer]['samples_ms']):.2f}x {best_peer}"
            print(f"{k[0]:<8} {k[1]:<5} {k[2]:>3} {k[4]:>7} {method:<6} {e:<18} {med(r['samples_ms']):>10.3f} {r['rates']['tflops']:>8.1f} {r['rates']['tbps']:>7.3f} {vs:>16}")
print()
print(f"{'phase':<8} {'prec':<5} {'B':>3} {'context':>7} {'dense ms':>10} {'dsa ms':>10} {'indexer':>8} {'topk':>8} {'attn':>8} {'dsa-cuda/dense-cuda [95% CI]':>30}")
for k in sorted(pts):
    p = pts[k]
    if "dense-cuda" not in p or "dsa-cuda" not in p:
        continue
    d, s_ = p["dense-cuda"], p["dsa-cuda"]
    ratio, lo, hi = ratio_ci(s_["samples_ms"], d["samples_ms"])
    comp = s_.get("components_ms") or {}
    cm = lambda n: f"{med(comp[n]):.3f}" if comp.get(n) else "-"
    print(f"{k[0]:<8} {k[1]:<5} {k[2]:>3} {k[4]:>7} {med(d['samples_ms']):>10.3f} {med(s_['samples_ms']):>10.3f} "
          f"{cm('indexer'):>8} {cm('topk'):>8} {cm('attention'):>8} {ratio:>8.3f} [{lo:.3f}, {hi:.3f}]")
EOF
fi
