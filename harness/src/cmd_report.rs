//! `ctxcost report`: read record files, write the report folder (index.html, REPORT.md,
//! charts, summary.csv, records.parquet) and print the verdict. The work is done by
//! `ctxcost-reports`; this module owns only the command line and what is printed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use ctxcost_reports::analysis::{CostSettings, Yardstick};
use ctxcost_reports::yardstick::EnginePair;
use ctxcost_reports::report::{self, ReportOptions};

/// Arguments of `ctxcost report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Record files (JSONL) to read; records of several runs or machines combine.
    #[arg(required = true)]
    pub records: Vec<PathBuf>,
    /// Output folder (created if missing).
    #[arg(long, default_value = "report")]
    pub out: PathBuf,
    /// Price of one GPU-hour in USD (DeepSeek's Fig. 3 uses 2.0).
    #[arg(long, default_value_t = 2.0)]
    pub usd_per_gpu_hour: f64,
    /// Achieved TFLOP/s assumed for the rest of the model (MoE, projections) when no GEMM
    /// record was measured: other seconds per token = 2 x active params / this rate.
    #[arg(long, default_value_t = 400.0)]
    pub other_tflops: f64,
    /// API price table (CSV with the columns of core/data/deepseek-api-prices.csv)
    /// replacing the shipped DeepSeek prices.
    #[arg(long)]
    pub api_prices: Option<PathBuf>,
    /// An engine pair for the second verdict table, `DSA:DENSE` (e.g. `dsa-cuda:dense-cuda`);
    /// repeatable [default: ours against ours]. The first table always uses the fastest
    /// verified engine of each method.
    #[arg(long, value_name = "DSA:DENSE")]
    pub pair: Vec<String>,
    /// Copy bandwidth (TB/s) for the roofline bound, when the records do not carry the
    /// same-run ceilings [default: the H200's 3.918 from bench/NOTES.md].
    #[arg(long, value_name = "TB/S")]
    pub copy_tbps: Option<f64>,
    /// bf16 GEMM rate (TFLOP/s) for the roofline bound; FP8 matrix work counts at twice it
    /// [default: the H200's 811.1 from bench/NOTES.md].
    #[arg(long, value_name = "TFLOP/S")]
    pub gemm_tflops: Option<f64>,
}

impl ReportArgs {
    fn options(&self) -> ReportOptions {
        ReportOptions {
            cost: CostSettings { usd_per_gpu_hour: self.usd_per_gpu_hour, other_tflops: self.other_tflops },
            api_prices: self.api_prices.clone(),
        }
    }
}

impl ReportArgs {
    fn yardstick(&self) -> anyhow::Result<Yardstick> {
        let mut y = Yardstick::default();
        for p in &self.pair {
            y.pairs.push(EnginePair::parse(p).map_err(|e| anyhow::anyhow!("--pair {p}: {e}"))?);
        }
        if let Some(c) = self.copy_tbps {
            y.ceilings.copy_tbps = c;
        }
        if let Some(g) = self.gemm_tflops {
            y.ceilings.gemm_tflops = g;
        }
        report::validate_yardstick(&y)?;
        Ok(y)
    }
}

/// Write the report with `options` and return the verdict lines plus where it went.
fn write_report(records: &[PathBuf], out: &Path, options: &ReportOptions, yardstick: &Yardstick) -> anyhow::Result<Vec<String>> {
    let report = report::build_with(records, options, yardstick).context("building the report")?;
    let written = report::write(&report, out).with_context(|| format!("writing the report to {}", out.display()))?;
    let mut lines = written.verdict_lines;
    let problems = report.set.problems.len();
    if problems > 0 {
        lines.push(format!("  warning: {problems} line(s) of the record files are not records; see the report's data section"));
    }
    Ok(lines)
}

/// Write the report with default settings (as `ctxcost report RECORDS --out OUT` would) and
/// return the verdict lines to print. Used at the end of `ctxcost run`.
pub fn write_default_report(records: &[PathBuf], out: &Path) -> anyhow::Result<Vec<String>> {
    write_report(records, out, &ReportOptions::default(), &Yardstick::default())
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let yardstick = args.yardstick()?;
    let lines = write_report(&args.records, &args.out, &args.options(), &yardstick)?;
    for l in lines {
        println!("{l}");
    }
    println!("report: {}", args.out.join("index.html").display());
    Ok(ExitCode::SUCCESS)
}
