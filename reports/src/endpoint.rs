//! Remote endpoints in the report: per case and side the latency metrics, throughput,
//! goodput, cache share, faults and cost; and in A/B runs side B over side A with a 95% CI,
//! the way dense and sparse engines are compared.
//!
//! A/B pairs are the records of one run with sides `a` and `b` at the same phase, prompt
//! length, output length and load, measured on the same machine. Requests are paired by
//! prompt index (request `i` of both sides carried the same text and went out together, or
//! one after the other under `alt` loads), so the ratio of medians gets a paired bootstrap CI.

use std::collections::BTreeMap;

use ctxcost_core::endpoint::{paired, primary, primary_name, EndpointBlock};
use ctxcost_core::record::Record;
use ctxcost_core::stats::{ratio_ci, RatioCi};
use ctxcost_core::Phase;

use crate::format::fmt_tokens;
use crate::load::RecordSet;

/// One side of one case.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    /// Index into the record set.
    pub record: usize,
    pub phase: Phase,
    pub context: usize,
    pub env: String,
}

/// Side B over side A at one case.
#[derive(Debug, Clone)]
pub struct AbPoint {
    pub phase: Phase,
    pub context: usize,
    pub load: String,
    pub max_tokens: usize,
    pub a_label: String,
    pub b_label: String,
    /// `TTFT` (prefill) or `TPOT` (decode).
    pub metric: &'static str,
    /// B/A of the metric's median over requests both sides completed, paired by prompt.
    pub ratio: Option<RatioCi>,
    pub pairs: usize,
    /// B/A of E2E latency, paired likewise.
    pub e2e_ratio: Option<RatioCi>,
    /// B/A of the API cost per request, and of the GPU cost per million tokens
    /// ([`gpu_usd_per_m`]).
    pub api_cost_ratio: Option<f64>,
    pub gpu_cost_ratio: Option<f64>,
    pub a_record: usize,
    pub b_record: usize,
}

/// Everything the report says about endpoints.
#[derive(Debug, Clone, Default)]
pub struct EndpointAnalysis {
    pub rows: Vec<EndpointRow>,
    pub ab: Vec<AbPoint>,
}

impl EndpointAnalysis {
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// GPU cost per million tokens of the phase's work: all tokens for prefill cases (the prompt
/// is the work), output tokens for decode cases.
pub fn gpu_usd_per_m(phase: Phase, e: &EndpointBlock) -> Option<f64> {
    match phase {
        Phase::Prefill => e.cost.gpu_usd_per_m_total,
        Phase::Decode => e.cost.gpu_usd_per_m_output,
    }
}

fn block(r: &Record) -> Option<&EndpointBlock> {
    r.endpoint.as_ref()
}

/// Analyse the endpoint records of a set.
pub fn analyse(set: &RecordSet) -> EndpointAnalysis {
    let mut rows = Vec::new();
    // (env, phase, context, load, max_tokens) -> (a, b) record indices
    type Point = (String, Phase, usize, String, usize);
    let mut points: BTreeMap<Point, (Option<usize>, Option<usize>)> = BTreeMap::new();
    for (i, lr) in set.records.iter().enumerate() {
        let Some(e) = block(&lr.record) else { continue };
        let c = &lr.record.case;
        rows.push(EndpointRow { record: i, phase: c.phase, context: c.context, env: lr.env_label.clone() });
        let slot = points.entry((lr.env_label.clone(), c.phase, c.context, e.load.key(), e.max_tokens)).or_default();
        match e.side.as_str() {
            "a" => slot.0 = Some(i),
            "b" => slot.1 = Some(i),
            _ => {}
        }
    }
    rows.sort_by(|x, y| {
        let (ex, ey) = (block(&set.records[x.record].record).unwrap(), block(&set.records[y.record].record).unwrap());
        (x.phase, ex.load.key(), x.context, ex.side.clone()).cmp(&(y.phase, ey.load.key(), y.context, ey.side.clone()))
    });
    let mut ab = Vec::new();
    for ((_, phase, context, load, max_tokens), (ai, bi)) in points {
        let (Some(ai), Some(bi)) = (ai, bi) else { continue };
        let (a, b) = (block(&set.records[ai].record).unwrap(), block(&set.records[bi].record).unwrap());
        let (x, y) = paired(a, b, &|r| primary(phase, r));
        let (ex, ey) = paired(a, b, &|r| r.e2e_ms());
        let div = |p: Option<f64>, q: Option<f64>| match (p, q) {
            (Some(p), Some(q)) if q > 0.0 => Some(p / q),
            _ => None,
        };
        ab.push(AbPoint {
            phase,
            context,
            load,
            max_tokens,
            a_label: a.label.clone(),
            b_label: b.label.clone(),
            metric: primary_name(phase),
            ratio: ratio_ci(&y, &x),
            pairs: x.len(),
            e2e_ratio: ratio_ci(&ey, &ex),
            api_cost_ratio: div(b.cost.api_usd_per_request, a.cost.api_usd_per_request),
            gpu_cost_ratio: div(gpu_usd_per_m(phase, b), gpu_usd_per_m(phase, a)),
            a_record: ai,
            b_record: bi,
        });
    }
    ab.sort_by(|x, y| (x.phase, &x.load, x.context).cmp(&(y.phase, &y.load, y.context)));
    EndpointAnalysis { rows, ab }
}

fn ci(r: &Option<RatioCi>) -> String {
    match r {
        Some(r) => format!("{:.3} [{:.3}, {:.3}]", r.ratio, r.lo, r.hi),
        None => "n/a".into(),
    }
}

/// One sentence per A/B series (phase, load, output length): B/A at every measured prompt
/// length, and whether B is faster with the whole CI below 1.
pub fn ab_sentences(e: &EndpointAnalysis) -> Vec<String> {
    let mut groups: BTreeMap<(Phase, String, usize, String, String), Vec<&AbPoint>> = BTreeMap::new();
    for p in &e.ab {
        groups.entry((p.phase, p.load.clone(), p.max_tokens, p.a_label.clone(), p.b_label.clone())).or_default().push(p);
    }
    groups
        .into_iter()
        .map(|((phase, load, out, a, b), pts)| {
            let metric = pts[0].metric;
            let at: Vec<String> = pts.iter().map(|p| format!("{} {}", fmt_tokens(p.context as f64), ci(&p.ratio))).collect();
            let faster: Vec<String> =
                pts.iter().filter(|p| p.ratio.is_some_and(|r| r.hi < 1.0)).map(|p| fmt_tokens(p.context as f64)).collect();
            let slower: Vec<String> =
                pts.iter().filter(|p| p.ratio.is_some_and(|r| r.lo > 1.0)).map(|p| fmt_tokens(p.context as f64)).collect();
            let mut s = format!("endpoint {phase} ({metric}, load {load}, max_tokens {out}): {b} / {a} = {}", at.join("; "));
            if !faster.is_empty() {
                s.push_str(&format!("; {b} faster (whole 95% CI below 1) at {}", faster.join(", ")));
            }
            if !slower.is_empty() {
                s.push_str(&format!("; {b} slower (whole 95% CI above 1) at {}", slower.join(", ")));
            }
            s
        })
        .collect()
}

/// Cases whose server reported more than the threshold of cached prompt tokens.
pub fn cache_warnings(set: &RecordSet, e: &EndpointAnalysis) -> Vec<String> {
    e.rows
        .iter()
        .filter_map(|row| {
            let r = &set.records[row.record].record;
            let b = block(r)?;
            b.cache.flagged.then(|| {
                format!(
                    "{}: {:.1}% of prompt tokens were reported cached (threshold {:.0}%): not a cold prefill",
                    r.key,
                    b.cache.fraction * 100.0,
                    b.cache.threshold * 100.0
                )
            })
        })
        .collect()
}

/// Table cells of an A/B point.
pub fn ab_cells(p: &AbPoint) -> Vec<String> {
    let opt = |x: Option<f64>| x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "n/a".into());
    vec![
        p.phase.to_string(),
        fmt_tokens(p.context as f64),
        p.load.clone(),
        format!("{} / {}", p.b_label, p.a_label),
        format!("{} {}", p.metric, ci(&p.ratio)),
        ci(&p.e2e_ratio),
        p.pairs.to_string(),
        opt(p.api_cost_ratio),
        opt(p.gpu_cost_ratio),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::endpoint::RequestLog;

    fn log(index: usize, ttft: f64) -> RequestLog {
        RequestLog { index, sent_ms: 0.0, intended_ms: 0.0, chunks_ms: vec![ttft], end_ms: ttft + 1.0, ok: true, ..Default::default() }
    }

    #[test]
    fn pairs_by_prompt_index_not_position() {
        let mk = |reqs: Vec<RequestLog>| EndpointBlock {
            side: "a".into(),
            label: "x".into(),
            url: String::new(),
            model: String::new(),
            api: "chat".into(),
            load: ctxcost_core::endpoint::Load::Closed { concurrency: 1 },
            target_prompt_tokens: 1,
            prompt_fit: String::new(),
            max_tokens: 1,
            slo: Default::default(),
            planned_requests: 0,
            not_run: None,
            requests: reqs,
            metrics: Default::default(),
            cache: Default::default(),
            cost: Default::default(),
        };
        // A lost request 1, B lost request 2: only prompts 0 and 3 pair.
        let mut a_fail = log(1, 0.0);
        a_fail.ok = false;
        let mut b_fail = log(2, 0.0);
        b_fail.ok = false;
        let a = mk(vec![log(0, 10.0), a_fail, log(2, 30.0), log(3, 40.0)]);
        let b = mk(vec![log(0, 20.0), log(1, 25.0), b_fail, log(3, 80.0)]);
        let (x, y) = paired(&a, &b, &|r| primary(Phase::Prefill, r));
        assert_eq!((x, y), (vec![10.0, 40.0], vec![20.0, 80.0]));
    }
}
