//! What a report read, besides the measurements the analysis prices: the machines, the record
//! files, the records that are not measurements (skipped, failed, failed verification),
//! superseded records, bad lines and the spread across GPUs. Computed once from the records,
//! beside the analysis, so that render and verdict read owned rows and never the records.

use ctxcost_core::record::{Environment, Status};

use crate::load::{LineProblem, RecordSet};
use crate::spread::{self, CaseSpread};

/// One machine and what its records say about the tools that measured on it.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `Environment::label()`.
    pub label: String,
    /// The environment of its first record.
    pub env: Environment,
    /// `name version (git sha)` of every tool that wrote a record, sorted, once each.
    pub tools: Vec<String>,
    /// Every timer its records used, sorted, once each.
    pub timers: Vec<String>,
    pub records: usize,
}

/// A record the data-problems list names: not ok, or its output failed verification.
#[derive(Debug, Clone)]
pub struct Flagged {
    pub key: String,
    pub engine: String,
    pub status: Status,
    pub reason: Option<String>,
    pub verification_failed: bool,
}

/// Everything read that is not a measurement.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// Machines by label, sorted.
    pub machines: Vec<Machine>,
    /// Files read, with the number of records each held.
    pub files: Vec<(String, usize)>,
    /// Records not ok or whose verification failed, in reading order.
    pub flagged: Vec<Flagged>,
    /// Records replaced by a later record of the same case on the same machine.
    pub superseded: usize,
    /// Lines that were not records.
    pub problems: Vec<LineProblem>,
    /// Kernel (not endpoint) records, and how many of them were measured on a GPU.
    pub kernel_records: usize,
    pub kernel_gpu_records: usize,
    /// Cases measured on more than one GPU ([`crate::spread`]).
    pub spreads: Vec<CaseSpread>,
}

impl Inventory {
    pub fn of(set: &RecordSet) -> Inventory {
        let machines = set
            .env_labels()
            .into_iter()
            .map(|label| {
                let recs: Vec<_> = set.records.iter().filter(|x| x.env_label == label).collect();
                let mut tools: Vec<String> = recs.iter().map(|x| format!("{} {} ({})", x.record.tool.name, x.record.tool.version, x.record.tool.git_sha)).collect();
                tools.sort();
                tools.dedup();
                let mut timers: Vec<String> = recs.iter().map(|x| x.record.timer.clone()).collect();
                timers.sort();
                timers.dedup();
                Machine { label, env: recs[0].record.env.clone(), tools, timers, records: recs.len() }
            })
            .collect();
        let flagged = set
            .records
            .iter()
            .map(|r| &r.record)
            .filter_map(|r| {
                let verification_failed = r.verification.as_ref().map(|v| !v.passed).unwrap_or(false);
                (r.status != Status::Ok || verification_failed).then(|| Flagged {
                    key: r.key.clone(),
                    engine: r.engine.clone(),
                    status: r.status,
                    reason: r.reason.clone(),
                    verification_failed,
                })
            })
            .collect();
        let kernel: Vec<_> = set.records.iter().filter(|r| r.record.endpoint.is_none()).collect();
        Inventory {
            machines,
            files: set.files.clone(),
            flagged,
            superseded: set.superseded.len(),
            problems: set.problems.clone(),
            kernel_records: kernel.len(),
            kernel_gpu_records: kernel.iter().filter(|r| r.record.env.gpu.contains_key("name")).count(),
            spreads: spread::spreads(set),
        }
    }
}
