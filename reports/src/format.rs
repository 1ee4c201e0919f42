//! Formatters of the reports crate, one per unit, at the bottom of the crate so that every
//! file may use them.

use ctxcost_core::stats::RatioCi;

/// Format a token count: `1K`, `3.4K`, `128K`, `1.5M`, `700`.
pub fn fmt_tokens(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let k = x / 1024.0;
    if k >= 1024.0 {
        format!("{}M", format!("{:.3}", k / 1024.0).trim_end_matches('0').trim_end_matches('.'))
    } else if k >= 100.0 || (k >= 1.0 && (k - k.round()).abs() < 0.05) {
        format!("{:.0}K", k)
    } else if k >= 1.0 {
        format!("{:.1}K", k)
    } else {
        format!("{:.0}", x)
    }
}

/// A list of contexts: `4K, 16K`.
pub fn fmt_contexts(cs: &[usize]) -> String {
    cs.iter().map(|c| fmt_tokens(*c as f64)).collect::<Vec<_>>().join(", ")
}

/// A ratio with its 95% CI at `decimals` places: `0.250 [0.240, 0.260]`.
pub fn fmt_ratio_ci(r: &RatioCi, decimals: usize) -> String {
    format!("{:.decimals$} [{:.decimals$}, {:.decimals$}]", r.ratio, r.lo, r.hi)
}
