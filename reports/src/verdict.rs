//! The words of the report, answering "at which context lengths does sparse attention cost at
//! most half of dense, here, and how sure are we?", worded only as far as the evidence goes
//! ("holds", "does not hold", "not measured"):
//!
//! - [`headline`]: one short line per phase, on the fastest verified engines, naming them;
//! - the first-screen warnings ([`crate::analysis::Analysis::warnings`]);
//! - [`series_sentence`]: the long sentence of a series (CI caveats, break-even, whole-model
//!   and per-request ratios, the roofline bound and DeepSeek's Fig. 3 at the same positions),
//!   shown below the verdict table.

use ctxcost_core::Phase;

use crate::format::{fmt_ratio_ci, fmt_tokens};
use crate::analysis::{crossing, Analysis, Crossing, Pairing, Series};
use crate::endpoint::EndpointAnalysis;
use crate::inventory::Inventory;
use crate::reference::Fig3;

/// Where DeepSeek's own Fig. 3 marginal ratio crosses a threshold for a phase.
pub fn fig3_crossing(fig3: &Fig3, phase: Phase, t: f64) -> Crossing {
    let pts: Vec<(usize, f64)> =
        fig3.rows.iter().filter(|r| r.position > 0.0).filter_map(|r| fig3.ratio_at(phase, r.position).map(|v| (r.position as usize, v))).collect();
    let xs: Vec<usize> = pts.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    crossing(&xs, &ys, t)
}

/// Below this many samples per engine a bootstrap CI is flagged as rough.
pub const MIN_SAMPLES_FOR_CI: usize = 5;

/// The question every report answers first.
pub const QUESTION: &str = "At which context lengths does sparse attention (DSA) cost at most half of dense attention, here, and how sure are we?";

/// What the headline ratio is.
pub const HEADLINE_BASIS: &str =
    "sparse/dense attention-only marginal cost per token (the cost of a token at that position, as in DeepSeek's Fig. 3), median ratio with its 95% bootstrap CI (paired where the two engines were sampled in lockstep)";

/// The measured contexts of a series: `4K` or `4K-128K`.
fn context_span(s: &Series) -> String {
    match (s.points.first(), s.points.last()) {
        (Some(f), Some(l)) if f.context == l.context => fmt_tokens(f.context as f64),
        (Some(f), Some(l)) => format!("{}-{}", fmt_tokens(f.context as f64), fmt_tokens(l.context as f64)),
        _ => "none".into(),
    }
}

/// Where the claim holds for a series, in a few words: `holds from about 3.4K [3.1K, 3.6K] up
/// to 8K`, `holds at every measured context (4K-128K)`, `does not hold (4K-16K; lowest ratio
/// 0.62 at 16K)`, `not measured`.
pub fn claim_clause(s: &Series) -> String {
    let Some(last) = s.points.last() else { return "not measured".into() };
    let half = &s.break_evens.attn_half;
    match half.estimate {
        Crossing::BelowRange { .. } => format!("holds at every measured context ({})", context_span(s)),
        Crossing::At(x) => format!("holds from about {} [{}, {}] up to {}", fmt_tokens(x), half.lo.text(), half.hi.text(), fmt_tokens(last.context as f64)),
        Crossing::AboveRange { .. } | Crossing::NoData => {
            let best = s.points.iter().min_by(|a, b| a.attn_ratio.ratio.total_cmp(&b.attn_ratio.ratio)).unwrap_or(last);
            format!("does not hold ({}; lowest ratio {:.2} at {})", context_span(s), best.attn_ratio.ratio, fmt_tokens(best.context as f64))
        }
    }
}

/// One headline line for a phase: the claim on the fastest verified engines, each series of the
/// phase with its engines named. `None` when the records hold no series of the phase.
pub fn headline(a: &Analysis, phase: Phase) -> Option<String> {
    let ser: Vec<&Series> = a.series.iter().filter(|s| s.key.phase == phase).collect();
    if ser.is_empty() {
        return None;
    }
    let measured: Vec<&&Series> = ser.iter().filter(|s| !s.points.is_empty()).collect();
    if measured.is_empty() {
        return Some(format!("{phase}: not measured (no context has a usable record of both methods)."));
    }
    let parts: Vec<String> =
        measured.iter().map(|s| format!("{}: {}; {}", s.key.label(a.mixed_env), claim_clause(s), s.engines_text())).collect();
    Some(format!("{phase}: {}.", parts.join(" | ")))
}

/// Whether a pair series compares exactly the records the verdict compares.
pub fn same_as_verdict(a: &Analysis, s: &Series) -> bool {
    let Some(best) = a.series.iter().find(|b| b.key == s.key) else { return false };
    best.points.len() == s.points.len()
        && best.points.iter().zip(&s.points).all(|(x, y)| x.dense_record == y.dense_record && x.dsa_record == y.dsa_record)
}

/// One verdict sentence for a series.
pub fn series_sentence(a: &Analysis, s: &Series, fig3: &Fig3) -> String {
    let label = s.key.label(a.mixed_env);
    let head = match &s.pairing {
        Pairing::Best => format!("{} ({label}, {})", s.key.phase, s.engines_text()),
        Pairing::Pair(p) => format!("{} ({label}, pair {})", s.key.phase, p.label()),
    };
    let (Some(first), Some(last)) = (s.points.first(), s.points.last()) else {
        let why = s.unpaired.first().map(|u| format!(": {}", u.why)).unwrap_or_default();
        return format!("{head}: not measured, no context has both engines measured{why}.");
    };
    let range = if first.context == last.context {
        fmt_tokens(first.context as f64)
    } else {
        format!("{}-{}", fmt_tokens(first.context as f64), fmt_tokens(last.context as f64))
    };
    let be = &s.break_evens;
    let half = &be.attn_half;
    let ctx_list = |f: &dyn Fn(&crate::analysis::Point) -> bool| -> Vec<String> {
        s.points.iter().filter(|p| f(p)).map(|p| fmt_tokens(p.context as f64)).collect()
    };
    let mut out = String::new();
    match half.estimate {
        Crossing::BelowRange { .. } => {
            out.push_str(&format!("{head}: holds at every measured context ({range})"));
        }
        Crossing::At(x) => {
            out.push_str(&format!(
                "{head}: holds from about {} [{}, {}] up to {}, the largest measured context",
                fmt_tokens(x),
                half.lo.text(),
                half.hi.text(),
                fmt_tokens(last.context as f64)
            ));
            let earlier = ctx_list(&|p| (p.context as f64) < x && p.attn_ratio.ratio <= 0.5);
            if !earlier.is_empty() {
                out.push_str(&format!(" (below that it also holds at {}, but not at every context)", earlier.join(", ")));
            }
        }
        Crossing::AboveRange { .. } | Crossing::NoData => {
            let best = s.points.iter().min_by(|a, b| a.attn_ratio.ratio.total_cmp(&b.attn_ratio.ratio)).unwrap();
            out.push_str(&format!(
                "{head}: does not hold at any measured context ({range}); lowest ratio {} at {}",
                fmt_ratio_ci(&best.attn_ratio, 2),
                fmt_tokens(best.context as f64)
            ));
        }
    }
    out.push_str(&format!(
        "; ratio at {}: {} (CI {}); roofline bound there: {:.2}",
        fmt_tokens(last.context as f64),
        fmt_ratio_ci(&last.attn_ratio, 2),
        if last.lockstep { "paired" } else { "unpaired: not sampled in lockstep" },
        last.roofline.ratio
    ));
    let sure = ctx_list(&|p| p.attn_ratio.hi <= 0.5);
    if sure.is_empty() {
        out.push_str("; at no measured context is the whole 95% CI at or below 0.5");
    } else {
        out.push_str(&format!("; whole 95% CI at or below 0.5 at {}", sure.join(", ")));
    }
    let few: Vec<String> = s
        .points
        .iter()
        .filter(|p| p.dense.n_samples.min(p.dsa.n_samples) < MIN_SAMPLES_FOR_CI)
        .map(|p| format!("{} (n={})", fmt_tokens(p.context as f64), p.dense.n_samples.min(p.dsa.n_samples)))
        .collect();
    if !few.is_empty() {
        out.push_str(&format!("; fewer than {MIN_SAMPLES_FOR_CI} samples at {}: read those CIs as rough", few.join(", ")));
    }
    let straddle = ctx_list(&|p| p.verdict.straddles_half);
    if !straddle.is_empty() {
        out.push_str(&format!("; the CI straddles 0.5 at {}", straddle.join(", ")));
    }
    out.push_str(&match be.attn_one.estimate {
        Crossing::BelowRange { .. } => "; cheaper than dense at every measured context".to_string(),
        Crossing::At(x) => format!("; break-even with dense at {} [{}, {}]", fmt_tokens(x), be.attn_one.lo.text(), be.attn_one.hi.text()),
        Crossing::AboveRange { .. } => "; costs as much as dense or more at the largest measured context".to_string(),
        Crossing::NoData => String::new(),
    });
    let rest = match &s.other.source {
        crate::cost::OtherSource::Rest(r) => format!("rest of the model measured by {}, {} EP {}", r.engine, r.precision, r.ep),
        crate::cost::OtherSource::Measured { engine, .. } => format!("rest of the model measured by {engine}"),
        crate::cost::OtherSource::Analytic { .. } => "rest of the model assumed".to_string(),
    };
    out.push_str(&format!(
        "; per request of {}: {}; whole model ({rest}): {}",
        fmt_tokens(last.context as f64),
        fmt_ratio_ci(&last.attn_request_ratio, 2),
        fmt_ratio_ci(&last.model_ratio, 2)
    ));
    let fig_half = fig3_crossing(fig3, s.key.phase, 0.5);
    match last.fig3_ratio {
        Some(f) => out.push_str(&format!(
            "; DeepSeek Fig. 3 at {}: {:.2} (at most half from about {})",
            fmt_tokens(last.context as f64),
            f,
            fig_half.text()
        )),
        None => out.push_str(&format!("; beyond DeepSeek Fig. 3's 0-128K range (there at most half from about {})", fig_half.text())),
    }
    if (last.context as f64) < fig3.max_position() {
        out.push_str(&format!("; not measured above {}", fmt_tokens(last.context as f64)));
    }
    out.push('.');
    out
}

/// Caveats that change how far the verdict carries.
pub fn caveats(a: &Analysis, inv: &Inventory) -> Vec<String> {
    let mut out = Vec::new();
    let mut shapes: Vec<(&str, usize)> = a.series.iter().map(|s| (s.key.shape.as_str(), s.top_k)).collect();
    shapes.sort();
    shapes.dedup();
    for (shape, k) in shapes {
        if shape != "deepseek-v3.2-exp" {
            out.push(format!(
                "Measured on the `{shape}` shape (top-k {k}, not DeepSeek-V3.2-Exp's 2048): break-even contexts scale with top-k, so these contexts are not DeepSeek-V3.2's."
            ));
        }
    }
    // Kernel records only: an endpoint record's machine is the client, not the server.
    if inv.kernel_records > 0 && inv.kernel_gpu_records == 0 {
        out.push("Measured on CPU only: the ratios describe this CPU implementation, not a GPU serving system.".into());
    }
    if a.series.iter().any(|s| matches!(s.other.source, crate::cost::OtherSource::Analytic { .. })) {
        out.push("Whole-model figures add an assumed (analytic) cost for the rest of the model; the attention-only ratios are the measured ones.".into());
    }
    if a.mixed_env {
        out.push(format!("Records come from {} machines; each series is labelled with its machine and never paired across machines.", inv.machines.len()));
    }
    out
}

/// The text when the records hold no dense/DSA pair.
pub const NOT_MEASURED: &str = "not measured: the records hold no point with a usable record of both methods (a dense and a DSA engine at the same point).";

/// The verdict as printed at the end of `ctxcost run` and by `ctxcost report`: the headlines,
/// the warnings, then the long sentences. Reads the analyses the report holds (kernel and
/// endpoint) and what was read, never the records.
pub fn lines(a: &Analysis, e: &EndpointAnalysis, inv: &Inventory, fig3: &Fig3) -> Vec<String> {
    // Endpoint records only: the endpoint verdict, no DSA question.
    if e.only {
        let mut out = vec!["endpoint verdict:".to_string()];
        out.extend(crate::endpoint::verdict_lines(e).into_iter().map(|l| format!("  - {l}")));
        out.extend(crate::endpoint::cache_warnings(e).into_iter().map(|w| format!("  note: {w}")));
        return out;
    }
    let mut out = vec![format!("verdict: {QUESTION}")];
    for phase in [Phase::Prefill, Phase::Decode] {
        if let Some(h) = headline(a, phase) {
            out.push(format!("  {h}"));
        }
    }
    if a.series.is_empty() {
        out.push(format!("  {NOT_MEASURED}"));
    }
    for w in &a.warnings {
        out.push(format!("  warning: {w}"));
    }
    for s in crate::endpoint::ab_sentences(e) {
        out.push(format!("  - {s}"));
    }
    for w in crate::endpoint::cache_warnings(e) {
        out.push(format!("  note: {w}"));
    }
    for c in caveats(a, inv) {
        out.push(format!("  note: {c}"));
    }
    if !a.series.is_empty() {
        out.push(format!("  details ({HEADLINE_BASIS}):"));
    }
    for s in a.series.iter().chain(a.pairs.iter().filter(|s| !same_as_verdict(a, s))) {
        out.push(format!("  - {}", series_sentence(a, s, fig3)));
    }
    out
}
