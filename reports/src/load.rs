//! Reading record files: JSONL in, typed records out, every bad line kept as a flagged
//! problem instead of stopping the report, and the records as a polars frame (one row per
//! record, raw samples as a list column) for `records.parquet`.
//!
//! Records from several files (runs, machines) combine. When the same case (same
//! [`Record::key`] on the same machine) appears more than once, the record read last wins
//! and the earlier ones are counted as superseded, so a resumed or repeated run does not
//! double-count a point. Replicas of a case on other GPUs (`run --replicate`,
//! `env.placement.replica` above 0) are neither: they are kept apart in
//! [`RecordSet::replicas`] for the spread across GPUs, and the analysis reads the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ctxcost_core::record::{Record, Status};
use ctxcost_core::stats;
use polars::prelude::*;

use crate::error::ReportError;

/// One record and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedRecord {
    pub record: Record,
    /// The file it was read from, as given.
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    /// `Environment::label()` of the machine that measured it.
    pub env_label: String,
}

impl LoadedRecord {
    /// Median of the raw samples in milliseconds (recomputed, not read from `stats`).
    pub fn median_ms(&self) -> f64 {
        stats::median(&self.record.samples_ms)
    }

    /// Whether the record can be used as a measurement: ok, with finite samples.
    pub fn is_measured(&self) -> bool {
        self.record.status == Status::Ok && self.median_ms().is_finite() && self.median_ms() > 0.0
    }
}

/// A line that was not a usable record.
#[derive(Debug, Clone, PartialEq)]
pub struct LineProblem {
    pub file: String,
    pub line: usize,
    pub why: String,
}

/// Every record read, with the problems met on the way.
#[derive(Debug, Clone, Default)]
pub struct RecordSet {
    /// Records kept (latest per case and machine), in reading order.
    pub records: Vec<LoadedRecord>,
    /// Lines that could not be read as records.
    pub problems: Vec<LineProblem>,
    /// Records replaced by a later record of the same case on the same machine.
    pub superseded: Vec<LoadedRecord>,
    /// Further replicas of kept cases, measured on other GPUs (`run --replicate`).
    pub replicas: Vec<LoadedRecord>,
    /// The files read, with the number of records each held.
    pub files: Vec<(String, usize)>,
}

impl RecordSet {
    /// Distinct machine labels, sorted.
    pub fn env_labels(&self) -> Vec<String> {
        let mut v: Vec<String> = self.records.iter().map(|r| r.env_label.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Parse the text of one JSONL file. Blank lines are ignored; every other line that is not a
/// record becomes a [`LineProblem`].
pub fn parse_jsonl(file: &str, text: &str) -> (Vec<LoadedRecord>, Vec<LineProblem>) {
    // The one reader (ctxcost_core::jsonl), lenient: bad lines become problems; a torn last
    // line is left out and noted.
    let c = ctxcost_core::jsonl::parse(file, text, ctxcost_core::jsonl::Mode::Lenient).unwrap_or_default();
    let records = c
        .records
        .into_iter()
        .map(|(line, record)| {
            let env_label = record.env.label();
            LoadedRecord { record, file: file.to_string(), line, env_label }
        })
        .collect();
    let mut problems: Vec<LineProblem> = c.problems.into_iter().map(|p| LineProblem { file: p.file, line: p.line, why: p.why }).collect();
    if let Some(t) = c.torn {
        problems.push(LineProblem { file: file.to_string(), line: t.line, why: "incomplete last line (an interrupted write); left out".into() });
    }
    (records, problems)
}

/// Read record files. A file that cannot be read is an error; bad lines are not.
pub fn load_files(paths: &[PathBuf]) -> Result<RecordSet, ReportError> {
    let mut all = Vec::new();
    let mut set = RecordSet::default();
    for path in paths {
        let text = std::fs::read_to_string(path).map_err(|source| ReportError::ReadRecords { path: path.display().to_string(), source })?;
        let name = path.display().to_string();
        let (records, problems) = parse_jsonl(&name, &text);
        set.files.push((name, records.len()));
        all.extend(records);
        set.problems.extend(problems);
    }
    let (records, superseded) = dedup_latest(all);
    (set.records, set.replicas) = split_replicas(records);
    set.superseded = superseded;
    Ok(set)
}

/// Build a set from records already in memory (tests, callers that hold records).
pub fn from_records(records: Vec<LoadedRecord>) -> RecordSet {
    let mut files: BTreeMap<String, usize> = BTreeMap::new();
    for r in &records {
        *files.entry(r.file.clone()).or_default() += 1;
    }
    let (records, superseded) = dedup_latest(records);
    let (records, replicas) = split_replicas(records);
    RecordSet { records, problems: Vec::new(), superseded, replicas, files: files.into_iter().collect() }
}

/// Which replica of its case a record is (`run --replicate`; 0 when not replicated).
pub fn replica(r: &Record) -> u32 {
    r.env.placement.as_ref().map_or(0, |p| p.replica)
}

/// Split kept records into the first replica of each case and the further ones.
fn split_replicas(kept: Vec<LoadedRecord>) -> (Vec<LoadedRecord>, Vec<LoadedRecord>) {
    kept.into_iter().partition(|r| replica(&r.record) == 0)
}

/// Keep the last record of each (machine, case key, replica); return (kept, superseded).
fn dedup_latest(all: Vec<LoadedRecord>) -> (Vec<LoadedRecord>, Vec<LoadedRecord>) {
    let id = |r: &LoadedRecord| (r.env_label.clone(), r.record.key.clone(), replica(&r.record));
    let mut last: BTreeMap<(String, String, u32), usize> = BTreeMap::new();
    for (i, r) in all.iter().enumerate() {
        last.insert(id(r), i);
    }
    let mut kept = Vec::new();
    let mut superseded = Vec::new();
    for (i, r) in all.into_iter().enumerate() {
        if last.get(&id(&r)) == Some(&i) {
            kept.push(r);
        } else {
            superseded.push(r);
        }
    }
    (kept, superseded)
}

fn component_median(r: &Record, name: &str) -> Option<f64> {
    r.components_ms.get(name).map(|v| stats::median(v)).filter(|m| m.is_finite())
}

/// The records as a frame: one row per record, flat columns plus the raw samples as a list.
pub fn records_frame(set: &RecordSet) -> PolarsResult<DataFrame> {
    let rs = &set.records;
    let s = |name: &str, f: &dyn Fn(&LoadedRecord) -> String| -> Column {
        Column::new(name.into(), rs.iter().map(f).collect::<Vec<String>>())
    };
    let u = |name: &str, f: &dyn Fn(&LoadedRecord) -> u64| -> Column { Column::new(name.into(), rs.iter().map(f).collect::<Vec<u64>>()) };
    let fl = |name: &str, f: &dyn Fn(&LoadedRecord) -> Option<f64>| -> Column {
        Column::new(name.into(), rs.iter().map(f).collect::<Vec<Option<f64>>>())
    };
    let samples: Vec<Series> = rs.iter().map(|r| Series::new("".into(), r.record.samples_ms.clone())).collect();
    let columns = vec![
        s("file", &|r| r.file.clone()),
        u("line", &|r| r.line as u64),
        s("env", &|r| r.env_label.clone()),
        s("hostname", &|r| r.record.env.hostname.clone()),
        s("gpu", &|r| r.record.env.gpu.get("name").cloned().unwrap_or_default()),
        s("tool_version", &|r| r.record.tool.version.clone()),
        s("git_sha", &|r| r.record.tool.git_sha.clone()),
        s("key", &|r| r.record.key.clone()),
        s("engine", &|r| r.record.engine.clone()),
        s("shape", &|r| r.record.case.shape.name.clone()),
        s("phase", &|r| r.record.case.phase.to_string()),
        u("context", &|r| r.record.case.context as u64),
        u("batch", &|r| r.record.case.batch as u64),
        u("query_len", &|r| r.record.case.query_len as u64),
        u("query_tokens", &|r| r.record.case.query_tokens() as u64),
        // An endpoint case's precision is a placeholder (its shape is `endpoint`).
        s("precision", &|r| if r.record.endpoint.is_some() && r.record.case.shape.name == ctxcost_core::endpoint::ENDPOINT_SHAPE { "n/a".into() } else { r.record.case.precision.to_string() }),
        u("layers", &|r| r.record.case.shape.layers as u64),
        u("top_k", &|r| r.record.case.shape.top_k as u64),
        s("status", &|r| format!("{:?}", r.record.status).to_lowercase()),
        s("reason", &|r| r.record.reason.clone().unwrap_or_default()),
        s("timer", &|r| r.record.timer.clone()),
        u("n_samples", &|r| r.record.samples_ms.len() as u64),
        fl("median_ms", &|r| Some(r.median_ms()).filter(|m| m.is_finite())),
        fl("ci_lo_ms", &|r| r.record.stats.map(|s| s.ci_lo)),
        fl("ci_hi_ms", &|r| r.record.stats.map(|s| s.ci_hi)),
        fl("indexer_ms", &|r| component_median(&r.record, "indexer")),
        fl("topk_ms", &|r| component_median(&r.record, "topk")),
        fl("attention_ms", &|r| component_median(&r.record, "attention")),
        fl("flops", &|r| Some(r.record.work.flops)),
        fl("bytes", &|r| Some(r.record.work.bytes)),
        fl("tflops", &|r| Some(r.record.rates.tflops)),
        fl("tbps", &|r| Some(r.record.rates.tbps)),
        fl("kv_bytes_model", &|r| Some(r.record.memory.kv_bytes_model)),
        fl("peak_host_bytes", &|r| r.record.memory.peak_host_bytes.map(|b| b as f64)),
        fl("peak_device_bytes", &|r| r.record.memory.peak_device_bytes.map(|b| b as f64)),
        s("verified", &|r| match &r.record.verification {
            Some(v) if v.passed => "passed".into(),
            Some(_) => "failed".into(),
            None => String::new(),
        }),
        s("started_at", &|r| r.record.started_at.clone()),
        s("finished_at", &|r| r.record.finished_at.clone()),
        Series::new("samples_ms".into(), samples).into(),
    ];
    let mut columns = columns;
    columns.extend(crate::endpoint::record_columns(set));
    DataFrame::new(rs.len(), columns)
}

/// Write the records frame as Parquet.
pub fn write_parquet(set: &RecordSet, path: &Path) -> Result<(), ReportError> {
    let mut df = records_frame(set).map_err(|e| ReportError::Frame(e.to_string()))?;
    let file = std::fs::File::create(path).map_err(|source| ReportError::Write { path: path.display().to_string(), source })?;
    ParquetWriter::new(file).finish(&mut df).map_err(|e| ReportError::Frame(e.to_string()))?;
    Ok(())
}
