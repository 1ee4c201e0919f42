//! Golden tests: fixed record files (tests/fixtures/, described in its README) whose costs,
//! ratios and break-evens are worked out by hand below.

use std::path::PathBuf;

use ctxcost_core::{Phase, Precision};
use ctxcost_reports::analysis::{Band, Claim, Crossing, Series};
use ctxcost_reports::report::{self, Report, ReportError, ReportOptions};

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
    assert!(r.set.problems[2].why.contains("newer"));
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
    assert!(lines.contains("decode (cpu tiny f32 B=4 1 token/step, dsa-cpu vs dense-cpu): holds from about 3.4K [3.4K, 3.4K] up to 8K"), "{lines}");
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
