//! From records to numbers: the records of a point are grouped into series (one per
//! machine, shape, phase, batch, chunk and precision), priced with the cost model, and
//! compared: the sparse/dense cost ratio with its 95% CI at every measured context, marginal
//! and per request, attention-only and whole-model; break-even contexts; DeepSeek's Fig. 3
//! ratio at the same positions; the roofline bound of the ratio at the same-run ceilings;
//! and, where bf16 and fp8 records of both methods exist, the saving split into "from FP8"
//! and "from sparsity".
//!
//! Which engines a series compares ([`Pairing`]):
//! - [`Pairing::Best`], the verdict: at every point the fastest verified dense engine against
//!   the fastest verified DSA engine of the same machine, whoever wrote them (ours or a library
//!   peer; see [`crate::yardstick`]). The engines may differ from one context to the next; the
//!   report names them.
//! - [`Pairing::Pair`]: an engine pair the user asked for, by default ours vs ours on the same
//!   backend (`dsa-cuda` vs `dense-cuda`), shown beside the verdict with each engine's share of
//!   the fastest of its method.
//!
//! CIs: the attention-only marginal ratio is a paired bootstrap of the ratio of medians when
//! the two records were sampled in lockstep ([`crate::yardstick::lockstep`]), else an unpaired
//! one. The whole-model and per-request ratios combine several medians, so they use one joint
//! bootstrap over all points of the series (paired per point where sampled in lockstep, fixed
//! seed, so the numbers are reproducible from the raw samples).

use std::collections::BTreeMap;

use ctxcost_core::record::Memory;
use ctxcost_core::stats::{self, RatioCi};
use ctxcost_core::{Case, Method, Phase, Precision};

pub use crate::format::{fmt_contexts, fmt_tokens};
use crate::cost::{self, OtherCost, OtherSource};
use crate::load::{LoadedRecord, RecordSet};
use crate::reference::Fig3;
use crate::yardstick::{self, CeilingSource, Ceilings, EnginePair, Origin, Roofline, Verified, SLOW_ENGINE_SHARE};

/// Bootstrap resamples of the joint bootstrap.
pub const JOINT_RESAMPLES: usize = 2000;

/// Settings of the cost model.
#[derive(Debug, Clone, PartialEq)]
pub struct CostSettings {
    /// Price of one GPU-hour (USD).
    pub usd_per_gpu_hour: f64,
    /// Achieved TFLOP/s assumed for the rest of the model when no GEMM record exists.
    pub other_tflops: f64,
}

impl Default for CostSettings {
    fn default() -> Self {
        Self { usd_per_gpu_hour: 2.0, other_tflops: 400.0 }
    }
}

/// What the verdict is measured against: the engine pairs shown beside it and the ceilings of
/// its roofline bound (used for machines whose records do not carry their own).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Yardstick {
    /// Engine pairs of the second table; empty means ours vs ours ([`yardstick::OUR_PAIRS`]).
    pub pairs: Vec<EnginePair>,
    pub ceilings: Ceilings,
}

impl Yardstick {
    /// The pairs of the second table.
    pub fn pairs(&self) -> Vec<EnginePair> {
        if self.pairs.is_empty() {
            yardstick::OUR_PAIRS.iter().map(|(a, b)| EnginePair::new(a, b)).collect()
        } else {
            self.pairs.clone()
        }
    }
}

/// What identifies a series: the one pairing key ([`ctxcost_core::record::Record::point_key`])
/// without its context, on one machine. The points of a series pair records by (series key,
/// context), which is the pairing key on one machine.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub env: String,
    pub shape: String,
    pub phase: Phase,
    pub batch: usize,
    /// Query tokens per sequence; `None` for whole-prompt prefill (`query_len = context`).
    pub query_len: Option<usize>,
    pub precision: Precision,
}

impl SeriesKey {
    /// A compact label; the machine is added when the report mixes machines.
    pub fn label(&self, with_env: bool) -> String {
        let q = match (self.phase, self.query_len) {
            (_, None) => "whole prompt".to_string(),
            (Phase::Prefill, Some(q)) => format!("chunk {q}"),
            (Phase::Decode, Some(1)) => "1 token/step".to_string(),
            (Phase::Decode, Some(q)) => format!("{q} tokens/step"),
        };
        let base = format!("{} {} B={} {}", self.shape, self.precision, self.batch, q);
        if with_env {
            format!("{base} @ {}", self.env)
        } else {
            base
        }
    }

    /// The series of a record: its point key without the context (and without the query
    /// length of a whole-prompt prefill, which is the context), with its machine.
    pub fn of(r: &LoadedRecord) -> Self {
        let p = r.record.point_key();
        let whole_prompt = p.query_len == p.context && p.phase == Phase::Prefill && p.context > 1;
        let query_len = (!whole_prompt).then_some(p.query_len);
        SeriesKey { env: r.env_label.clone(), shape: p.shape, phase: p.phase, batch: p.batch, query_len, precision: p.precision }
    }
}

/// Which engines a series compares.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pairing {
    /// At every point the fastest verified engine of each method (the verdict).
    Best,
    /// One engine of each method, as asked for.
    Pair(EnginePair),
}

impl Pairing {
    pub fn label(&self) -> String {
        match self {
            Pairing::Best => "fastest verified of each method".into(),
            Pairing::Pair(p) => p.label(),
        }
    }
}

/// A ratio band: where the point ratio falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Band {
    /// ratio <= 0.5: the claim holds.
    AtMostHalf,
    /// 0.5 < ratio < 1: sparse is cheaper, by less than half.
    HalfToOne,
    /// ratio >= 1: sparse costs as much or more.
    AtLeastDense,
}

impl Band {
    pub fn of(ratio: f64) -> Self {
        if ratio <= 0.5 {
            Band::AtMostHalf
        } else if ratio < 1.0 {
            Band::HalfToOne
        } else {
            Band::AtLeastDense
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Band::AtMostHalf => "<= 0.5",
            Band::HalfToOne => "0.5-1",
            Band::AtLeastDense => ">= 1",
        }
    }
}

/// The claim "sparse costs at most half of dense" at one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    Holds,
    DoesNotHold,
    NotMeasured,
}

impl Claim {
    pub fn as_str(self) -> &'static str {
        match self {
            Claim::Holds => "holds",
            Claim::DoesNotHold => "does not hold",
            Claim::NotMeasured => "not measured",
        }
    }
}

/// Verdict of one ratio with its CI.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PointVerdict {
    pub band: Band,
    pub claim: Claim,
    /// The CI reaches both sides of 0.5: the data cannot tell whether the claim holds here.
    pub straddles_half: bool,
    /// The CI contains 1.0: the data cannot tell which is cheaper here.
    pub straddles_one: bool,
}

impl PointVerdict {
    pub fn of(r: &RatioCi) -> Self {
        let band = Band::of(r.ratio);
        let claim = if band == Band::AtMostHalf { Claim::Holds } else { Claim::DoesNotHold };
        Self { band, claim, straddles_half: r.lo < 0.5 && r.hi > 0.5, straddles_one: r.lo < 1.0 && r.hi > 1.0 }
    }

    /// "holds", "does not hold", with the CI caveat when it straddles 0.5.
    pub fn wording(&self) -> String {
        if self.straddles_half {
            format!("{} at the median; the 95% CI straddles 0.5", self.claim.as_str())
        } else {
            self.claim.as_str().to_string()
        }
    }
}

/// Costs of one engine at one point, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EngineCost {
    pub median_ms: f64,
    pub n_samples: usize,
    /// One layer's attention, seconds per token.
    pub attn_seconds_per_token: f64,
    pub attn_marginal: f64,
    pub model_marginal: f64,
    pub attn_request: f64,
    pub model_request: f64,
}

/// One record a series uses, owned: what charts, verdict and render need of it, so that they
/// read the analysis and never go back to the records.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Which record this is: its index in `RecordSet::records`.
    pub record: usize,
    pub engine: String,
    pub case: Case,
    /// Median of the raw samples (ms) and its 95% CI.
    pub median_ms: f64,
    pub median_ci_ms: (f64, f64),
    /// Median of each recorded component (`indexer`, `topk`, `attention`), ms; empty when the
    /// engine recorded none.
    pub components_ms: BTreeMap<String, f64>,
    pub memory: Memory,
}

impl Measured {
    fn of(set: &RecordSet, i: usize) -> Self {
        let r = &set.records[i];
        Measured {
            record: i,
            engine: r.record.engine.clone(),
            case: r.record.case.clone(),
            median_ms: r.median_ms(),
            median_ci_ms: stats::median_ci(&r.record.samples_ms),
            components_ms: r.record.components_ms.iter().map(|(k, v)| (k.clone(), stats::median(v))).collect(),
            memory: r.record.memory,
        }
    }
}

/// One measured context of a series with both engines measured.
#[derive(Debug, Clone)]
pub struct Point {
    pub context: usize,
    pub query_tokens: usize,
    /// Indices into `RecordSet::records`, and the engines of the two records.
    pub dense_record: usize,
    pub dsa_record: usize,
    pub dense_engine: String,
    pub dsa_engine: String,
    pub dense: EngineCost,
    pub dsa: EngineCost,
    pub attn_ratio: RatioCi,
    pub model_ratio: RatioCi,
    pub attn_request_ratio: RatioCi,
    pub model_request_ratio: RatioCi,
    /// Verdict of the attention-only marginal ratio (the headline).
    pub verdict: PointVerdict,
    /// DeepSeek Fig. 3 at the same position: marginal and whole-request ratios.
    pub fig3_ratio: Option<f64>,
    pub fig3_request_ratio: Option<f64>,
    /// Medians of the DSA components (indexer, topk, attention), ms, where recorded.
    pub dsa_components: BTreeMap<String, f64>,
    /// The two records were sampled in lockstep, so the CIs pair sample i with sample i.
    pub lockstep: bool,
    /// The DSA/dense ratio if every component ran at the ceilings.
    pub roofline: Roofline,
    /// Each engine's speed as a share of the fastest usable engine of its method at this point
    /// (1 = it is the fastest), with that fastest engine.
    pub dense_share: (f64, String),
    pub dsa_share: (f64, String),
}

impl Point {
    /// The engines this point compares: (DSA, dense).
    pub fn engines(&self) -> (&str, &str) {
        (self.dsa_engine.as_str(), self.dense_engine.as_str())
    }

    /// `paired` or `unpaired`: how the CI was drawn.
    pub fn ci_kind(&self) -> &'static str {
        if self.lockstep {
            "paired (sampled in lockstep)"
        } else {
            "unpaired (not sampled in lockstep)"
        }
    }
}

/// Where a ratio curve crosses a threshold (going down with context).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Crossing {
    /// At or below the threshold at every measured context; any crossing lies below `first`.
    BelowRange { first: usize },
    /// Interpolated in log-context between two measured contexts.
    At(f64),
    /// Above the threshold at the largest measured context `last`.
    AboveRange { last: usize },
    /// No measured point.
    NoData,
}

impl Crossing {
    /// A sort key in tokens (below-range sorts first, above-range last).
    fn key(&self) -> f64 {
        match *self {
            Crossing::BelowRange { first } => first as f64 * 0.5,
            Crossing::At(x) => x,
            Crossing::AboveRange { .. } => f64::INFINITY,
            Crossing::NoData => f64::NAN,
        }
    }

    /// Tokens where the crossing was found, if inside the measured range.
    pub fn tokens(&self) -> Option<f64> {
        match *self {
            Crossing::At(x) => Some(x),
            _ => None,
        }
    }

    /// Compact text: `3.4K`, `<= 1K`, `> 8K`, `n/a`.
    pub fn text(&self) -> String {
        match *self {
            Crossing::BelowRange { first } => format!("<= {}", fmt_tokens(first as f64)),
            Crossing::At(x) => fmt_tokens(x),
            Crossing::AboveRange { last } => format!("> {}", fmt_tokens(last as f64)),
            Crossing::NoData => "n/a".into(),
        }
    }
}

/// A break-even context with its CI (from where the CI bounds of the ratio cross).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakEven {
    pub threshold: f64,
    pub estimate: Crossing,
    pub lo: Crossing,
    pub hi: Crossing,
}

impl BreakEven {
    /// `3.4K [2.9K, 4.1K]`.
    pub fn text(&self) -> String {
        format!("{} [{}, {}]", self.estimate.text(), self.lo.text(), self.hi.text())
    }
}

/// The context from which `ys` stays at or below `t` (ys over ascending `xs`), interpolated
/// linearly in the ratio against log-context between the last point above `t` and the next.
pub fn crossing(xs: &[usize], ys: &[f64], t: f64) -> Crossing {
    if xs.is_empty() {
        return Crossing::NoData;
    }
    match ys.iter().rposition(|&y| y > t) {
        None => Crossing::BelowRange { first: xs[0] },
        Some(i) if i + 1 == xs.len() => Crossing::AboveRange { last: xs[i] },
        Some(i) => {
            let (la, lb) = ((xs[i] as f64).ln(), (xs[i + 1] as f64).ln());
            let f = (ys[i] - t) / (ys[i] - ys[i + 1]);
            Crossing::At((la + f * (lb - la)).exp())
        }
    }
}

/// Break-even of a ratio series with CIs: the estimate from the ratios, the bounds from the
/// CI curves (the lower CI curve crosses first).
pub fn break_even(xs: &[usize], ratios: &[RatioCi], t: f64) -> BreakEven {
    let r: Vec<f64> = ratios.iter().map(|x| x.ratio).collect();
    let lo: Vec<f64> = ratios.iter().map(|x| x.lo).collect();
    let hi: Vec<f64> = ratios.iter().map(|x| x.hi).collect();
    let (a, b) = (crossing(xs, &lo, t), crossing(xs, &hi, t));
    let (first, second) = if a.key() <= b.key() || b.key().is_nan() { (a, b) } else { (b, a) };
    BreakEven { threshold: t, estimate: crossing(xs, &r, t), lo: first, hi: second }
}

/// Break-evens of a series at 1.0 and 0.5, for the four ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakEvens {
    pub attn_one: BreakEven,
    pub attn_half: BreakEven,
    pub model_one: BreakEven,
    pub model_half: BreakEven,
    pub attn_request_one: BreakEven,
    pub attn_request_half: BreakEven,
    pub model_request_one: BreakEven,
    pub model_request_half: BreakEven,
}

/// A context with only one engine measured (or neither usable).
#[derive(Debug, Clone, PartialEq)]
pub struct Unpaired {
    pub context: usize,
    pub why: String,
}

/// One series: dense and sparse over context.
#[derive(Debug, Clone)]
pub struct Series {
    pub key: SeriesKey,
    pub pairing: Pairing,
    /// The dense engines the series uses, e.g. `cudnn-sdpa` or `cudnn-sdpa at 16K, 64K;
    /// dense-cuda at 4K` when the fastest differs by context.
    pub dense_engine: String,
    pub dsa_engine: String,
    pub layers: u32,
    pub top_k: usize,
    pub active_params: f64,
    pub other: OtherCost,
    pub points: Vec<Point>,
    pub unpaired: Vec<Unpaired>,
    pub break_evens: BreakEvens,
    /// Every measured record of the series by context (dense, dsa), paired or not.
    pub dense_records: BTreeMap<usize, Measured>,
    pub dsa_records: BTreeMap<usize, Measured>,
}

impl Series {
    pub fn contexts(&self) -> Vec<usize> {
        self.points.iter().map(|p| p.context).collect()
    }
    pub fn min_context(&self) -> Option<usize> {
        self.points.first().map(|p| p.context)
    }
    pub fn max_context(&self) -> Option<usize> {
        self.points.last().map(|p| p.context)
    }
    /// `DSA (dsa-cuda) vs dense (cudnn-sdpa)`.
    pub fn engines_text(&self) -> String {
        format!("DSA ({}) vs dense ({})", self.dsa_engine, self.dense_engine)
    }
}

/// The saving of dense-bf16 -> dsa-fp8 split into the FP8 part and the sparsity part, at one
/// context (attention-only marginal cost), each cell from the fastest verified engine.
#[derive(Debug, Clone, PartialEq)]
pub struct PrecisionSplit {
    pub env: String,
    pub shape: String,
    pub phase: Phase,
    pub batch: usize,
    pub query_len: Option<usize>,
    pub context: usize,
    pub dense_bf16_usd: f64,
    pub dense_fp8_usd: f64,
    pub dsa_fp8_usd: f64,
    pub dsa_bf16_usd: Option<f64>,
    /// The engine of each cell.
    pub dense_bf16_engine: String,
    pub dense_fp8_engine: String,
    pub dsa_fp8_engine: String,
    pub dsa_bf16_engine: Option<String>,
    /// 1 - dsa_fp8 / dense_bf16.
    pub total_saving: f64,
    /// 1 - dense_fp8 / dense_bf16.
    pub from_fp8: f64,
    /// (dense_fp8 - dsa_fp8) / dense_bf16.
    pub from_sparsity: f64,
    /// Cells where FP8 is slower than bf16 for the same method: a kernel defect, not a
    /// property of FP8.
    pub fp8_slower: Vec<String>,
}

/// One usable engine at one point, for the engine table.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineRow {
    pub key: SeriesKey,
    pub context: usize,
    pub method: Method,
    pub engine: String,
    pub record: usize,
    pub origin: Origin,
    pub verified: Verified,
    pub median_ms: f64,
    pub n_samples: usize,
    /// Achieved rates: the record's analytic work over its median.
    pub tflops: f64,
    pub tbps: f64,
    /// Median of the fastest usable engine of the same method at this point / this median.
    pub share: f64,
    /// The fastest usable engine of the same method at this point.
    pub fastest: String,
    /// Whether the verdict (`Pairing::Best`) uses this engine here.
    pub picked: bool,
}

/// Everything the report says, computed once.
#[derive(Debug, Clone)]
pub struct Analysis {
    pub settings: CostSettings,
    pub yardstick: Yardstick,
    /// The verdict: fastest verified engine of each method at every point.
    pub series: Vec<Series>,
    /// The engine pairs asked for (ours vs ours by default), where measured.
    pub pairs: Vec<Series>,
    /// Every usable engine at every point.
    pub engines: Vec<EngineRow>,
    pub splits: Vec<PrecisionSplit>,
    /// The ceilings used per machine, and where they came from.
    pub ceilings: BTreeMap<String, (Ceilings, CeilingSource)>,
    /// What a reader must see on the first screen: ratios resting on slow engines, sides never
    /// checked against a library, ratios below their roofline bound, verdicts resting on
    /// unverified records.
    pub warnings: Vec<String>,
    /// Whether the records come from more than one machine.
    pub mixed_env: bool,
}

/// The measured per-token time of the rest of the model for a series, if `rest` records (or
/// legacy `gemm-*` records) exist on the same machine for the same shape and phase. `rest`
/// records: those at the series' query-token count (else the nearest count, said in the
/// source), of the series' precision (else bf16), at the highest EP degree measured; each
/// record's component medians are scaled to the model ([`cost::rest_seconds_per_token`]), the
/// median over each engine's records taken, and the fastest engine used (the others named).
fn measured_other(set: &RecordSet, key: &SeriesKey, query_tokens: usize) -> Option<OtherCost> {
    let gemms: Vec<&LoadedRecord> = set
        .records
        .iter()
        .filter(|r| {
            yardstick::is_gemm(r)
                && r.is_measured()
                && r.env_label == key.env
                && r.record.case.shape.name == key.shape
                && r.record.case.phase == key.phase
        })
        .collect();
    let rest: Vec<&LoadedRecord> = gemms.iter().copied().filter(|r| r.record.case.is_rest() && !r.record.components_ms.is_empty()).collect();
    if !rest.is_empty() {
        return measured_rest(&rest, key, query_tokens);
    }
    if gemms.is_empty() {
        return None;
    }
    let same_tokens: Vec<&&LoadedRecord> = gemms.iter().filter(|r| r.record.case.query_tokens() == query_tokens).collect();
    let chosen: Vec<&LoadedRecord> = if same_tokens.is_empty() { gemms.clone() } else { same_tokens.into_iter().copied().collect() };
    let per_token: Vec<f64> = chosen.iter().map(|r| cost::seconds_per_token(r.median_ms(), r.record.case.query_tokens())).collect();
    Some(OtherCost {
        seconds_per_token: stats::median(&per_token),
        dsa_extra_seconds_per_token: 0.0,
        source: OtherSource::Measured { engine: chosen[0].record.engine.clone(), records: chosen.len() },
    })
}

/// The rest of the model from `rest` records (see [`measured_other`]).
fn measured_rest(rest: &[&LoadedRecord], key: &SeriesKey, query_tokens: usize) -> Option<OtherCost> {
    // As the verdict ranks attention records: never one that failed verification, and only
    // verified ones when there are any (a `--no-verify` record never outranks them).
    let best = rest.iter().map(|r| Verified::of(r)).max().unwrap_or(Verified::Failed);
    if best == Verified::Failed {
        return None;
    }
    let rest: Vec<&LoadedRecord> = rest.iter().copied().filter(|r| Verified::of(r) == best).collect();
    let tokens_of = |r: &&LoadedRecord| r.record.case.query_tokens();
    let distance = |t: usize| ((t as f64) / (query_tokens.max(1) as f64)).ln().abs();
    let nearest = rest.iter().map(tokens_of).min_by(|a, b| distance(*a).total_cmp(&distance(*b)).then(a.cmp(b)))?;
    let at_tokens: Vec<&LoadedRecord> = rest.iter().copied().filter(|r| tokens_of(r) == nearest).collect();
    let precision = if at_tokens.iter().any(|r| r.record.case.precision == key.precision) { key.precision } else { Precision::Bf16 };
    let at_precision: Vec<&LoadedRecord> = at_tokens.iter().copied().filter(|r| r.record.case.precision == precision).collect();
    let chosen_set = if at_precision.is_empty() { at_tokens } else { at_precision };
    let ep = chosen_set.iter().map(|r| r.record.case.shape.ep).max()?;
    let at_ep: Vec<&LoadedRecord> = chosen_set.into_iter().filter(|r| r.record.case.shape.ep == ep).collect();
    let medians = |r: &LoadedRecord| -> Vec<(String, f64)> {
        r.record.components_ms.iter().map(|(k, v)| (k.clone(), stats::median(v))).filter(|(_, m)| m.is_finite()).collect()
    };
    // Per engine: the median over its records of (both sides, DSA extra) seconds per token.
    let mut engines: BTreeMap<&str, Vec<&LoadedRecord>> = BTreeMap::new();
    for r in &at_ep {
        engines.entry(r.record.engine.as_str()).or_default().push(r);
    }
    let per_engine: Vec<(&str, f64, f64, &Vec<&LoadedRecord>)> = engines
        .iter()
        .map(|(e, rs)| {
            let per: Vec<(f64, f64)> =
                rs.iter().map(|r| cost::rest_seconds_per_token(&r.record.case.shape, &medians(r), r.record.case.query_tokens())).collect();
            (*e, stats::median(&per.iter().map(|x| x.0).collect::<Vec<_>>()), stats::median(&per.iter().map(|x| x.1).collect::<Vec<_>>()), rs)
        })
        .collect();
    // The fastest engine (DSA side: both parts), ties to the engine name.
    let mut ranked: Vec<&(&str, f64, f64, &Vec<&LoadedRecord>)> = per_engine.iter().collect();
    ranked.sort_by(|a, b| (a.1 + a.2).total_cmp(&(b.1 + b.2)).then(a.0.cmp(b.0)));
    let &&(engine, base, extra, chosen) = ranked.first()?;
    let others: Vec<String> = ranked[1..].iter().map(|(e, b, x, _)| format!("{e} {:.4} ms/token", (b + x) * 1e3)).collect();
    let first = chosen.first()?;
    let mut components_ms = medians(first);
    if chosen.len() > 1 {
        for (name, ms) in components_ms.iter_mut() {
            let all: Vec<f64> = chosen.iter().filter_map(|r| r.record.components_ms.get(name.as_str()).map(|v| stats::median(v))).collect();
            *ms = stats::median(&all);
        }
    }
    let order = |n: &str| ctxcost_core::rest::Component::ALL.iter().position(|c| c.name() == n).unwrap_or(usize::MAX);
    components_ms.sort_by_key(|(n, _)| order(n));
    Some(OtherCost {
        seconds_per_token: base,
        dsa_extra_seconds_per_token: extra,
        source: OtherSource::Rest(cost::RestSource {
            engine: engine.to_string(),
            records: chosen.len(),
            query_tokens: nearest,
            series_tokens: (nearest != query_tokens).then_some(query_tokens),
            precision,
            ep,
            components_ms,
            others,
        }),
    })
}

/// The record of each side by context: (dense, DSA).
type ByContext = (BTreeMap<usize, usize>, BTreeMap<usize, usize>);

/// Usable records of a series by context and method.
type Candidates = BTreeMap<usize, BTreeMap<Method, Vec<usize>>>;

/// Why a record is not usable, for the "not measured" list.
fn unusable_why(r: &LoadedRecord) -> String {
    if r.record.status == ctxcost_core::record::Status::Ok && Verified::of(r) == Verified::Failed {
        return format!("{}: output verification failed", r.record.engine);
    }
    match (&r.record.status, &r.record.reason) {
        (s, Some(reason)) => format!("{} {:?}: {reason}", r.record.engine, s).to_lowercase(),
        (s, None) => format!("{} {:?}", r.record.engine, s).to_lowercase(),
    }
}

/// The record a verdict uses among usable ones: verified before unverified, then fastest.
fn pick_best(set: &RecordSet, idx: &[usize]) -> Option<usize> {
    idx.iter().copied().min_by(|&a, &b| {
        let (ra, rb) = (&set.records[a], &set.records[b]);
        Verified::of(rb).cmp(&Verified::of(ra)).then(ra.median_ms().total_cmp(&rb.median_ms())).then(ra.record.engine.cmp(&rb.record.engine))
    })
}

/// The fastest usable record (verified or not): (median ms, engine).
fn fastest(set: &RecordSet, idx: &[usize]) -> Option<(f64, String)> {
    idx.iter().map(|&i| (set.records[i].median_ms(), set.records[i].record.engine.clone())).min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
}

/// Analyse a record set.
pub fn analyse(set: &RecordSet, settings: &CostSettings, yardstick: &Yardstick, fig3: &Fig3) -> Analysis {
    let mut cands: BTreeMap<SeriesKey, Candidates> = BTreeMap::new();
    let mut unmeasured: BTreeMap<SeriesKey, Vec<(usize, String, String)>> = BTreeMap::new();
    for (i, r) in set.records.iter().enumerate() {
        if !yardstick::is_attention(r) {
            continue;
        }
        let key = SeriesKey::of(r);
        let ctx = r.record.case.context;
        if yardstick::usable(r) {
            cands.entry(key).or_default().entry(ctx).or_default().entry(r.record.case.method).or_default().push(i);
        } else {
            unmeasured.entry(key).or_default().push((ctx, r.record.engine.clone(), unusable_why(r)));
        }
    }
    for key in unmeasured.keys() {
        cands.entry(key.clone()).or_default();
    }
    let mut ceilings = BTreeMap::new();
    for env in set.env_labels() {
        ceilings.insert(env.clone(), yardstick::ceilings_of(set.records.iter().filter(|r| r.env_label == env), yardstick.ceilings));
    }
    let ctx_of = |env: &str| ceilings.get(env).map(|c: &(Ceilings, CeilingSource)| c.0).unwrap_or(yardstick.ceilings);

    // The engine table and the fastest engine of each method at each point.
    let mut engines = Vec::new();
    let mut best: BTreeMap<SeriesKey, ByContext> = BTreeMap::new();
    for (key, by_ctx) in &cands {
        let b = best.entry(key.clone()).or_default();
        for (&ctx, by_method) in by_ctx {
            for (&method, idx) in by_method {
                let Some(pick) = pick_best(set, idx) else { continue };
                let (fast_ms, fast_engine) = fastest(set, idx).unwrap_or((f64::NAN, String::new()));
                if method == Method::Dsa {
                    b.1.insert(ctx, pick);
                } else {
                    b.0.insert(ctx, pick);
                }
                for &i in idx {
                    let r = &set.records[i];
                    let s = r.median_ms() * 1e-3;
                    engines.push(EngineRow {
                        key: key.clone(),
                        context: ctx,
                        method,
                        engine: r.record.engine.clone(),
                        record: i,
                        origin: yardstick::origin(&r.record.engine),
                        verified: Verified::of(r),
                        median_ms: r.median_ms(),
                        n_samples: r.record.samples_ms.len(),
                        tflops: r.record.work.flops / s / 1e12,
                        tbps: r.record.work.bytes / s / 1e12,
                        share: fast_ms / r.median_ms(),
                        fastest: fast_engine.clone(),
                        picked: i == pick,
                    });
                }
            }
        }
    }
    let share_of = |i: usize| -> (f64, String) {
        engines.iter().find(|e| e.record == i).map(|e| (e.share, e.fastest.clone())).unwrap_or((f64::NAN, String::new()))
    };
    let env = Env { set, settings, fig3, share_of: &share_of, ceilings: &ctx_of };

    let mut series = Vec::new();
    for (key, (dense, dsa)) in best {
        let paired: std::collections::BTreeSet<usize> = dense.keys().filter(|c| dsa.contains_key(c)).copied().collect();
        let why = unmeasured.get(&key).map(|v| v.iter().filter(|u| !paired.contains(&u.0)).map(|u| (u.0, u.2.clone())).collect()).unwrap_or_default();
        if let Some(s) = build_series(&env, key, Pairing::Best, dense, dsa, why) {
            series.push(s);
        }
    }
    let mut pairs = Vec::new();
    for pair in yardstick.pairs() {
        for (key, by_ctx) in &cands {
            let pick = |engine: &str| -> BTreeMap<usize, usize> {
                by_ctx
                    .iter()
                    .filter_map(|(&ctx, by_method)| by_method.values().flatten().find(|&&i| set.records[i].record.engine == engine).map(|&i| (ctx, i)))
                    .collect()
            };
            let (dense, dsa) = (pick(&pair.dense), pick(&pair.dsa));
            if dense.is_empty() || dsa.is_empty() {
                continue;
            }
            let why = unmeasured
                .get(key)
                .map(|v| v.iter().filter(|u| u.1 == pair.dense || u.1 == pair.dsa).map(|u| (u.0, u.2.clone())).collect())
                .unwrap_or_default();
            if let Some(s) = build_series(&env, key.clone(), Pairing::Pair(pair.clone()), dense, dsa, why) {
                pairs.push(s);
            }
        }
    }
    let splits = precision_splits(&series);
    let mixed_env = set.env_labels().len() > 1;
    let warnings = warnings(set, &series, &pairs, &engines, mixed_env);
    Analysis { settings: settings.clone(), yardstick: yardstick.clone(), series, pairs, engines, splits, ceilings, warnings, mixed_env }
}

/// What [`build_series`] needs from the analysis.
struct Env<'a> {
    set: &'a RecordSet,
    settings: &'a CostSettings,
    fig3: &'a Fig3,
    share_of: &'a dyn Fn(usize) -> (f64, String),
    ceilings: &'a dyn Fn(&str) -> Ceilings,
}

/// `a` when every record uses engine `a`; else `a at 16K, 64K; b at 4K`.
fn engines_by_context(set: &RecordSet, m: &BTreeMap<usize, usize>) -> String {
    let mut by: Vec<(String, Vec<usize>)> = Vec::new();
    for (&ctx, &i) in m {
        let e = &set.records[i].record.engine;
        match by.iter_mut().find(|x| &x.0 == e) {
            Some(x) => x.1.push(ctx),
            None => by.push((e.clone(), vec![ctx])),
        }
    }
    if by.len() <= 1 {
        return by.pop().map(|x| x.0).unwrap_or_default();
    }
    by.iter().map(|(e, cs)| format!("{e} at {}", fmt_contexts(cs))).collect::<Vec<_>>().join("; ")
}

fn build_series(
    env: &Env,
    key: SeriesKey,
    pairing: Pairing,
    dense: BTreeMap<usize, usize>,
    dsa: BTreeMap<usize, usize>,
    unmeasured: Vec<(usize, String)>,
) -> Option<Series> {
    let (set, settings, fig3) = (env.set, env.settings, env.fig3);
    let any = dense.values().chain(dsa.values()).next().copied().or_else(|| {
        set.records.iter().position(|r| yardstick::is_attention(r) && SeriesKey::of(r) == key)
    })?;
    let shape = &set.records[any].record.case.shape;
    let (layers, top_k, active_params) = (shape.layers, shape.top_k, shape.active_params);
    let mut unpaired: Vec<Unpaired> = unmeasured.into_iter().map(|(context, why)| Unpaired { context, why }).collect();
    let mut paired: Vec<(usize, usize, usize)> = Vec::new();
    let contexts: std::collections::BTreeSet<usize> = dense.keys().chain(dsa.keys()).copied().collect();
    for ctx in contexts {
        match (dense.get(&ctx), dsa.get(&ctx)) {
            (Some(&d), Some(&s)) => paired.push((ctx, d, s)),
            (Some(_), None) => unpaired.push(Unpaired { context: ctx, why: "no measured DSA record at this point".into() }),
            (None, Some(_)) => unpaired.push(Unpaired { context: ctx, why: "no measured dense record at this point".into() }),
            (None, None) => {}
        }
    }
    unpaired.sort_by_key(|u| u.context);

    // The series' query tokens: a paired point's, else any of its records' (a side alone).
    let query_tokens_first =
        paired.first().map(|&(_, d, _)| d).or_else(|| dense.values().chain(dsa.values()).next().copied()).map_or(1, |i| set.records[i].record.case.query_tokens());
    let other = measured_other(set, &key, query_tokens_first).unwrap_or_else(|| OtherCost::analytic(active_params, settings.other_tflops));
    let (other_dense, other_dsa) = (other.side(false), other.side(true));
    let price = settings.usd_per_gpu_hour;
    let usd = |s: f64| cost::usd_per_million(s, price);
    let whole_prompt = key.query_len.is_none();
    let lf = layers as f64;

    // Per-point medians -> seconds per token, one layer.
    let per_tok = |rec: usize, med_ms: f64| cost::seconds_per_token(med_ms, set.records[rec].record.case.query_tokens());
    let samples = |rec: usize| -> &[f64] { &set.records[rec].record.samples_ms };
    let in_lockstep: Vec<bool> = paired.iter().map(|&(_, d, s)| yardstick::lockstep(&set.records[d], &set.records[s])).collect();

    // Attention-only costs as functions of per-point per-token times (one layer).
    let request_curve = |pts: &[(f64, f64)], i: usize| -> f64 {
        if whole_prompt {
            pts[i].1
        } else {
            cost::request_average(&pts[..=i], pts[i].0)
        }
    };

    let dense_tok: Vec<(f64, f64)> = paired.iter().map(|&(c, d, _)| (c as f64, per_tok(d, set.records[d].median_ms()))).collect();
    let dsa_tok: Vec<(f64, f64)> = paired.iter().map(|&(c, _, s)| (c as f64, per_tok(s, set.records[s].median_ms()))).collect();

    // Joint bootstrap of all point medians.
    let boot = joint_bootstrap(&paired.iter().zip(&in_lockstep).map(|(&(_, d, s), &l)| (samples(s), samples(d), l)).collect::<Vec<_>>(), JOINT_RESAMPLES);
    let n = paired.len();
    let mut model_r = vec![Vec::with_capacity(boot.len()); n];
    let mut attn_req_r = vec![Vec::with_capacity(boot.len()); n];
    let mut model_req_r = vec![Vec::with_capacity(boot.len()); n];
    for meds in &boot {
        let d: Vec<(f64, f64)> = paired.iter().zip(meds).map(|(&(c, d, _), m)| (c as f64, per_tok(d, m.1))).collect();
        let s: Vec<(f64, f64)> = paired.iter().zip(meds).map(|(&(c, _, s), m)| (c as f64, per_tok(s, m.0))).collect();
        for i in 0..n {
            model_r[i].push((lf * s[i].1 + other_dsa) / (lf * d[i].1 + other_dense));
            let (rd, rs) = (request_curve(&d, i), request_curve(&s, i));
            attn_req_r[i].push(rs / rd);
            model_req_r[i].push((lf * rs + other_dsa) / (lf * rd + other_dense));
        }
    }
    let ci = |ratio: f64, xs: &[f64]| RatioCi { ratio, lo: stats::percentile(xs, 2.5), hi: stats::percentile(xs, 97.5) };
    let ceilings = (env.ceilings)(&key.env);

    let mut points = Vec::new();
    for (i, &(ctx, d, s)) in paired.iter().enumerate() {
        let (dr, sr) = (&set.records[d], &set.records[s]);
        let (dt, st) = (dense_tok[i].1, dsa_tok[i].1);
        let (dreq, sreq) = (request_curve(&dense_tok, i), request_curve(&dsa_tok, i));
        let engine_cost = |rec: &LoadedRecord, t: f64, req: f64, o: f64| EngineCost {
            median_ms: rec.median_ms(),
            n_samples: rec.record.samples_ms.len(),
            attn_seconds_per_token: t,
            attn_marginal: usd(lf * t),
            model_marginal: usd(lf * t + o),
            attn_request: usd(lf * req),
            model_request: usd(lf * req + o),
        };
        let dense_cost = engine_cost(dr, dt, dreq, other_dense);
        let dsa_cost = engine_cost(sr, st, sreq, other_dsa);
        let attn_ratio = yardstick::ratio_ci(&sr.record.samples_ms, &dr.record.samples_ms, in_lockstep[i]);
        let model_ratio = ci(dsa_cost.model_marginal / dense_cost.model_marginal, &model_r[i]);
        let attn_request_ratio = ci(sreq / dreq, &attn_req_r[i]);
        let model_request_ratio = ci(dsa_cost.model_request / dense_cost.model_request, &model_req_r[i]);
        let dsa_components =
            sr.record.components_ms.iter().map(|(k, v)| (k.clone(), stats::median(v))).filter(|(_, m)| m.is_finite()).collect();
        points.push(Point {
            context: ctx,
            query_tokens: dr.record.case.query_tokens(),
            dense_record: d,
            dsa_record: s,
            dense_engine: dr.record.engine.clone(),
            dsa_engine: sr.record.engine.clone(),
            dense: dense_cost,
            dsa: dsa_cost,
            attn_ratio,
            model_ratio,
            attn_request_ratio,
            model_request_ratio,
            verdict: PointVerdict::of(&attn_ratio),
            // A whole-prompt case is a per-request cost: compare it with Fig. 3's request average.
            fig3_ratio: if whole_prompt { fig3.request_ratio_at(key.phase, ctx as f64) } else { fig3.ratio_at(key.phase, ctx as f64) },
            fig3_request_ratio: fig3.request_ratio_at(key.phase, ctx as f64),
            dsa_components,
            lockstep: in_lockstep[i],
            roofline: yardstick::roofline(&dr.record.case, &sr.record.case, &ceilings),
            dense_share: (env.share_of)(d),
            dsa_share: (env.share_of)(s),
        });
    }

    let xs: Vec<usize> = points.iter().map(|p| p.context).collect();
    let col = |f: &dyn Fn(&Point) -> RatioCi| -> Vec<RatioCi> { points.iter().map(f).collect() };
    let (a, m, ar, mr) = (col(&|p| p.attn_ratio), col(&|p| p.model_ratio), col(&|p| p.attn_request_ratio), col(&|p| p.model_request_ratio));
    let break_evens = BreakEvens {
        attn_one: break_even(&xs, &a, 1.0),
        attn_half: break_even(&xs, &a, 0.5),
        model_one: break_even(&xs, &m, 1.0),
        model_half: break_even(&xs, &m, 0.5),
        attn_request_one: break_even(&xs, &ar, 1.0),
        attn_request_half: break_even(&xs, &ar, 0.5),
        model_request_one: break_even(&xs, &mr, 1.0),
        model_request_half: break_even(&xs, &mr, 0.5),
    };
    let name = |m: &BTreeMap<usize, usize>, fallback: Option<&String>| {
        let s = engines_by_context(set, m);
        if s.is_empty() {
            fallback.cloned().unwrap_or_else(|| "none measured".into())
        } else {
            s
        }
    };
    let (pd, ps) = match &pairing {
        Pairing::Pair(p) => (Some(&p.dense), Some(&p.dsa)),
        Pairing::Best => (None, None),
    };
    Some(Series {
        dense_engine: name(&dense, pd),
        dsa_engine: name(&dsa, ps),
        key,
        pairing,
        layers,
        top_k,
        active_params,
        other,
        points,
        unpaired,
        break_evens,
        dense_records: dense.iter().map(|(&c, &i)| (c, Measured::of(set, i))).collect(),
        dsa_records: dsa.iter().map(|(&c, &i)| (c, Measured::of(set, i))).collect(),
    })
}

/// Joint bootstrap: for every resample, the (sparse, dense) medians of every point. A point's
/// samples are resampled as pairs when its flag says they were taken in lockstep (same
/// length, interleaved A B A B), else each set on its own; the generator is seeded so results
/// are reproducible.
pub fn joint_bootstrap(points: &[(&[f64], &[f64], bool)], resamples: usize) -> Vec<Vec<(f64, f64)>> {
    if points.is_empty() {
        return Vec::new();
    }
    let mut state: u64 = 0x5EED_0003 ^ points.len() as u64;
    let mut below = |n: usize| {
        state = state.wrapping_add(1);
        (ctxcost_core::inputs::splitmix64(state) % n as u64) as usize
    };
    let mut out = Vec::with_capacity(resamples);
    let mut a = Vec::new();
    let mut b = Vec::new();
    for _ in 0..resamples {
        let mut meds = Vec::with_capacity(points.len());
        for &(num, den, paired) in points {
            a.clear();
            b.clear();
            if paired && num.len() == den.len() {
                for _ in 0..num.len() {
                    let j = below(num.len());
                    a.push(num[j]);
                    b.push(den[j]);
                }
            } else {
                for _ in 0..num.len() {
                    a.push(num[below(num.len())]);
                }
                for _ in 0..den.len() {
                    b.push(den[below(den.len())]);
                }
            }
            meds.push((stats::median(&a), stats::median(&b)));
        }
        out.push(meds);
    }
    out
}

/// FP8 vs sparsity split wherever dense-bf16, dense-fp8 and dsa-fp8 share a point, from the
/// verdict's series (the fastest verified engine of each cell).
fn precision_splits(series: &[Series]) -> Vec<PrecisionSplit> {
    let find = |k: &SeriesKey, p: Precision| series.iter().find(|s| s.key == SeriesKey { precision: p, ..k.clone() });
    let mut out = Vec::new();
    for s16 in series.iter().filter(|s| s.key.precision == Precision::Bf16) {
        let Some(s8) = find(&s16.key, Precision::Fp8) else { continue };
        for p16 in &s16.points {
            let Some(p8) = s8.points.iter().find(|p| p.context == p16.context) else { continue };
            let (d16, d8, sp8, sp16) = (p16.dense.attn_marginal, p8.dense.attn_marginal, p8.dsa.attn_marginal, p16.dsa.attn_marginal);
            let mut fp8_slower = Vec::new();
            if d8 > d16 {
                fp8_slower.push(format!(
                    "dense fp8 ({}) is {:.2}x slower than dense bf16 ({}): a kernel defect, not a property of FP8",
                    p8.dense_engine,
                    d8 / d16,
                    p16.dense_engine
                ));
            }
            if sp8 > sp16 {
                fp8_slower.push(format!(
                    "DSA fp8 ({}) is {:.2}x slower than DSA bf16 ({}): a kernel defect, not a property of FP8",
                    p8.dsa_engine,
                    sp8 / sp16,
                    p16.dsa_engine
                ));
            }
            out.push(PrecisionSplit {
                env: s16.key.env.clone(),
                shape: s16.key.shape.clone(),
                phase: s16.key.phase,
                batch: s16.key.batch,
                query_len: s16.key.query_len,
                context: p16.context,
                dense_bf16_usd: d16,
                dense_fp8_usd: d8,
                dsa_fp8_usd: sp8,
                dsa_bf16_usd: Some(sp16),
                dense_bf16_engine: p16.dense_engine.clone(),
                dense_fp8_engine: p8.dense_engine.clone(),
                dsa_fp8_engine: p8.dsa_engine.clone(),
                dsa_bf16_engine: Some(p16.dsa_engine.clone()),
                total_saving: 1.0 - sp8 / d16,
                from_fp8: 1.0 - d8 / d16,
                from_sparsity: (d8 - sp8) / d16,
                fp8_slower,
            });
        }
    }
    out
}


/// A measured ratio below this share of its roofline bound is flagged: the dense side is far
/// from the ceilings.
pub const BELOW_ROOFLINE: f64 = 0.8;

/// The first-screen warnings (see [`Analysis::warnings`]).
fn warnings(set: &RecordSet, series: &[Series], pairs: &[Series], engines: &[EngineRow], mixed_env: bool) -> Vec<String> {
    let mut out = Vec::new();
    // 1. A ratio resting on an engine slower than SLOW_ENGINE_SHARE of the fastest of its method.
    for s in series.iter().chain(pairs) {
        for (method, side) in [(Method::Dense, 0), (Method::Dsa, 1)] {
            let mut slow: BTreeMap<(String, String), Vec<(usize, f64)>> = BTreeMap::new();
            for p in &s.points {
                let (engine, (share, fastest)) = if side == 0 { (&p.dense_engine, &p.dense_share) } else { (&p.dsa_engine, &p.dsa_share) };
                if *share < SLOW_ENGINE_SHARE {
                    slow.entry((engine.clone(), fastest.clone())).or_default().push((p.context, *share));
                }
            }
            for ((engine, fastest), at) in slow {
                let (lo, hi) = at.iter().fold((f64::INFINITY, 0f64), |(l, h), x| (l.min(x.1), h.max(x.1)));
                let share = if (hi - lo).abs() < 0.005 { format!("{lo:.2}") } else { format!("{lo:.2}-{hi:.2}") };
                let what = match &s.pairing {
                    Pairing::Best => "the verdict".to_string(),
                    Pairing::Pair(p) => format!("the pair {}", p.label()),
                };
                let unverified = if s.pairing == Pairing::Best { " (the faster one is not verified)" } else { "" };
                out.push(format!(
                    "{} {}: {what} rests on {engine}, which runs at {share} of the fastest {} engine ({fastest}{unverified}) at {}.",
                    s.key.phase,
                    s.key.label(mixed_env),
                    method,
                    fmt_contexts(&at.iter().map(|x| x.0).collect::<Vec<_>>())
                ));
            }
        }
    }
    // 2. A side never checked against a library peer.
    for (method, what) in [(Method::Dense, "dense baseline"), (Method::Dsa, "DSA")] {
        let mut lacking = Vec::new();
        let mut ours: Vec<String> = Vec::new();
        let mut checked = 0;
        for s in series.iter().filter(|s| !s.points.is_empty()) {
            let rows: Vec<&EngineRow> = engines.iter().filter(|e| e.key == s.key && e.method == method).collect();
            if rows.is_empty() {
                continue;
            }
            if rows.iter().any(|e| e.origin == Origin::Library) {
                checked += 1;
            } else {
                lacking.push(format!("{} {}", s.key.phase, s.key.label(mixed_env)));
                ours.extend(rows.iter().map(|e| e.engine.clone()));
            }
        }
        ours.sort();
        ours.dedup();
        if !lacking.is_empty() {
            let scope = if checked == 0 { "in any series".to_string() } else { format!("for {}", lacking.join("; ")) };
            out.push(format!("{what} not checked against a library: no library {method} engine was measured {scope} (only {}).", ours.join(", ")));
        }
    }
    // 3. A measured ratio well below its roofline bound: the dense side runs far from the
    // ceilings, so the ratio flatters DSA (GPU machines only: a CPU is not measured against the
    // GPU ceilings).
    for s in series.iter().filter(|s| s.points.iter().any(|p| set.records[p.dense_record].record.env.gpu.contains_key("name"))) {
        let below: Vec<&Point> = s.points.iter().filter(|p| p.attn_ratio.ratio < BELOW_ROOFLINE * p.roofline.ratio).collect();
        if let Some(p) = below.last() {
            out.push(format!(
                "{} {}: the measured ratio is below its roofline bound at {} ({:.3} vs {:.3} at {}): the dense side ({}) runs far from the ceilings, so the ratio flatters DSA.",
                s.key.phase,
                s.key.label(mixed_env),
                fmt_contexts(&below.iter().map(|p| p.context).collect::<Vec<_>>()),
                p.attn_ratio.ratio,
                p.roofline.ratio,
                fmt_tokens(p.context as f64),
                p.dense_engine
            ));
        }
    }
    // 4. A verdict resting on records that were never verified.
    let mut unverified: Vec<String> = series
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|p| [p.dense_record, p.dsa_record]))
        .filter(|&i| Verified::of(&set.records[i]) == Verified::NotRun)
        .map(|i| set.records[i].record.engine.clone())
        .collect();
    unverified.sort();
    unverified.dedup();
    if !unverified.is_empty() {
        out.push(format!(
            "The verdict rests on records whose output was not verified against the reference ({}): run without `--no-verify` to check them.",
            unverified.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rc(ratio: f64, lo: f64, hi: f64) -> RatioCi {
        RatioCi { ratio, lo, hi }
    }

    #[test]
    fn crossings_interpolate_in_log_context() {
        let xs = [1024, 2048, 4096, 8192];
        // 1.2 -> 0.8 between 1K and 2K: halfway in log space = 1024 * sqrt(2).
        match crossing(&xs, &[1.2, 0.8, 0.4, 0.3], 1.0) {
            Crossing::At(x) => assert!((x - 1024.0 * 2f64.sqrt()).abs() < 1e-9),
            c => panic!("{c:?}"),
        }
        assert_eq!(crossing(&xs, &[0.9, 0.8, 0.4, 0.3], 1.0), Crossing::BelowRange { first: 1024 });
        assert_eq!(crossing(&xs, &[1.2, 1.1, 1.05, 1.01], 1.0), Crossing::AboveRange { last: 8192 });
        // Dips below then back above: the crossing that stays below counts.
        assert!(matches!(crossing(&xs, &[0.9, 1.1, 0.8, 0.7], 1.0), Crossing::At(x) if x > 2048.0 && x < 4096.0));
        assert_eq!(crossing(&[], &[], 1.0), Crossing::NoData);
    }

    #[test]
    fn break_even_bounds_come_from_ci_curves() {
        let xs = [1024, 2048, 4096];
        let r = [rc(1.2, 1.1, 1.3), rc(0.9, 0.8, 1.05), rc(0.6, 0.55, 0.65)];
        let be = break_even(&xs, &r, 1.0);
        let (lo, est, hi) = (be.lo.tokens().unwrap(), be.estimate.tokens().unwrap(), be.hi.tokens().unwrap());
        assert!(lo < est && est < hi, "{be:?}");
        assert!(matches!(break_even(&xs, &r, 0.5).hi, Crossing::AboveRange { last: 4096 }));
    }

    #[test]
    fn verdict_wording() {
        let v = PointVerdict::of(&rc(0.45, 0.40, 0.55));
        assert_eq!(v.claim, Claim::Holds);
        assert!(v.straddles_half && !v.straddles_one);
        assert!(v.wording().contains("straddles 0.5"));
        let v = PointVerdict::of(&rc(0.7, 0.6, 0.8));
        assert_eq!((v.band, v.claim, v.straddles_half), (Band::HalfToOne, Claim::DoesNotHold, false));
        assert_eq!(PointVerdict::of(&rc(1.0, 0.9, 1.1)).band, Band::AtLeastDense);
    }

    #[test]
    fn token_formatting() {
        assert_eq!(fmt_tokens(1024.0), "1K");
        assert_eq!(fmt_tokens(3444.0), "3.4K");
        assert_eq!(fmt_tokens(131072.0), "128K");
        assert_eq!(fmt_tokens(700.0), "700");
        assert_eq!(fmt_tokens(1024.0 * 1024.0 * 1.5), "1.5M");
    }
}
