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
    let unknown_sampling = dir.join("unknown-sampling.toml");
    std::fs::write(&unknown_sampling, "[sampling]\nwarmup = 1\ntarget_rel_ci = 0.05\nmin_samples = 3\nmax_samples = 8\nmax_seconds = 1.0\nmax_sample = 9\n").unwrap();
    let escaping = dir.join("escape.toml");
    std::fs::write(&escaping, "name = \"../../x\"\n").unwrap();
    let both_batches = dir.join("batches.toml");
    std::fs::write(&both_batches, "batch = [1]\ndecode_batch = [4]\n").unwrap();
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
        (vec!["run", "--max-seconds", "inf", "--out", out_s], "--max-seconds"),
        (vec!["run", "--max-seconds", "NaN", "--out", out_s], "--max-seconds"),
        (vec!["run", "--max-seconds", "2", "--out", out_s], "2s"),
        (vec!["run", "--target-ci", "inf", "--out", out_s], "--target-ci"),
        (vec!["run", "--engines", "dense-cpu,dense-cpu", "--out", out_s], "listed twice"),
        (vec!["run", "--batch", "1,1", "--out", out_s], "listed twice"),
        (vec!["run", "--precision", "f32,fp32", "--out", out_s], "listed twice"),
        (vec!["run", "--sweep", unknown_sampling.to_str().unwrap(), "--out", out_s], "max_sample"),
        (vec!["run", "--sweep", escaping.to_str().unwrap(), "--out", out_s], "name"),
        (vec!["run", "--sweep", both_batches.to_str().unwrap(), "--out", out_s], "batch"),
        (vec!["run", "--external", "mine=python3 x.py", "--out", out_s], "--external"),
        (vec!["run", "--external", "dense-cpu:dense=python3 x.py", "--out", out_s], "built-in"),
        (vec!["run", "--engines", "dsa-cuda", "--variant", "sparse=split,nope", "--out", out_s], "choose from: split, split2, early, bulk, cpa, mma"),
        (vec!["run", "--engines", "dense-cpu", "--variant", "sparse=split", "--out", out_s], "no engine of this run has the kernel choice `sparse`"),
        (vec!["run", "--engines", "dsa-cuda", "--variant", "sparse", "--out", out_s], "AXIS=VALUE"),
        (vec!["run", "--engines", "dsa-cuda", "--variant", "sparse=bulk,bulk", "--out", out_s], "listed twice"),
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

/// `--variant sparse=split,bulk` makes one case per value where the axis applies (the bf16 cache),
/// each with its own key and the choice in the record's case; FP8 cases are not multiplied.
#[test]
fn variants_are_cases_of_their_own() {
    let dir = tmpdir("variants");
    let out = dir.join("v.jsonl");
    let args = [
        "run", "--preset", "h200", "--engines", "dsa-cuda", "--contexts", "1k", "--phase", "decode", "--batch", "1", "--precision", "bf16,fp8",
        "--variant", "sparse=split,bulk", "--max-samples", "3", "--no-report", "--out", out.to_str().unwrap(),
    ];
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = records(&out);
    let keys: Vec<&str> = recs.iter().map(|r| r["key"].as_str().unwrap()).collect();
    assert_eq!(recs.len(), 3, "{keys:?}");
    assert_eq!(keys.iter().collect::<std::collections::BTreeSet<_>>().len(), 3, "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("|bf16|") && k.ends_with("|sparse=split")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("|bf16|") && k.ends_with("|sparse=bulk")), "{keys:?}");
    assert!(keys.iter().any(|k| k.contains("|fp8|") && !k.contains("sparse=")), "{keys:?}");
    let bulk = recs.iter().find(|r| r["key"].as_str().unwrap().ends_with("sparse=bulk")).unwrap();
    assert_eq!(bulk["case"]["kernel"]["sparse"], "bulk");
}

#[test]
fn engines_lists_cuda_as_unavailable_without_a_gpu() {
    let o = run(&["engines"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("dense-cpu") && text.contains("available"));
    assert!(text.contains("Kernel choices") && text.contains("split, split2, early, bulk, cpa, mma"), "{text}");
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
        assert_eq!(r["schema_version"], 3);
        assert_eq!(r["case"]["method"], if r["engine"] == "dsa-cpu" { "dsa" } else { "dense" });
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

#[test]
fn resume_never_touches_a_file_whose_complete_lines_are_not_records() {
    let dir = tmpdir("notes");
    let sweep = quick_sweep(&dir);
    // A user's notes passed by mistake.
    let notes = dir.join("one.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    let o = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", notes.to_str().unwrap(), "--resume", "--no-report"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("one.txt:1"), "{err}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
    // A record of a newer schema as the complete last line: refused, file unchanged.
    let out = dir.join("r.jsonl");
    let ok = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report", "--phase", "decode", "--contexts", "256"]);
    assert!(ok.status.success());
    let text = std::fs::read_to_string(&out).unwrap();
    let newer = text.lines().next().unwrap().replacen("\"schema_version\":3", "\"schema_version\":9", 1);
    let with_newer = format!("{text}{newer}\n");
    std::fs::write(&out, &with_newer).unwrap();
    let o = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--resume", "--no-report", "--phase", "decode", "--contexts", "256"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("r.jsonl:3"), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), with_newer);
}

#[test]
fn a_second_writer_of_the_same_file_is_refused_naming_the_holder() {
    let dir = tmpdir("lock");
    let sweep = quick_sweep(&dir);
    let out = dir.join("r.jsonl");
    let args = ["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report"];
    // Slow the first run down so it is surely still writing.
    let mut first = bin().args(args).env("CTXCOST_TEST_SLOWDOWN", "dense-cpu=4,dsa-cpu=4").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !out.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    for extra in ["--resume", "--force"] {
        let mut a = args.to_vec();
        a.push(extra);
        let o = run(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra}: a second writer ran");
        assert!(err.contains("is being written by process"), "{extra}: {err}");
        assert!(err.contains(&first.id().to_string()), "{extra}: the holder's pid is named: {err}");
    }
    first.kill().unwrap();
    first.wait().unwrap();
    // Once the holder is gone the file can be resumed.
    let o = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", out.to_str().unwrap(), "--no-report", "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(records(&out).len(), 12);
}

#[test]
fn compare_and_report_read_files_by_one_policy() {
    let dir = tmpdir("policy");
    let sweep = quick_sweep(&dir);
    let base = dir.join("base.jsonl");
    let o = run(&["run", "--sweep", sweep.to_str().unwrap(), "--out", base.to_str().unwrap(), "--no-report", "--phase", "decode", "--contexts", "256"]);
    assert!(o.status.success());
    let text = std::fs::read_to_string(&base).unwrap();
    // Blank lines and a torn last line: both readers accept the file and leave the torn line out.
    let cur = dir.join("cur.jsonl");
    let first = text.lines().next().unwrap();
    std::fs::write(&cur, format!("\n{text}\n{}", &first[..first.len() / 2])).unwrap();
    let c = run(&["compare", base.to_str().unwrap(), cur.to_str().unwrap(), "--threshold", "5"]);
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert!(String::from_utf8_lossy(&c.stderr).contains("incomplete"), "{}", String::from_utf8_lossy(&c.stderr));
    // A complete bad line: compare stops with file:line.
    std::fs::write(&cur, format!("{text}not a record\n")).unwrap();
    let c = run(&["compare", base.to_str().unwrap(), cur.to_str().unwrap()]);
    assert_eq!(c.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&c.stderr).contains("cur.jsonl:3"), "{}", String::from_utf8_lossy(&c.stderr));
}
