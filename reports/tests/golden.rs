//! Golden tests: fixed record files (tests/fixtures/, described in its README) whose costs,
//! ratios and break-evens are worked out by hand below.

use std::path::PathBuf;

use ctxcost_core::{Phase, Precision};
use ctxcost_reports::analysis::{Band, Claim, Crossing, Pairing, Series, Yardstick};
use ctxcost_reports::report::{self, Report, ReportError, ReportOptions};
use ctxcost_reports::yardstick::{Ceilings, EnginePair};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn golden() -> Report {
    report::build(&[fixture("golden.jsonl")], &ReportOptions::default()).expect("golden report builds")
}

fn series(r: &Report, phase: Phase, precision: Precision) -> &Series {
    r.analysis.series.iter().find(|s| s.key.phase == phase && s.key.precision == precision).expect("series present")
}

fn close(got: f64, want: f64, tol: f64) {
    assert!((got - want).abs() <= tol * want.abs().max(1e-300), "got {got}, want {want}");
}

// Shared hand numbers (tiny shape: 61 layers, 37e9 active parameters; $2/GPU-hour).
const LAYERS: f64 = 61.0;
/// USD per million tokens per second per token at $2/h: 2 / 3600 * 1e6.
const USD_PER_S: f64 = 2.0 / 3600.0 * 1e6;
/// Rest of the model: 2 * 37e9 / 400e12 s per token.
const OTHER_S: f64 = 2.0 * 37e9 / 400e12;

#[test]
fn bad_lines_are_flagged_not_fatal() {
    let r = golden();
    // Not JSON; JSON without schema_version; schema_version 99. The blank line is ignored.
    assert_eq!(r.set.problems.len(), 3, "{:?}", r.set.problems);
    assert!(r.set.problems[0].why.contains("not JSON"));
    assert!(r.set.problems[1].why.contains("schema_version"));
    assert!(r.set.problems[2].why.contains("schema_version 99"), "{:?}", r.set.problems[2]);
    assert_eq!(r.set.records.len(), 18);
    assert_eq!(r.analysis.series.len(), 4);
}

#[test]
fn decode_costs_by_hand() {
    let r = golden();
    let s = series(&r, Phase::Decode, Precision::F32);
    assert_eq!(s.contexts(), vec![1024, 2048, 4096, 8192]);
    let p = &s.points[0];
    // Dense at 1K: 2 ms / (4 sequences x 1 token) = 0.5 ms = 5e-4 s per token per layer.
    assert_eq!(p.query_tokens, 4);
    close(p.dense.attn_seconds_per_token, 5e-4, 1e-12);
    // Attention-only: 61 x 5e-4 s x 2 USD/h / 3600 x 1e6 = 16.9444 USD per million tokens.
    close(p.dense.attn_marginal, 61.0 * 5e-4 * 2.0 / 3600.0 * 1e6, 1e-12);
    close(p.dense.attn_marginal, 16.944_444, 1e-6);
    // Whole model: (61 x 5e-4 + 1.85e-4) s x 555.56 = 17.0472.
    close(p.dense.model_marginal, (LAYERS * 5e-4 + OTHER_S) * USD_PER_S, 1e-12);
    close(p.dense.model_marginal, 17.047_222, 1e-6);
    // DSA at 1K: 2.4 ms / 4 = 0.6 ms per token.
    close(p.dsa.attn_marginal, LAYERS * 6e-4 * USD_PER_S, 1e-12);
    // Ratios: constant samples, so the CI collapses onto the ratio.
    let want = [1.2, 0.8, 0.4, 0.3];
    for (p, w) in s.points.iter().zip(want) {
        close(p.attn_ratio.ratio, w, 1e-12);
        close(p.attn_ratio.lo, w, 1e-12);
        close(p.attn_ratio.hi, w, 1e-12);
    }
    // Whole-model marginal ratio at 1K: (61 x 6e-4 + 1.85e-4) / (61 x 5e-4 + 1.85e-4) = 0.036785 / 0.030685.
    close(s.points[0].model_ratio.ratio, 0.036_785 / 0.030_685, 1e-9);
    close(s.points[0].model_ratio.lo, 0.036_785 / 0.030_685, 1e-9);
}

#[test]
fn decode_per_request_by_hand() {
    let r = golden();
    let s = series(&r, Phase::Decode, Precision::F32);
    // Dense marginal per token: 0.5 ms below 1K (held), 0.5 * p / 1024 ms between 1K and 2K.
    // Average over 0..2048 = (1024 x 0.5 + 0.5 / 1024 x (2048^2 - 1024^2) / 2) / 2048 = 0.625 ms.
    let dense_req = 0.625e-3;
    // DSA: 0.6 ms held below 1K, a power law 0.6 -> 0.8 ms on 1K..2K with slope s = log2(4/3):
    // integral = 0.6 x 1024 / (s + 1) x (2^(s+1) - 1) = 0.6 x 1024 x (5/3) / (s + 1).
    let sl = (4.0f64 / 3.0).log2();
    let dsa_req = (0.6e-3 * 1024.0 + 0.6e-3 * 1024.0 * (5.0 / 3.0) / (sl + 1.0)) / 2048.0;
    let p = &s.points[1];
    close(p.dense.attn_request, LAYERS * dense_req * USD_PER_S, 1e-9);
    close(p.dsa.attn_request, LAYERS * dsa_req * USD_PER_S, 1e-9);
    close(p.attn_request_ratio.ratio, dsa_req / dense_req, 1e-9);
    close(p.attn_request_ratio.ratio, 1.045_32, 1e-4);
    close(p.model_request_ratio.ratio, (LAYERS * dsa_req + OTHER_S) / (LAYERS * dense_req + OTHER_S), 1e-9);
    // At the smallest context the request is the held first value: ratio 1.2.
    close(s.points[0].attn_request_ratio.ratio, 1.2, 1e-12);
}

#[test]
fn decode_verdict_and_break_evens_by_hand() {
    let r = golden();
    let s = series(&r, Phase::Decode, Precision::F32);
    let bands: Vec<Band> = s.points.iter().map(|p| p.verdict.band).collect();
    assert_eq!(bands, vec![Band::AtLeastDense, Band::HalfToOne, Band::AtMostHalf, Band::AtMostHalf]);
    let claims: Vec<Claim> = s.points.iter().map(|p| p.verdict.claim).collect();
    assert_eq!(claims, vec![Claim::DoesNotHold, Claim::DoesNotHold, Claim::Holds, Claim::Holds]);
    // 1.0: ratio 1.2 at 1K -> 0.8 at 2K, halfway in log-context: 1024 x 2^0.5 = 1448.15.
    let one = s.break_evens.attn_one;
    match (one.estimate, one.lo, one.hi) {
        (Crossing::At(x), Crossing::At(lo), Crossing::At(hi)) => {
            close(x, 1024.0 * 2f64.sqrt(), 1e-9);
            close(lo, x, 1e-9);
            close(hi, x, 1e-9);
        }
        other => panic!("{other:?}"),
    }
    // 0.5: 0.8 at 2K -> 0.4 at 4K, fraction (0.8 - 0.5) / (0.8 - 0.4) = 0.75: 2048 x 2^0.75 = 3444.3.
    match s.break_evens.attn_half.estimate {
        Crossing::At(x) => close(x, 2048.0 * 2f64.powf(0.75), 1e-9),
        other => panic!("{other:?}"),
    }
    // DeepSeek Fig. 3 decode at 8K: 0.15068 / 0.20076.
    close(s.points[3].fig3_ratio.unwrap(), 0.15068 / 0.20076, 1e-9);
    // The 16K point has a skipped DSA record: not measured, with its reason.
    assert!(s.unpaired.iter().any(|u| u.context == 16384 && u.why.contains("skipped") && u.why.contains("limit")), "{:?}", s.unpaired);
    let lines = r.verdict_lines().join("\n");
    // The headline names the engines; the long sentence follows below it.
    assert!(lines.contains("decode: tiny f32 B=4 1 token/step: holds from about 3.4K [3.4K, 3.4K] up to 8K; DSA (dsa-cpu) vs dense (dense-cpu)."), "{lines}");
    assert!(lines.contains("decode (tiny f32 B=4 1 token/step, DSA (dsa-cpu) vs dense (dense-cpu)): holds from about 3.4K [3.4K, 3.4K] up to 8K"), "{lines}");
    assert!(lines.find("decode: tiny f32").unwrap() < lines.find("details").unwrap(), "{lines}");
    assert!(lines.contains("break-even with dense at 1.4K [1.4K, 1.4K]"), "{lines}");
    assert!(lines.contains("whole 95% CI at or below 0.5 at 4K, 8K"), "{lines}");
    assert!(lines.contains("DeepSeek Fig. 3 at 8K: 0.75"), "{lines}");
    assert!(lines.contains("not measured above 8K"), "{lines}");
    assert!(lines.contains("`tiny` shape"), "{lines}");
}

#[test]
fn straddling_ci_is_said() {
    let r = golden();
    let s = series(&r, Phase::Prefill, Precision::F32);
    // 2K: 6 / 5 = 1.2. 4K: median of alternating 4, 6 is 5; 5 / 10 = 0.5, and bootstrap medians
    // range over 4..6, so the CI straddles 0.5.
    close(s.points[0].attn_ratio.ratio, 1.2, 1e-12);
    let p = &s.points[1];
    close(p.attn_ratio.ratio, 0.5, 1e-12);
    assert!(p.attn_ratio.lo < 0.5 && p.attn_ratio.hi > 0.5, "{:?}", p.attn_ratio);
    assert!(p.attn_ratio.lo >= 0.4 && p.attn_ratio.hi <= 0.6);
    assert!(p.verdict.straddles_half);
    assert_eq!(p.verdict.claim, Claim::Holds);
    assert!(p.verdict.wording().contains("CI straddles 0.5"));
    // The break-even at 0.5 is the last point itself; its CI runs past the measured range.
    assert!(matches!(s.break_evens.attn_half.hi, Crossing::AboveRange { last: 4096 }), "{:?}", s.break_evens.attn_half);
    let lines = r.verdict_lines().join("\n");
    assert!(lines.contains("the CI straddles 0.5 at 4K"), "{lines}");
}

#[test]
fn fp8_and_sparsity_split_by_hand() {
    let r = golden();
    assert_eq!(r.analysis.splits.len(), 1);
    let x = &r.analysis.splits[0];
    assert_eq!((x.phase, x.context), (Phase::Prefill, 4096));
    // dense bf16 10 ms, dense fp8 8 ms, DSA fp8 3 ms: total 1 - 3/10 = 70%, FP8 1 - 8/10 = 20%,
    // sparsity (8 - 3)/10 = 50%.
    close(x.total_saving, 0.7, 1e-12);
    close(x.from_fp8, 0.2, 1e-12);
    close(x.from_sparsity, 0.5, 1e-12);
    close(x.dsa_bf16_usd.unwrap() / x.dense_bf16_usd, 0.5, 1e-12);
    // 10 ms / 128 tokens, 61 layers.
    close(x.dense_bf16_usd, LAYERS * 10e-3 / 128.0 * USD_PER_S, 1e-12);
}

#[test]
fn price_and_rate_flags_scale_costs() {
    let opts = ReportOptions { cost: ctxcost_reports::analysis::CostSettings { usd_per_gpu_hour: 4.0, other_tflops: 100.0 }, api_prices: None };
    let r = report::build(&[fixture("golden.jsonl")], &opts).unwrap();
    let p = &series(&r, Phase::Decode, Precision::F32).points[0];
    close(p.dense.attn_marginal, 2.0 * 16.944_444, 1e-6);
    close(p.dense.model_marginal, (LAYERS * 5e-4 + 2.0 * 37e9 / 100e12) * 4.0 / 3600.0 * 1e6, 1e-12);
    assert!(r.analysis.series[0].other.describe().contains("100 TFLOP/s"));
}

#[test]
fn machines_combine_and_are_labelled() {
    let r = report::build(&[fixture("golden.jsonl"), fixture("other-machine.jsonl")], &ReportOptions::default()).unwrap();
    assert!(r.analysis.mixed_env);
    assert_eq!(r.set.env_labels(), vec!["Test CPU x2 (golden-host)".to_string(), "Test CPU x2 (other-host)".to_string()]);
    // The later dense record (4 ms) supersedes the earlier one (9 ms): ratio 2 / 4 = 0.5.
    assert_eq!(r.set.superseded.len(), 1);
    let other = r.analysis.series.iter().find(|s| s.key.env.contains("other-host")).unwrap();
    close(other.points[0].attn_ratio.ratio, 0.5, 1e-12);
    let lines = r.verdict_lines().join("\n");
    assert!(lines.contains("@ Test CPU x2 (other-host)"), "{lines}");
    assert!(lines.contains("2 machines"), "{lines}");
}

#[test]
fn writes_every_output() {
    let r = golden();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("golden-report");
    let _ = std::fs::remove_dir_all(&out);
    let w = report::write(&r, &out).unwrap();
    for f in [
        "index.html",
        "REPORT.md",
        "summary.csv",
        "records.parquet",
        "chart-ratio.png",
        "chart-ratio.svg",
        "chart-cost.png",
        "chart-latency.svg",
        "chart-dsa-split.png",
        "chart-memory.png",
    ] {
        let p = out.join(f);
        assert!(p.metadata().map(|m| m.len() > 100).unwrap_or(false), "{f} missing or empty");
    }
    assert!(w.verdict_lines[0].starts_with("verdict:"));

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let verdict_at = html.find("id=\"verdict\"").unwrap();
    let first_figure = html.find("<figure").unwrap();
    let first_table = html.find("<table").unwrap();
    assert!(verdict_at < first_figure && html.find("holds from about 3.4K").unwrap() < first_table);
    assert_eq!(html.matches("data:image/png;base64,").count(), 5);
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<script"));

    let md = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    assert!(md.contains("](chart-ratio.png)"));
    assert!(md.find("## Verdict").unwrap() < md.find("## Charts").unwrap());

    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let rows: Vec<Vec<String>> = rows.map(|l| l.split(',').map(String::from).collect()).collect();
    assert_eq!(rows.len(), 8, "{csv}");
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap_or_else(|| panic!("no column {n}"));
    let row = rows.iter().find(|r| r[col("phase")] == "decode" && r[col("context")] == "4096").unwrap();
    close(row[col("attn_ratio")].parse().unwrap(), 0.4, 1e-9);
    assert_eq!(row[col("claim")], "holds");
    close(row[col("dense_attn_usd_per_m")].parse().unwrap(), LAYERS * 2e-3 * USD_PER_S, 1e-9);

    use polars::prelude::*;
    let df = ParquetReader::new(std::fs::File::open(out.join("records.parquet")).unwrap()).finish().unwrap();
    assert_eq!(df.height(), 18);
    assert!(df.column("samples_ms").is_ok() && df.column("env").is_ok());
}

#[test]
fn clear_errors() {
    let missing = report::build(&[fixture("does-not-exist.jsonl")], &ReportOptions::default()).unwrap_err();
    assert!(matches!(missing, ReportError::ReadRecords { .. }), "{missing}");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let bad = dir.join("only-bad-lines.jsonl");
    std::fs::write(&bad, "nope\n{}\n").unwrap();
    let e = report::build(&[bad], &ReportOptions::default()).unwrap_err();
    assert!(matches!(e, ReportError::NoRecords(_)) && e.to_string().contains("2 bad line"), "{e}");
    let mut o = ReportOptions::default();
    o.cost.usd_per_gpu_hour = -1.0;
    let e = report::build(&[fixture("golden.jsonl")], &o).unwrap_err();
    assert!(e.to_string().contains("--usd-per-gpu-hour"), "{e}");
}

#[test]
fn measured_gemm_replaces_the_analytic_rest_of_model() {
    use ctxcost_reports::cost::OtherSource;
    use ctxcost_reports::load;
    let text = std::fs::read_to_string(fixture("golden.jsonl")).unwrap();
    let (mut records, _) = load::parse_jsonl("golden.jsonl", &text);
    // A GEMM of the active parameters at 4 decode tokens took 1 ms: 2.5e-4 s per token.
    let mut gemm = records.iter().find(|r| r.record.key.starts_with("dense-cpu|tiny|decode|L=1024")).unwrap().clone();
    gemm.record.engine = "gemm-cpu".into();
    gemm.record.case.engine = "gemm-cpu".into();
    gemm.record.key = gemm.record.case.key();
    gemm.record.samples_ms = vec![1.0; 5];
    records.push(gemm);
    let r = report::build_from_set(load::from_records(records), &ReportOptions::default()).unwrap();
    let s = series(&r, Phase::Decode, Precision::F32);
    assert!(matches!(&s.other.source, OtherSource::Measured { engine, records: 1 } if engine == "gemm-cpu"), "{:?}", s.other);
    close(s.other.seconds_per_token, 2.5e-4, 1e-12);
    close(s.points[0].dense.model_marginal, (LAYERS * 5e-4 + 2.5e-4) * USD_PER_S, 1e-12);
    assert!(s.other.describe().starts_with("measured"));
    // Prefill has no GEMM record: still analytic, and the report says so.
    assert!(matches!(series(&r, Phase::Prefill, Precision::F32).other.source, OtherSource::Analytic { .. }));
}

/// A `rest-cpu` record of the tiny shape at the golden decode point (4 tokens), with constant
/// component samples (ms of one run).
fn rest_record(records: &[ctxcost_reports::load::LoadedRecord], batch: usize, ep: usize, scale: f64) -> ctxcost_reports::load::LoadedRecord {
    let mut r = records.iter().find(|r| r.record.key.starts_with("dense-cpu|tiny|decode|L=1024")).unwrap().clone();
    let c = &mut r.record.case;
    c.engine = "rest-cpu".into();
    c.method = ctxcost_core::Method::Rest;
    c.shape = ctxcost_core::ModelShape { ep, ..ctxcost_core::ModelShape::tiny() };
    c.batch = batch;
    r.record.engine = "rest-cpu".into();
    r.record.key = r.record.case.key();
    let comps = [("mla_proj", 0.1), ("indexer_proj", 0.02), ("router", 0.01), ("moe", 0.3), ("dense_mlp", 0.5), ("head", 0.4)];
    r.record.components_ms = comps.iter().map(|&(n, ms)| (n.to_string(), vec![ms * scale; 5])).collect();
    r.record.samples_ms = vec![1.33 * scale; 5];
    r.record.stats = Some(ctxcost_core::stats::summarize(&r.record.samples_ms));
    r
}

#[test]
fn measured_rest_records_change_the_whole_model_cost_by_hand() {
    use ctxcost_reports::cost::OtherSource;
    use ctxcost_reports::load;
    let text = std::fs::read_to_string(fixture("golden.jsonl")).unwrap();
    let (mut records, _) = load::parse_jsonl("golden.jsonl", &text);
    // Chosen: 4 tokens (the series' count), EP 8 (the highest measured). Not chosen: the same
    // point at EP 1 (twice as slow), and 16 tokens at EP 8 (ten times as slow).
    let chosen = rest_record(&records, 4, 8, 1.0);
    let (ep1, other_tokens) = (rest_record(&records, 4, 1, 2.0), rest_record(&records, 16, 8, 10.0));
    records.extend([chosen, ep1, other_tokens]);
    let r = report::build_from_set(load::from_records(records), &ReportOptions::default()).unwrap();
    let s = series(&r, Phase::Decode, Precision::F32);
    let OtherSource::Rest(src) = &s.other.source else { panic!("{:?}", s.other) };
    assert_eq!((src.engine.as_str(), src.records, src.query_tokens, src.ep, src.series_tokens), ("rest-cpu", 1, 4, 8, None));
    // One run: layers x mla_proj + MoE layers x (router + moe) + dense layers x dense_mlp + head
    // = 61 x 0.1 + 58 x 0.31 + 3 x 0.5 + 0.4 = 25.98 ms for 4 tokens: 6.495 ms per token.
    // The DSA side adds the indexer's projections: 61 x 0.02 / 4 = 0.305 ms per token.
    close(s.other.seconds_per_token, 6.495e-3, 1e-12);
    close(s.other.dsa_extra_seconds_per_token, 3.05e-4, 1e-12);
    let p = &s.points[0];
    // Attention-only is unchanged; the whole model is 61 x attention + the rest.
    close(p.dense.attn_marginal, LAYERS * 5e-4 * USD_PER_S, 1e-12);
    close(p.dense.model_marginal, (LAYERS * 5e-4 + 6.495e-3) * USD_PER_S, 1e-12);
    close(p.dense.model_marginal, 20.552_777_8, 1e-8);
    close(p.dsa.model_marginal, (LAYERS * 6e-4 + 6.495e-3 + 3.05e-4) * USD_PER_S, 1e-12);
    // (0.0366 + 0.0068) / (0.0305 + 0.006495) = 0.0434 / 0.036995: the analytic rest gave 1.199.
    close(p.model_ratio.ratio, 0.0434 / 0.036995, 1e-9);
    close(p.model_ratio.lo, 0.0434 / 0.036995, 1e-9);
    // At 8K likewise: the same rest on both sides, plus the indexer's projections on DSA's.
    let p8 = s.points.last().unwrap();
    close(p8.dense.model_marginal, (LAYERS * p8.dense.attn_seconds_per_token + 6.495e-3) * USD_PER_S, 1e-12);
    close(p8.dsa.model_marginal, (LAYERS * p8.dsa.attn_seconds_per_token + 6.8e-3) * USD_PER_S, 1e-12);
    // Prefill has no rest record: still analytic, named so.
    assert!(matches!(series(&r, Phase::Prefill, Precision::F32).other.source, OtherSource::Analytic { .. }));
    // The report says measured, gives the EP degree, the differences from Fig. 3, and Fig. 3's
    // absolute values beside ours.
    let md = ctxcost_reports::render::markdown(&r, &[]);
    assert!(md.contains("measured: `rest-cpu` (the fastest verified `rest` engine here), median of 1 record(s), f32 GEMMs at 4 tokens, EP 8"), "{md}");
    assert!(!md.contains("  "), "no runs of spaces inside a sentence");
    assert!(md.contains("whole model (rest of the model measured by rest-cpu, f32 EP 8): "), "{md}");
    assert!(md.contains("6.4950 ms per token") && md.contains("0.3050 ms per token on the DSA side only"));
    assert!(md.contains("all-to-all") && md.contains("H800") && md.contains("Fig. 3 V3.2-Exp"));
    // Without the rest records the same series is analytic and the differences are not listed.
    let plain = ctxcost_reports::render::markdown(&golden(), &[]);
    assert!(!plain.contains("all-to-all") && plain.contains("not measured"));
    assert!(plain.contains("whole model (rest of the model assumed): ") && !plain.contains("(modelled)"), "{plain}");
}

#[test]
fn the_fastest_verified_rest_engine_is_used_and_the_others_named() {
    use ctxcost_reports::cost::OtherSource;
    use ctxcost_reports::load;
    let text = std::fs::read_to_string(fixture("golden.jsonl")).unwrap();
    let (mut records, _) = load::parse_jsonl("golden.jsonl", &text);
    let passed = || {
        Some(ctxcost_core::record::Verification { method: "full".into(), output: Default::default(), selection: None, passed: true })
    };
    let rename = |mut r: load::LoadedRecord, engine: &str| {
        r.record.engine = engine.into();
        r.record.case.engine = engine.into();
        r.record.key = r.record.case.key();
        r
    };
    // A verified peer at 0.8 of rest-cpu's time, a verified one at 3x, and an unverified one
    // at 0.1x, which must not be chosen while verified records exist.
    let mut ours = rest_record(&records, 4, 1, 1.0);
    ours.record.verification = passed();
    let mut fast = rename(rest_record(&records, 4, 1, 0.8), "torch-rest");
    fast.record.verification = passed();
    let mut slow = rename(rest_record(&records, 4, 1, 3.0), "numpy-rest");
    slow.record.verification = passed();
    let mut unverified = rename(rest_record(&records, 4, 1, 0.1), "unchecked-rest");
    unverified.record.verification = None;
    // A record that failed verification is never used, however fast.
    let mut wrong = rename(rest_record(&records, 4, 1, 0.05), "wrong-rest");
    wrong.record.verification = passed();
    wrong.record.verification.as_mut().unwrap().passed = false;
    let only_wrong = wrong.clone();
    records.extend([ours, fast, slow, unverified, wrong]);
    let r = report::build_from_set(load::from_records(records), &ReportOptions::default()).unwrap();
    let s = series(&r, Phase::Decode, Precision::F32);
    let OtherSource::Rest(src) = &s.other.source else { panic!("{:?}", s.other) };
    assert_eq!(src.engine, "torch-rest");
    close(s.other.seconds_per_token, 0.8 * 6.495e-3, 1e-12);
    // The others, fastest first, with their whole-model ms per token (DSA side).
    assert_eq!(src.others, vec!["rest-cpu 6.8000 ms/token".to_string(), "numpy-rest 20.4000 ms/token".to_string()]);
    assert!(s.other.describe().contains("`torch-rest` (the fastest verified `rest` engine here; also measured: rest-cpu 6.8000 ms/token, numpy-rest"), "{}", s.other.describe());
    // With only the failed record, the rest of the model is assumed, not taken from it.
    let (mut alone, _) = load::parse_jsonl("golden.jsonl", &text);
    alone.push(only_wrong);
    let r = report::build_from_set(load::from_records(alone), &ReportOptions::default()).unwrap();
    assert!(matches!(series(&r, Phase::Decode, Precision::F32).other.source, OtherSource::Analytic { .. }));
}

#[test]
fn rest_records_at_another_token_count_are_used_and_said() {
    use ctxcost_reports::cost::OtherSource;
    use ctxcost_reports::load;
    let text = std::fs::read_to_string(fixture("golden.jsonl")).unwrap();
    let (mut records, _) = load::parse_jsonl("golden.jsonl", &text);
    let far = rest_record(&records, 64, 1, 1.0);
    let near = rest_record(&records, 8, 1, 1.0);
    records.extend([far, near]);
    let r = report::build_from_set(load::from_records(records), &ReportOptions::default()).unwrap();
    let s = series(&r, Phase::Decode, Precision::F32);
    let OtherSource::Rest(src) = &s.other.source else { panic!("{:?}", s.other) };
    // The nearest token count (8 for the series' 4), per token over its own 8 tokens.
    assert_eq!((src.query_tokens, src.series_tokens), (8, Some(4)));
    close(s.other.seconds_per_token, 25.98e-3 / 8.0, 1e-12);
    assert!(s.other.describe().contains("none measured at this series' 4"));
}

#[test]
fn api_price_table_can_be_replaced() {
    let p = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prices.csv");
    std::fs::write(
        &p,
        "item,usd_per_m_before,usd_per_m_after,effective_date,model_before,model_after,source\noutput,\"2.0\",1.0,2030-01-01,A,B,\"a test table, with a comma\"\n",
    )
    .unwrap();
    let opts = ReportOptions { api_prices: Some(p.clone()), ..ReportOptions::default() };
    let r = report::build(&[fixture("golden.jsonl")], &opts).unwrap();
    assert_eq!(r.prices.len(), 1);
    assert_eq!(r.prices[0].source, "a test table, with a comma");
    close(r.prices[0].ratio(), 0.5, 1e-12);
    assert_eq!(r.prices_from, p.display().to_string());
    // The shipped table: DeepSeek's before/after prices with their date.
    let shipped = golden();
    assert_eq!(shipped.prices.iter().map(|x| (x.before, x.after)).collect::<Vec<_>>(), vec![(0.07, 0.028), (0.56, 0.28), (1.68, 0.42)]);
}

// ---------------------------------------------------------------------------------------------
// Peers: three dense engines (one of them ours, slower than 0.8 of the best), a fourth whose
// output failed verification, and ours on the DSA side (tests/fixtures/README.md, `peers.jsonl`).

fn peers_with(y: &Yardstick) -> Report {
    report::build_with(&[fixture("peers.jsonl")], &ReportOptions::default(), y).expect("peers report builds")
}

fn peers() -> Report {
    peers_with(&Yardstick::default())
}

#[test]
fn verdict_uses_the_fastest_verified_engine_of_each_method() {
    let r = peers();
    let s = series(&r, Phase::Decode, Precision::Bf16);
    assert_eq!(s.pairing, Pairing::Best);
    assert_eq!(s.contexts(), vec![1024, 4096]);
    for p in &s.points {
        // cudnn-sdpa (4 ms, 16 ms) beats flash-sdpa (4.4, 17.6) and dense-cuda (10, 40); the
        // 1 ms torch-eager-dense record failed verification and is never picked.
        assert_eq!(p.engines(), ("dsa-cuda", "cudnn-sdpa"));
        // Ours ran at 10:00, the library peers at 11:00: not sampled in lockstep.
        assert!(!p.lockstep);
        assert!(p.ci_kind().contains("not sampled in lockstep"));
    }
    // 3 / 4 and 4 / 16; constant samples, so the unpaired CI collapses onto the ratio.
    close(s.points[0].attn_ratio.ratio, 0.75, 1e-12);
    close(s.points[1].attn_ratio.ratio, 0.25, 1e-12);
    close(s.points[1].attn_ratio.lo, 0.25, 1e-12);
    assert_eq!(s.engines_text(), "DSA (dsa-cuda) vs dense (cudnn-sdpa)");
    // 0.5 between 1K (0.75) and 4K (0.25): halfway in log-context, 1024 x 4^0.5 = 2048.
    let lines = r.verdict_lines().join("\n");
    assert!(lines.contains("decode: tiny bf16 B=4 1 token/step: holds from about 2K [2K, 2K] up to 4K; DSA (dsa-cuda) vs dense (cudnn-sdpa)"), "{lines}");
    // The CLI and the report say the CI is unpaired.
    assert!(lines.contains("ratio at 4K: 0.25 [0.25, 0.25] (CI unpaired: not sampled in lockstep); roofline bound there: 0.42"), "{lines}");
}

#[test]
fn slow_engine_and_unchecked_sides_are_warned_on_the_first_screen() {
    let r = peers();
    let w = r.analysis.warnings.join("\n");
    // dense-cuda: 4 / 10 = 0.40 of cudnn-sdpa at both contexts.
    assert!(
        w.contains("the pair dsa-cuda vs dense-cuda rests on dense-cuda, which runs at 0.40 of the fastest dense engine (cudnn-sdpa) at 1K, 4K"),
        "{w}"
    );
    // flash-sdpa (0.91) is not flagged, and the verdict itself rests on the fastest.
    assert!(!w.contains("flash-sdpa") && !w.contains("the verdict rests on"), "{w}");
    // No library DSA engine anywhere; no library dense engine at fp8.
    assert!(w.contains("DSA not checked against a library: no library dsa engine was measured in any series (only dsa-cuda)"), "{w}");
    assert!(w.contains("dense baseline not checked against a library: no library dense engine was measured for decode tiny fp8 B=4 1 token/step (only dense-cuda)"), "{w}");
    // Every record here was verified.
    assert!(!w.contains("not verified"), "{w}");
    // At the default (H200) ceilings, dense fp8 (dense-cuda, 12 and 48 ms) is far from its
    // roofline: the measured ratio (1.5 / 12, 3 / 48) lies well below the bound.
    assert!(w.contains("decode tiny fp8 B=4 1 token/step: the measured ratio is below its roofline bound at 1K, 4K"), "{w}");
    assert!(w.contains("the dense side (dense-cuda) runs far from the ceilings"), "{w}");

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("peers-report");
    let _ = std::fs::remove_dir_all(&out);
    report::write(&r, &out).unwrap();
    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let at = |needle: &str| html.find(needle).unwrap_or_else(|| panic!("{needle} not in the page"));
    // First screen: headline, then warnings, then the verdict table, then the long sentences.
    assert!(at("id=\"verdict-headline\"") < at("id=\"verdict-warnings\""));
    assert!(at("rests on dense-cuda") < at("id=\"verdict-table\""));
    assert!(at("id=\"verdict-table\"") < at("id=\"pair-table\""));
    assert!(at("id=\"pair-table\"") < at("id=\"verdict-lines\""));
    assert!(at("id=\"verdict-lines\"") < at("<figure"));
}

#[test]
fn pair_table_keeps_ours_vs_ours() {
    let r = peers();
    let pair = r.analysis.pairs.iter().find(|s| s.key.precision == Precision::Bf16).expect("ours vs ours");
    assert_eq!(pair.pairing, Pairing::Pair(EnginePair::new("dsa-cuda", "dense-cuda")));
    // 3 / 10 and 4 / 40, sampled in lockstep (one file, one window, 5 samples each): paired.
    close(pair.points[0].attn_ratio.ratio, 0.3, 1e-12);
    close(pair.points[1].attn_ratio.ratio, 0.1, 1e-12);
    assert!(pair.points.iter().all(|p| p.lockstep));
    close(pair.points[0].dense_share.0, 0.4, 1e-12);
    assert_eq!(pair.points[0].dense_share.1, "cudnn-sdpa");
    close(pair.points[0].dsa_share.0, 1.0, 1e-12);
    // `--pair dsa-cuda:flash-sdpa` replaces the default pair: 3 / 4.4.
    let y = Yardstick { pairs: vec![EnginePair::parse("dsa-cuda:flash-sdpa").unwrap()], ..Yardstick::default() };
    let r2 = peers_with(&y);
    assert_eq!(r2.analysis.pairs.len(), 1, "{:?}", r2.analysis.pairs.iter().map(|s| s.pairing.label()).collect::<Vec<_>>());
    close(r2.analysis.pairs[0].points[0].attn_ratio.ratio, 3.0 / 4.4, 1e-12);
    assert!(!r2.analysis.pairs[0].points[0].lockstep);
}

#[test]
fn engine_table_by_hand() {
    let r = peers();
    let row = |engine: &str, ctx: usize| {
        r.analysis
            .engines
            .iter()
            .find(|e| e.engine == engine && e.context == ctx && e.key.precision == Precision::Bf16)
            .unwrap_or_else(|| panic!("no row for {engine} at {ctx}"))
    };
    // cudnn-sdpa at 1K: tiny decode B=4, 1K keys: 4 x 1024 x 2304 = 9,437,184 FLOPs and
    // 4 x 1024 x 160 + 4 x 8 x 144 x 2 = 664,576 bytes in 4 ms.
    let c = row("cudnn-sdpa", 1024);
    close(c.tflops, 9_437_184.0 / 4e-3 / 1e12, 1e-12);
    close(c.tbps, 664_576.0 / 4e-3 / 1e12, 1e-12);
    close(c.share, 1.0, 1e-12);
    assert!(c.picked);
    close(row("flash-sdpa", 1024).share, 4.0 / 4.4, 1e-12);
    close(row("dense-cuda", 4096).share, 16.0 / 40.0, 1e-12);
    assert!(!row("dense-cuda", 4096).picked);
    assert!(row("dsa-cuda", 1024).picked);
    // The record that failed verification is not in the table.
    assert!(!r.analysis.engines.iter().any(|e| e.engine == "torch-eager-dense"));
    assert!(r.analysis.series.iter().flat_map(|s| &s.unpaired).all(|u| !u.why.contains("torch")), "a failed record at a paired point is not 'not measured'");
}

#[test]
fn roofline_bound_by_hand() {
    // Ceilings: copy 1 TB/s, GEMM 10 TFLOP/s (bf16). tiny decode, B=4, one query each, bf16.
    let y = Yardstick { ceilings: Ceilings { copy_tbps: 1.0, gemm_tflops: 10.0 }, ..Yardstick::default() };
    let r = peers_with(&y);
    let s = series(&r, Phase::Decode, Precision::Bf16);
    // L = 1K.
    //   dense: 4 x 1024 x 2304 = 9,437,184 FLOPs / 1e13 = 9.437184e-7 s;
    //          664,576 B / 1e12 = 6.64576e-7 s;                      -> 9.437184e-7 s.
    //   indexer: 4 x 1024 x 256 = 1,048,576 FLOPs / 1e13 = 1.048576e-7 s;
    //          keys 4 x 1024 x 64 + queries 4 x 4 x 32 x 2 = 263,168 B  -> 2.63168e-7 s.
    //   top-k: 0.
    //   attention: 4 x 64 x 2304 = 589,824 FLOPs / 1e13 = 5.89824e-8 s;
    //          4 x 64 x 160 + 4 x 8 x 80 x 2 + 4 x 8 x 64 x 2 = 50,176 B -> 5.0176e-8 s; -> 5.89824e-8 s.
    //   ratio = (2.63168e-7 + 5.89824e-8) / 9.437184e-7 = 3.221504 / 9.437184 = 0.341363...
    let p = &s.points[0];
    close(p.roofline.dense_s, 9.437184e-7, 1e-12);
    close(p.roofline.indexer_s, 2.63168e-7, 1e-12);
    close(p.roofline.attention_s, 5.89824e-8, 1e-12);
    close(p.roofline.ratio, 3.221504 / 9.437184, 1e-12);
    // L = 4K.
    //   dense: 4 x 4096 x 2304 = 37,748,736 FLOPs -> 3.7748736e-6 s;
    //          4 x 4096 x 160 + 9,216 = 2,630,656 B -> 2.630656e-6 s;  -> 3.7748736e-6 s.
    //   indexer: 4 x 4096 x 256 = 4,194,304 FLOPs -> 4.194304e-7 s;
    //          4 x 4096 x 64 + 1,024 = 1,049,600 B -> 1.0496e-6 s;     -> 1.0496e-6 s.
    //   attention: the same 64 selected keys as at 1K                  -> 5.89824e-8 s.
    //   ratio = (1.0496e-6 + 5.89824e-8) / 3.7748736e-6 = 1.1085824 / 3.7748736 = 0.293673...
    let p = &s.points[1];
    close(p.roofline.ratio, 1.1085824 / 3.7748736, 1e-12);
    // The bound is the same whichever engines ran (it comes from the case): ours vs ours too.
    let pair = r.analysis.pairs.iter().find(|x| x.key == s.key).unwrap();
    close(pair.points[1].roofline.ratio, 1.1085824 / 3.7748736, 1e-12);
    // Beside the measured ratio in the verdict table, and in summary.csv.
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("roofline-report");
    let _ = std::fs::remove_dir_all(&out);
    report::write(&r, &out).unwrap();
    let md = std::fs::read_to_string(out.join("REPORT.md")).unwrap();
    assert!(md.contains("| decode tiny bf16 B=4 1 token/step | 1K | dsa-cuda | cudnn-sdpa | 0.750 [0.750, 0.750] | unpaired: not sampled in lockstep | 0.341 |"), "{md}");
    assert!(md.contains("| 4K | dsa-cuda | cudnn-sdpa | 0.250 [0.250, 0.250] | unpaired: not sampled in lockstep | 0.294 |"), "{md}");
    assert!(md.contains("copy 1 TB/s, bf16 GEMM 10 TFLOP/s"), "the ceilings are stated");
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("roofline_ratio"));
}

#[test]
fn fp8_table_names_engines_and_flags_slow_fp8() {
    let r = peers();
    let x = r.analysis.splits.iter().find(|x| x.context == 1024).expect("split at 1K");
    assert_eq!(x.dense_bf16_engine, "cudnn-sdpa");
    assert_eq!(x.dense_fp8_engine, "dense-cuda");
    assert_eq!(x.dsa_fp8_engine, "dsa-cuda");
    // dense fp8 12 ms vs dense bf16 4 ms: FP8 slower for the same method.
    assert_eq!(x.fp8_slower.len(), 1, "{:?}", x.fp8_slower);
    assert!(x.fp8_slower[0].contains("dense fp8 (dense-cuda) is 3.00x slower than dense bf16 (cudnn-sdpa): a kernel defect, not a property of FP8"));
    // DSA fp8 (1.5 ms) is faster than DSA bf16 (3 ms): no flag on that side.
    assert!(!x.fp8_slower.iter().any(|f| f.starts_with("DSA")));
    // The golden fixture's fp8 (8 ms) is faster than its bf16 (10 ms): nothing flagged.
    assert!(golden().analysis.splits.iter().all(|x| x.fp8_slower.is_empty()));
}

#[test]
fn reused_folder_loses_stale_files_and_keeps_others() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reused-report");
    let _ = std::fs::remove_dir_all(&out);
    report::write(&golden(), &out).unwrap();
    assert!(out.join("chart-ratio.png").exists() && out.join("chart-memory.svg").exists());
    // Files the report never writes stay, whatever their names look like.
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    std::fs::write(out.join("chart-mine.png"), "mine").unwrap();
    // An endpoint-only report draws only the endpoint chart.
    let endpoint = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/example-endpoint-ab/records.jsonl");
    let r = report::build(&[endpoint], &ReportOptions::default()).unwrap();
    let w = report::write(&r, &out).unwrap();
    for k in ctxcost_reports::charts::ChartKind::ALL {
        for ext in ["png", "svg"] {
            assert!(!out.join(format!("{}.{ext}", k.id())).exists(), "stale {}.{ext} left behind", k.id());
        }
    }
    assert_eq!(w.removed.len(), 10, "{:?}", w.removed);
    assert!(out.join("chart-endpoint.png").exists() && out.join("index.html").exists());
    assert_eq!(std::fs::read_to_string(out.join("notes.txt")).unwrap(), "mine");
    assert_eq!(std::fs::read_to_string(out.join("chart-mine.png")).unwrap(), "mine");
    // And back: the endpoint chart of the earlier report goes.
    report::write(&golden(), &out).unwrap();
    assert!(!out.join("chart-endpoint.png").exists() && !out.join("chart-endpoint.svg").exists());
    assert!(out.join("notes.txt").exists());
}
