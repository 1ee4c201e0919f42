//! End-to-end tests of sweeps over several GPUs and hosts, with CPU engines under fake device
//! lists (the children only get CUDA_VISIBLE_DEVICES set):
//! - `--gpus 0,1` runs points in parallel into one file: every line a whole record, each
//!   case once, a point's cases on one GPU, each record naming its GPU;
//! - `kill -9` of one measuring process mid-run: its point gets `failed` records, the other
//!   points go on, every line written before the kill is still there;
//! - `--replicate 2` measures each point on two different GPUs, and the report shows the spread;
//! - 2 and 3 shards (`--shard K/N`, K from the flag, SLURM_ARRAY_TASK_ID or
//!   JOB_COMPLETION_INDEX) merged give exactly the cases of the unsharded run, and the report
//!   reads the merged file as one run;
//! - merge refuses other sweeps, other split counts, duplicates, other device models and
//!   missing cases (exit 2, nothing written).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ctxcost_core::record::{Record, Status};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ctxcost"));
    for v in ["SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "JOB_COMPLETION_INDEX", "CTXCOST_TEST_SLOWDOWN"] {
        c.env_remove(v);
    }
    c
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctxcost-gpus-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The small sweep of tests/run.rs (tiny shape, contexts 256..1k: 6 points, 12 cases);
/// `seconds` is each point's sampling time when `long` (sampling then runs to the time cap).
fn sweep(dir: &Path, name: &str, contexts: &str, long: Option<f64>) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    let sampling = match long {
        Some(secs) => format!("warmup = 1\ntarget_rel_ci = 0.000001\nmin_samples = 3\nmax_samples = 1000000\nmax_seconds = {secs}\n"),
        None => "warmup = 1\ntarget_rel_ci = 0.05\nmin_samples = 3\nmax_samples = 8\nmax_seconds = 0.5\n".into(),
    };
    std::fs::write(&p, format!("base = \"cpu-quick\"\nname = \"{name}\"\ncontexts = \"{contexts}\"\nprefill_chunk = 32\ndecode_batch = [2]\n[sampling]\n{sampling}")).unwrap();
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("binary runs")
}

fn ok(o: &Output) {
    assert!(o.status.success(), "exit {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
}

/// Every line of a file as a record; a line the one reader refuses fails the test.
fn records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.is_empty() || text.ends_with('\n'), "torn last line in {}", path.display());
    text.lines().map(|l| Record::from_line(l).unwrap_or_else(|e| panic!("not a record ({e}): {l}"))).collect()
}

fn keys(recs: &[Record]) -> Vec<String> {
    let mut k: Vec<String> = recs.iter().map(|r| r.key.clone()).collect();
    k.sort();
    k
}

fn gpu(r: &Record) -> u32 {
    r.env.placement.as_ref().and_then(|p| p.gpu.as_ref()).map(|g| g.index).expect("a record of a --gpus run names its GPU")
}

fn seconds(t: &str) -> f64 {
    // RFC 3339 UTC of one day: HH:MM:SS.mmm is enough to order windows within a test.
    let time = t.split('T').nth(1).unwrap().trim_end_matches('Z');
    let parts: Vec<f64> = time.split(':').map(|x| x.parse().unwrap()).collect();
    parts[0] * 3600.0 + parts[1] * 60.0 + parts[2]
}

#[test]
fn gpus_run_points_in_parallel_into_one_file_without_torn_or_interleaved_lines() {
    let dir = tmpdir("parallel");
    let sw = sweep(&dir, "par", "256..1k", Some(0.4));
    let out = dir.join("r.jsonl");
    let o = run(bin().args(["run", "--sweep", s(&sw), "--gpus", "0,1", "--no-report", "--out", s(&out)]));
    ok(&o);
    let recs = records(&out);
    assert_eq!(recs.len(), 12);
    assert_eq!(keys(&recs).into_iter().collect::<BTreeSet<_>>().len(), 12, "each case once");
    assert!(recs.iter().all(|r| r.status == Status::Ok));
    // Each record names its GPU; both GPUs ran points; a point's cases share one GPU.
    let used: BTreeSet<u32> = recs.iter().map(gpu).collect();
    assert_eq!(used, BTreeSet::from([0, 1]));
    let mut by_point: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for r in &recs {
        by_point.entry(r.case.point_key().to_string()).or_default().insert(gpu(r));
        let p = r.env.placement.as_ref().unwrap();
        assert_eq!((p.points, p.cases, p.point_cases, p.replicas), (6, 12, 2, 1));
        assert!(p.gpu.as_ref().unwrap().uuid.is_none() || Path::new("/dev/nvidia0").exists());
    }
    assert_eq!(by_point.len(), 6);
    assert!(by_point.values().all(|g| g.len() == 1), "{by_point:?}");
    // In parallel: some point on GPU 0 was measured while one on GPU 1 was.
    let window = |r: &Record| (seconds(&r.started_at), seconds(&r.finished_at));
    let overlap = recs.iter().filter(|a| gpu(a) == 0).any(|a| recs.iter().filter(|b| gpu(b) == 1).any(|b| window(a).0 < window(b).1 && window(b).0 < window(a).1));
    assert!(overlap, "no two points on different GPUs ran at the same time");
    // The progress lines name the GPU.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(" gpu0]") && err.contains(" gpu1]"), "{err}");
}

#[test]
fn kill_9_of_one_measuring_process_fails_its_point_only_and_loses_nothing_finished() {
    let dir = tmpdir("kill");
    let sw = sweep(&dir, "kill", "256..1k", Some(1.0));
    let out = dir.join("r.jsonl");
    let mut parent = bin().args(["run", "--sweep", s(&sw), "--gpus", "0,1", "--no-report", "--out", s(&out)]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    let (victim, before) = loop {
        assert!(t0.elapsed() < Duration::from_secs(60), "no record came");
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        // Once a point is done, kill the youngest measuring process (the most left to do).
        if text.lines().count() >= 2 {
            let kids = children(parent.id());
            if let Some(&pid) = kids.iter().max() {
                break (pid, std::fs::read_to_string(&out).unwrap());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: sending SIGKILL to a child process of this test's own run.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let status = parent.wait().unwrap();
    assert_eq!(status.code(), Some(1), "a failed case makes the run exit 1");
    let after = std::fs::read_to_string(&out).unwrap();
    assert!(after.starts_with(&before), "lines written before the kill changed");
    let recs = records(&out);
    assert_eq!(recs.len(), 12);
    assert_eq!(keys(&recs).into_iter().collect::<BTreeSet<_>>().len(), 12);
    let failed: Vec<&Record> = recs.iter().filter(|r| r.status == Status::Failed).collect();
    assert!(!failed.is_empty(), "the killed point has failed records");
    assert!(failed.iter().all(|r| r.reason.as_deref().unwrap_or("").contains("signal 9")), "{:?}", failed.iter().map(|r| &r.reason).collect::<Vec<_>>());
    let points: BTreeSet<usize> = failed.iter().map(|r| r.env.placement.as_ref().unwrap().point).collect();
    assert_eq!(points.len(), 1, "only the killed point failed");
    assert!(recs.iter().filter(|r| r.status != Status::Failed).all(|r| r.status == Status::Ok));
    // Resume: every case is recorded, nothing runs again.
    let o = run(bin().args(["run", "--sweep", s(&sw), "--gpus", "0,1", "--no-report", "--resume", "--out", s(&out)]));
    ok(&o);
    assert_eq!(records(&out).len(), 12);
}

/// Child processes of `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: the comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().nth(1)).and_then(|x| x.parse::<u32>().ok());
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == Some(pid) && String::from_utf8_lossy(&cmd).contains("__point") {
            out.push(child);
        }
    }
    out
}

#[test]
fn replicate_measures_each_point_on_different_gpus_and_the_report_shows_the_spread() {
    let dir = tmpdir("replicate");
    let sw = sweep(&dir, "rep", "256,512", None);
    let out = dir.join("r.jsonl");
    let report = dir.join("report");
    let o = run(bin().args(["run", "--sweep", s(&sw), "--phase", "decode", "--gpus", "0,1,2", "--replicate", "2", "--out", s(&out), "--report-dir", s(&report)]));
    ok(&o);
    let recs = records(&out);
    // 2 points x 2 engines x 2 replicas.
    assert_eq!(recs.len(), 8);
    let mut by_key: BTreeMap<&str, Vec<(u32, u32)>> = BTreeMap::new();
    for r in &recs {
        by_key.entry(&r.key).or_default().push((r.env.placement.as_ref().unwrap().replica, gpu(r)));
    }
    for (k, v) in &by_key {
        let replicas: BTreeSet<u32> = v.iter().map(|x| x.0).collect();
        let gpus: BTreeSet<u32> = v.iter().map(|x| x.1).collect();
        assert_eq!((replicas.len(), gpus.len()), (2, 2), "{k}: {v:?}");
    }
    let md = std::fs::read_to_string(report.join("REPORT.md")).unwrap();
    assert!(md.contains("Spread across GPUs"), "no spread section");
    assert!(!md.contains("superseded"), "replicas are not superseded records");
    // Resume of the complete file runs nothing.
    ok(&run(bin().args(["run", "--sweep", s(&sw), "--phase", "decode", "--gpus", "0,1,2", "--replicate", "2", "--out", s(&out), "--resume", "--no-report"])));
    assert_eq!(records(&out).len(), 8);
}

#[test]
fn two_and_three_shards_merged_give_exactly_the_cases_of_an_unsharded_run() {
    let dir = tmpdir("shards");
    let sw = sweep(&dir, "shards", "256..1k", None);
    let whole = dir.join("whole.jsonl");
    ok(&run(bin().args(["run", "--sweep", s(&sw), "--no-report", "--out", s(&whole)])));
    let want = keys(&records(&whole));
    assert_eq!(want.len(), 12);
    // Two shards by flag.
    let mut files2 = Vec::new();
    for k in 0..2 {
        let f = dir.join(format!("two-{k}.jsonl"));
        ok(&run(bin().args(["run", "--sweep", s(&sw), "--no-report", "--shard", &format!("{k}/2"), "--out", s(&f)])));
        files2.push(f);
    }
    // Three shards from the schedulers' array indices: a Slurm array 1-3 and a Kubernetes index.
    let mut files3 = Vec::new();
    for k in 0..3 {
        let f = dir.join(format!("three-{k}.jsonl"));
        let mut cmd = bin();
        cmd.args(["run", "--sweep", s(&sw), "--no-report", "--shard", "auto/3", "--out", s(&f)]);
        if k < 2 {
            cmd.env("SLURM_ARRAY_TASK_ID", (k + 1).to_string()).env("SLURM_ARRAY_TASK_MIN", "1");
        } else {
            cmd.env("JOB_COMPLETION_INDEX", k.to_string());
        }
        ok(&run(&mut cmd));
        let recs = records(&f);
        assert!(recs.iter().all(|r| r.env.placement.as_ref().unwrap().shard.map(|s| (s.index, s.count)) == Some((k, 3))));
        files3.push(f);
    }
    // Shards hold disjoint parts.
    assert_eq!(records(&files3[0]).len() + records(&files3[1]).len() + records(&files3[2]).len(), 12);
    for (n, files) in [(2, &files2), (3, &files3)] {
        let merged = dir.join(format!("merged-{n}.jsonl"));
        let mut args = vec!["merge".to_string()];
        // In an order other than the shards'.
        args.extend(files.iter().rev().map(|f| s(f).to_string()));
        args.extend(["--out".into(), s(&merged).into()]);
        ok(&run(bin().args(&args)));
        let got = records(&merged);
        assert_eq!(keys(&got), want, "{n} shards");
        // The report reads it as one run: one machine, every series whole.
        let rep = dir.join(format!("report-{n}"));
        ok(&run(bin().args(["report", s(&merged), "--out", s(&rep)])));
        let md = std::fs::read_to_string(rep.join("REPORT.md")).unwrap();
        assert!(!md.contains("Records come from"), "{n} shards read as several machines");
        assert!(md.contains(&format!("{n} shards)")), "the run is labelled as a sharded sweep");
    }
    // A shard left out: exit 2 naming it, nothing written; --allow-missing writes the rest.
    let part = dir.join("part.jsonl");
    let o = run(bin().args(["merge", s(&files3[0]), s(&files3[2]), "--out", s(&part)]));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("4 of 12 cases missing") && err.contains("shard 1/3"), "{err}");
    assert!(!part.exists());
    ok(&run(bin().args(["merge", s(&files3[0]), s(&files3[2]), "--out", s(&part), "--allow-missing"])));
    assert_eq!(records(&part).len(), 8);
    // An existing output needs --force.
    let o = run(bin().args(["merge", s(&files3[0]), s(&files3[1]), s(&files3[2]), "--out", s(&part)]));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    ok(&run(bin().args(["merge", s(&files3[0]), s(&files3[1]), s(&files3[2]), "--out", s(&part), "--force"])));
    assert_eq!(records(&part).len(), 12);
}

#[test]
fn merge_refuses_mismatched_sweeps_splits_duplicates_and_device_models() {
    let dir = tmpdir("mismatch");
    let a = sweep(&dir, "a", "256..1k", None);
    let b = sweep(&dir, "b", "256,512", None);
    let shard = |sw: &Path, spec: &str, name: &str| {
        let f = dir.join(name);
        ok(&run(bin().args(["run", "--sweep", s(sw), "--phase", "decode", "--no-report", "--shard", spec, "--out", s(&f)])));
        f
    };
    let a0 = shard(&a, "0/2", "a0.jsonl");
    let a1 = shard(&a, "1/2", "a1.jsonl");
    let b1 = shard(&b, "1/2", "b1.jsonl");
    let a1of3 = shard(&a, "1/3", "a1of3.jsonl");
    let out = dir.join("m.jsonl");
    let copy = dir.join("a0-again.jsonl");
    std::fs::copy(&a0, &copy).unwrap();
    // Another device model: the same shard as if measured on another machine's CPU.
    let other = dir.join("a1-other-model.jsonl");
    let recs = records(&a1);
    let text: String = recs
        .into_iter()
        .map(|mut r| {
            r.env.cpu = "Another CPU".into();
            serde_json::to_string(&r).unwrap() + "\n"
        })
        .collect();
    std::fs::write(&other, text).unwrap();
    // A record without placement (an older ctxcost).
    let old = dir.join("old.jsonl");
    let text: String = records(&a1)
        .into_iter()
        .map(|mut r| {
            r.env.placement = None;
            serde_json::to_string(&r).unwrap() + "\n"
        })
        .collect();
    std::fs::write(&old, text).unwrap();
    let cases: Vec<(Vec<&Path>, &str)> = vec![
        (vec![&a0, &b1], "different sweeps"),
        (vec![&a0, &a1of3], "same N"),
        (vec![&a0, &copy, &a1], "more than once"),
        (vec![&a0, &a0, &a1], "given twice"),
        (vec![&a0, &other], "device model"),
        (vec![&a0, &old], "no placement"),
    ];
    for (files, needle) in cases {
        let mut args: Vec<&str> = vec!["merge"];
        args.extend(files.iter().map(|f| s(f)));
        args.extend(["--out", s(&out)]);
        let o = run(bin().args(&args));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{needle}: {err}");
        assert!(err.contains(needle), "{needle}: {err}");
        assert!(!out.exists(), "{needle}: nothing is written");
    }
    ok(&run(bin().args(["merge", s(&a0), s(&a1), "--out", s(&out)])));
    assert_eq!(records(&out).len(), 6);
}

#[test]
fn bad_gpu_shard_and_replicate_flags_are_one_clear_line() {
    let dir = tmpdir("flags");
    let sw = sweep(&dir, "flags", "256", None);
    let out = dir.join("r.jsonl");
    let mut cases = vec![
        (vec!["--shard", "3/3"], "not below N=3"),
        (vec!["--shard", "1"], "K/N"),
        (vec!["--shard", "auto/2"], "SLURM_ARRAY_TASK_ID"),
        (vec!["--gpus", "0,0"], "listed twice"),
        (vec!["--gpus", "one"], "not a GPU index"),
        (vec!["--gpus", "0", "--replicate", "2"], "at least 2 GPUs"),
        (vec!["--replicate", "0"], "--replicate 0"),
    ];
    let no_gpu = Command::new("nvidia-smi").arg("-L").output().map(|o| !o.status.success() || o.stdout.is_empty()).unwrap_or(true);
    if no_gpu {
        cases.push((vec!["--gpus", "all"], "lists no GPU"));
    }
    for (flags, needle) in cases {
        let mut args = vec!["run", "--sweep", s(&sw), "--no-report", "--out", s(&out)];
        args.extend(flags.iter().copied());
        let o = run(bin().args(&args));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(needle), "{flags:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{flags:?}: {err}");
        assert!(!out.exists(), "{flags:?}: no work expected");
    }
}
