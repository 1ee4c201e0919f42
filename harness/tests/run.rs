//! End-to-end tests of `ctxcost run`: bad input is refused before any work with one clear
//! line; records are complete JSON lines; a run killed with SIGKILL and resumed ends with
//! every case exactly once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ctxcost"))
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctxcost-test-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

/// A small, fast sweep for tests.
fn quick_sweep(dir: &Path) -> PathBuf {
    let p = dir.join("sweep.toml");
    std::fs::write(
        &p,
        r#"
base = "cpu-quick"
name = "test"
contexts = "256..1k"
prefill_chunk = 32
decode_batch = [2]
[sampling]
warmup = 1
target_rel_ci = 0.05
min_samples = 3
max_samples = 8
max_seconds = 0.5
"#,
    )
    .unwrap();
    p
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("not JSON: {e}: {l}")))
        .collect()
}

#[test]
fn bad_input_is_one_clear_line_and_nonzero_exit() {
    let dir = tmpdir("bad");
    let out = dir.join("r.jsonl");
    let out_s = out.to_str().unwrap();
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "contexts = [1024\n").unwrap();
    let unknown_field = dir.join("unknown.toml");
    std::fs::write(&unknown_field, "contxts = \"1k\"\n").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", "--contexts", "0", "--out", out_s], "--contexts"),
        (vec!["run", "--contexts", "4q", "--out", out_s], "unit"),
        (vec!["run", "--contexts", "8k..1k", "--out", out_s], "--contexts"),
        (vec!["run", "--top-k", "0", "--out", out_s], "--top-k"),
        (vec!["run", "--batch", "0", "--out", out_s], "--batch"),
        (vec!["run", "--engines", "dense-tpu", "--out", out_s], "unknown engine"),
        (vec!["run", "--preset", "h100-huge", "--out", out_s], "unknown preset"),
        (vec!["run", "--sweep", "/nonexistent/sweep.toml", "--out", out_s], "cannot read sweep file"),
        (vec!["run", "--sweep", bad_toml.to_str().unwrap(), "--out", out_s], "invalid sweep file"),
        (vec!["run", "--sweep", unknown_field.to_str().unwrap(), "--out", out_s], "contxts"),
        (vec!["run", "--preset", "cpu-quick", "--out", "/proc/ctxcost/r.jsonl"], "--out"),
        (vec!["run", "--preset", "cpu-quick", "--shape", "deepseek-v3.2-exp", "--contexts", "128k", "--batch", "512", "--out", out_s], "host memory"),
        (vec!["run", "--phase", "sideways", "--out", out_s], "--phase"),
        (vec!["run", "--precision", "fp4", "--out", out_s], "precision"),
    ];
    for (args, needle) in cases {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: stderr should mention `{needle}`: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: one line expected: {err}");
        assert!(!out.exists(), "{args:?}: no work (no output file) expected");
    }
}

#[test]
fn engines_lists_cuda_as_unavailable_without_a_gpu() {
    let o = run(&["engines"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("dense-cpu") && text.contains("available"));
    if !Path::new("/dev/nvidia0").exists() {
        let line = text.lines().find(|l| l.starts_with("dense-cuda")).unwrap();
        assert!(line.contains("unavailable"), "{text}");
        assert!(text.contains("reason:"), "{text}");
    }
}

#[test]
fn run_writes_verified_records_and_refuses_to_clobber() {
    let dir = tmpdir("run");
    let sweep = quick_sweep(&dir);
    let out = dir.join("r.jsonl");
    let o = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = records(&out);
    // 2 phases x 3 contexts x 2 engines.
    assert_eq!(recs.len(), 12);
    for r in &recs {
        assert_eq!(r["schema_version"], 2);
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["verification"]["passed"], true);
        assert!(r["samples_ms"].as_array().unwrap().len() >= 3);
        assert!(r["stats"]["median"].as_f64().unwrap() > 0.0);
        assert!(r["env"]["cpu_cores"].as_u64().unwrap() >= 1);
        if r["engine"] == "dsa-cpu" {
            for part in ["indexer", "topk", "attention"] {
                assert!(!r["components_ms"][part].as_array().unwrap().is_empty());
            }
        }
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("dsa/dense"), "{stdout}");
    // A second run to the same file is refused without --resume/--force.
    let again = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    // --resume on a complete file runs nothing and adds nothing.
    let resumed = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume", "--no-report"]);
    assert!(resumed.status.success());
    assert_eq!(records(&out).len(), 12);
}

#[test]
fn sigkill_midway_then_resume_completes_each_case_once() {
    let dir = tmpdir("kill");
    let sweep = quick_sweep(&dir);
    let out = dir.join("r.jsonl");
    let args = ["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report"];
    let mut child = bin().args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // Kill as soon as some, but not all, records are in.
    let t0 = Instant::now();
    loop {
        let n = std::fs::read_to_string(&out).map(|s| s.lines().count()).unwrap_or(0);
        if n >= 3 || t0.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = std::fs::read_to_string(&out).unwrap();
    let n_partial = partial.lines().count();
    assert!(n_partial < 12, "the run finished before it could be killed");
    // Every line written before the kill is a complete record (the last may be torn only
    // if the kill hit mid-write; resume cuts it).
    let resumed = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume", "--no-report"]);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let recs = records(&out);
    let mut count: HashMap<String, usize> = HashMap::new();
    for r in &recs {
        *count.entry(r["key"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(count.len(), 12, "missing cases: {count:?}");
    assert!(count.values().all(|&n| n == 1), "duplicated cases: {count:?}");
}

#[test]
fn resume_cuts_a_torn_last_line() {
    let dir = tmpdir("torn");
    let sweep = quick_sweep(&dir);
    let out = dir.join("r.jsonl");
    let o = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report", "--phase", "decode", "--contexts", "256"]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let first = text.lines().next().unwrap();
    // Keep the first record whole and a torn half of the second.
    let second = text.lines().nth(1).unwrap();
    std::fs::write(&out, format!("{first}\n{}", &second[..second.len() / 2])).unwrap();
    let r = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume", "--no-report", "--phase", "decode", "--contexts", "256"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let recs = records(&out);
    assert_eq!(recs.len(), 2);
    assert_ne!(recs[0]["key"], recs[1]["key"]);
}
