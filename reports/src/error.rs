//! The error type of the reports crate, at the bottom of the crate so that every file may use
//! it without importing a file that imports it back.

/// Errors of the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot read record file {path}: {source}")]
    ReadRecords { path: String, source: std::io::Error },
    #[error("no records: {0}")]
    NoRecords(String),
    #[error("cannot write {path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("invalid API price table, line {line}: {why}")]
    Prices { line: usize, why: String },
    #[error("cannot read API price table {path}: {source}")]
    ReadPrices { path: String, source: std::io::Error },
    #[error("invalid setting {flag} = {value}: {why}")]
    Setting { flag: &'static str, value: String, why: String },
    #[error("data frame: {0}")]
    Frame(String),
    #[error("chart {chart}: {why}")]
    Chart { chart: String, why: String },
}
