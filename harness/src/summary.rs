//! The short table printed at the end of a run: per point, the fastest verified dense and DSA
//! engines (named) and their ratio with its 95% CI (from the paired, interleaved samples),
//! every engine's speed against the fastest of its method where a method had several, then
//! the measured growth exponent of time with context per engine and phase. Points are paired
//! by the one pairing key ([`Record::point_key`]) and listed in its order.

use std::collections::BTreeMap;

use ctxcost_core::record::{Record, Status};
use ctxcost_core::stats::{loglog_slope, ratio_ci};
use ctxcost_core::units::format_tokens;
use ctxcost_core::PointKey;

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 {
        format!("{ms:.1}")
    } else if ms >= 1.0 {
        format!("{ms:.3}")
    } else {
        format!("{ms:.4}")
    }
}

/// An engine as the summary names it: its id, with its kernel choice when one was set.
fn engine_label(r: &Record) -> String {
    if r.case.kernel.is_empty() {
        r.engine.clone()
    } else {
        format!("{}[{}]", r.engine, r.case.kernel)
    }
}

/// Whether a record may stand for its method: ok, and verified unless verification was off.
fn usable(r: &Record) -> bool {
    r.status == Status::Ok && r.median_ms().is_some() && r.verification.as_ref().map_or(true, |v| v.passed)
}

/// Render the summary of a set of records.
///
/// Per point, the ratio compares the fastest verified DSA engine with the fastest verified
/// dense engine, both named (the report does the same); where a method had several engines,
/// each one's median and its speed relative to the fastest follow.
pub fn render(records: &[Record]) -> String {
    let mut out = String::new();
    let ok: Vec<&Record> = records.iter().filter(|r| r.status == Status::Ok).collect();
    // point (the one pairing key) -> engines of each method
    let mut points: BTreeMap<PointKey, (Vec<&Record>, Vec<&Record>)> = BTreeMap::new();
    for r in records.iter().filter(|r| usable(r) && !r.case.is_rest() && r.endpoint.is_none()) {
        let e = points.entry(r.point_key()).or_default();
        if r.case.is_sparse() {
            e.1.push(r);
        } else {
            e.0.push(r);
        }
    }
    /// The fastest record of a method (the least median).
    fn best<'a>(rs: &[&'a Record]) -> Option<&'a Record> {
        let f = rs.iter().filter_map(|r| r.median_ms()).fold(f64::INFINITY, f64::min);
        rs.iter().copied().find(|r| r.median_ms() == Some(f))
    }
    if !points.is_empty() {
        out.push_str(&format!(
            "{:<8} {:<5} {:>3} {:>7} {:>10} {:<18} {:>10} {:<18} {:>9}  {}\n",
            "phase", "prec", "B", "context", "dense ms", "(fastest dense)", "dsa ms", "(fastest dsa)", "dsa/dense", "95% CI"
        ));
    }
    let mut several = Vec::new();
    for (point, (dense, dsa)) in &points {
        let (phase, prec, b, ctx) = (point.phase, point.precision, point.batch, &point.context);
        let (d, s) = (best(dense), best(dsa));
        // Paired when both were sampled in lockstep (same point of one run: equal counts).
        let ratio = match (d, s) {
            (Some(d), Some(s)) => ratio_ci(&s.samples_ms, &d.samples_ms),
            _ => None,
        };
        out.push_str(&format!(
            "{:<8} {:<5} {:>3} {:>7} {:>10} {:<18} {:>10} {:<18} {:>9}  {}\n",
            phase,
            prec,
            b,
            format_tokens(*ctx),
            d.and_then(|r| r.median_ms()).map(fmt_ms).unwrap_or_else(|| "-".into()),
            d.map(engine_label).unwrap_or_default(),
            s.and_then(|r| r.median_ms()).map(fmt_ms).unwrap_or_else(|| "-".into()),
            s.map(engine_label).unwrap_or_default(),
            ratio.map(|r| format!("{:.3}", r.ratio)).unwrap_or_else(|| "-".into()),
            ratio.map(|r| format!("[{:.3}, {:.3}]", r.lo, r.hi)).unwrap_or_default(),
        ));
        for (method, rs) in [("dense", dense), ("dsa", dsa)] {
            if rs.len() < 2 {
                continue;
            }
            let f = best(rs).and_then(|r| r.median_ms()).unwrap_or(f64::NAN);
            let mut sorted: Vec<&&Record> = rs.iter().collect();
            sorted.sort_by(|a, b| a.median_ms().partial_cmp(&b.median_ms()).unwrap_or(std::cmp::Ordering::Equal));
            let list: Vec<String> = sorted.iter().map(|r| format!("{} {} ms ({:.2})", engine_label(r), fmt_ms(r.median_ms().unwrap_or(f64::NAN)), f / r.median_ms().unwrap_or(f64::NAN))).collect();
            several.push(format!("  {phase} {prec} B={b} {} {method}: {}", format_tokens(*ctx), list.join(", ")));
        }
    }
    if !several.is_empty() {
        out.push_str("engines of one method at one point, fastest first (speed relative to the fastest):\n");
        for l in several {
            out.push_str(&l);
            out.push('\n');
        }
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
                .entry((engine_label(r), r.case.phase.to_string(), r.case.precision.to_string()))
                .or_default()
                .push((r.case.context as f64, m, r.case.shape.top_k));
        }
    }
    let mut lines = Vec::new();
    for ((engine, phase, prec), pts) in &series {
        // A slope needs two contexts (a `rest` sweep, or batches at one context, has one).
        let mut contexts: Vec<u64> = pts.iter().map(|p| p.0 as u64).collect();
        contexts.sort_unstable();
        contexts.dedup();
        if contexts.len() < 2 {
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

#[cfg(test)]
mod tests {
    use super::render;
    use ctxcost_core::record::{Environment, Record, Tool};
    use ctxcost_core::{Case, Method, ModelShape, Phase, Precision};

    fn rec(engine: &str, method: Method, ms: f64, verified: bool) -> Record {
        let case = Case {
            engine: engine.into(),
            method,
            shape: ModelShape::tiny(),
            phase: Phase::Decode,
            context: 4096,
            batch: 4,
            query_len: 1,
            precision: Precision::Bf16,
            seed: 1,
            kernel: Default::default(),
        };
        let mut r = Record::new(&case, Tool::default(), Environment::default(), engine, "t", String::new());
        r.samples_ms = vec![ms, ms * 1.01, ms * 0.99, ms];
        r.stats = Some(ctxcost_core::stats::summarize(&r.samples_ms));
        r.warmup_runs = 1;
        r.verification = Some(ctxcost_core::record::Verification { passed: verified, ..Default::default() });
        r
    }

    #[test]
    fn the_ratio_uses_the_fastest_verified_engine_of_each_method_and_names_it() {
        let records = vec![
            rec("dense-cuda", Method::Dense, 4.0, true),
            rec("cudnn-sdpa", Method::Dense, 2.0, true),
            rec("broken-fast", Method::Dense, 0.5, false),
            rec("dsa-cuda", Method::Dsa, 1.0, true),
        ];
        let text = render(&records);
        let row = text.lines().find(|l| l.starts_with("decode")).unwrap();
        assert!(row.contains("cudnn-sdpa") && row.contains("dsa-cuda") && row.contains("0.500"), "{text}");
        assert!(!row.contains("broken-fast"), "an unverified engine never stands for its method: {text}");
        assert!(text.contains("cudnn-sdpa 2.000 ms (1.00), dense-cuda 4.000 ms (0.50)"), "{text}");
    }

    #[test]
    fn rest_records_at_one_context_get_no_table_header_and_no_growth_exponent() {
        let mut records = Vec::new();
        for (batch, ms) in [(16, 2.0), (64, 2.2), (256, 2.6)] {
            let mut r = rec("rest-cuda", Method::Rest, ms, true);
            r.case.batch = batch;
            records.push(r);
        }
        let text = render(&records);
        assert!(!text.contains("growth with context") && !text.contains("NaN"), "{text}");
        assert!(!text.contains("dsa/dense"), "{text}");
        assert_eq!(text.matches("rest of the layer: rest-cuda").count(), 3, "{text}");
        // Two contexts of one engine do get an exponent.
        let mut two = vec![rec("dense-cuda", Method::Dense, 1.0, true), rec("dense-cuda", Method::Dense, 2.0, true)];
        two[1].case.context = 8192;
        let text = render(&two);
        assert!(text.contains("dense-cuda decode bf16: time ~ context^1.00"), "{text}");
    }
}
