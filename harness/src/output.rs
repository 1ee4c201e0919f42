//! Where a run's records and report go: the output flags `run` and `endpoint` share, the
//! default file and folder names, and the report written at the end of a run.

use std::path::{Path, PathBuf};

use clap::Args;

/// Where a run's records and report go (the same flags for `run` and `endpoint`).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Output JSONL file [default: runs/<sweep name>-<UTC time>.jsonl; endpoint runs: runs/endpoint-<UTC time>.jsonl].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Continue an existing output file: cases it already records are skipped.
    #[arg(long)]
    pub resume: bool,
    /// Overwrite an existing output file.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Do not write the report at the end.
    #[arg(long)]
    pub no_report: bool,
    /// Report folder [default: the output file's name without .jsonl, plus `-report`].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
}

impl OutputArgs {
    /// The output file (`--out`, else `runs/<name>-<UTC time>.jsonl`) and the report folder
    /// (none with `--no-report`; the report sits beside the records it is made from).
    pub fn paths(&self, name: &str) -> (PathBuf, Option<PathBuf>) {
        let out = self.out.clone().unwrap_or_else(|| default_out(name));
        let report_dir = (!self.no_report).then(|| self.report_dir.clone().unwrap_or_else(|| default_report_dir(&out)));
        (out, report_dir)
    }
}

fn default_out(name: &str) -> PathBuf {
    PathBuf::from("runs").join(format!("{}-{}.jsonl", name, crate::envinfo::utc_compact()))
}

/// `runs/x.jsonl` -> `runs/x-report`.
pub fn default_report_dir(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "ctxcost".into());
    out.with_file_name(format!("{stem}-report"))
}

#[cfg(feature = "report")]
pub fn write_report(records: &std::path::Path, dir: &std::path::Path) {
    match crate::cmd_report::write_default_report(&[records.to_path_buf()], dir) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            println!("report: {}", dir.join("index.html").display());
        }
        Err(e) => eprintln!("warning: the report could not be written: {e:#}"),
    }
}

#[cfg(not(feature = "report"))]
pub fn write_report(records: &std::path::Path, _dir: &std::path::Path) {
    eprintln!("this build has no report feature: run `ctxcost report {}` where it does", records.display());
}
