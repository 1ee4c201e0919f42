//! `ctxcost report` must end on any input (issue 11 item 4): degenerate record sets go
//! through the whole pipeline (JSONL file -> build -> write: charts, HTML, Markdown, CSV,
//! Parquet) in a thread, and the test fails if one takes longer than [`LIMIT`].

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ctxcost_core::record::{Record, Status};
use ctxcost_reports::report::{self, ReportOptions};

/// Far above what a report of a few records takes (about a second in a debug build).
const LIMIT: Duration = Duration::from_secs(60);

fn fixture_records() -> Vec<Record> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden.jsonl");
    std::fs::read_to_string(path).unwrap().lines().filter_map(|l| Record::from_line(l.trim()).ok()).collect()
}

fn scaled(records: &[Record], f: f64) -> Vec<Record> {
    records
        .iter()
        .cloned()
        .map(|mut r| {
            r.samples_ms.iter_mut().for_each(|s| *s *= f);
            r.components_ms.values_mut().flatten().for_each(|s| *s *= f);
            r
        })
        .collect()
}

fn write_jsonl(dir: &Path, name: &str, records: &[Record]) -> PathBuf {
    let p = dir.join(format!("{name}.jsonl"));
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&p, text).unwrap();
    p
}

/// Build and write the report of `records` in a thread; fail after [`LIMIT`].
fn report_ends(name: &str, records: Vec<Record>) -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("degenerate").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = write_jsonl(&dir, name, &records);
    let out = dir.join("report");
    let (tx, rx) = mpsc::channel();
    let started = Instant::now();
    let worker_out = out.clone();
    std::thread::spawn(move || {
        let result = report::build(&[file], &ReportOptions::default()).and_then(|r| report::write(&r, &worker_out).map(|w| w.verdict_lines));
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    let lines = match rx.recv_timeout(LIMIT) {
        Ok(Ok(lines)) => lines,
        Ok(Err(e)) => panic!("{name}: report failed: {e}"),
        Err(_) => panic!("{name}: report did not finish within {LIMIT:?}"),
    };
    println!("{name}: {:.1} s", started.elapsed().as_secs_f64());
    for f in ["index.html", "REPORT.md", "summary.csv", "records.parquet"] {
        assert!(out.join(f).exists(), "{name}: {f} not written");
    }
    lines
}

#[test]
fn huge_samples() {
    let recs = fixture_records();
    report_ends("samples-1e200", scaled(&recs, 1e200 / 2.0));
    // Past the point where costs (x layers x price) overflow to infinity.
    report_ends("samples-1e307", scaled(&recs, 1e307 / 2.0));
}

#[test]
fn tiny_samples() {
    report_ends("samples-1e-300", scaled(&fixture_records(), 1e-300));
}

#[test]
fn samples_spanning_six_hundred_decades() {
    let recs = fixture_records();
    let mut mixed = scaled(&recs[..6], 1e-300);
    mixed.extend(scaled(&recs[6..], 1e300));
    report_ends("samples-mixed", mixed);
}

#[test]
fn context_one_batch_one() {
    let recs: Vec<Record> = fixture_records()
        .into_iter()
        .map(|mut r| {
            r.case.context = 1;
            r.case.batch = 1;
            r.case.query_len = 1;
            r.key = r.case.key();
            r
        })
        .collect();
    let lines = report_ends("context-1-batch-1", recs);
    assert!(lines.iter().any(|l| l.contains("1 token/step") || l.contains("chunk 1")), "{lines:?}");
}

#[test]
fn a_single_record() {
    let one = fixture_records().into_iter().take(1).collect();
    let lines = report_ends("single-record", one);
    assert!(lines.iter().any(|l| l.contains("not measured")), "{lines:?}");
}

#[test]
fn every_record_failed() {
    let failed: Vec<Record> = fixture_records()
        .into_iter()
        .map(|mut r| {
            r.status = Status::Failed;
            r.reason = Some("planted failure".into());
            r.samples_ms.clear();
            r.components_ms.clear();
            r.stats = None;
            r
        })
        .collect();
    let lines = report_ends("all-failed", failed);
    assert!(lines.iter().any(|l| l.contains("not measured")), "{lines:?}");
}

#[test]
fn identical_medians() {
    let same: Vec<Record> = fixture_records()
        .into_iter()
        .map(|mut r| {
            if r.status == Status::Ok {
                r.samples_ms = vec![5.0; 5];
                r.components_ms.values_mut().for_each(|v| *v = vec![1.0; 5]);
            }
            r
        })
        .collect();
    let lines = report_ends("identical-medians", same);
    // Ratio 1 everywhere: the claim does not hold.
    assert!(lines.iter().any(|l| l.contains("does not hold")), "{lines:?}");
}
