//! Parity of the CPU engines with the f64 reference, and the checks that keep parity honest.
//!
//! - `parity!` expands one test per (engine, phase, precision): every case of a small grid
//!   (tiny shape, batch 2, contexts 37/100/300 with `query_len` below and equal to the
//!   context, whole and chunked query processing) must pass [`check::verify`] in full.
//! - DSA with `top_k >= context` equals dense MQA attention.
//! - DSA selections equal [`reference::topk`] exactly on f32 inputs.
//! - Perturbing one output element, or one selected index, makes verification fail (so the
//!   parity tests can fail).
//! - Unsupported cases (fp8, a shape without an indexer, too big for memory) are refused.
//!
//! Seeds are fresh on every run (set `CTXCOST_TEST_SEED` to replay one); every failure
//! message names its seed.

use std::sync::atomic::{AtomicU64, Ordering};

use ctxcost_core::{Case, InputTensor, Inputs, ModelShape, Phase, Precision};
use ctxcost_engines::check::{verify, Rows};
use ctxcost_engines::cpu::{DenseCpu, DsaCpu};
use ctxcost_engines::reference::{self, View};
use ctxcost_engines::{Engine, Output, Support};

/// A fresh non-zero seed per call (or derived from `CTXCOST_TEST_SEED`).
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let base = std::env::var("CTXCOST_TEST_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        t ^ u64::from(std::process::id()).rotate_left(32)
    });
    ctxcost_core::inputs::splitmix64(base.wrapping_add(n.wrapping_mul(0x9E37_79B9))).max(1)
}

fn case(engine: &str, phase: Phase, precision: Precision, context: usize, query_len: usize, batch: usize) -> Case {
    Case {
        engine: engine.into(),
        method: ctxcost_core::Method::legacy_from_id(engine),
        shape: ModelShape::tiny(),
        phase,
        context,
        batch,
        query_len,
        precision,
        seed: fresh_seed(),
        kernel: Default::default(),
    }
}

fn engine(id: &str, max_chunk: Option<usize>) -> Box<dyn Engine> {
    match (id, max_chunk) {
        ("dense-cpu", None) => Box::new(DenseCpu::new()),
        ("dense-cpu", Some(c)) => Box::new(DenseCpu::new().with_max_chunk(c)),
        ("dsa-cpu", None) => Box::new(DsaCpu::new()),
        ("dsa-cpu", Some(c)) => Box::new(DsaCpu::new().with_max_chunk(c)),
        _ => panic!("unknown engine {id}"),
    }
}

/// Prepare and run a case, returning the output.
fn run(case: &Case, max_chunk: Option<usize>) -> Output {
    let mut e = engine(&case.engine, max_chunk);
    assert_eq!(e.supports(case), Support::Yes, "{}", case.key());
    e.prepare(case, &Inputs::seeded(case.seed)).unwrap_or_else(|err| panic!("prepare {}: {err}", case.key()));
    let t = e.run().unwrap_or_else(|err| panic!("run {}: {err}", case.key()));
    assert!(t.total_ms >= 0.0 && t.total_ms.is_finite());
    if case.is_sparse() {
        let names: Vec<&str> = t.components.iter().map(|c| c.0).collect();
        assert_eq!(names, ["indexer", "topk", "attention"]);
    }
    e.output().unwrap()
}

/// The grid each parity test covers: (context, query_len).
const GRID: &[(usize, usize)] = &[(37, 37), (37, 1), (100, 9), (100, 100), (300, 2), (300, 300)];

macro_rules! parity {
    ($name:ident, $engine:literal, $phase:expr, $precision:expr) => {
        #[test]
        fn $name() {
            for &(context, query_len) in GRID {
                for max_chunk in [None, Some(7)] {
                    let c = case($engine, $phase, $precision, context, query_len, 2);
                    let out = run(&c, max_chunk);
                    let v = verify(&c, &Inputs::seeded(c.seed), &out, &Rows::All);
                    assert!(v.passed, "{} seed {} chunk {:?}: {:?}", c.key(), c.seed, max_chunk, v);
                    assert_eq!(v.method, "full");
                    assert!(v.output.compared > 0);
                }
            }
        }
    };
}

parity!(dense_prefill_f32, "dense-cpu", Phase::Prefill, Precision::F32);
parity!(dense_prefill_bf16, "dense-cpu", Phase::Prefill, Precision::Bf16);
parity!(dense_decode_f32, "dense-cpu", Phase::Decode, Precision::F32);
parity!(dense_decode_bf16, "dense-cpu", Phase::Decode, Precision::Bf16);
parity!(dsa_prefill_f32, "dsa-cpu", Phase::Prefill, Precision::F32);
parity!(dsa_prefill_bf16, "dsa-cpu", Phase::Prefill, Precision::Bf16);
parity!(dsa_decode_f32, "dsa-cpu", Phase::Decode, Precision::F32);
parity!(dsa_decode_bf16, "dsa-cpu", Phase::Decode, Precision::Bf16);

#[test]
fn dsa_with_k_at_least_context_is_dense_mqa() {
    for (phase, context, query_len) in [(Phase::Decode, 300, 1), (Phase::Decode, 200, 2), (Phase::Prefill, 150, 150)] {
        let mut sparse = case("dsa-cpu", phase, Precision::F32, context, query_len, 2);
        sparse.shape.top_k = 512;
        assert!(sparse.shape.top_k >= context);
        // Dense MQA attention over the same query and latent tensors (same seed, same dims).
        let dense = Case { engine: "dense-cpu".into(), method: ctxcost_core::Method::Dense, phase: Phase::Decode, ..sparse.clone() };
        let s = run(&sparse, None);
        let d = run(&dense, None);
        assert_eq!(s.values.len(), d.values.len());
        let worst = s.values.iter().zip(&d.values).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{} seed {}: max diff {worst}", sparse.key(), sparse.seed);
        // Every visible key is selected, ascending, padded with -1.
        let k = sparse.effective_top_k();
        let idx = s.indices.unwrap();
        for (row, sel) in idx.chunks_exact(k).enumerate() {
            let visible = sparse.query_position(row % query_len) + 1;
            let want: Vec<i32> = (0..k as i32).map(|p| if (p as usize) < visible { p } else { -1 }).collect();
            assert_eq!(sel, &want[..]);
        }
    }
}

/// dsa-cpu's f32 top-k equals the f64 reference's row for row, except where a near-tie at the
/// k-th score (within verification's f32 tie tolerance) may flip; such rows stay rare.
#[test]
fn dsa_indices_equal_reference_topk_in_f32_up_to_near_ties() {
    for (phase, context, query_len, batch) in [(Phase::Decode, 1000, 2, 3), (Phase::Prefill, 300, 300, 1), (Phase::Prefill, 700, 40, 2)] {
        let c = case("dsa-cpu", phase, Precision::F32, context, query_len, batch);
        let out = run(&c, Some(16));
        let inputs = Inputs::seeded(c.seed);
        let view = View::cached(&c, &inputs, &[InputTensor::IndexQ, InputTensor::IndexK, InputTensor::IndexW]);
        let k = c.effective_top_k();
        let idx = out.indices.expect("dsa-cpu returns indices");
        assert_eq!(idx.len(), batch * query_len * k);
        let rows: Vec<(usize, usize)> = (0..batch).flat_map(|b| (0..query_len).map(move |i| (b, i))).collect();
        let want: Vec<i32> = rows.iter().flat_map(|&(b, i)| reference::topk(&reference::indexer_scores(&view, b, i), k)).collect();
        let mut scores = |r: usize| reference::indexer_scores(&view, rows[r].0, rows[r].1);
        let sel = ctxcost_core::verify::compare_selection(&idx, &want, k, ctxcost_engines::check::tie_tolerance(Precision::F32), &mut scores);
        assert!(sel.passed, "{} seed {}: {sel:?}", c.key(), c.seed);
        assert!(sel.rows_differing * 50 <= rows.len().max(50), "{} seed {}: {} of {} rows differ", c.key(), c.seed, sel.rows_differing, rows.len());
    }
}

#[test]
fn perturbed_output_fails_verification() {
    for (engine, phase) in [("dense-cpu", Phase::Prefill), ("dense-cpu", Phase::Decode), ("dsa-cpu", Phase::Prefill), ("dsa-cpu", Phase::Decode)] {
        for precision in [Precision::F32, Precision::Bf16] {
            let c = case(engine, phase, precision, 150, 3, 2);
            let inputs = Inputs::seeded(c.seed);
            let out = run(&c, None);
            assert!(verify(&c, &inputs, &out, &Rows::All).passed, "{} seed {}", c.key(), c.seed);
            // One element, moved by well over the tolerance.
            let mut bad = out.clone();
            let at = bad.values.len() / 2 + 5;
            bad.values[at] += 0.25 + 0.2 * bad.values[at].abs();
            assert!(!verify(&c, &inputs, &bad, &Rows::All).passed, "{} seed {}: perturbed value passed", c.key(), c.seed);
            // Sampled verification sees it too when the row is sampled (with two samples:
            // sequence 0's last query, among others).
            let mut bad = out.clone();
            let row_len = bad.values.len() / c.query_tokens();
            bad.values[c.query_len * row_len - 1] = f32::NAN;
            assert!(!verify(&c, &inputs, &bad, &Rows::Sampled { queries: 2, heads: c.shape.heads }).passed);
        }
    }
}

#[test]
fn perturbed_selection_fails_verification() {
    for phase in [Phase::Prefill, Phase::Decode] {
        let c = case("dsa-cpu", phase, Precision::F32, 300, 2, 2);
        let inputs = Inputs::seeded(c.seed);
        let out = run(&c, None);
        assert!(verify(&c, &inputs, &out, &Rows::All).passed, "{} seed {}", c.key(), c.seed);
        // Swap one selected key for the visible key the indexer ranks lowest.
        let k = c.effective_top_k();
        let view = View::cached(&c, &inputs, &[InputTensor::IndexQ, InputTensor::IndexK, InputTensor::IndexW]);
        let scores = reference::indexer_scores(&view, 0, 1);
        let worst = (0..scores.len()).min_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap() as i32;
        let mut bad = out.clone();
        let row = &mut bad.indices.as_mut().unwrap()[k..2 * k]; // sequence 0, query 1
        assert!(!row.contains(&worst));
        row[k / 2] = worst;
        row.sort_unstable();
        let v = verify(&c, &inputs, &bad, &Rows::All);
        assert!(!v.passed, "{} seed {}: perturbed selection passed", c.key(), c.seed);
        assert!(!v.selection.unwrap().passed);
    }
}

#[test]
fn unsupported_cases_are_refused() {
    let fp8 = case("dense-cpu", Phase::Decode, Precision::Fp8, 100, 1, 1);
    for mut e in [engine("dense-cpu", None), engine("dsa-cpu", None)] {
        let Support::No(why) = e.supports(&fp8) else { panic!("fp8 accepted by {}", e.id()) };
        assert!(why.contains("fp8"), "{why}");
        assert!(e.prepare(&fp8, &Inputs::seeded(1)).is_err());
        assert!(e.run().is_err(), "run before a successful prepare");
    }
    let mut terminus = case("dsa-cpu", Phase::Decode, Precision::Bf16, 100, 1, 1);
    terminus.shape = ModelShape::deepseek_v31_terminus();
    let mut dsa = DsaCpu::new();
    let Support::No(why) = dsa.supports(&terminus) else { panic!("DSA accepted a shape without an indexer") };
    assert!(why.contains("indexer"), "{why}");
    assert!(dsa.prepare(&terminus, &Inputs::seeded(1)).is_err());
    // The same shape runs dense.
    let dense_ok = Case { engine: "dense-cpu".into(), method: ctxcost_core::Method::Dense, ..terminus.clone() };
    assert_eq!(DenseCpu::new().supports(&dense_ok), Support::Yes);
    // Far beyond any host's memory: refused with the figures, before allocating.
    let mut huge = case("dense-cpu", Phase::Prefill, Precision::Bf16, 1 << 22, 1 << 22, 8);
    huge.shape = ModelShape::deepseek_v32_exp();
    if std::path::Path::new("/proc/meminfo").exists() {
        for e in [engine("dense-cpu", None), engine("dsa-cpu", None)] {
            let Support::No(why) = e.supports(&huge) else { panic!("{} accepted a huge case", e.id()) };
            assert!(why.contains("GiB"), "{why}");
        }
    }
}

#[test]
fn output_runs_once_when_needed_and_runs_repeat() {
    let c = case("dsa-cpu", Phase::Decode, Precision::F32, 120, 1, 2);
    let mut e = DsaCpu::new();
    e.prepare(&c, &Inputs::seeded(c.seed)).unwrap();
    let first = e.output().unwrap();
    for _ in 0..2 {
        e.run().unwrap();
    }
    assert_eq!(e.output().unwrap(), first, "runs are deterministic");
    e.release();
    assert!(e.run().is_err());
}

/// Timing of one run per (engine, phase, precision) at the `cpu-quick` geometry, 8K context,
/// with verification as the runner does it
/// (`cargo test -p ctxcost-engines --test parity -- --ignored --nocapture`). Ignored by
/// default: slow in the test profile, and its figures are for reading.
#[test]
#[ignore]
fn timing_tiny_8k() {
    for engine_id in ["dense-cpu", "dsa-cpu"] {
        for (phase, batch, query_len) in [(Phase::Prefill, 1, 128), (Phase::Decode, 4, 1)] {
            for precision in [Precision::F32, Precision::Bf16] {
                let c = case(engine_id, phase, precision, 8192, query_len, batch);
                let mut e = engine(engine_id, None);
                let t0 = std::time::Instant::now();
                e.prepare(&c, &Inputs::seeded(c.seed)).unwrap();
                let prep = t0.elapsed().as_secs_f64() * 1e3;
                let mut runs: Vec<_> = (0..12).map(|_| e.run().unwrap()).collect();
                runs.sort_by(|a, b| a.total_ms.total_cmp(&b.total_ms));
                let med = &runs[runs.len() / 2];
                let parts: Vec<String> = med.components.iter().map(|(n, ms)| format!("{n} {ms:.2}")).collect();
                let v = verify(&c, &Inputs::seeded(c.seed), &e.output().unwrap(), &e.verify_rows(&c));
                println!(
                    "{:<52} prepare {prep:6.1} ms  run median {:7.2} ms  min {:7.2} ms  verify {} ({}, norm err {:.1e})  {}",
                    c.key(),
                    med.total_ms,
                    runs[0].total_ms,
                    if v.passed { "ok" } else { "FAILED" },
                    v.method,
                    v.output.norm_rel_err,
                    parts.join(", ")
                );
                assert!(v.passed, "{} seed {}: {v:?}", c.key(), c.seed);
            }
        }
    }
}

/// Every engine of the table that can run here (probe ok, case supported) passes the same
/// verification on fresh seeds: ours, and the library peers whose libraries are installed
/// (external workers speak the protocol of `peers/PROTOCOL.md`).
#[test]
fn every_available_engine_of_the_table_matches_the_reference() {
    let grid = [(Phase::Prefill, 100, 9, 1), (Phase::Prefill, 64, 64, 1), (Phase::Decode, 300, 1, 2), (Phase::Decode, 200, 2, 2)];
    let mut verified = Vec::new();
    for entry in ctxcost_engines::engines() {
        if (entry.probe)().is_err() {
            eprintln!("{}: not available here", entry.id);
            continue;
        }
        for precision in [Precision::F32, Precision::Bf16] {
            for &(phase, context, query_len, batch) in &grid {
                let mut c = case(entry.id, phase, precision, context, query_len, batch);
                c.method = entry.method;
                let mut e = entry.make();
                if let Support::No(why) = e.supports(&c) {
                    eprintln!("{}: skips {}: {why}", entry.id, c.key());
                    continue;
                }
                let inputs = Inputs::seeded(c.seed);
                e.prepare(&c, &inputs).unwrap_or_else(|err| panic!("prepare {} seed {}: {err}", c.key(), c.seed));
                let out = e.output().unwrap_or_else(|err| panic!("output {}: {err}", c.key()));
                let v = verify(&c, &inputs, &out, &e.verify_rows(&c));
                assert!(v.passed, "{} seed {}: {:?}", c.key(), c.seed, v);
                let t = e.run().unwrap_or_else(|err| panic!("run {}: {err}", c.key()));
                assert!(t.total_ms > 0.0 && t.total_ms.is_finite(), "{}: {} ms", c.key(), t.total_ms);
                e.release();
                verified.push(c.key());
            }
        }
    }
    for ours in ["dense-cpu", "dsa-cpu"] {
        assert!(verified.iter().any(|k| k.starts_with(ours)), "{ours} was not verified: {verified:?}");
    }
}
