//! Spread across GPUs: where several GPUs measured the same case (`run --replicate N`), the
//! median each GPU measured and how far apart they are, as a check of GPU-to-GPU variation.
//! Reads the records' placement (`env.placement.gpu`), never engines; the analysis itself
//! uses the first replica of each case only, so a ratio never pairs two GPUs.

use std::collections::BTreeMap;

use crate::load::{LoadedRecord, RecordSet};

/// One case measured on several GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSpread {
    pub key: String,
    /// Machine label (as elsewhere in the report).
    pub env: String,
    /// Per GPU (`gpu1`, `host/gpu1` across hosts): the median (ms) and its 95% CI.
    pub gpus: Vec<(String, f64, f64, f64)>,
    /// (largest median - smallest) / smallest.
    pub spread: f64,
    /// Whether every GPU's CI overlaps every other's (the spread is within the noise).
    pub cis_overlap: bool,
}

/// The GPU a record ran on, named for the table (None when not pinned to one).
fn gpu_name(r: &LoadedRecord, several_hosts: bool) -> Option<String> {
    let g = r.record.env.placement.as_ref()?.gpu.as_ref()?;
    let uuid = g.uuid.as_deref().map(|u| format!(" {}", u.trim_start_matches("GPU-").chars().take(8).collect::<String>())).unwrap_or_default();
    let host = if several_hosts { format!("{}/", r.record.env.hostname) } else { String::new() };
    Some(format!("{host}gpu{}{uuid}", g.index))
}

/// Every case that more than one GPU measured (ok records), largest spread first.
pub fn spreads(set: &RecordSet) -> Vec<CaseSpread> {
    let all: Vec<&LoadedRecord> = set.records.iter().chain(&set.replicas).filter(|r| r.is_measured()).collect();
    let mut hosts: Vec<&str> = all.iter().map(|r| r.record.env.hostname.as_str()).collect();
    hosts.sort();
    hosts.dedup();
    let mut groups: BTreeMap<(String, String), BTreeMap<String, &LoadedRecord>> = BTreeMap::new();
    for r in all {
        if let Some(g) = gpu_name(r, hosts.len() > 1) {
            groups.entry((r.env_label.clone(), r.record.key.clone())).or_default().insert(g, r);
        }
    }
    let mut out: Vec<CaseSpread> = groups
        .into_iter()
        .filter(|(_, by_gpu)| by_gpu.len() > 1)
        .map(|((env, key), by_gpu)| {
            let gpus: Vec<(String, f64, f64, f64)> = by_gpu
                .into_iter()
                .map(|(g, r)| {
                    let m = r.median_ms();
                    let (lo, hi) = r.record.stats.as_ref().map(|s| (s.ci_lo, s.ci_hi)).filter(|(l, h)| l.is_finite() && h.is_finite()).unwrap_or((m, m));
                    (g, m, lo, hi)
                })
                .collect();
            let lo = gpus.iter().map(|g| g.1).fold(f64::INFINITY, f64::min);
            let hi = gpus.iter().map(|g| g.1).fold(f64::NEG_INFINITY, f64::max);
            let max_lo = gpus.iter().map(|g| g.2).fold(f64::NEG_INFINITY, f64::max);
            let min_hi = gpus.iter().map(|g| g.3).fold(f64::INFINITY, f64::min);
            CaseSpread { key, env, gpus, spread: (hi - lo) / lo, cis_overlap: max_lo <= min_hi }
        })
        .collect();
    out.sort_by(|a, b| b.spread.total_cmp(&a.spread).then_with(|| a.key.cmp(&b.key)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::placement::{GpuSlot, Placement};

    fn rec(key: &str, gpu: u32, replica: u32, samples: &[f64]) -> LoadedRecord {
        use ctxcost_core::record::{Environment, Record, Status, Tool, SCHEMA_VERSION};
        use ctxcost_core::{Case, Method, ModelShape, Phase, Precision};
        let case = Case { engine: "dense-cpu".into(), method: Method::Dense, shape: ModelShape::tiny(), phase: Phase::Decode, context: 1024, batch: 1, query_len: 1, precision: Precision::F32, seed: 1, kernel: Default::default() };
        let placement = Placement { sweep: "f".into(), points: 1, cases: 1, point: 0, point_cases: 1, replicas: 2, replica, shard: None, gpu: Some(GpuSlot { index: gpu, uuid: None }) };
        let r = Record {
            schema_version: SCHEMA_VERSION,
            tool: Tool::default(),
            env: Environment { hostname: "h".into(), cpu: "c".into(), cpu_cores: 2, placement: Some(placement), ..Default::default() },
            key: key.into(),
            engine: case.engine.clone(),
            case,
            status: Status::Ok,
            reason: None,
            stats: Some(ctxcost_core::stats::summarize(samples)),
            samples_ms: samples.to_vec(),
            components_ms: Default::default(),
            timer: "monotonic-clock".into(),
            warmup_runs: 0,
            stop_rule: None,
            work: Default::default(),
            rates: Default::default(),
            memory: Default::default(),
            verification: None,
            endpoint: None,
            started_at: String::new(),
            finished_at: String::new(),
        };
        LoadedRecord { env_label: r.env.label(), record: r, file: "f".into(), line: 1 }
    }

    #[test]
    fn a_case_on_two_gpus_has_its_spread_and_replicas_stay_out_of_the_analysis() {
        let set = crate::load::from_records(vec![rec("a", 0, 0, &[1.0, 1.0, 1.0]), rec("a", 1, 1, &[1.5, 1.5, 1.5]), rec("b", 0, 0, &[2.0, 2.0])]);
        assert_eq!((set.records.len(), set.replicas.len(), set.superseded.len()), (2, 1, 0));
        let s = spreads(&set);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].key, "a");
        assert!((s[0].spread - 0.5).abs() < 1e-12, "{s:?}");
        assert!(!s[0].cis_overlap);
        assert_eq!(s[0].gpus.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["gpu0", "gpu1"]);
    }
}
