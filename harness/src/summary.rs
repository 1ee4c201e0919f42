//! The short table printed at the end of a run: per point, dense and DSA medians and their
//! ratio with its 95% CI (from the paired, interleaved samples), then the measured growth
//! exponent of time with context per engine and phase.

use std::collections::BTreeMap;

use ctxcost_core::record::{Record, Status};
use ctxcost_core::stats::{loglog_slope, ratio_ci};
use ctxcost_core::units::format_tokens;

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.4}")
    }
}

/// Render the summary of a set of records.
pub fn render(records: &[Record]) -> String {
    let mut out = String::new();
    let ok: Vec<&Record> = records.iter().filter(|r| r.status == Status::Ok).collect();
    // point key -> (dense, dsa)
    let mut points: BTreeMap<(String, String, usize, usize, String), (Option<&Record>, Option<&Record>)> = BTreeMap::new();
    for r in ok.iter().filter(|r| !r.case.is_rest()) {
        let c = &r.case;
        let k = (c.phase.to_string(), c.precision.to_string(), c.batch, c.context, c.shape.name.clone());
        let e = points.entry(k).or_default();
        if c.is_sparse() {
            e.1 = Some(r);
        } else {
            e.0 = Some(r);
        }
    }
    out.push_str(&format!(
        "{:<8} {:<5} {:>3} {:>7} {:>12} {:>12} {:>8}  {}\n",
        "phase", "prec", "B", "context", "dense ms", "dsa ms", "dsa/dense", "95% CI"
    ));
    for ((phase, prec, b, ctx, _shape), (d, s)) in &points {
        let dm = d.and_then(|r| r.median_ms());
        let sm = s.and_then(|r| r.median_ms());
        let ratio = match (d, s) {
            (Some(d), Some(s)) => ratio_ci(&s.samples_ms, &d.samples_ms),
            _ => None,
        };
        out.push_str(&format!(
            "{:<8} {:<5} {:>3} {:>7} {:>12} {:>12} {:>8}  {}\n",
            phase,
            prec,
            b,
            format_tokens(*ctx),
            dm.map(fmt_ms).unwrap_or_else(|| "-".into()),
            sm.map(fmt_ms).unwrap_or_else(|| "-".into()),
            ratio.map(|r| format!("{:.3}", r.ratio)).unwrap_or_else(|| "-".into()),
            ratio.map(|r| format!("[{:.3}, {:.3}]", r.lo, r.hi)).unwrap_or_default(),
        ));
    }
    // The rest of the layer (`rest` engines): not attention, so not in the table above.
    for r in ok.iter().filter(|r| r.case.is_rest()) {
        let c = &r.case;
        out.push_str(&format!(
            "rest of the layer: {} {} {} B={} L={} EP {}: {} ms per run ({} tokens)\n",
            r.engine,
            c.phase,
            c.precision,
            c.batch,
            format_tokens(c.context),
            c.shape.ep,
            r.median_ms().map(fmt_ms).unwrap_or_else(|| "-".into()),
            c.query_tokens()
        ));
    }
    // Growth exponents: slope of log(time) on log(context), overall and past top-k.
    let mut series: BTreeMap<(String, String, String), Vec<(f64, f64, usize)>> = BTreeMap::new();
    for r in &ok {
        if let Some(m) = r.median_ms() {
            series
                .entry((r.engine.clone(), r.case.phase.to_string(), r.case.precision.to_string()))
                .or_default()
                .push((r.case.context as f64, m, r.case.shape.top_k));
        }
    }
    let mut lines = Vec::new();
    for ((engine, phase, prec), pts) in &series {
        if pts.len() < 2 {
            continue;
        }
        let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
        lines.push(format!("  {engine} {phase} {prec}: time ~ context^{:.2}", loglog_slope(&xs, &ys)));
    }
    if !lines.is_empty() {
        out.push_str("growth with context (least-squares slope of log time on log context):\n");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    let skipped = records.iter().filter(|r| r.status == Status::Skipped).count();
    let failed = records.iter().filter(|r| r.status == Status::Failed).count();
    out.push_str(&format!("{} ok, {} skipped, {} failed\n", ok.len(), skipped, failed));
    let not_ok: Vec<&Record> = records.iter().filter(|r| r.status != Status::Ok).collect();
    for r in not_ok.iter().take(20) {
        out.push_str(&format!("  {:?} {}: {}\n", r.status, r.key, r.reason.as_deref().unwrap_or("")));
    }
    if not_ok.len() > 20 {
        out.push_str(&format!("  ... and {} more (see the record file)\n", not_ok.len() - 20));
    }
    out
}
