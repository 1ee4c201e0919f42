//! Measuring one point in a child process (`ctxcost __point`, fed a [`Job`] on stdin).
//!
//! A point is the cases of all engines at one shape/phase/context/batch/precision. For each
//! case: support check (a `No` is a `skipped` record), untimed prepare (device OOM is a
//! `skipped: out of memory` record), verification against the f64 reference (a mismatch is
//! a `failed` record and no timing), warm-up. Then the surviving cases are sampled in
//! lockstep, A B A B, until every median's 95% CI half-width is under the target (after the
//! minimum sample count) or a cap is hit, so paired ratios survive machine drift.
//! Peak host memory per case: the RSS high-water mark (reset before each case) over the
//! process's RSS before any engine was made.
//! Records go to stdout, one JSON line each; the parent writes them to the record file.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use ctxcost_core::record::{Environment, Rates, Record, Status, Tool};
use ctxcost_core::stats::summarize;
use ctxcost_core::{Case, Inputs};
use ctxcost_engines::external::ExternalSpec;
use ctxcost_engines::{check, make_engine_with, Engine, EngineError, Support};
use ctxcost_workloads::Sampling;

use crate::{envinfo, memory};

/// What the parent sends a child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub cases: Vec<Case>,
    pub sampling: Sampling,
    pub verify: bool,
    pub tensors: Option<String>,
    pub tool: Tool,
    pub env: Environment,
    /// Engines plugged in with `--external` (the table's own need no spec).
    #[serde(default)]
    pub external: Vec<ExternalSpec>,
}

/// Slowdowns planted for tests: `CTXCOST_TEST_SLOWDOWN=engine=factor[,engine=factor]`.
fn planted_slowdowns() -> BTreeMap<String, f64> {
    std::env::var("CTXCOST_TEST_SLOWDOWN")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| v.trim().parse::<f64>().ok().filter(|f| *f >= 1.0).map(|f| (k.trim().to_string(), f)))
        .collect()
}

/// A record for a case with nothing measured yet (status `ok` until told otherwise).
pub fn base_record(case: &Case, job: &Job, engine_id: &str, timer: &str) -> Record {
    Record::new(case, job.tool.clone(), job.env.clone(), engine_id, timer, envinfo::utc_now())
}

fn emit(mut r: Record) -> Result<()> {
    r.finished_at = envinfo::utc_now();
    let mut line = serde_json::to_string(&r)?;
    line.push('\n');
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn finish_with(mut r: Record, status: Status, reason: String) -> Result<()> {
    r.status = status;
    r.reason = Some(reason);
    emit(r)
}

struct Active {
    engine: Box<dyn Engine>,
    record: Record,
    slowdown: f64,
}

/// Entry point of `ctxcost __point`.
pub fn child_main() -> Result<ExitCode> {
    // Die with the parent: a killed run must not leave measuring children behind.
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets a signal to deliver to this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    // A worker of an external engine that dies closes its stdin: writing to it must be an
    // error for that case (a `failed` record), not SIGPIPE ending the whole point (`main`
    // restores SIGPIPE's default for the verbs whose output may be piped into `head`).
    // SAFETY: setting a signal's disposition before this process starts any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text).context("reading the job")?;
    let job: Job = serde_json::from_str(&text).context("parsing the job")?;
    let loaded = match &job.tensors {
        Some(p) => Some(Arc::new(ctxcost_workloads::tensors::load(p)?)),
        None => None,
    };
    let slow = planted_slowdowns();
    // Peak host memory of a case is measured against the process's RSS before any engine
    // existed: it includes what earlier cases of the same point still hold (they are
    // sampled together), and freed memory the allocator reuses is not counted twice.
    let rss_start = memory::rss_bytes().unwrap_or(0);
    let mut active: Vec<Active> = Vec::new();
    for case in &job.cases {
        let inputs = Inputs { seed: case.seed, loaded: loaded.clone() };
        let mut engine = match make_engine_with(&case.engine, &job.external) {
            Ok(e) => e,
            Err(e) => {
                finish_with(base_record(case, &job, &case.engine, "none"), Status::Failed, e)?;
                continue;
            }
        };
        let mut rec = base_record(case, &job, engine.id(), engine.timer());
        if let Support::No(why) = engine.supports(case) {
            finish_with(rec, Status::Skipped, why)?;
            continue;
        }
        if let Err(e) = case.validate() {
            finish_with(rec, Status::Skipped, e.to_string())?;
            continue;
        }
        memory::reset_peak();
        match engine.prepare(case, &inputs) {
            Ok(()) => {}
            Err(EngineError::Unsupported(why)) => {
                finish_with(rec, Status::Skipped, why)?;
                continue;
            }
            Err(EngineError::OutOfMemory(why)) => {
                engine.release();
                finish_with(rec, Status::Skipped, format!("out of memory: {why}"))?;
                continue;
            }
            Err(e) => {
                engine.release();
                finish_with(rec, Status::Failed, format!("prepare: {e}"))?;
                continue;
            }
        }
        if job.verify {
            let verdict = engine.output().map(|out| check::verify(case, &inputs, &out, &engine.verify_rows(case)));
            match verdict {
                Ok(v) => {
                    let passed = v.passed;
                    let detail = verification_failure(&v);
                    rec.verification = Some(v);
                    if !passed {
                        engine.release();
                        finish_with(rec, Status::Failed, detail)?;
                        continue;
                    }
                }
                Err(e) => {
                    engine.release();
                    finish_with(rec, Status::Failed, format!("output for verification: {e}"))?;
                    continue;
                }
            }
        }
        let mut warm_err = None;
        for _ in 0..job.sampling.warmup {
            if let Err(e) = engine.run() {
                warm_err = Some(e);
                break;
            }
        }
        if let Some(e) = warm_err {
            engine.release();
            let status = if matches!(e, EngineError::OutOfMemory(_)) { Status::Skipped } else { Status::Failed };
            finish_with(rec, status, format!("warm-up: {e}"))?;
            continue;
        }
        rec.warmup_runs = job.sampling.warmup;
        let peak = memory::peak_rss_bytes().unwrap_or(0);
        rec.memory.peak_host_bytes = Some(peak.saturating_sub(rss_start));
        if let Some(d) = engine.device_memory() {
            rec.memory.peak_device_bytes = Some(d.peak_allocated);
            rec.memory.device_free_before = d.free_before;
            rec.memory.device_free_after = d.free_after;
        }
        let slowdown = slow.get(engine.id()).copied().unwrap_or(1.0);
        active.push(Active { engine, record: rec, slowdown });
    }
    sample(&mut active, &job.sampling)?;
    for mut a in active {
        a.engine.release();
        emit(a.record)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Why a verification failed, in words that name the actual cause.
pub fn verification_failure(v: &ctxcost_core::record::Verification) -> String {
    let sel = v.selection.as_ref().filter(|s| !s.passed).map(|s| format!("; {} top-k rows differ ({} entries not explained by near-ties)", s.rows_differing, s.unexplained)).unwrap_or_default();
    let o = &v.output;
    if o.compared == 0 {
        return format!("verification failed ({}): the engine returned no comparable output (missing rows or the wrong size){sel}", v.method);
    }
    if o.non_finite > 0 {
        return format!("verification failed ({}): {} of {} output values are NaN or infinite{sel}", v.method, o.non_finite, o.compared);
    }
    if o.passed {
        return format!("verification failed ({}): the output matches, the top-k selection does not{sel}", v.method);
    }
    format!(
        "verification failed ({}): norm-relative error {:.3e}, max abs error {:.3e}, {} of {} elements over tolerance{sel}",
        v.method, o.norm_rel_err, o.max_abs_err, o.mismatches, o.compared
    )
}

/// Lockstep sampling of the active cases until the stopping rule is met.
fn sample(active: &mut Vec<Active>, rule: &Sampling) -> Result<()> {
    if active.is_empty() {
        return Ok(());
    }
    let start = Instant::now();
    let mut n = 0usize;
    let mut next_check = rule.min_samples;
    let stop = loop {
        let mut i = 0;
        while i < active.len() {
            let a = &mut active[i];
            match a.engine.run() {
                Ok(t) => {
                    let mut total = t.total_ms;
                    if a.slowdown > 1.0 {
                        let extra = total * (a.slowdown - 1.0);
                        std::thread::sleep(Duration::from_secs_f64(extra / 1e3));
                        total += extra;
                    }
                    a.record.samples_ms.push(total);
                    for (name, ms) in t.components {
                        a.record.components_ms.entry(name.to_string()).or_default().push(ms);
                    }
                    i += 1;
                }
                Err(e) => {
                    let mut gone = active.remove(i);
                    gone.engine.release();
                    let status = if matches!(e, EngineError::OutOfMemory(_)) { Status::Skipped } else { Status::Failed };
                    let n = gone.record.samples_ms.len();
                    finish_with(gone.record, status, format!("run failed after {n} samples: {e}"))?;
                }
            }
        }
        if active.is_empty() {
            return Ok(());
        }
        n += 1;
        if n >= rule.max_samples {
            break "max-samples";
        }
        if start.elapsed().as_secs_f64() >= rule.max_seconds && n >= 3.min(rule.min_samples) {
            break "max-time";
        }
        if n >= next_check {
            // The bootstrap costs O(n log n) per resample: check at growing intervals.
            next_check = n + (n / 8).max(1);
            if active.iter().all(|a| summarize(&a.record.samples_ms).rel_half_width <= rule.target_rel_ci) {
                break "ci-target";
            }
        }
    };
    for a in active.iter_mut() {
        let s = summarize(&a.record.samples_ms);
        let secs = s.median / 1e3;
        a.record.rates = Rates { tflops: a.record.work.flops / secs / 1e12, tbps: a.record.work.bytes / secs / 1e12 };
        a.record.stats = Some(s);
        a.record.stop_rule = Some(stop.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::verification_failure;
    use ctxcost_core::record::Verification;
    use ctxcost_core::verify::{compare, Tolerance};
    use ctxcost_core::Precision;

    #[test]
    fn non_finite_outputs_are_named_not_reported_as_zero_error() {
        let tol = Tolerance::for_precision(Precision::F32);
        let got = [1.0f32, f32::NAN, f32::INFINITY, 0.5];
        let want = [1.0f64, 2.0, 3.0, 0.5];
        let c = compare(&got, &want, tol);
        assert!(!c.passed);
        let v = Verification { method: "full".into(), output: c, selection: None, passed: false };
        let text = verification_failure(&v);
        assert!(text.contains("2 of 4 output values are NaN or infinite"), "{text}");
        let wrong = compare(&[5.0f32, 2.0], &[1.0, 2.0], tol);
        let text = verification_failure(&Verification { method: "full".into(), output: wrong, selection: None, passed: false });
        assert!(text.contains("1 of 2 elements over tolerance"), "{text}");
    }
}
