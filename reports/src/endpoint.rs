//! Remote endpoints in the report: per case and side the latency metrics, throughput,
//! goodput, cache share, faults and cost; and in A/B runs side B over side A with a 95% CI,
//! the way dense and sparse engines are compared.
//!
//! A/B pairs are the records of one run with sides `a` and `b` at the same point (the one
//! pairing key, [`Record::point_key`]: phase, prompt length, API, output length and load),
//! measured on the same machine. Requests are paired by
//! prompt index (request `i` of both sides carried the same text and went out together, or
//! one after the other under `alt` loads), so the ratio of medians gets a paired bootstrap CI.

use std::collections::BTreeMap;

use ctxcost_core::endpoint::{paired, primary, primary_name, EndpointBlock};
use ctxcost_core::record::Record;
use ctxcost_core::stats::{ratio_ci, RatioCi};
use ctxcost_core::{Phase, PointKey};

use crate::format::{fmt_ratio_ci, fmt_tokens};
use crate::load::RecordSet;

/// One side of one case, owned: tables, charts and verdicts read it, never the records.
#[derive(Debug, Clone)]
pub struct EndpointRow {
    /// Which record this is: its index in the record set.
    pub index: usize,
    pub record: Record,
    pub phase: Phase,
    pub context: usize,
    pub env: String,
}

impl EndpointRow {
    /// The record's endpoint block (every row has one).
    pub fn block(&self) -> &EndpointBlock {
        self.record.endpoint.as_ref().expect("an endpoint row holds an endpoint record")
    }
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
    /// The server's median prompt tokens on each side (the case is labelled with them).
    pub a_measured: Option<u64>,
    pub b_measured: Option<u64>,
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
    /// Indices of the two records in the record set.
    pub a_record: usize,
    pub b_record: usize,
}

/// Everything the report says about endpoints.
#[derive(Debug, Clone, Default)]
pub struct EndpointAnalysis {
    pub rows: Vec<EndpointRow>,
    pub ab: Vec<AbPoint>,
    /// The records are endpoint records only ([`is_endpoint_only`]): the report is shaped for
    /// endpoints.
    pub only: bool,
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
    // (machine, the pairing key) -> (a, b) rows
    let mut points: BTreeMap<(String, PointKey), (Option<usize>, Option<usize>)> = BTreeMap::new();
    for (i, lr) in set.records.iter().enumerate() {
        let Some(e) = block(&lr.record) else { continue };
        let c = &lr.record.case;
        rows.push(EndpointRow { index: i, record: lr.record.clone(), phase: c.phase, context: c.context, env: lr.env_label.clone() });
        let slot = points.entry((lr.env_label.clone(), lr.record.point_key())).or_default();
        match e.side.as_str() {
            "a" => slot.0 = Some(i),
            "b" => slot.1 = Some(i),
            _ => {}
        }
    }
    rows.sort_by(|x, y| {
        let (ex, ey) = (x.block(), y.block());
        (x.phase, ex.load.key(), x.context, ex.side.clone()).cmp(&(y.phase, ey.load.key(), y.context, ey.side.clone()))
    });
    let mut ab = Vec::new();
    for ((_, point), (ai, bi)) in points {
        let (Some(ai), Some(bi)) = (ai, bi) else { continue };
        let (a, b) = (block(&set.records[ai].record).unwrap(), block(&set.records[bi].record).unwrap());
        let phase = point.phase;
        let (x, y) = paired(a, b, &|r| primary(phase, r));
        let (ex, ey) = paired(a, b, &|r| r.e2e_ms());
        let div = |p: Option<f64>, q: Option<f64>| match (p, q) {
            (Some(p), Some(q)) if q > 0.0 => Some(p / q),
            _ => None,
        };
        ab.push(AbPoint {
            phase,
            context: point.context,
            load: a.load.key(),
            max_tokens: a.max_tokens,
            a_label: a.label.clone(),
            b_label: b.label.clone(),
            a_measured: a.measured_prompt_tokens(),
            b_measured: b.measured_prompt_tokens(),
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
    EndpointAnalysis { rows, ab, only: is_endpoint_only(set) }
}

fn ci(r: &Option<RatioCi>) -> String {
    r.as_ref().map_or_else(|| "n/a".into(), |r| fmt_ratio_ci(r, 3))
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
pub fn cache_warnings(e: &EndpointAnalysis) -> Vec<String> {
    e.rows
        .iter()
        .filter_map(|row| {
            let r = &row.record;
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
    let measured = |m: Option<u64>| m.map_or_else(|| "n/a".to_string(), |m| m.to_string());
    vec![
        p.phase.to_string(),
        format!("{} ({} {}, {} {})", fmt_tokens(p.context as f64), p.a_label, measured(p.a_measured), p.b_label, measured(p.b_measured)),
        p.load.clone(),
        format!("{} / {}", p.b_label, p.a_label),
        format!("{} {}", p.metric, ci(&p.ratio)),
        ci(&p.e2e_ratio),
        p.pairs.to_string(),
        opt(p.api_cost_ratio),
        opt(p.gpu_cost_ratio),
    ]
}

/// Whether a record set holds endpoint records only: its reports are shaped for endpoints
/// (no DSA verdict, an endpoint method section, endpoint columns in `summary.csv`).
pub fn is_endpoint_only(set: &RecordSet) -> bool {
    !set.records.is_empty() && set.records.iter().all(|r| r.record.endpoint.is_some())
}

/// The prompt length a case measured: the server's median prompt tokens where it reported
/// them, else the target.
pub fn measured_context(r: &Record) -> usize {
    r.endpoint.as_ref().and_then(|e| e.measured_prompt_tokens()).map_or(r.case.context, |m| m as usize)
}

/// The endpoint verdict (the first screen of an endpoint-only report): for A/B series, B/A
/// of the primary metric (TTFT for prefill, TPOT for decode) with its CI per prompt length,
/// the cost ratios where prices were given, and the prompt length from which B is at most
/// half of A; for a side without a partner, its primary metric against the measured prompt
/// length with the growth exponent (least-squares slope of log metric on log length).
pub fn verdict_lines(e: &EndpointAnalysis) -> Vec<String> {
    let mut out = ab_sentences(e);
    // Half from: the least prompt length from which every measured ratio is at most 0.5.
    let mut groups: BTreeMap<(Phase, String, usize, String, String), Vec<&AbPoint>> = BTreeMap::new();
    for p in &e.ab {
        groups.entry((p.phase, p.load.clone(), p.max_tokens, p.a_label.clone(), p.b_label.clone())).or_default().push(p);
    }
    for ((phase, load, _, a, b), pts) in groups {
        let metric = pts[0].metric;
        let half_from = pts.iter().rposition(|p| p.ratio.is_none_or(|r| r.ratio > 0.5)).map_or(Some(0), |i| (i + 1 < pts.len()).then_some(i + 1));
        let costs: Vec<String> = pts
            .iter()
            .filter_map(|p| {
                let api = p.api_cost_ratio.map(|c| format!("API {c:.3}"));
                let gpu = p.gpu_cost_ratio.map(|c| format!("GPU {c:.3}"));
                let both: Vec<String> = api.into_iter().chain(gpu).collect();
                (!both.is_empty()).then(|| format!("{} {}", fmt_tokens(p.context as f64), both.join(", ")))
            })
            .collect();
        let mut s = match half_from {
            Some(i) => format!("{b} at most half of {a} in {metric} ({phase}, load {load}, median ratio <= 0.5) from {} on", fmt_tokens(pts[i].context as f64)),
            None => format!("{b} at most half of {a} in {metric} ({phase}, load {load}): at no measured prompt length up to {}", fmt_tokens(pts[pts.len() - 1].context as f64)),
        };
        if !costs.is_empty() {
            s.push_str(&format!("; cost B/A: {}", costs.join("; ")));
        }
        out.push(s);
    }
    // Sides without a partner: the metric against the measured prompt length.
    let paired: std::collections::HashSet<usize> = e.ab.iter().flat_map(|p| [p.a_record, p.b_record]).collect();
    // (phase, load, max_tokens, label) -> (measured prompt tokens, metric median)
    type Line = (Phase, String, usize, String);
    let mut single: BTreeMap<Line, Vec<(usize, f64)>> = BTreeMap::new();
    for row in &e.rows {
        if paired.contains(&row.index) {
            continue;
        }
        let r = &row.record;
        let Some(b) = block(r) else { continue };
        let m = if row.phase == Phase::Prefill { b.metrics.ttft_ms } else { b.metrics.tpot_ms };
        if let Some(m) = m {
            single.entry((row.phase, b.load.key(), b.max_tokens, b.label.clone())).or_default().push((measured_context(r), m.median));
        }
    }
    for ((phase, load, _, label), mut pts) in single {
        pts.sort_by_key(|p| p.0);
        let metric = primary_name(phase);
        let at: Vec<String> = pts.iter().map(|(c, m)| format!("{m:.2} ms at {c} tokens")).collect();
        let mut s = format!("endpoint {label} {phase} (load {load}): {metric} median {}", at.join("; "));
        if pts.len() >= 2 {
            let xs: Vec<f64> = pts.iter().map(|p| p.0 as f64).collect();
            let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let k = ctxcost_core::stats::loglog_slope(&xs, &ys);
            if k.is_finite() {
                s.push_str(&format!("; {metric} grows as prompt length^{k:.2}"));
            }
        }
        out.push(s);
    }
    let missed = e.rows.iter().filter(|row| block(&row.record).is_some_and(|b| b.prompt_missed())).count();
    if missed > 0 {
        out.push(format!("Warning: {missed} case(s) measured another prompt length than their target (see data problems); they are shown at the measured length."));
    }
    out
}

/// What an endpoint-only report's Method section says was measured.
pub fn method_items() -> Vec<String> {
    vec![
        "Each case is one side (a labelled URL and model) at one phase, prompt length, output length and load, measured from the client (`ctxcost endpoint`): whole requests to a serving system, not one layer's attention.".into(),
        "Per request, from the client's monotonic clock: TTFT = actual send to the first chunk with generated text; E2E = actual send to the end of the stream; TPOT = (E2E - TTFT) / (N - 1) with N the server's usage.completion_tokens; ITL = gaps between text chunks (vLLM's definitions). Prefill cases send max_tokens = 1 and are summarised by TTFT; decode cases by TPOT.".into(),
        "Prompts: a unique nonce first (no prefix-cache hits), then text cut to the fitted length: the shipped public-domain corpus (Shakespeare's Julius Caesar and Macbeth) by default, synthetic filler words, or a file of the user's (`--prompt-text`; each record's `endpoint.prompt_text` names it, and it is part of the case key). The server's usage.prompt_tokens is the measure of a prompt's length: without the served model's tokenizer, each target length is reached by probe requests refitted after every probe; a case whose measured median misses its target by more than 1% or 8 tokens (whichever is larger) is listed under data problems, and tables and charts show the measured length.".into(),
        "Throughput: tokens over the case's wall time (first send to last end; under alt loads only the time the side had a request in flight). Goodput: requests per second that met every SLO given. Cost: API list prices applied to the server's token counts, and the GPU-hour price over the measured throughput, where given.".into(),
        "A/B: request i of both sides carried the same prompt text; B/A of medians with a paired bootstrap 95% CI (2000 resamples) over the requests both sides completed.".into(),
        "The model's geometry is not known to the client: records name the shape `endpoint` (and a placeholder precision) unless `--shape` was given.".into(),
    ]
}

/// Endpoint cases the data-problems section must list beyond failed records: prompt lengths
/// that missed their targets, and requests fewer than planned.
pub fn data_problems(e: &EndpointAnalysis) -> Vec<String> {
    let mut out = Vec::new();
    for row in &e.rows {
        let r = &row.record;
        let Some(b) = block(r) else { continue };
        if let Some(p) = b.metrics.prompt_check.filter(|p| p.flagged) {
            out.push(format!("{}: {}", r.key, p.describe()));
        }
        if b.not_run.is_none() && b.planned_requests > b.metrics.requests {
            out.push(format!("{}: {} of {} planned requests sent; stopped by --max-seconds", r.key, b.metrics.requests, b.planned_requests));
        }
    }
    out
}

/// `summary.csv` of an endpoint-only report: one row per case and side.
pub fn summary_frame(e: &EndpointAnalysis) -> polars::prelude::PolarsResult<polars::prelude::DataFrame> {
    use polars::prelude::*;
    let rows: Vec<(&Record, &EndpointBlock, &str)> = e.rows.iter().filter_map(|row| Some((&row.record, block(&row.record)?, row.env.as_str()))).collect();
    type Get<'a, T> = &'a dyn Fn(&Record, &EndpointBlock) -> T;
    let s = |name: &str, f: Get<String>| Column::new(name.into(), rows.iter().map(|(r, b, _)| f(r, b)).collect::<Vec<String>>());
    let u = |name: &str, f: Get<Option<u64>>| Column::new(name.into(), rows.iter().map(|(r, b, _)| f(r, b)).collect::<Vec<Option<u64>>>());
    let fl = |name: &str, f: Get<Option<f64>>| {
        Column::new(name.into(), rows.iter().map(|(r, b, _)| f(r, b).filter(|v| v.is_finite())).collect::<Vec<Option<f64>>>())
    };
    let q = |s: &Option<ctxcost_core::stats::Summary>, p50: bool| s.map(|s| if p50 { s.median } else { s.p90 });
    let columns = vec![
        Column::new("env".into(), rows.iter().map(|(_, _, env)| env.to_string()).collect::<Vec<String>>()),
        s("side", &|_, b| b.side.clone()),
        s("label", &|_, b| b.label.clone()),
        s("model", &|_, b| b.model.clone()),
        s("url", &|_, b| b.url.clone()),
        s("api", &|_, b| b.api.clone()),
        s("phase", &|r, _| r.case.phase.to_string()),
        s("load", &|_, b| b.load.key()),
        u("max_tokens", &|_, b| Some(b.max_tokens as u64)),
        u("target_prompt_tokens", &|_, b| Some(b.target_prompt_tokens as u64)),
        u("measured_prompt_tokens", &|_, b| b.measured_prompt_tokens()),
        u("measured_prompt_tokens_min", &|_, b| b.metrics.prompt_check.map(|p| p.measured_min)),
        u("measured_prompt_tokens_max", &|_, b| b.metrics.prompt_check.map(|p| p.measured_max)),
        s("prompt_length", &|_, b| match b.metrics.prompt_check {
            Some(p) if p.flagged => "missed".into(),
            Some(_) => "hit".into(),
            None => "unknown".into(),
        }),
        s("prompt_fit", &|_, b| b.prompt_fit.clone()),
        s("status", &|r, _| format!("{:?}", r.status).to_lowercase()),
        u("planned_requests", &|_, b| (b.planned_requests > 0).then_some(b.planned_requests as u64)),
        u("requests", &|_, b| Some(b.metrics.requests as u64)),
        u("ok", &|_, b| Some(b.metrics.ok as u64)),
        fl("ttft_p50_ms", &|_, b| q(&b.metrics.ttft_ms, true)),
        fl("ttft_p90_ms", &|_, b| q(&b.metrics.ttft_ms, false)),
        fl("tpot_p50_ms", &|_, b| q(&b.metrics.tpot_ms, true)),
        fl("tpot_p90_ms", &|_, b| q(&b.metrics.tpot_ms, false)),
        fl("itl_p50_ms", &|_, b| q(&b.metrics.itl_ms, true)),
        fl("itl_p90_ms", &|_, b| q(&b.metrics.itl_ms, false)),
        fl("e2e_p50_ms", &|_, b| q(&b.metrics.e2e_ms, true)),
        fl("e2e_p90_ms", &|_, b| q(&b.metrics.e2e_ms, false)),
        fl("output_tokens_per_s", &|_, b| Some(b.metrics.output_tokens_per_s)),
        fl("total_tokens_per_s", &|_, b| Some(b.metrics.total_tokens_per_s)),
        fl("goodput_rps", &|_, b| b.metrics.goodput_rps),
        fl("cached_share", &|_, b| b.cache_reported().then_some(b.cache.fraction)),
        s("faults", &|_, b| b.metrics.faults.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join("; ")),
        fl("api_usd_per_request", &|_, b| b.cost.api_usd_per_request),
        fl("gpu_usd_per_m_tokens", &|r, b| gpu_usd_per_m(r.case.phase, b)),
        s("reason", &|r, _| r.reason.clone().unwrap_or_default()),
    ];
    DataFrame::new(rows.len(), columns)
}

/// Endpoint columns of `records.parquet` (null for kernel records): label, side, model,
/// target and measured prompt tokens, TTFT/TPOT/E2E medians and throughput.
pub fn record_columns(set: &RecordSet) -> Vec<polars::prelude::Column> {
    use polars::prelude::*;
    let blocks: Vec<Option<&EndpointBlock>> = set.records.iter().map(|r| block(&r.record)).collect();
    let s = |name: &str, f: &dyn Fn(&EndpointBlock) -> String| Column::new(name.into(), blocks.iter().map(|b| b.map(f)).collect::<Vec<Option<String>>>());
    let u = |name: &str, f: &dyn Fn(&EndpointBlock) -> Option<u64>| Column::new(name.into(), blocks.iter().map(|b| b.and_then(f)).collect::<Vec<Option<u64>>>());
    let fl = |name: &str, f: &dyn Fn(&EndpointBlock) -> Option<f64>| {
        Column::new(name.into(), blocks.iter().map(|b| b.and_then(f).filter(|v| v.is_finite())).collect::<Vec<Option<f64>>>())
    };
    vec![
        s("endpoint_label", &|b| b.label.clone()),
        s("endpoint_side", &|b| b.side.clone()),
        s("endpoint_model", &|b| b.model.clone()),
        s("endpoint_load", &|b| b.load.key()),
        u("target_prompt_tokens", &|b| Some(b.target_prompt_tokens as u64)),
        u("measured_prompt_tokens", &|b| b.measured_prompt_tokens()),
        s("prompt_length", &|b| match b.metrics.prompt_check {
            Some(p) if p.flagged => "missed".into(),
            Some(_) => "hit".into(),
            None => "unknown".into(),
        }),
        fl("ttft_p50_ms", &|b| b.metrics.ttft_ms.map(|s| s.median)),
        fl("tpot_p50_ms", &|b| b.metrics.tpot_ms.map(|s| s.median)),
        fl("e2e_p50_ms", &|b| b.metrics.e2e_ms.map(|s| s.median)),
        fl("output_tokens_per_s", &|b| Some(b.metrics.output_tokens_per_s)),
        fl("total_tokens_per_s", &|b| Some(b.metrics.total_tokens_per_s)),
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
            prompt_text: String::new(),
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
