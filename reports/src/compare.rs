//! Regression comparison of two record sets (`ctxcost compare`).
//!
//! A *baseline* and a *current* record set (each the records of one or more runs) are matched
//! case by case: two records belong together when they have the same case key
//! ([`Case::key`]: engine, shape, phase, context, batch, query length, precision, top-k;
//! everything but the seed) and were measured on the same machine
//! ([`Environment::label`]). When each side of a key has exactly one machine left over and the
//! two differ, they are still compared, and the comparison carries a machine-mismatch warning
//! (ratios across machines measure the machines as much as the code), unless
//! [`CompareOptions::strict_machine`] asks to keep them apart.
//!
//! For every matched case the ratio of medians `current / baseline` is computed from the raw
//! samples, with a bootstrap 95% CI that resamples the two sides independently (the runs are
//! not paired: sample `i` of one run has nothing to do with sample `i` of the other). The
//! verdict follows the house rule (DESIGN.md section 6): **regressed** only when the whole CI
//! lies above `1 + threshold`, **improved** only when it lies wholly below `1 - threshold`,
//! **unchanged** otherwise. A case that was `ok` in the baseline and `failed` now is
//! **broken**. Cases present on one side only and records that are not `ok` are listed.
//!
//! Everything here is a pure function over records; reading files and choosing an exit code
//! is the binary's job. The renderers ([`Comparison::to_terminal`],
//! [`Comparison::to_markdown`], [`Comparison::to_json`]) turn the result into text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use ctxcost_core::inputs::splitmix64;
use ctxcost_core::record::{Record, Status};
use ctxcost_core::stats::{median, percentile_sorted, RatioCi, BOOTSTRAP_RESAMPLES};
use ctxcost_core::Case;

/// Default noise threshold: a case regresses only when its whole CI is above `1 + 0.05`.
pub const DEFAULT_THRESHOLD: f64 = 0.05;

/// How to compare.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CompareOptions {
    /// Relative change the CI must clear before a case counts as regressed or improved.
    pub threshold: f64,
    /// Never pair records measured on different machines (they are listed as one-sided).
    pub strict_machine: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self { threshold: DEFAULT_THRESHOLD, strict_machine: false }
    }
}

/// The verdict on one matched case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The whole 95% CI of current/baseline lies above `1 + threshold`.
    Regressed,
    /// `ok` in the baseline, `failed` now.
    Broken,
    /// The whole 95% CI lies below `1 - threshold`.
    Improved,
    /// Anything else: no change that clears the noise.
    Unchanged,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regressed => "regressed",
            Verdict::Broken => "broken",
            Verdict::Improved => "improved",
            Verdict::Unchanged => "unchanged",
        }
    }

    /// Whether this verdict fails a regression gate.
    pub fn fails_gate(self) -> bool {
        matches!(self, Verdict::Regressed | Verdict::Broken)
    }
}

/// Which record set a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Baseline,
    Current,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Baseline => "baseline",
            Side::Current => "current",
        }
    }
}

/// The samples of one side of a matched case (pooled when a side holds several runs of it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SideSummary {
    /// Machine label of the records.
    pub machine: String,
    /// Records pooled.
    pub runs: usize,
    /// Samples pooled.
    pub n: usize,
    pub median_ms: f64,
}

/// One matched case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseComparison {
    pub key: String,
    pub case: Case,
    pub baseline: SideSummary,
    pub current: SideSummary,
    /// `median(current) / median(baseline)`; NaN for a broken case.
    pub ratio: f64,
    /// Bootstrap 95% CI of the ratio.
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub verdict: Verdict,
    /// The two sides were measured on machines with different labels.
    pub machine_mismatch: bool,
}

/// A case seen on one side only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OneSided {
    pub side: Side,
    pub key: String,
    pub machine: String,
    pub status: Status,
}

/// A record whose status is not `ok` (or that is `ok` but holds no samples).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotOk {
    pub side: Side,
    pub key: String,
    pub machine: String,
    pub status: Status,
    pub reason: String,
}

/// Counts of the verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Counts {
    pub compared: usize,
    pub regressed: usize,
    pub broken: usize,
    pub improved: usize,
    pub unchanged: usize,
    pub only_baseline: usize,
    pub only_current: usize,
    pub not_ok: usize,
}

/// The result of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub threshold: f64,
    /// Machine labels seen on each side, sorted.
    pub baseline_machines: Vec<String>,
    pub current_machines: Vec<String>,
    pub counts: Counts,
    /// Matched cases, gate failures first, then improvements, then the rest; each group in
    /// case order (engine, shape, phase, precision, batch, query length, context).
    pub cases: Vec<CaseComparison>,
    /// Cases on one side only, in key order.
    pub one_sided: Vec<OneSided>,
    /// Records that are not `ok`, in key order.
    pub not_ok: Vec<NotOk>,
    /// Human-readable warnings (machine mismatch, pooled runs, ...).
    pub warnings: Vec<String>,
}

impl Comparison {
    /// Whether any case fails the gate (regressed or broken).
    pub fn has_regression(&self) -> bool {
        self.cases.iter().any(|c| c.verdict.fails_gate())
    }

    /// Cases of the baseline that the current set lacks (for `--fail-on-missing`).
    pub fn missing_from_current(&self) -> impl Iterator<Item = &OneSided> {
        self.one_sided.iter().filter(|o| o.side == Side::Baseline)
    }
}

/// Bootstrap 95% CI of `median(num) / median(den)` resampling the two sets independently.
///
/// [`ctxcost_core::stats::ratio_ci`] treats sets of equal length as paired (right for dense
/// and sparse samples interleaved within one run, wrong for two separate runs, where pairing
/// by index would cancel drift that is really there and narrow the CI). Deterministic: the
/// generator's seed depends only on the set sizes. `None` when a set has no finite sample.
pub fn unpaired_ratio_ci(num: &[f64], den: &[f64]) -> Option<RatioCi> {
    let num: Vec<f64> = num.iter().copied().filter(|x| x.is_finite()).collect();
    let den: Vec<f64> = den.iter().copied().filter(|x| x.is_finite()).collect();
    if num.is_empty() || den.is_empty() {
        return None;
    }
    let ratio = median(&num) / median(&den);
    let mut state = 0x5EED_0C0A_u64 ^ ((num.len() as u64) << 24) ^ den.len() as u64;
    let mut below = |n: usize| {
        state = state.wrapping_add(1);
        (splitmix64(state) % n as u64) as usize
    };
    let (mut a, mut b) = (vec![0.0; num.len()], vec![0.0; den.len()]);
    let mut ratios = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for slot in a.iter_mut() {
            *slot = num[below(num.len())];
        }
        for slot in b.iter_mut() {
            *slot = den[below(den.len())];
        }
        ratios.push(median(&a) / median(&b));
    }
    ratios.sort_by(|x, y| x.total_cmp(y));
    Some(RatioCi { ratio, lo: percentile_sorted(&ratios, 2.5), hi: percentile_sorted(&ratios, 97.5) })
}

/// The verdict for a ratio CI at a threshold.
pub fn verdict(ci: &RatioCi, threshold: f64) -> Verdict {
    if ci.lo > 1.0 + threshold {
        Verdict::Regressed
    } else if ci.hi < 1.0 - threshold {
        Verdict::Improved
    } else {
        Verdict::Unchanged
    }
}

/// The records of one (case key, machine) on one side.
struct Group<'a> {
    machine: String,
    records: Vec<&'a Record>,
}

impl Group<'_> {
    fn ok_records(&self) -> Vec<&Record> {
        self.records.iter().copied().filter(|r| r.status == Status::Ok && !r.samples_ms.is_empty()).collect()
    }
    fn samples(&self) -> Vec<f64> {
        self.ok_records().iter().flat_map(|r| r.samples_ms.iter().copied()).collect()
    }
    /// The status that stands for the group: ok if any record is ok, else failed if any
    /// failed, else skipped.
    fn status(&self) -> Status {
        let has = |s: Status| self.records.iter().any(|r| r.status == s);
        if !self.ok_records().is_empty() {
            Status::Ok
        } else if has(Status::Failed) {
            Status::Failed
        } else {
            Status::Skipped
        }
    }
    fn case(&self) -> &Case {
        &self.records[0].case
    }
    fn summary(&self) -> SideSummary {
        let s = self.samples();
        SideSummary { machine: self.machine.clone(), runs: self.ok_records().len(), n: s.len(), median_ms: median(&s) }
    }
}

/// key -> machine -> records.
fn group(records: &[Record]) -> BTreeMap<&str, BTreeMap<String, Group<'_>>> {
    let mut out: BTreeMap<&str, BTreeMap<String, Group<'_>>> = BTreeMap::new();
    for r in records {
        let machine = r.env.label();
        out.entry(r.key.as_str())
            .or_default()
            .entry(machine.clone())
            .or_insert_with(|| Group { machine, records: Vec::new() })
            .records
            .push(r);
    }
    out
}

fn machines(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.env.label()).collect::<BTreeSet<_>>().into_iter().collect()
}

/// Sort key that orders cases the way a reader scans a sweep (context numerically).
fn case_order(c: &Case) -> (String, String, ctxcost_core::Phase, ctxcost_core::Precision, usize, usize, usize, usize) {
    (c.engine.clone(), c.shape.name.clone(), c.phase, c.precision, c.batch, c.query_len, c.shape.top_k, c.context)
}

/// Compare two record sets.
pub fn compare(baseline: &[Record], current: &[Record], opts: &CompareOptions) -> Comparison {
    let base = group(baseline);
    let cur = group(current);
    let mut cases = Vec::new();
    let mut one_sided = Vec::new();
    let mut not_ok = Vec::new();
    let mut warnings = Vec::new();
    let mut pooled = 0usize;

    for (side, groups) in [(Side::Baseline, &base), (Side::Current, &cur)] {
        for (key, by_machine) in groups {
            for g in by_machine.values() {
                for r in &g.records {
                    let reason = match r.status {
                        Status::Ok if r.samples_ms.is_empty() => Some("ok but holds no samples".to_string()),
                        Status::Ok => None,
                        _ => Some(r.reason.clone().unwrap_or_default()),
                    };
                    if let Some(reason) = reason {
                        not_ok.push(NotOk { side, key: key.to_string(), machine: g.machine.clone(), status: r.status, reason });
                    }
                }
                if g.ok_records().len() > 1 {
                    pooled += 1;
                }
            }
        }
    }

    let keys: BTreeSet<&str> = base.keys().chain(cur.keys()).copied().collect();
    for key in keys {
        let empty = BTreeMap::new();
        let b = base.get(key).unwrap_or(&empty);
        let c = cur.get(key).unwrap_or(&empty);
        // Pair same-machine groups first.
        let mut pairs: Vec<(&Group, &Group, bool)> = Vec::new();
        let mut b_left: Vec<&Group> = Vec::new();
        let mut c_left: Vec<&Group> = c.iter().filter(|(m, _)| !b.contains_key(*m)).map(|(_, g)| g).collect();
        for (m, bg) in b {
            match c.get(m) {
                Some(cg) => pairs.push((bg, cg, false)),
                None => b_left.push(bg),
            }
        }
        // Then one leftover machine on each side, unless asked not to.
        if !opts.strict_machine && b_left.len() == 1 && c_left.len() == 1 {
            pairs.push((b_left[0], c_left[0], true));
            b_left.clear();
            c_left.clear();
        }
        for (side, left) in [(Side::Baseline, b_left), (Side::Current, c_left)] {
            for g in left {
                one_sided.push(OneSided { side, key: key.to_string(), machine: g.machine.clone(), status: g.status() });
            }
        }
        for (bg, cg, mismatch) in pairs {
            let (bs, cs) = (bg.status(), cg.status());
            let verdict_and_ci = if bs == Status::Ok && cs == Status::Ok {
                unpaired_ratio_ci(&cg.samples(), &bg.samples()).map(|ci| (verdict(&ci, opts.threshold), ci))
            } else if bs == Status::Ok && cs == Status::Failed {
                Some((Verdict::Broken, RatioCi { ratio: f64::NAN, lo: f64::NAN, hi: f64::NAN }))
            } else {
                None // skipped or failed on a side: listed under not_ok only
            };
            if let Some((v, ci)) = verdict_and_ci {
                cases.push(CaseComparison {
                    key: key.to_string(),
                    case: cg.case().clone(),
                    baseline: bg.summary(),
                    current: cg.summary(),
                    ratio: ci.ratio,
                    ci_lo: ci.lo,
                    ci_hi: ci.hi,
                    verdict: v,
                    machine_mismatch: mismatch,
                });
            }
        }
    }

    cases.sort_by(|x, y| {
        let rank = |v: Verdict| match v {
            Verdict::Regressed | Verdict::Broken => 0,
            Verdict::Improved => 1,
            Verdict::Unchanged => 2,
        };
        (rank(x.verdict), case_order(&x.case), &x.baseline.machine).cmp(&(rank(y.verdict), case_order(&y.case), &y.baseline.machine))
    });

    let baseline_machines = machines(baseline);
    let current_machines = machines(current);
    let mismatched: BTreeSet<(&str, &str)> =
        cases.iter().filter(|c| c.machine_mismatch).map(|c| (c.baseline.machine.as_str(), c.current.machine.as_str())).collect();
    for (bm, cm) in &mismatched {
        let n = cases.iter().filter(|c| c.machine_mismatch && c.baseline.machine == *bm && c.current.machine == *cm).count();
        warnings.push(format!(
            "machine mismatch: {n} case(s) compare baseline measured on `{bm}` with current measured on `{cm}`; their ratios include the difference between the machines"
        ));
    }
    if pooled > 0 {
        warnings.push(format!("{pooled} case(s) hold several runs on one side; their samples were pooled"));
    }

    let mut counts = Counts { compared: cases.len(), not_ok: not_ok.len(), ..Counts::default() };
    for c in &cases {
        match c.verdict {
            Verdict::Regressed => counts.regressed += 1,
            Verdict::Broken => counts.broken += 1,
            Verdict::Improved => counts.improved += 1,
            Verdict::Unchanged => counts.unchanged += 1,
        }
    }
    counts.only_baseline = one_sided.iter().filter(|o| o.side == Side::Baseline).count();
    counts.only_current = one_sided.iter().filter(|o| o.side == Side::Current).count();

    Comparison { threshold: opts.threshold, baseline_machines, current_machines, counts, cases, one_sided, not_ok, warnings }
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

fn fmt_ms(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.1}")
    } else if x >= 1.0 {
        format!("{x:.3}")
    } else {
        format!("{x:.4}")
    }
}

fn fmt_ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "-".into()
    }
}

fn fmt_ci(c: &CaseComparison) -> String {
    if c.ci_lo.is_finite() && c.ci_hi.is_finite() {
        format!("[{:.3}, {:.3}]", c.ci_lo, c.ci_hi)
    } else {
        "-".into()
    }
}

fn fmt_change(c: &CaseComparison) -> String {
    if c.ratio.is_finite() {
        format!("{:+.1}%", (c.ratio - 1.0) * 100.0)
    } else {
        "-".into()
    }
}

/// Plain columns of one matched case, in table order.
fn row(c: &CaseComparison) -> [String; 13] {
    let k = &c.case;
    [
        c.verdict.as_str().to_string() + if c.machine_mismatch { "*" } else { "" },
        k.engine.clone(),
        k.shape.name.clone(),
        k.phase.to_string(),
        k.context.to_string(),
        k.batch.to_string(),
        k.query_len.to_string(),
        k.precision.to_string(),
        fmt_ms(c.baseline.median_ms),
        fmt_ms(c.current.median_ms),
        fmt_ratio(c.ratio),
        fmt_ci(c),
        fmt_change(c),
    ]
}

const HEADER: [&str; 13] =
    ["verdict", "engine", "shape", "phase", "context", "batch", "q", "precision", "base ms", "current ms", "ratio", "95% CI", "change"];
/// Columns aligned right (numbers).
const RIGHT: [bool; 13] = [false, false, false, false, true, true, true, false, true, true, true, false, true];

impl Comparison {
    /// One line: the gate's outcome and the counts.
    pub fn headline(&self) -> String {
        let c = &self.counts;
        let outcome = if self.has_regression() { "REGRESSED" } else { "OK" };
        format!(
            "{outcome}: {} compared, {} regressed, {} broken, {} improved, {} unchanged (threshold {:.1}%); {} baseline-only, {} current-only, {} not ok",
            c.compared,
            c.regressed,
            c.broken,
            c.improved,
            c.unchanged,
            self.threshold * 100.0,
            c.only_baseline,
            c.only_current,
            c.not_ok
        )
    }

    /// A plain-text table for a terminal.
    pub fn to_terminal(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "baseline machine(s): {}", list_or_none(&self.baseline_machines));
        let _ = writeln!(out, "current machine(s):  {}", list_or_none(&self.current_machines));
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out.push('\n');
        if !self.cases.is_empty() {
            let rows: Vec<[String; 13]> = self.cases.iter().map(row).collect();
            let mut width = HEADER.map(str::len);
            for r in &rows {
                for (w, cell) in width.iter_mut().zip(r) {
                    *w = (*w).max(cell.chars().count());
                }
            }
            let line = |cells: &[String; 13]| {
                let mut s = String::new();
                for (i, cell) in cells.iter().enumerate() {
                    if i > 0 {
                        s.push_str("  ");
                    }
                    let pad = width[i] - cell.chars().count();
                    if RIGHT[i] {
                        s.push_str(&" ".repeat(pad));
                        s.push_str(cell);
                    } else {
                        s.push_str(cell);
                        if i + 1 < cells.len() {
                            s.push_str(&" ".repeat(pad));
                        }
                    }
                }
                s
            };
            let _ = writeln!(out, "{}", line(&HEADER.map(String::from)));
            for r in &rows {
                let _ = writeln!(out, "{}", line(r));
            }
            if self.cases.iter().any(|c| c.machine_mismatch) {
                let _ = writeln!(out, "(* measured on different machines)");
            }
            out.push('\n');
        }
        if !self.one_sided.is_empty() {
            let _ = writeln!(out, "cases on one side only:");
            for o in &self.one_sided {
                let _ = writeln!(out, "  {:<8}  {}  [{}] ({})", o.side.as_str(), o.key, status_str(o.status), o.machine);
            }
            out.push('\n');
        }
        if !self.not_ok.is_empty() {
            let _ = writeln!(out, "records that are not ok:");
            for n in &self.not_ok {
                let _ = writeln!(out, "  {:<8}  {}  [{}] {}", n.side.as_str(), n.key, status_str(n.status), n.reason);
            }
            out.push('\n');
        }
        let _ = writeln!(out, "{}", self.headline());
        out
    }

    /// GitHub-flavoured Markdown, e.g. for a CI job summary (`$GITHUB_STEP_SUMMARY`).
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let c = &self.counts;
        let _ = writeln!(out, "## ctxcost compare: {}\n", if self.has_regression() { "regression" } else { "no regression" });
        let _ = writeln!(
            out,
            "**{}** compared: **{}** regressed, **{}** broken, {} improved, {} unchanged. \
             A case regresses only when the whole bootstrap 95% CI of current/baseline lies above {:.3} \
             (threshold {:.1}%).\n",
            c.compared,
            c.regressed,
            c.broken,
            c.improved,
            c.unchanged,
            1.0 + self.threshold,
            self.threshold * 100.0
        );
        let _ = writeln!(out, "- baseline machine(s): {}", md_list(&self.baseline_machines));
        let _ = writeln!(out, "- current machine(s): {}", md_list(&self.current_machines));
        for w in &self.warnings {
            let _ = writeln!(out, "- :warning: {}", md_escape(w));
        }
        out.push('\n');
        if !self.cases.is_empty() {
            let _ = writeln!(out, "| {} |", HEADER.join(" | "));
            let seps: Vec<&str> = RIGHT.iter().map(|r| if *r { "---:" } else { "---" }).collect();
            let _ = writeln!(out, "|{}|", seps.join("|"));
            for case in &self.cases {
                let mut cells = row(case).map(|s| md_escape(&s));
                if case.verdict.fails_gate() {
                    cells[0] = format!("**{}**", cells[0]);
                }
                let _ = writeln!(out, "| {} |", cells.join(" | "));
            }
            if self.cases.iter().any(|c| c.machine_mismatch) {
                let _ = writeln!(out, "\n\\* measured on different machines");
            }
            out.push('\n');
        }
        if !self.one_sided.is_empty() {
            let _ = writeln!(out, "### Cases on one side only\n");
            let _ = writeln!(out, "| side | case | status | machine |\n|---|---|---|---|");
            for o in &self.one_sided {
                let _ = writeln!(out, "| {} | `{}` | {} | {} |", o.side.as_str(), md_escape(&o.key), status_str(o.status), md_escape(&o.machine));
            }
            out.push('\n');
        }
        if !self.not_ok.is_empty() {
            let _ = writeln!(out, "### Records that are not ok\n");
            let _ = writeln!(out, "| side | case | status | reason |\n|---|---|---|---|");
            for n in &self.not_ok {
                let _ = writeln!(out, "| {} | `{}` | {} | {} |", n.side.as_str(), md_escape(&n.key), status_str(n.status), md_escape(&n.reason));
            }
            out.push('\n');
        }
        out
    }

    /// The whole comparison as pretty JSON (NaN and infinities become `null`).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn status_str(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Skipped => "skipped",
        Status::Failed => "failed",
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join("; ")
    }
}

fn md_list(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.iter().map(|m| md_escape(m)).collect::<Vec<_>>().join("; ")
    }
}

/// Escape the characters that would break a Markdown table cell (GitHub honours `\|` inside
/// code spans in tables too).
fn md_escape(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::analytic::Work;
    use ctxcost_core::record::{Environment, Memory, Rates, Tool, SCHEMA_VERSION};
    use ctxcost_core::{ModelShape, Phase, Precision};

    fn env(host: &str) -> Environment {
        Environment { hostname: host.into(), os: "linux".into(), cpu: "Test CPU".into(), cpu_cores: 2, host_memory_bytes: 1 << 30, ..Default::default() }
    }

    /// Deterministic noisy samples around `center` (+-5%).
    fn samples(center: f64, n: usize, seed: u64) -> Vec<f64> {
        (0..n).map(|i| center * (1.0 + 0.05 * ((splitmix64(seed * 1000 + i as u64) % 2001) as f64 / 1000.0 - 1.0))).collect()
    }

    fn record(engine: &str, context: usize, host: &str, samples_ms: Vec<f64>) -> Record {
        let case = Case {
            engine: engine.into(),
            method: ctxcost_core::Method::legacy_from_id(engine),
            shape: ModelShape::tiny(),
            phase: Phase::Decode,
            context,
            batch: 4,
            query_len: 1,
            precision: Precision::F32,
            seed: 42,
            kernel: Default::default(),
        };
        Record {
            schema_version: SCHEMA_VERSION,
            tool: Tool::default(),
            env: env(host),
            key: case.key(),
            case,
            engine: engine.into(),
            status: Status::Ok,
            reason: None,
            samples_ms,
            components_ms: Default::default(),
            timer: "monotonic-clock".into(),
            warmup_runs: 1,
            stats: None,
            stop_rule: None,
            work: Work::default(),
            rates: Rates::default(),
            memory: Memory::default(),
            verification: None,
            endpoint: None,
            started_at: String::new(),
            finished_at: String::new(),
        }
    }

    fn run(scale_dsa: f64, seed: u64, host: &str) -> Vec<Record> {
        let mut out = Vec::new();
        for (i, l) in [1024, 2048, 4096].into_iter().enumerate() {
            let s = seed * 10 + i as u64;
            out.push(record("dense-cpu", l, host, samples(l as f64 / 100.0, 30, s)));
            out.push(record("dsa-cpu", l, host, samples(5.0 * scale_dsa, 30, s + 5)));
        }
        out
    }

    #[test]
    fn identical_sets_are_unchanged() {
        let a = run(1.0, 1, "h");
        let cmp = compare(&a, &a, &CompareOptions::default());
        assert_eq!(cmp.counts.compared, 6);
        assert_eq!(cmp.counts.unchanged, 6);
        assert!(!cmp.has_regression());
        assert!(cmp.cases.iter().all(|c| c.ratio == 1.0 && c.ci_lo <= 1.0 && c.ci_hi >= 1.0));
        assert!(cmp.warnings.is_empty() && cmp.one_sided.is_empty() && cmp.not_ok.is_empty());
    }

    #[test]
    fn noisy_rerun_is_unchanged_and_2x_slowdown_regresses() {
        let a = run(1.0, 1, "h");
        let b = run(1.0, 2, "h");
        let cmp = compare(&a, &b, &CompareOptions::default());
        assert_eq!(cmp.counts.unchanged, 6, "{}", cmp.to_terminal());

        let slow = run(2.0, 2, "h");
        let cmp = compare(&a, &slow, &CompareOptions::default());
        assert!(cmp.has_regression());
        assert_eq!(cmp.counts.regressed, 3);
        assert_eq!(cmp.counts.unchanged, 3);
        for c in &cmp.cases {
            let want = if c.case.engine == "dsa-cpu" { Verdict::Regressed } else { Verdict::Unchanged };
            assert_eq!(c.verdict, want, "{}", c.key);
        }
        // Regressions are listed first.
        assert_eq!(cmp.cases[0].verdict, Verdict::Regressed);
        assert!((cmp.cases[0].ratio - 2.0).abs() < 0.15);

        // The reverse direction is an improvement.
        let cmp = compare(&slow, &a, &CompareOptions::default());
        assert_eq!(cmp.counts.improved, 3);
        assert!(!cmp.has_regression());
    }

    #[test]
    fn verdict_needs_the_whole_ci_beyond_the_threshold() {
        let ci = |lo, hi| RatioCi { ratio: (lo + hi) / 2.0, lo, hi };
        assert_eq!(verdict(&ci(1.06, 1.2), 0.05), Verdict::Regressed);
        assert_eq!(verdict(&ci(1.04, 1.2), 0.05), Verdict::Unchanged);
        assert_eq!(verdict(&ci(0.80, 0.94), 0.05), Verdict::Improved);
        assert_eq!(verdict(&ci(0.80, 0.96), 0.05), Verdict::Unchanged);
        assert_eq!(verdict(&ci(1.04, 1.2), 0.0), Verdict::Regressed);
    }

    #[test]
    fn unpaired_ci_handles_different_lengths_and_ignores_order() {
        let base = samples(10.0, 20, 7);
        let cur = samples(12.0, 33, 8);
        let ci = unpaired_ratio_ci(&cur, &base).unwrap();
        assert!(ci.lo < ci.ratio && ci.ratio < ci.hi, "{ci:?}");
        assert!((ci.ratio - 1.2).abs() < 0.1);
        // Equal lengths are not paired: sorting one side (which would tie the pairs) does not
        // change the CI.
        let mut sorted_cur = samples(12.0, 20, 8);
        let unsorted = unpaired_ratio_ci(&sorted_cur, &base).unwrap();
        sorted_cur.sort_by(|a, b| a.total_cmp(b));
        let sorted = unpaired_ratio_ci(&sorted_cur, &base).unwrap();
        assert_eq!(unsorted.ratio, sorted.ratio);
        assert!(((unsorted.hi - unsorted.lo) - (sorted.hi - sorted.lo)).abs() / (unsorted.hi - unsorted.lo) < 0.5);
        // Deterministic.
        assert_eq!(unpaired_ratio_ci(&cur, &base), unpaired_ratio_ci(&cur, &base));
        assert!(unpaired_ratio_ci(&[], &base).is_none());
        assert!(unpaired_ratio_ci(&[f64::NAN], &base).is_none());
    }

    #[test]
    fn one_sided_and_not_ok_are_listed() {
        let mut a = run(1.0, 1, "h");
        let mut b = run(1.0, 2, "h");
        a.push(record("dense-cpu", 8192, "h", samples(80.0, 10, 3)));
        b.push(record("dsa-cpu", 8192, "h", samples(5.0, 10, 4)));
        // Skipped in both: listed as not ok, not compared.
        let mut skipped = record("dense-cpu", 16384, "h", vec![]);
        skipped.status = Status::Skipped;
        skipped.reason = Some("too big".into());
        a.push(skipped.clone());
        b.push(skipped);
        // Ok in the baseline, failed now: broken.
        let i = b.iter().position(|r| r.case.engine == "dsa-cpu" && r.case.context == 1024).unwrap();
        b[i].status = Status::Failed;
        b[i].reason = Some("verification failed".into());
        b[i].samples_ms.clear();

        let cmp = compare(&a, &b, &CompareOptions::default());
        assert_eq!(cmp.counts.only_baseline, 1);
        assert_eq!(cmp.counts.only_current, 1);
        assert_eq!(cmp.one_sided[0].key, a[6].key);
        assert_eq!(cmp.counts.not_ok, 3);
        assert_eq!(cmp.counts.broken, 1);
        assert_eq!(cmp.counts.compared, 6);
        assert!(cmp.has_regression());
        assert_eq!(cmp.missing_from_current().count(), 1);
        let text = cmp.to_terminal();
        assert!(text.contains("broken") && text.contains("verification failed") && text.contains("too big"), "{text}");
        let md = cmp.to_markdown();
        assert!(md.contains("| baseline | `dense-cpu\\|tiny\\|decode\\|L=8192\\|B=4\\|q=1\\|f32\\|k=64` | ok | Test CPU x2 (h) |"), "{md}");
    }

    #[test]
    fn machines_are_matched_and_mismatch_warned() {
        let a = run(1.0, 1, "alpha");
        let b = run(1.0, 2, "beta");
        let cmp = compare(&a, &b, &CompareOptions::default());
        assert_eq!(cmp.counts.compared, 6);
        assert!(cmp.cases.iter().all(|c| c.machine_mismatch));
        assert_eq!(cmp.warnings.len(), 1);
        assert!(cmp.warnings[0].contains("alpha") && cmp.warnings[0].contains("beta"));

        let strict = compare(&a, &b, &CompareOptions { strict_machine: true, ..Default::default() });
        assert_eq!(strict.counts.compared, 0);
        assert_eq!(strict.counts.only_baseline, 6);
        assert_eq!(strict.counts.only_current, 6);

        // Two machines on each side: each pairs with its own.
        let mut both_a = run(1.0, 1, "alpha");
        both_a.extend(run(2.0, 3, "beta"));
        let mut both_b = run(1.0, 2, "alpha");
        both_b.extend(run(2.0, 4, "beta"));
        let cmp = compare(&both_a, &both_b, &CompareOptions::default());
        assert_eq!(cmp.counts.compared, 12);
        assert_eq!(cmp.counts.unchanged, 12);
        assert!(cmp.warnings.is_empty());
    }

    #[test]
    fn repeated_runs_are_pooled() {
        let mut a = run(1.0, 1, "h");
        a.extend(run(1.0, 5, "h"));
        let b = run(1.0, 2, "h");
        let cmp = compare(&a, &b, &CompareOptions::default());
        assert_eq!(cmp.counts.compared, 6);
        assert!(cmp.cases.iter().all(|c| c.baseline.runs == 2 && c.baseline.n == 60 && c.current.n == 30));
        assert!(cmp.warnings.iter().any(|w| w.contains("pooled")));
    }

    #[test]
    fn renderers_carry_the_verdicts() {
        let a = run(1.0, 1, "h");
        let slow = run(2.0, 2, "h");
        let cmp = compare(&a, &slow, &CompareOptions::default());
        let md = cmp.to_markdown();
        assert!(md.contains("## ctxcost compare: regression"), "{md}");
        assert!(md.contains("| **regressed** | dsa-cpu |"), "{md}");
        assert!(md.contains("|---|---|---|---|---:|---:|---:|---|---:|---:|---:|---|---:|"), "{md}");
        let json: serde_json::Value = serde_json::from_str(&cmp.to_json()).unwrap();
        assert_eq!(json["counts"]["regressed"], 3);
        assert_eq!(json["cases"][0]["verdict"], "regressed");
        assert_eq!(json["cases"][0]["case"]["engine"], "dsa-cpu");
        let text = cmp.to_terminal();
        assert!(text.lines().last().unwrap().starts_with("REGRESSED: 6 compared, 3 regressed"), "{text}");
        // A broken case renders NaN as null / "-".
        let mut b = a.clone();
        b[0].status = Status::Failed;
        let cmp = compare(&a, &b, &CompareOptions::default());
        let json: serde_json::Value = serde_json::from_str(&cmp.to_json()).unwrap();
        assert!(json["cases"][0]["ratio"].is_null());
        assert!(cmp.to_terminal().contains("broken"));
    }
}
