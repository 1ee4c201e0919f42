//! External engines end to end, without a GPU: the CPU workers of `peers/` (numpy) speak the
//! protocol, build bit-identical inputs and pass the same verification as native engines;
//! workers that crash, hang, print garbage or answer wrongly each give a `failed` record with
//! the cause while the sweep completes; a user's own adapter plugs in with `--external`.
//!
//! These tests need `python3` with numpy. Where they are missing the tests say so and pass,
//! unless `CTXCOST_REQUIRE_PEERS=1` (CI sets it), where they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ctxcost_core::{Case, InputTensor, Inputs, Method, ModelShape, Phase, Precision};
use ctxcost_engines::external::{worker_inputs, ExternalSpec};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Whether python3 with numpy is here; else skip (or fail under CTXCOST_REQUIRE_PEERS=1).
fn python_ready(test: &str) -> bool {
    let ok = Command::new("python3").args(["-c", "import numpy"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        if std::env::var("CTXCOST_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{test}: python3 with numpy is required (CTXCOST_REQUIRE_PEERS=1): pip install numpy");
        }
        eprintln!("{test}: skipped: python3 with numpy is not installed (pip install numpy)");
    }
    ok
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctxcost-peers-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ctxcost(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ctxcost"));
    c.args(args).current_dir(repo());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("binary runs")
}

fn records(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const SAMPLING: [&str; 6] = ["--max-samples", "4", "--max-seconds", "2s", "--warmup", "1"];

#[test]
fn numpy_workers_are_verified_and_timed_beside_native_engines() {
    if !python_ready("numpy_workers") {
        return;
    }
    let dir = tmpdir("numpy");
    let out = dir.join("r.jsonl");
    let mut args = vec![
        "run", "--preset", "cpu-quick", "--engines", "dense-cpu,dsa-cpu,numpy-dense,numpy-dsa", "--contexts", "256,1k", "--chunk", "64",
        "--batch", "2", "--precision", "f32,bf16", "--out", out.to_str().unwrap(), "--no-report",
    ];
    args.extend(SAMPLING);
    let o = ctxcost(&args, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let recs = records(&out);
    // 2 phases x 2 contexts x 2 precisions x 4 engines.
    assert_eq!(recs.len(), 32, "{err}");
    for r in &recs {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["verification"]["passed"], true, "{r}");
        let engine = r["engine"].as_str().unwrap();
        assert_eq!(r["case"]["method"], if engine.contains("dsa") { "dsa" } else { "dense" });
        if engine.starts_with("numpy") {
            assert!(r["timer"].as_str().unwrap().contains("external"), "{r}");
            assert!(r["samples_ms"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() > 0.0));
        }
        if engine == "numpy-dsa" {
            assert!(r["verification"]["selection"]["passed"] == true, "{r}");
        }
    }
}

#[test]
fn worker_inputs_are_bit_identical_to_ours() {
    if !python_ready("bit_identity") {
        return;
    }
    let spec = ExternalSpec::peer("numpy-dense", Method::Dense);
    for (seed, phase, context, batch, q) in [(42u64, Phase::Decode, 300usize, 3usize, 1usize), (0xDEAD_BEEF_CAFE_F00D, Phase::Prefill, 128, 2, 64)] {
        let case = Case { engine: "numpy-dense".into(), method: Method::Dense, shape: ModelShape::tiny(), phase, context, batch, query_len: q, precision: Precision::Bf16, seed, kernel: Default::default() };
        let inputs = Inputs::seeded(seed);
        for t in InputTensor::ALL {
            let rows_per_seq = t.rows(&case);
            let rows: Vec<(usize, usize)> = vec![(0, 0), (batch - 1, rows_per_seq - 1), (batch / 2, rows_per_seq / 2)];
            let (f32_bits, bf16_bits) = worker_inputs(&spec, &case, t.name(), &rows).unwrap_or_else(|e| panic!("{}: {e}", t.name()));
            assert_eq!(f32_bits.len(), rows.len());
            for (k, &(b, row)) in rows.iter().enumerate() {
                let ours = inputs.row(&case, t, b, row);
                let ours_bits: Vec<u32> = ours.iter().map(|x| x.to_bits()).collect();
                assert_eq!(f32_bits[k], ours_bits, "{} row ({b}, {row}) seed {seed}", t.name());
                let ours_bf16: Vec<u16> = ours.iter().map(|&x| (ctxcost_core::numeric::round_bf16(x).to_bits() >> 16) as u16).collect();
                assert_eq!(bf16_bits[k], ours_bf16, "{} bf16 row ({b}, {row})", t.name());
            }
        }
    }
}

#[test]
fn faulty_workers_fail_their_case_and_the_sweep_completes() {
    if !python_ready("faulty_workers") {
        return;
    }
    let dir = tmpdir("faulty");
    let out = dir.join("r.jsonl");
    let modes = ["crash-on-prepare", "crash-on-run", "hang-on-run", "garbage", "wrong", "nan"];
    let specs: Vec<String> = modes.iter().map(|m| format!("bad-{m}:dense=python3 -m ctxcost_peers.faulty {m}")).collect();
    let engines = std::iter::once("dense-cpu".to_string()).chain(modes.iter().map(|m| format!("bad-{m}"))).collect::<Vec<_>>().join(",");
    let mut args = vec!["run", "--preset", "cpu-quick", "--engines", &engines, "--contexts", "256", "--phase", "decode", "--batch", "2", "--out", out.to_str().unwrap(), "--no-report"];
    for s in &specs {
        args.push("--external");
        args.push(s);
    }
    args.extend(SAMPLING);
    let o = ctxcost(&args, &[("CTXCOST_EXTERNAL_TIMEOUT_S", "6")]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "failed cases give exit 1: {err}");
    let recs = records(&out);
    assert_eq!(recs.len(), 1 + modes.len(), "{err}");
    let by = |id: &str| recs.iter().find(|r| r["engine"] == id).unwrap_or_else(|| panic!("no record for {id}"));
    assert_eq!(by("dense-cpu")["status"], "ok");
    let expect = [
        ("crash-on-prepare", "exited"),
        ("crash-on-run", "run"),
        ("hang-on-run", "within 6 s and was killed"),
        ("garbage", "not JSON"),
        ("wrong", "over tolerance"),
        ("nan", "NaN or infinite"),
    ];
    for (mode, needle) in expect {
        let r = by(&format!("bad-{mode}"));
        assert_eq!(r["status"], "failed", "{mode}: {r}");
        let why = r["reason"].as_str().unwrap();
        assert!(why.contains(needle), "{mode}: reason `{why}` should contain `{needle}`");
    }
    // The crashing worker's own words reach the record.
    assert!(by("bad-crash-on-prepare")["reason"].as_str().unwrap().contains("worker stderr"), "{}", by("bad-crash-on-prepare"));
}

#[test]
fn a_users_own_adapter_plugs_in_with_external() {
    if !python_ready("own_adapter") {
        return;
    }
    let dir = tmpdir("own");
    let out = dir.join("r.jsonl");
    let example = repo().join("peers/examples/my_kernel.py");
    let spec = format!("my-kernel:dense=python3 {}", example.display());
    let mut args = vec![
        "run", "--preset", "cpu-quick", "--engines", "dense-cpu,my-kernel", "--external", &spec, "--contexts", "256,512", "--phase", "decode",
        "--batch", "2", "--precision", "f32", "--out", out.to_str().unwrap(), "--no-report",
    ];
    args.extend(SAMPLING);
    let o = ctxcost(&args, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs = records(&out);
    assert_eq!(recs.len(), 4);
    for r in recs.iter().filter(|r| r["engine"] == "my-kernel") {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["verification"]["passed"], true);
    }
}

#[test]
fn python_side_unit_tests_pass() {
    if !python_ready("python_unit_tests") {
        return;
    }
    let o = Command::new("python3").args(["-m", "unittest", "discover", "-s", "peers/tests", "-t", "peers"]).current_dir(repo()).output().unwrap();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}
