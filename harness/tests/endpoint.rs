//! `ctxcost endpoint` end to end against two `ctxcost serve-mock` servers with different
//! delays: records for both sides, the A/B summary and report, `--resume`, and bad input.
#![cfg(feature = "http")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_ctxcost");

struct Mock {
    child: Child,
    url: String,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mock(args: &[&str]) -> Mock {
    let mut child = Command::new(BIN)
        .args(["serve-mock", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start serve-mock");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://")).expect("URL line").to_string();
    Mock { child, url }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctxcost-endpoint-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn ab_run_records_both_sides_and_reports_the_ratio() {
    let a = mock(&["--ttft-ms", "20", "--tpot-ms", "3"]);
    let b = mock(&["--ttft-ms", "70", "--tpot-ms", "3", "--usage", "deepseek"]);
    let dir = tmp("ab");
    let out = dir.join("ab.jsonl");
    let args = [
        "endpoint", "--timeout", "30s", "--max-seconds", "2m", "--a", &a.url, "--a-label", "fast", "--a-price", "v3.1-terminus", "--b", &b.url, "--b-label", "slow", "--b-price",
        "v3.2-exp", "--contexts", "256,1k", "--phase", "both", "--output-tokens", "6", "--requests", "5", "--warmup", "0", "--slo",
        "ttft=1s,tpot=100ms", "--usd-per-gpu-hour", "2", "--gpus", "8", "--out",
    ];
    let report = dir.join("rep");
    let o = Command::new(BIN).args(args).arg(&out).arg("--report-dir").arg(&report).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let recs: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 8, "2 sides x 2 prompt lengths x 2 phases");
    for r in &recs {
        assert_eq!(r["schema_version"], ctxcost_core::record::SCHEMA_VERSION);
        assert_eq!(r["status"], "ok", "{}", r["reason"]);
        let e = &r["endpoint"];
        assert_eq!(e["requests"].as_array().unwrap().len(), 5);
        let prompt = r["case"]["context"].as_u64().unwrap();
        assert!(e["requests"].as_array().unwrap().iter().all(|q| q["prompt_tokens"].as_u64() == Some(prompt)));
        assert!(r["samples_ms"].as_array().unwrap().len() == 5);
        assert!(e["cost"]["api_usd_per_request"].as_f64().unwrap() > 0.0);
        assert!(e["metrics"]["goodput_rps"].as_f64().unwrap() > 0.0);
        let engine = r["engine"].as_str().unwrap();
        assert!(engine == "http-fast" || engine == "http-slow");
    }
    // Summary: B/A of TTFT at both prompt lengths, near the injected 70/20.
    assert!(stdout.contains("slow / fast TTFT"), "{stdout}");
    let report_md = std::fs::read_to_string(report.join("REPORT.md")).unwrap();
    assert!(report_md.contains("Remote endpoints") && report_md.contains("slow / fast"));
    assert!(report.join("chart-endpoint.png").is_file());
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("id=\"endpoint-ab-table\""));

    // --resume: nothing left to do, no duplicate records.
    let o2 = Command::new(BIN).args(args).arg(&out).arg("--resume").arg("--no-report").output().unwrap();
    assert!(o2.status.success(), "{}", String::from_utf8_lossy(&o2.stderr));
    assert!(String::from_utf8_lossy(&o2.stderr).contains("4 of 4 cases already recorded"));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 8);
    // Each record names its prompt text (the shipped corpus by default), and the text is part
    // of the key: resuming with other text measures every case again instead of mixing them.
    for l in std::fs::read_to_string(&out).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(r["endpoint"]["prompt_text"], "shakespeare", "{r}");
        assert!(r["key"].as_str().unwrap().ends_with("|text=shakespeare"), "{}", r["key"]);
    }
    let o3 = Command::new(BIN).args(args).arg(&out).args(["--resume", "--no-report", "--prompt-text", "synthetic"]).output().unwrap();
    assert!(o3.status.success(), "{}", String::from_utf8_lossy(&o3.stderr));
    let after: Vec<serde_json::Value> = std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(after.len(), 16, "the synthetic-text cases are new cases");
    assert_eq!(after.iter().filter(|r| r["endpoint"]["prompt_text"] == "synthetic").count(), 8);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_one_error_before_any_request() {
    let dir = tmp("bad");
    let out = dir.join("x.jsonl");
    for (args, want) in [
        (vec!["--a", "ftp://host/v1", "--a-model", "m"], "scheme"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--contexts", "0"], "--contexts"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--rate", "0"], "--rate"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--slo", "ttft=fast"], "duration"),
        // Every duration flag needs its unit (a bare `2` was once 2 ms here and 2 s there).
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--slo", "ttft=2"], "2s"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--slo", "tpot=infms"], "--slo tpot"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--timeout", "300"], "--timeout"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--timeout", "0s"], "--timeout"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--max-seconds", "inf"], "--max-seconds"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--max-seconds", "NaNs"], "--max-seconds"),
        // Credentials in the URL: refused, pointing at --key-env, without repeating them.
        (vec!["--a", "http://user:hunter2pw@127.0.0.1:9/v1", "--a-model", "m"], "--key-env"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--a-price", "gpt"], "--a-price"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--key-env", "CTXCOST_SURELY_UNSET_VAR"], "CTXCOST_SURELY_UNSET_VAR"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--b-label", "x"], "--b URL"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--ab-order", "alternate"], "give --b"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--b", "http://127.0.0.1:9/v1", "--b-model", "m", "--ab-order", "alternate", "--rate", "2"], "closed loop"),
        (vec!["--a", "http://127.0.0.1:9/v1", "--a-model", "m", "--ab-order", "sideways"], "together or alternate"),
    ] {
        let o = Command::new(BIN).arg("endpoint").args(&args).arg("--out").arg(&out).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("hunter2pw"), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} created the output");
    }
    // A server that is not there: calibration fails with the cause, exit 2.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = Command::new(BIN)
        .args(["endpoint", "--a", &format!("http://127.0.0.1:{port}/v1"), "--a-model", "m", "--no-report", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("connect"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Every line of a record file, read with the one record reader.
fn read_back(path: &std::path::Path) -> Vec<ctxcost_core::record::Record> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .map(|(i, l)| ctxcost_core::record::Record::from_line(l).unwrap_or_else(|e| panic!("line {} does not read back: {e}\n{l}", i + 1)))
        .collect()
}

/// `ctxcost endpoint` against the mock at `url` (model `mock`, no warm-up) with `args`,
/// recording to `out`: its exit status, stdout and stderr.
fn endpoint_on(url: &str, args: &[&str], out: &Path) -> (std::process::ExitStatus, String, String) {
    let o = Command::new(BIN).args(["endpoint", "--a", url, "--a-model", "mock", "--warmup", "0"]).args(args).arg("--out").arg(out).output().unwrap();
    (o.status, String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

#[test]
fn buffered_streams_give_records_that_read_back_and_compare() {
    let m = mock(&["--ttft-ms", "5", "--tpot-ms", "1", "--buffered"]);
    let dir = tmp("buffered");
    let out = dir.join("b.jsonl");
    let (status, stdout, stderr) = endpoint_on(&m.url, &["--contexts", "256", "--phase", "decode", "--output-tokens", "6", "--requests", "3", "--slo", "tpot=50ms", "--no-report"], &out);
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let recs = read_back(&out);
    assert_eq!(recs.len(), 1);
    let e = recs[0].endpoint.as_ref().unwrap();
    assert_eq!(e.metrics.tpot_ms.unwrap().median, 0.0, "every token arrived in one read");
    assert!(recs[0].stats.is_some(), "the record keeps its statistics");
    assert!(stderr.contains("one read"), "the terminal says why TPOT is 0: {stderr}");
    assert!(stdout.contains("decode"), "the summary keeps the row: {stdout}");
    let c = Command::new(BIN).arg("compare").arg(&out).arg(&out).output().unwrap();
    assert!(c.status.success(), "compare reads them: {}{}", String::from_utf8_lossy(&c.stdout), String::from_utf8_lossy(&c.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn secrets_reach_no_output() {
    let key = "sk-endpoint-test-77aa11bb";
    let q = "qs-endpoint-secret-3c4d";
    let query = format!("?api_key={q}&api-version=2031-01-01-preview");
    // Arrivals 5, 7 and 9 are 500s that echo the request line and the Authorization header;
    // calibration takes the first two to five.
    let m = mock(&["--ttft-ms", "5", "--tpot-ms", "1", "--fault", "5=500,7=500,9=500"]);
    let dir = tmp("secrets");
    let out = dir.join("s.jsonl");
    let report = dir.join("rep");
    let o = Command::new(BIN)
        .env("CTXCOST_ENDPOINT_TEST_KEY", key)
        .args(["endpoint", "--a", &format!("{}{query}", m.url), "--a-model", "mock", "--key-env", "CTXCOST_ENDPOINT_TEST_KEY"])
        .args(["--contexts", "256", "--phase", "prefill", "--requests", "4", "--warmup", "0", "--report-dir"])
        .arg(&report)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let mut outputs = vec![String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string()];
    let records = std::fs::read_to_string(&out).unwrap_or_else(|_| panic!("no records: {}", outputs[1]));
    assert!(records.contains("\"server\"") && records.contains("<redacted>"), "a 500 echoed the secrets: {records}");
    outputs.push(records);
    for f in std::fs::read_dir(&report).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        if let Ok(t) = std::fs::read_to_string(f.path()) {
            outputs.push(t);
        }
    }
    // A server that is not there: the transport error names the URL, query and all.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = Command::new(BIN)
        .env("CTXCOST_ENDPOINT_TEST_KEY", key)
        .args(["endpoint", "--a", &format!("http://127.0.0.1:{port}/v1{query}"), "--key-env", "CTXCOST_ENDPOINT_TEST_KEY", "--no-report", "--out"])
        .arg(dir.join("gone.jsonl"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    outputs.push(String::from_utf8_lossy(&o.stderr).to_string());
    for text in &outputs {
        for s in [key, q, "2031-01-01-preview"] {
            assert!(!text.contains(s), "`{s}` leaked into:\n{text}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn resume_checks_the_file_before_any_request() {
    let dir = tmp("resume-first");
    let out = dir.join("notes.txt");
    let notes = "my notes\nmore notes\n";
    std::fs::write(&out, notes).unwrap();
    // A listener that would see any request: the model is not given, so a run that asked
    // the server first would connect to it for /v1/models.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://127.0.0.1:{}/v1", listener.local_addr().unwrap().port());
    let o = Command::new(BIN)
        .args(["endpoint", "--a", &url, "--timeout", "3s", "--resume", "--no-report", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), notes, "the file is untouched");
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a request went out before the file was checked"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn endpoint_only_runs_get_endpoint_reports_and_a_refused_length_fails_alone() {
    // A server whose limit (64K) is not listed in /v1/models: the 128K target is refused by
    // a 400, and the 1K case is kept. Tokens per word grow; no cached-token count.
    let m = mock(&["--ttft-ms", "2", "--tpot-ms", "1", "--token-growth", "0.05", "--max-model-len", "65536", "--unlisted-limit", "--usage", "plain"]);
    let dir = tmp("shaped");
    let (out, report) = (dir.join("e.jsonl"), dir.join("rep"));
    let (status, stdout, stderr) = endpoint_on(&m.url, &["--contexts", "1k,2k,128k", "--phase", "prefill", "--requests", "3", "--timeout", "30s", "--report-dir", report.to_str().unwrap()], &out);
    assert_eq!(status.code(), Some(1), "one failed case: exit 1\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let recs = read_back(&out);
    assert_eq!(recs.len(), 3, "{stderr}");
    for r in &recs {
        // No DeepSeek shape, 61 layers or KV model for a model the client does not know.
        assert_eq!(r.case.shape.name, "endpoint");
        assert_eq!(r.case.shape.layers, 1);
        assert_eq!(r.memory.kv_bytes_model, 0.0);
        let e = r.endpoint.as_ref().unwrap();
        assert_eq!(e.planned_requests, 3);
        if r.case.context <= 2048 {
            assert_eq!(r.status, ctxcost_core::record::Status::Ok, "{:?}", r.reason);
            let p = e.metrics.prompt_check.unwrap();
            assert!(!p.flagged && p.measured_median.abs_diff(r.case.context as u64) <= 10, "{p:?}");
        } else {
            assert_eq!(r.status, ctxcost_core::record::Status::Failed);
            let why = r.reason.as_deref().unwrap_or("");
            assert!(why.contains("maximum context length is 65536") && why.contains("not run"), "{why}");
            assert!(e.requests.is_empty());
        }
    }
    // Terminal: the endpoint verdict, no DSA question; cached share unknown, not 0.0%.
    assert!(stdout.contains("endpoint verdict") && stdout.contains("grows as prompt length^"), "{stdout}");
    assert!(!stdout.contains("DSA") && !stdout.contains("not measured"), "{stdout}");
    assert!(stdout.contains("unknown") && !stdout.contains("0.0%"), "{stdout}");
    let md = std::fs::read_to_string(report.join("REPORT.md")).unwrap();
    assert!(!md.contains("Every case measures one layer's attention") && !md.contains("DSA") && !md.contains("Not measured:"), "{md}");
    assert!(md.contains("whole requests to a serving system"), "{md}");
    assert!(md.contains("maximum context length is 65536"), "the refusal is a data problem: {md}");
    // summary.csv: endpoint columns, one row per case and side.
    let csv = std::fs::read_to_string(report.join("summary.csv")).unwrap();
    let header = csv.lines().next().unwrap();
    for col in ["label", "side", "target_prompt_tokens", "measured_prompt_tokens", "ttft_p50_ms", "e2e_p50_ms", "output_tokens_per_s"] {
        assert!(header.split(',').any(|c| c == col), "{col} not in {header}");
    }
    assert!(!header.contains("dsa"), "{header}");
    assert_eq!(csv.lines().count(), 4, "{csv}");
    // records.parquet names the endpoint columns (its schema is stored as plain text).
    let pq = std::fs::read(report.join("records.parquet")).unwrap();
    for col in ["endpoint_label", "endpoint_side", "measured_prompt_tokens", "e2e_p50_ms", "output_tokens_per_s"] {
        assert!(pq.windows(col.len()).any(|w| w == col.as_bytes()), "{col} not in records.parquet");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_missed_prompt_length_is_flagged_everywhere() {
    // A tokenizer that counts words, against a server whose tokens per word grow: the local
    // fit is exact at its calibration length only, so the short case misses.
    let m = mock(&["--ttft-ms", "2", "--tpot-ms", "1", "--token-growth", "0.2"]);
    let dir = tmp("missed");
    let tok = dir.join("tokenizer.json");
    std::fs::write(
        &tok,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let (out, report) = (dir.join("m.jsonl"), dir.join("rep"));
    let args = ["--contexts", "256,4k", "--phase", "prefill", "--requests", "2", "--tokenizer", tok.to_str().unwrap(), "--report-dir", report.to_str().unwrap()];
    let (status, stdout, stderr) = endpoint_on(&m.url, &args, &out);
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let recs = read_back(&out);
    let short = recs.iter().find(|r| r.case.context == 256).unwrap();
    let p = short.endpoint.as_ref().unwrap().metrics.prompt_check.unwrap();
    assert!(p.flagged, "{p:?}");
    assert!(short.reason.as_deref().unwrap_or("").contains("prompt length missed"), "{:?}", short.reason);
    // Terminal: the measured column marks it, and a list says by how much.
    assert!(stdout.contains(&format!("{}!", p.measured_median)) && stdout.contains("prompt length missed"), "{stdout}");
    let md = std::fs::read_to_string(report.join("REPORT.md")).unwrap();
    let data = &md[md.find("data problems").expect("data problems section")..];
    assert!(data.contains("prompt length missed"), "{md}");
    assert!(md.contains(&format!("256 ({}, missed)", p.measured_median)), "the table shows the measured length: {md}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_case_stopped_by_max_seconds_says_sent_of_planned() {
    let m = mock(&["--ttft-ms", "400", "--tpot-ms", "1"]);
    let dir = tmp("stopped");
    let out = dir.join("s.jsonl");
    let (status, stdout, stderr) = endpoint_on(&m.url, &["--contexts", "256", "--phase", "prefill", "--requests", "6", "--max-seconds", "1s", "--no-report"], &out);
    assert!(status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let recs = read_back(&out);
    let e = recs[0].endpoint.as_ref().unwrap();
    assert!(e.metrics.requests < 6 && e.planned_requests == 6, "{} sent", e.metrics.requests);
    let want = format!("{0}/{0} of 6 planned; stopped by --max-seconds", e.metrics.requests);
    assert!(stdout.contains(&want), "{want} not in:\n{stdout}");
    assert_eq!(recs[0].stop_rule.as_deref(), Some("max-time"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_bad_prompt_text_file_is_one_error_before_any_request() {
    let dir = tmp("badtext");
    let bad = dir.join("docs.jsonl");
    std::fs::write(&bad, "{\"text\": \"Four score and seven years ago\"}\n{\"title\": \"no text\"}\n").unwrap();
    let out = dir.join("never.jsonl");
    // Nothing listens at this URL, and no model is given: had the run asked the server for
    // one, it would fail on the connection instead.
    let o = Command::new(BIN)
        .args(["endpoint", "--a", "http://127.0.0.1:9/v1", "--contexts", "1k", "--prompt-text"])
        .arg(&bad)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("--prompt-text") && lines[0].contains("docs.jsonl line 2") && lines[0].contains("`text`"), "{stderr}");
    assert!(!out.exists());
    let o = Command::new(BIN).args(["endpoint", "--a", "http://127.0.0.1:9/v1", "--prompt-text", "/no/such/file.txt"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("--prompt-text /no/such/file.txt: cannot read it"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn real_text_synthetic_and_a_file_hit_every_length() {
    let m = mock(&["--ttft-ms", "2", "--tpot-ms", "1", "--token-growth", "0.05"]);
    let dir = tmp("realtext");
    let file = dir.join("speech.txt");
    std::fs::write(&file, "Four score and seven years ago our fathers brought forth on this continent,\na new nation.\n".repeat(30)).unwrap();
    for (text, shown) in [("default", "Shakespeare"), ("synthetic", "synthetic filler words"), (file.to_str().unwrap(), "speech.txt")] {
        let out = dir.join(format!("{}.jsonl", shown.replace(' ', "-")));
        let (status, stdout, stderr) = endpoint_on(&m.url, &["--contexts", "300,3k", "--phase", "prefill", "--requests", "2", "--no-report", "--prompt-text", text], &out);
        assert!(status.success(), "{text}: stdout:\n{stdout}\nstderr:\n{stderr}");
        // The calibration line names the text.
        assert!(stderr.lines().any(|l| l.starts_with("prompt length on") && l.contains("text: ") && l.contains(shown)), "{text}: {stderr}");
        let recs = read_back(&out);
        assert_eq!(recs.len(), 2);
        for r in &recs {
            let p = r.endpoint.as_ref().unwrap().metrics.prompt_check.unwrap();
            assert!(r.status == ctxcost_core::record::Status::Ok && !p.flagged, "{text} {}: {p:?}", r.case.context);
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
