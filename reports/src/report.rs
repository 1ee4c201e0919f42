//! `ctxcost report`: records in, report out.
//!
//! [`build`] reads record files ([`crate::load`]), prices and compares them
//! ([`crate::analysis`]); [`write`] puts the result in a folder:
//!
//! - `index.html`: self-contained (charts inline as base64 PNG), the verdict first;
//! - `REPORT.md`: the same for a repository, linking the chart PNGs written beside it;
//! - `chart-*.svg` / `chart-*.png`: the charts;
//! - `summary.csv`: one row per series and context (costs, ratios with CIs, verdicts);
//! - `records.parquet`: every record used (the latest per case and machine), one row each,
//!   raw samples included.
//!
//! A report folder may be reused: [`write`] removes the files an earlier report wrote there
//! that this one does not (a chart this report has no data for), and nothing else; it only
//! ever deletes names it writes itself ([`OUTPUT_NAMES`] and the chart files).

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::analysis::{self, Yardstick};
use crate::charts;
use crate::load::{self, RecordSet};
use crate::reference::{self, Fig3};
use crate::render;
pub use crate::error::ReportError;
pub use crate::model::{Report, ReportOptions};

/// Check the yardstick inputs; the error names the flag.
pub fn validate_yardstick(y: &Yardstick) -> Result<(), ReportError> {
    for (flag, v) in [("--copy-tbps", y.ceilings.copy_tbps), ("--gemm-tflops", y.ceilings.gemm_tflops)] {
        if !(v.is_finite() && v > 0.0) {
            return Err(ReportError::Setting { flag, value: v.to_string(), why: "must be a positive number".into() });
        }
    }
    Ok(())
}

/// Read record files and compute the report.
pub fn build(paths: &[PathBuf], options: &ReportOptions) -> Result<Report, ReportError> {
    build_with(paths, options, &Yardstick::default())
}

/// Read record files and compute the report against a yardstick (`--pair`, ceilings).
pub fn build_with(paths: &[PathBuf], options: &ReportOptions, yardstick: &Yardstick) -> Result<Report, ReportError> {
    if paths.is_empty() {
        return Err(ReportError::NoRecords("give at least one record file (JSONL written by `ctxcost run`)".into()));
    }
    let set = load::load_files(paths)?;
    build_from_set_with(set, options, yardstick)
}

/// Compute the report of records already read.
pub fn build_from_set(set: RecordSet, options: &ReportOptions) -> Result<Report, ReportError> {
    build_from_set_with(set, options, &Yardstick::default())
}

/// Compute the report of records already read, against a yardstick.
pub fn build_from_set_with(set: RecordSet, options: &ReportOptions, yardstick: &Yardstick) -> Result<Report, ReportError> {
    options.validate()?;
    validate_yardstick(yardstick)?;
    if set.records.is_empty() {
        let why = match set.problems.first() {
            Some(p) => format!("no line of the record files is a record ({} bad line(s); first: {}:{}: {})", set.problems.len(), p.file, p.line, p.why),
            None => "the record files are empty".into(),
        };
        return Err(ReportError::NoRecords(why));
    }
    let (prices, prices_from) = match &options.api_prices {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| ReportError::ReadPrices { path: p.display().to_string(), source })?;
            (reference::parse_api_prices(&text)?, p.display().to_string())
        }
        None => (reference::parse_api_prices(reference::API_PRICES_CSV)?, "shipped (core/data/deepseek-api-prices.csv)".to_string()),
    };
    let fig3 = Fig3::shipped();
    let analysis = analysis::analyse(&set, &options.cost, yardstick, &fig3);
    let endpoints = crate::endpoint::analyse(&set);
    let inventory = crate::inventory::Inventory::of(&set);
    Ok(Report { options: options.clone(), set, analysis, fig3, prices, prices_from, endpoints, inventory })
}

/// What [`write`] produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub files: Vec<PathBuf>,
    /// Files of an earlier report in the same folder that this report no longer produces,
    /// removed.
    pub removed: Vec<PathBuf>,
    pub verdict_lines: Vec<String>,
}

/// The files every report writes, besides its charts.
pub const OUTPUT_NAMES: [&str; 4] = ["index.html", "REPORT.md", "summary.csv", "records.parquet"];

/// Every name a report may write into its folder.
pub fn known_names() -> Vec<String> {
    let mut v: Vec<String> = OUTPUT_NAMES.iter().map(|s| s.to_string()).collect();
    for k in charts::ChartKind::EVERY {
        v.push(format!("{}.svg", k.id()));
        v.push(format!("{}.png", k.id()));
    }
    v
}

/// Remove the files of an earlier report in `out` that this report did not write: only names
/// a report writes ([`known_names`]), never anything else.
fn remove_stale(out: &Path, written: &[PathBuf]) -> Result<Vec<PathBuf>, ReportError> {
    let mut removed = Vec::new();
    for name in known_names() {
        let p = out.join(&name);
        if written.contains(&p) || !p.is_file() {
            continue;
        }
        std::fs::remove_file(&p).map_err(|source| ReportError::Write { path: p.display().to_string(), source })?;
        removed.push(p);
    }
    Ok(removed)
}

/// Write the report into `out` (created if missing).
pub fn write(report: &Report, out: &Path) -> Result<Written, ReportError> {
    std::fs::create_dir_all(out).map_err(|source| ReportError::Write { path: out.display().to_string(), source })?;
    let mut files = Vec::new();
    let charts = charts::render_all(&report.analysis, &report.endpoints, &report.fig3, out)?;
    for c in &charts {
        files.push(out.join(format!("{}.svg", c.kind.id())));
        files.push(out.join(format!("{}.png", c.kind.id())));
    }
    let put = |name: &str, text: &str, files: &mut Vec<PathBuf>| -> Result<(), ReportError> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|source| ReportError::Write { path: p.display().to_string(), source })?;
        files.push(p);
        Ok(())
    };
    put("index.html", &render::html(report, &charts), &mut files)?;
    put("REPORT.md", &render::markdown(report, &charts), &mut files)?;

    let csv_path = out.join("summary.csv");
    let mut df = summary_frame(report).map_err(|e| ReportError::Frame(e.to_string()))?;
    let f = std::fs::File::create(&csv_path).map_err(|source| ReportError::Write { path: csv_path.display().to_string(), source })?;
    CsvWriter::new(f).include_header(true).finish(&mut df).map_err(|e| ReportError::Frame(e.to_string()))?;
    files.push(csv_path);

    let pq = out.join("records.parquet");
    load::write_parquet(&report.set, &pq)?;
    files.push(pq);
    let removed = remove_stale(out, &files)?;
    Ok(Written { files, removed, verdict_lines: report.verdict_lines() })
}

/// One row per series and context: costs (USD per million tokens), ratios with CIs, verdicts,
/// DeepSeek's Fig. 3 ratios at the same position.
pub fn summary_frame(report: &Report) -> PolarsResult<DataFrame> {
    // Endpoint records only: one row per case and side, endpoint columns.
    if report.endpoints.only {
        return crate::endpoint::summary_frame(&report.endpoints);
    }
    let a = &report.analysis;
    let rows: Vec<(&analysis::Series, &analysis::Point)> = a.series.iter().flat_map(|s| s.points.iter().map(move |p| (s, p))).collect();
    let s = |name: &str, f: &dyn Fn(&analysis::Series, &analysis::Point) -> String| {
        Column::new(name.into(), rows.iter().map(|(s, p)| f(s, p)).collect::<Vec<String>>())
    };
    let u = |name: &str, f: &dyn Fn(&analysis::Series, &analysis::Point) -> u64| {
        Column::new(name.into(), rows.iter().map(|(s, p)| f(s, p)).collect::<Vec<u64>>())
    };
    let fl = |name: &str, f: &dyn Fn(&analysis::Series, &analysis::Point) -> Option<f64>| {
        Column::new(name.into(), rows.iter().map(|(s, p)| f(s, p).filter(|v| v.is_finite())).collect::<Vec<Option<f64>>>())
    };
    let columns = vec![
        s("env", &|s, _| s.key.env.clone()),
        s("dense_engine", &|_, p| p.dense_engine.clone()),
        s("dsa_engine", &|_, p| p.dsa_engine.clone()),
        s("shape", &|s, _| s.key.shape.clone()),
        s("phase", &|s, _| s.key.phase.to_string()),
        u("batch", &|s, _| s.key.batch as u64),
        s("query_len", &|s, p| s.key.query_len.map(|q| q.to_string()).unwrap_or_else(|| format!("whole prompt ({})", p.context))),
        s("precision", &|s, _| s.key.precision.to_string()),
        u("context", &|_, p| p.context as u64),
        u("query_tokens", &|_, p| p.query_tokens as u64),
        u("layers", &|s, _| s.layers as u64),
        u("dense_samples", &|_, p| p.dense.n_samples as u64),
        u("dsa_samples", &|_, p| p.dsa.n_samples as u64),
        fl("dense_median_ms", &|_, p| Some(p.dense.median_ms)),
        fl("dsa_median_ms", &|_, p| Some(p.dsa.median_ms)),
        fl("dense_attn_usd_per_m", &|_, p| Some(p.dense.attn_marginal)),
        fl("dsa_attn_usd_per_m", &|_, p| Some(p.dsa.attn_marginal)),
        fl("dense_model_usd_per_m", &|_, p| Some(p.dense.model_marginal)),
        fl("dsa_model_usd_per_m", &|_, p| Some(p.dsa.model_marginal)),
        fl("dense_attn_request_usd_per_m", &|_, p| Some(p.dense.attn_request)),
        fl("dsa_attn_request_usd_per_m", &|_, p| Some(p.dsa.attn_request)),
        fl("dense_model_request_usd_per_m", &|_, p| Some(p.dense.model_request)),
        fl("dsa_model_request_usd_per_m", &|_, p| Some(p.dsa.model_request)),
        fl("attn_ratio", &|_, p| Some(p.attn_ratio.ratio)),
        fl("attn_ratio_lo", &|_, p| Some(p.attn_ratio.lo)),
        fl("attn_ratio_hi", &|_, p| Some(p.attn_ratio.hi)),
        s("ci", &|_, p| if p.lockstep { "paired".into() } else { "unpaired".into() }),
        fl("roofline_ratio", &|_, p| Some(p.roofline.ratio)),
        fl("dense_share_of_fastest", &|_, p| Some(p.dense_share.0)),
        fl("dsa_share_of_fastest", &|_, p| Some(p.dsa_share.0)),
        fl("model_ratio", &|_, p| Some(p.model_ratio.ratio)),
        fl("model_ratio_lo", &|_, p| Some(p.model_ratio.lo)),
        fl("model_ratio_hi", &|_, p| Some(p.model_ratio.hi)),
        fl("attn_request_ratio", &|_, p| Some(p.attn_request_ratio.ratio)),
        fl("attn_request_ratio_lo", &|_, p| Some(p.attn_request_ratio.lo)),
        fl("attn_request_ratio_hi", &|_, p| Some(p.attn_request_ratio.hi)),
        fl("model_request_ratio", &|_, p| Some(p.model_request_ratio.ratio)),
        fl("model_request_ratio_lo", &|_, p| Some(p.model_request_ratio.lo)),
        fl("model_request_ratio_hi", &|_, p| Some(p.model_request_ratio.hi)),
        s("band", &|_, p| p.verdict.band.as_str().to_string()),
        s("claim", &|_, p| p.verdict.claim.as_str().to_string()),
        s("ci_straddles_half", &|_, p| p.verdict.straddles_half.to_string()),
        s("ci_straddles_one", &|_, p| p.verdict.straddles_one.to_string()),
        fl("fig3_ratio", &|_, p| p.fig3_ratio),
        fl("fig3_request_ratio", &|_, p| p.fig3_request_ratio),
        fl("other_ms_per_token", &|s, _| Some(s.other.seconds_per_token * 1e3)),
        s("other_source", &|s, _| s.other.describe()),
        fl("usd_per_gpu_hour", &|_, _| Some(a.settings.usd_per_gpu_hour)),
    ];
    DataFrame::new(rows.len(), columns)
}
