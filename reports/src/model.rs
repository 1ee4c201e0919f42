//! What a report is, once computed: its settings and its parts. Kept apart from `report`
//! (which builds and writes it) so that `render` can read a report without importing the file
//! that calls it.

use std::path::PathBuf;

use crate::analysis::{Analysis, CostSettings};
use crate::error::ReportError;
use crate::load::RecordSet;
use crate::reference::{ApiPrice, Fig3};
use crate::verdict;

/// Settings of a report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReportOptions {
    pub cost: CostSettings,
    /// Replace the shipped API price table with this CSV (same columns).
    pub api_prices: Option<PathBuf>,
}

impl ReportOptions {
    /// Reject settings that make no sense; the error names the flag.
    pub fn validate(&self) -> Result<(), ReportError> {
        let pos = |flag: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(ReportError::Setting { flag, value: v.to_string(), why: "must be a positive number".into() })
            }
        };
        pos("--usd-per-gpu-hour", self.cost.usd_per_gpu_hour)?;
        pos("--other-tflops", self.cost.other_tflops)?;
        Ok(())
    }
}

/// A report, computed and ready to write.
#[derive(Debug, Clone)]
pub struct Report {
    pub options: ReportOptions,
    pub set: RecordSet,
    pub analysis: Analysis,
    pub fig3: Fig3,
    pub prices: Vec<ApiPrice>,
    /// Where the price table came from (`shipped` or a path).
    pub prices_from: String,
    /// Remote endpoint cases (empty when the records hold none).
    pub endpoints: crate::endpoint::EndpointAnalysis,
    /// What was read besides the measurements: machines, files, flagged records, bad lines.
    pub inventory: crate::inventory::Inventory,
}

impl Report {
    /// The verdict lines (also at the top of the HTML and Markdown).
    pub fn verdict_lines(&self) -> Vec<String> {
        verdict::lines(&self.analysis, &self.endpoints, &self.inventory, &self.fig3)
    }
}
