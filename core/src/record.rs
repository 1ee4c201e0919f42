//! The record schema: one JSON object per line of a `.jsonl` file, one per finished case.
//!
//! Version history:
//! - 1: first version.
//! - 2: optional `endpoint` block (records of remote OpenAI-compatible endpoints, engine
//!   `http-<label>`); the key of such a record extends `Case::key` with the API, output
//!   length and load.
//!
//! Readers must check `schema_version` and refuse records newer than they know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analytic::Work;
use crate::endpoint::EndpointBlock;
use crate::stats::Summary;
use crate::verify::{Comparison, SelectionCheck};
use crate::Case;

/// The schema version this crate writes.
pub const SCHEMA_VERSION: u32 = 2;

/// Outcome of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Skipped,
    Failed,
}

/// The tool that wrote the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Tool {
    pub name: String,
    pub version: String,
    pub git_sha: String,
}

/// The machine a record was measured on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Environment {
    pub hostname: String,
    pub os: String,
    pub cpu: String,
    pub cpu_cores: usize,
    pub host_memory_bytes: u64,
    /// GPU name, UUID, driver, CUDA version, clocks: where readable.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub gpu: BTreeMap<String, String>,
    /// `CTXCOST_*` environment variables of the measuring process: the switches that pick
    /// kernel variants (e.g. `CTXCOST_DENSE_DECODE=mma`) or plant test slowdowns, so a record
    /// says which code ran. Absent variables mean the build's defaults (see `tool.git_sha`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
}

impl Environment {
    /// A short label used to tell machines apart in reports and comparisons.
    pub fn label(&self) -> String {
        match self.gpu.get("name") {
            Some(g) => format!("{} ({})", g, self.hostname),
            None => format!("{} x{} ({})", self.cpu, self.cpu_cores, self.hostname),
        }
    }
}

/// Achieved rates derived from the analytic work and the median time.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Rates {
    pub tflops: f64,
    pub tbps: f64,
}

/// Memory of a case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Memory {
    /// KV cache the case models, per layer (analytic).
    pub kv_bytes_model: f64,
    /// Peak host RSS growth while the engine prepared and warmed up.
    pub peak_host_bytes: Option<u64>,
    /// Peak device bytes the engine allocated.
    pub peak_device_bytes: Option<u64>,
    /// Device free memory before / after prepare (mem_get_info), where a device exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_free_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_free_after: Option<u64>,
}

/// Verification of the output against the reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Verification {
    /// `full` (every element) or `sampled` (some rows against the f64 reference).
    pub method: String,
    pub output: Comparison,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<SelectionCheck>,
    pub passed: bool,
}

/// One record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema_version: u32,
    pub tool: Tool,
    pub env: Environment,
    /// The case key (see `Case::key`).
    pub key: String,
    pub case: Case,
    pub engine: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Raw timed samples of the whole case (ms).
    pub samples_ms: Vec<f64>,
    /// Raw per-component samples (ms), e.g. `indexer`, `topk`, `attention` for DSA.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components_ms: BTreeMap<String, Vec<f64>>,
    /// How the samples were timed (`monotonic-clock`, `cuda-events`, ...).
    pub timer: String,
    pub warmup_runs: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Summary>,
    /// Why sampling stopped: `ci-target`, `max-samples`, `max-time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_rule: Option<String>,
    pub work: Work,
    pub rates: Rates,
    pub memory: Memory,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Remote endpoint cases only: raw request timestamps, metrics, faults, cache, cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<EndpointBlock>,
    /// RFC 3339 UTC start and end.
    pub started_at: String,
    pub finished_at: String,
}

impl Record {
    /// Parse one JSONL line, refusing unknown schema versions.
    pub fn from_line(line: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let ver = v.get("schema_version").and_then(|x| x.as_u64()).ok_or("no schema_version")?;
        if ver as u32 > SCHEMA_VERSION {
            return Err(format!("schema_version {ver} is newer than this build understands ({SCHEMA_VERSION})"));
        }
        serde_json::from_value(v).map_err(|e| format!("not a ctxcost record: {e}"))
    }

    /// Median time in ms when the case succeeded.
    pub fn median_ms(&self) -> Option<f64> {
        self.stats.as_ref().map(|s| s.median).filter(|m| m.is_finite())
    }
}
