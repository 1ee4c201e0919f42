//! End-to-end tests of `ctxcost compare`, through the built binary.
//!
//! - Real runs: a small decode sweep of `dense-cpu` and `dsa-cpu` is measured once as the
//!   baseline; compared with itself every case is `unchanged` (exit 0). A planted 3x slowdown
//!   of `dsa-cpu` (`CTXCOST_TEST_SLOWDOWN`, honoured by the runner), compared with a baseline
//!   measured right before it, makes every `dsa-cpu` case `regressed` and the exit status 1.
//! - Synthetic records (written as JSONL from `Record` values): exit status 2 on bad input,
//!   `--fail-on-missing`, Markdown and JSON outputs, folder and pattern arguments.
//!
//! Runs of the benchmark are serialised (a lock) so they do not disturb each other's timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use ctxcost_core::analytic::Work;
use ctxcost_core::record::{Environment, Memory, Rates, Record, Status, Tool, SCHEMA_VERSION};
use ctxcost_core::{Case, ModelShape, Phase, Precision};

const BIN: &str = env!("CARGO_BIN_EXE_ctxcost");

/// A sweep small enough for a test: decode at 1K and 2K, capped sampling.
const SWEEP: &str = r#"
base = "cpu-quick"
name = "compare-test"
engines = ["dense-cpu", "dsa-cpu"]
phases = ["decode"]
contexts = ["1k", "2k"]

decode_batch = [16]

[sampling]
warmup = 2
target_rel_ci = 0.02
min_samples = 12
max_samples = 40
max_seconds = 3.0
"#;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("compare-tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn show(o: &Output) -> String {
    format!("status {:?}\n--- stdout\n{}\n--- stderr\n{}", o.status.code(), String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

static RUN_LOCK: Mutex<()> = Mutex::new(());

/// Measure the test sweep into `out`, with an optional planted slowdown.
fn measure(dir: &Path, out: &str, slowdown: Option<&str>) -> PathBuf {
    let _guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    measure_locked(dir, out, slowdown)
}

/// [`measure`] for a caller that already holds `RUN_LOCK`.
fn measure_locked(dir: &Path, out: &str, slowdown: Option<&str>) -> PathBuf {
    let sweep = dir.join("sweep.toml");
    std::fs::write(&sweep, SWEEP).unwrap();
    let out = dir.join(out);
    let mut cmd = Command::new(BIN);
    // One compute thread: less exposed to other work on a shared machine.
    cmd.env("RAYON_NUM_THREADS", "1");
    cmd.args(["run", "--sweep"]).arg(&sweep).arg("--out").arg(&out).args(["--force", "--no-report"]);
    cmd.env_remove("CTXCOST_TEST_SLOWDOWN");
    if let Some(s) = slowdown {
        cmd.env("CTXCOST_TEST_SLOWDOWN", s);
    }
    let o = cmd.output().expect("run ctxcost");
    assert!(o.status.success(), "ctxcost run failed: {}", show(&o));
    out
}

/// The baseline run, measured once for all tests.
fn baseline() -> PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| measure(&scratch("baseline"), "base.jsonl", None)).clone()
}

fn compare(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(BIN).arg("compare").args(args).output().expect("run ctxcost compare")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn identical_record_sets_are_unchanged() {
    let base = baseline();
    let dir = scratch("identical");
    let out_json = dir.join("cmp.json");
    let o = compare(&[base.as_os_str(), base.as_os_str(), "--json".as_ref(), out_json.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let v = json(&out_json);
    assert_eq!(v["counts"]["compared"], 4, "{}", show(&o));
    assert_eq!(v["counts"]["unchanged"], 4);
    for c in v["cases"].as_array().unwrap() {
        assert_eq!(c["verdict"], "unchanged");
        assert_eq!(c["ratio"], 1.0);
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("unchanged") && !stdout.contains("regressed  "), "{stdout}");
    assert!(stdout.lines().last().unwrap().starts_with("OK: 4 compared, 0 regressed"), "{stdout}");
}

/// One attempt of the planted-slowdown check: a fresh baseline and a slowed run measured back
/// to back under one lock, then compared. `Err` carries what was seen when the comparison did
/// not flag every slowed case (load on a shared machine can move a whole run by 2x or more).
fn planted_attempt(dir: &Path, factor: &str) -> Result<(Output, serde_json::Value), String> {
    let (base, slow) = {
        let _guard = RUN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        (measure_locked(dir, "base.jsonl", None), measure_locked(dir, "slow.jsonl", Some(factor)))
    };
    let out_json = dir.join("cmp.json");
    let out_md = dir.join("cmp.md");
    let o = compare(&[base.as_os_str(), slow.as_os_str(), "--json".as_ref(), out_json.as_os_str(), "--markdown".as_ref(), out_md.as_os_str()]);
    let v = json(&out_json);
    let all_dsa_regressed = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["case"]["engine"] == "dsa-cpu")
        .all(|c| c["verdict"] == "regressed");
    if o.status.code() == Some(1) && all_dsa_regressed {
        Ok((o, v))
    } else {
        Err(show(&o))
    }
}

#[test]
fn planted_slowdown_is_reported_as_regressed() {
    let dir = scratch("slowdown");
    // A 3x planted slowdown; up to three attempts, each with its own fresh baseline, so one
    // burst of load on the machine cannot hide it. A comparison that never flags it fails.
    let factor = "dsa-cpu=3.0";
    let mut seen = Vec::new();
    let (o, v) = loop {
        match planted_attempt(&dir, factor) {
            Ok(found) => break found,
            Err(e) if seen.len() < 2 => seen.push(e),
            Err(e) => {
                seen.push(e);
                panic!("the planted slowdown was not flagged in 3 attempts:\n{}", seen.join("\n=====\n"));
            }
        }
    };
    // The attempt returned only once the exit status was 1 and every dsa-cpu case `regressed`.
    assert_eq!(v["counts"]["compared"], 4, "{}", show(&o));
    let mut dsa = 0;
    for c in v["cases"].as_array().unwrap() {
        if c["case"]["engine"] == "dsa-cpu" {
            dsa += 1;
            let ratio = c["ratio"].as_f64().unwrap();
            // Well above 1: load moves whole runs, and a planted sleep can overshoot under
            // load, so no upper bound.
            assert!(ratio > 1.25, "ratio {ratio}: {}", show(&o));
        }
    }
    assert_eq!(dsa, 2);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.lines().last().unwrap().starts_with("REGRESSED:"), "{stdout}");
    let md = std::fs::read_to_string(dir.join("cmp.md")).unwrap();
    assert!(md.contains("## ctxcost compare: regression") && md.contains("| **regressed** | dsa-cpu |"), "{md}");
    // The planted slowdown is written into every record it affected, so such records cannot
    // pass for real measurements.
    for line in std::fs::read_to_string(dir.join("slow.jsonl")).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["env"]["settings"]["CTXCOST_TEST_SLOWDOWN"], factor, "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// Synthetic records: fast, deterministic checks of the command line.
// ---------------------------------------------------------------------------------------------

fn record(engine: &str, context: usize, samples_ms: Vec<f64>) -> Record {
    let case = Case { engine: engine.into(), method: ctxcost_core::Method::legacy_from_id(engine), shape: ModelShape::tiny(), phase: Phase::Decode, context, batch: 4, query_len: 1, precision: Precision::F32, seed: 42, kernel: Default::default() };
    Record {
        schema_version: SCHEMA_VERSION,
        tool: Tool::default(),
        env: Environment { hostname: "test-host".into(), cpu: "Test CPU".into(), cpu_cores: 2, ..Default::default() },
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

fn spread(center: f64, n: usize) -> Vec<f64> {
    (0..n).map(|i| center * (1.0 + 0.01 * ((i * 7 % 11) as f64 - 5.0) / 5.0)).collect()
}

fn write(path: &Path, records: &[Record]) {
    let text: String = records.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn bad_input_exits_2() {
    let dir = scratch("bad-input");
    let good = dir.join("good.jsonl");
    write(&good, &[record("dense-cpu", 1024, spread(1.0, 10))]);
    // Missing file.
    let o = compare(&[dir.join("missing.jsonl").as_os_str(), good.as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.jsonl"), "{}", show(&o));
    // A line that is not a record.
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"schema_version\": 1}\n").unwrap();
    let o = compare(&[good.as_os_str(), bad.as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.jsonl:1"), "{}", show(&o));
    // A bad threshold.
    let o = compare(&[good.as_os_str(), good.as_os_str(), "--threshold=-0.1".as_ref()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--threshold -0.1"), "{}", show(&o));
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    // Nothing in common.
    let other = dir.join("other.jsonl");
    write(&other, &[record("dsa-cpu", 4096, spread(1.0, 10))]);
    let o = compare(&[good.as_os_str(), other.as_os_str()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
}

#[test]
fn synthetic_regression_missing_cases_and_patterns() {
    let dir = scratch("synthetic");
    let base: Vec<Record> = [1024, 2048, 4096].iter().flat_map(|&l| [record("dense-cpu", l, spread(l as f64 / 1000.0, 20)), record("dsa-cpu", l, spread(1.0, 20))]).collect();
    // Two baseline files (pooled through a pattern), one current file lacking one case and
    // with dsa-cpu at 4096 10% slower.
    write(&dir.join("base-1.jsonl"), &base[..3]);
    write(&dir.join("base-2.jsonl"), &base[3..]);
    let mut cur: Vec<Record> = base[..5].to_vec();
    cur[3] = record("dsa-cpu", 2048, spread(1.10, 20));
    std::fs::create_dir_all(dir.join("now")).unwrap();
    write(&dir.join("now").join("cur.jsonl"), &cur);

    let pattern = dir.join("base-*.jsonl");
    let now = dir.join("now");
    let o = compare(&[pattern.as_os_str(), now.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("baseline: 6 record(s) from 2 files"), "{stdout}");
    assert!(stdout.contains("cases on one side only") && stdout.contains("dsa-cpu|tiny|decode|L=4096"), "{stdout}");

    // A threshold above the change: no regression; --fail-on-missing still fails.
    let o = compare(&[pattern.as_os_str(), now.as_os_str(), "--threshold".as_ref(), "0.2".as_ref(), "--quiet".as_ref()]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("OK: 5 compared, 0 regressed"), "{}", show(&o));
    let o = compare(&[pattern.as_os_str(), now.as_os_str(), "--threshold".as_ref(), "0.2".as_ref(), "--fail-on-missing".as_ref()]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}
