//! The record schema: one JSON object per line of a `.jsonl` file, one per finished case.
//!
//! Version history:
//! - 1: first version.
//! - 2: optional `endpoint` block (records of remote OpenAI-compatible endpoints, engine
//!   `http-<label>`); the key of such a record extends `Case::key` with the API, output
//!   length and load.
//! - 3: `case.method` (`dense` | `dsa`), from the engine table. Readers infer it for older
//!   records from the id (`dsa-*` is DSA). Later within 3, readable by the same reader rules:
//!   method `rest` (the rest of a layer, `rest-*` engines) and the shape's rest-of-layer
//!   geometry and `ep` (absent in older records: 0, and 1 for `ep`). Later within 3:
//!   optional `env.placement` (sweep fingerprint and size, point, shard, GPU, replica; see
//!   [`crate::placement`]); readers of earlier 3 ignore it, and records without it read as
//!   before.
//!
//! Readers must check `schema_version` and refuse records newer than they know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analytic::Work;
use crate::endpoint::EndpointBlock;
use crate::placement::Placement;
use crate::stats::Summary;
use crate::verify::{Comparison, SelectionCheck};
use crate::case::PointKey;
use crate::Case;

/// The schema version this crate writes.
pub const SCHEMA_VERSION: u32 = 3;

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
    /// `CTXCOST_*` environment variables of the measuring process (`CTXCOST_L2_FLUSH`, planted
    /// test slowdowns). Kernel variants are in the case (`case.kernel`), not here; records
    /// before that say `CTXCOST_SPARSE_VARIANT` and the like here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, String>,
    /// Where in a sweep spread over GPUs and hosts the record was measured (`ctxcost run`
    /// records; absent in older ones and in endpoint records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
}

impl Environment {
    /// A short label used to tell machines apart in reports and comparisons. The shards of
    /// one sweep (`--shard K/N`, on one host or many) are one run: they are labelled by
    /// device model and sweep, not host, so a merged file reads as a single run.
    pub fn label(&self) -> String {
        if let Some(p) = &self.placement {
            if let Some(s) = p.shard {
                return format!("{} (sweep {}, {} shards)", self.device_model(), p.sweep, s.count);
            }
        }
        match self.gpu.get("name") {
            Some(g) => format!("{} ({})", g, self.hostname),
            None => format!("{} x{} ({})", self.cpu, self.cpu_cores, self.hostname),
        }
    }

    /// The model of the device that measured: the GPU's name, else the CPU's (with its
    /// core count). Records of one case must never mix two.
    pub fn device_model(&self) -> String {
        match self.gpu.get("name") {
            Some(g) => g.clone(),
            None => format!("{} x{}", self.cpu, self.cpu_cores),
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
    /// The one record builder: a record of `case` measured by `engine` with nothing measured
    /// yet (status `ok`, no samples, no statistics, not finished), keyed by [`Case::key`], with
    /// the case's analytic work and modelled KV bytes. Kernel points fill in samples, memory
    /// and verification; endpoint cases add their block with [`Record::with_endpoint`].
    pub fn new(case: &Case, tool: Tool, env: Environment, engine: &str, timer: &str, started_at: String) -> Record {
        Record {
            schema_version: SCHEMA_VERSION,
            tool,
            env,
            key: case.key(),
            case: case.clone(),
            engine: engine.to_string(),
            status: Status::Ok,
            reason: None,
            samples_ms: vec![],
            components_ms: BTreeMap::new(),
            timer: timer.to_string(),
            warmup_runs: 0,
            stats: None,
            stop_rule: None,
            work: crate::analytic::case_work(case),
            rates: Rates::default(),
            memory: Memory { kv_bytes_model: crate::analytic::case_kv_bytes(case), ..Default::default() },
            verification: None,
            endpoint: None,
            started_at,
            finished_at: String::new(),
        }
    }

    /// This record as a remote endpoint case: its key gains the block's API, output length and
    /// load ([`EndpointBlock::key_suffix`]); no analytic work (a server's kernels are not
    /// known), and no KV model for the `endpoint` shape, whose geometry is a placeholder.
    pub fn with_endpoint(mut self, block: EndpointBlock) -> Record {
        self.key = format!("{}{}", self.case.key(), block.key_suffix());
        self.work = Work::default();
        if self.case.shape.name == crate::endpoint::ENDPOINT_SHAPE {
            self.memory.kv_bytes_model = 0.0;
        }
        self.endpoint = Some(block);
        self
    }

    /// The one pairing key: the record's [`Case::point_key`], with an endpoint case's API,
    /// output length and load. Records of one point (dense and DSA engines, or the two sides
    /// of an endpoint A/B run) share it; reports, the run summary and the endpoint summary pair
    /// by it (with the machine, where records of several machines mix).
    pub fn point_key(&self) -> PointKey {
        let mut k = self.case.point_key();
        if let Some(e) = &self.endpoint {
            k.endpoint = e.key_suffix();
        }
        k
    }

    /// The method of the engine that made the record (from its case).
    pub fn method(&self) -> crate::Method {
        self.case.method
    }

    /// Parse one JSONL line: refuses unknown schema versions and records whose numbers are
    /// out of range ([`Record::validate`]).
    pub fn from_line(line: &str) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let ver = v.get("schema_version").and_then(|x| x.as_u64()).ok_or("no schema_version")?;
        if ver == 0 || ver > SCHEMA_VERSION as u64 {
            return Err(format!("schema_version {ver} is outside what this build understands (1 to {SCHEMA_VERSION})"));
        }
        let r: Record = serde_json::from_value(v).map_err(|e| format!("not a ctxcost record: {e}"))?;
        r.validate()?;
        Ok(r)
    }

    /// Check the numbers a reader relies on: timed samples finite and positive (an endpoint's
    /// TPOT or ITL may be 0: a buffering proxy delivers every token in one read), components
    /// finite and not negative, a well-formed case, finite statistics and work.
    pub fn validate(&self) -> Result<(), String> {
        self.case.validate().map_err(|e| format!("case: {e}"))?;
        let zero_ok = self.endpoint.is_some();
        for (i, &x) in self.samples_ms.iter().enumerate() {
            if !x.is_finite() || x < 0.0 || (x == 0.0 && !zero_ok) {
                return Err(format!("samples_ms[{i}] = {x}: a timed sample must be a positive, finite number of ms"));
            }
        }
        for (name, xs) in &self.components_ms {
            if let Some(x) = xs.iter().find(|x| !x.is_finite() || **x < 0.0) {
                return Err(format!("components_ms.{name} holds {x}: must be finite and not negative"));
            }
        }
        if self.status == Status::Ok && self.endpoint.is_none() && self.samples_ms.is_empty() {
            return Err("status ok with no samples".into());
        }
        for (what, x) in [("work.flops", self.work.flops), ("work.bytes", self.work.bytes), ("rates.tflops", self.rates.tflops), ("rates.tbps", self.rates.tbps)] {
            if !x.is_finite() || x < 0.0 {
                return Err(format!("{what} = {x}: must be finite and not negative"));
            }
        }
        Ok(())
    }

    /// Median time in ms when the case succeeded.
    pub fn median_ms(&self) -> Option<f64> {
        self.stats.as_ref().map(|s| s.median).filter(|m| m.is_finite())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Method, ModelShape, Phase, Precision};

    /// A plain ok record of a kernel case (`context` 1024, `batch` 16).
    pub(crate) fn sample_record() -> Record {
        let case = Case {
            engine: "dense-cpu".into(),
            method: Method::Dense,
            shape: ModelShape::tiny(),
            phase: Phase::Decode,
            context: 1024,
            batch: 16,
            query_len: 1,
            precision: Precision::F32,
            seed: 7,
            kernel: Default::default(),
        };
        let samples = vec![1.5, 1.25, 1.75];
        Record {
            schema_version: SCHEMA_VERSION,
            tool: Tool::default(),
            env: Environment::default(),
            key: case.key(),
            engine: case.engine.clone(),
            case,
            status: Status::Ok,
            reason: None,
            stats: Some(crate::stats::summarize(&samples)),
            samples_ms: samples,
            components_ms: BTreeMap::new(),
            timer: "monotonic-clock".into(),
            warmup_runs: 1,
            stop_rule: Some("max-samples".into()),
            work: Work { flops: 1e9, indexer_flops: 0.0, attention_flops: 1e9, bytes: 1e6 },
            rates: Rates { tflops: 0.5, tbps: 0.001 },
            memory: Memory::default(),
            verification: None,
            endpoint: None,
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
        }
    }

    #[test]
    fn records_round_trip_and_undefined_statistics_are_absent_not_null() {
        let r = sample_record();
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(Record::from_line(&line).unwrap(), r);
        // A zero-width CI over a zero median: defined (0). Identical samples: relative width 0.
        let s = crate::stats::summarize(&[0.0, 0.0, 0.0]);
        assert_eq!(s.rel_half_width, 0.0);
        // No samples: every statistic undefined, written as absent.
        let empty = serde_json::to_string(&crate::stats::summarize(&[])).unwrap();
        assert!(!empty.contains("null"), "{empty}");
        let back: crate::stats::Summary = serde_json::from_str(&empty).unwrap();
        assert!(back.median.is_nan() && back.n == 0);
    }

    #[test]
    fn one_builder_one_pairing_key() {
        let base = sample_record();
        let r = Record::new(&base.case, Tool::default(), Environment::default(), "dense-cpu", "monotonic-clock", "t0".into());
        assert_eq!((r.key.as_str(), r.status, r.work), (base.case.key().as_str(), Status::Ok, crate::analytic::case_work(&base.case)));
        assert_eq!(r.point_key().to_string(), "tiny|decode|L=1024|B=16|q=1|f32");
        // Two sides of an endpoint A/B case share the point key; their keys differ by engine.
        let side = |engine: &str, label: &str, rate: f64| {
            let case = Case { engine: engine.into(), shape: crate::endpoint::endpoint_shape(), ..base.case.clone() };
            let block = crate::endpoint::EndpointBlock {
                side: label.into(),
                label: label.into(),
                url: String::new(),
                model: "m".into(),
                api: "chat".into(),
                load: crate::endpoint::Load::Open { rate_rps: rate },
                target_prompt_tokens: 1024,
                prompt_fit: String::new(),
                max_tokens: 8,
                prompt_text: String::new(),
                slo: Default::default(),
                planned_requests: 0,
                not_run: None,
                requests: vec![],
                metrics: Default::default(),
                cache: Default::default(),
                cost: Default::default(),
            };
            Record::new(&case, Tool::default(), Environment::default(), engine, "client-monotonic", "t0".into()).with_endpoint(block)
        };
        let rate = 2.5;
        let (a, b) = (side("http-a", "a", rate), side("http-b", "b", rate));
        assert!(a.key.ends_with("|api=chat|out=8|load=r2.5"), "{}", a.key);
        assert_eq!((a.work, a.memory.kv_bytes_model), (Work::default(), 0.0));
        assert_eq!(a.point_key(), b.point_key());
        assert_ne!(a.key, b.key);
        assert!(a.point_key().to_string().ends_with("|api=chat|out=8|load=r2.5"));
        // Another rate at the same prompt length is another point.
        let c = side("http-a", "a", 5.0);
        assert_ne!(a.point_key(), c.point_key());
        assert_ne!(a.key, c.key);
    }

    #[test]
    fn schema_2_records_get_their_method_from_the_id() {
        let mut v: serde_json::Value = serde_json::to_value(sample_record()).unwrap();
        v["schema_version"] = 2.into();
        v["case"].as_object_mut().unwrap().remove("method");
        v["case"]["engine"] = "dsa-cpu".into();
        let r = Record::from_line(&v.to_string()).unwrap();
        assert_eq!(r.case.method, Method::Dsa);
        v["case"]["engine"] = "cudnn-sdpa".into();
        v["case"]["method"] = "dense".into();
        assert_eq!(Record::from_line(&v.to_string()).unwrap().case.method, Method::Dense);
    }
}
