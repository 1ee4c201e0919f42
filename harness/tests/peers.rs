//! External engines end to end, without a GPU: the CPU workers of `peers/` (numpy) speak the
//! protocol, build bit-identical inputs and pass the same verification as native engines;
//! workers that crash, hang, print garbage or answer wrongly each give a `failed` record with
//! the cause while the sweep completes; a user's own adapter plugs in with `--external`. The
//! same for `rest` cases (the rest of a layer's GEMMs): `numpy-rest` beside `rest-cpu`, its FP8
//! GEMMs, the bit identity of the GEMM operands and FP8 codes and scales, and rest workers that
//! answer wrongly.
//!
//! These tests need `python3` with numpy. Where they are missing the tests say so and pass,
//! unless `CTXCOST_REQUIRE_PEERS=1` (CI sets it), where they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ctxcost_core::rest::{fp8_quantise_group, fp8_weight_code, fp8_weight_scale, input_value, plan, weight_value, FP8_BLOCK};
use ctxcost_core::{Case, InputTensor, Inputs, Method, ModelShape, Phase, Precision};
use ctxcost_engines::external::{worker_gemm_operands, worker_inputs, ExternalSpec};

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

/// One `ctxcost run` of rest engines on `tiny` (both phases, a 64-token chunk, batch 2) at
/// expert parallelism `ep`, read back.
fn rest_run(name: &str, engines: &str, precision: &str, ep: &str, extra: &[&str]) -> (Output, Vec<serde_json::Value>) {
    let dir = tmpdir(name);
    let out = dir.join("r.jsonl");
    let mut args = vec![
        "run", "--preset", "cpu-quick", "--shape", "tiny", "--engines", engines, "--contexts", "1k", "--phase", "both", "--chunk", "64", "--batch", "2",
        "--precision", precision, "--ep", ep, "--out", out.to_str().unwrap(), "--no-report",
    ];
    args.extend(extra);
    args.extend(SAMPLING);
    let o = ctxcost(&args, &[("CTXCOST_EXTERNAL_TIMEOUT_S", "60")]);
    let recs = if out.exists() { records(&out) } else { Vec::new() };
    (o, recs)
}

const REST_COMPONENTS: [&str; 6] = ["mla_proj", "indexer_proj", "router", "moe", "dense_mlp", "head"];

#[test]
fn numpy_rest_is_verified_beside_rest_cpu() {
    if !python_ready("numpy_rest") {
        return;
    }
    for ep in ["1", "2"] {
        let (o, recs) = rest_run(&format!("rest-ep{ep}"), "numpy-rest,rest-cpu", "f32,bf16", ep, &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "EP {ep}: {err}");
        // 2 phases x 2 precisions x 2 engines.
        assert_eq!(recs.len(), 8, "EP {ep}: {err}");
        for r in &recs {
            assert_eq!(r["status"], "ok", "{r}");
            assert_eq!(r["case"]["method"], "rest");
            assert_eq!(r["case"]["shape"]["ep"].as_u64(), Some(ep.parse().unwrap()));
            assert_eq!(r["verification"]["passed"], true, "{r}");
            assert_eq!(r["verification"]["method"], "full", "tiny is compared in full: {r}");
            for c in REST_COMPONENTS {
                assert!(r["components_ms"][c].as_array().is_some_and(|v| !v.is_empty()), "{c} missing: {r}");
            }
            if r["engine"] == "numpy-rest" {
                assert!(r["timer"].as_str().unwrap().contains("external"), "{r}");
                assert!(r["samples_ms"].as_array().unwrap().iter().all(|x| x.as_f64().unwrap() > 0.0));
                // Every element rest-cpu is compared on came back from the worker too.
                let twin = recs.iter().find(|n| n["engine"] == "rest-cpu" && n["case"]["phase"] == r["case"]["phase"] && n["case"]["precision"] == r["case"]["precision"]).unwrap();
                assert_eq!(r["verification"]["output"]["compared"], twin["verification"]["output"]["compared"], "{r}");
                assert!(r["verification"]["output"]["compared"].as_u64().unwrap() > 1000);
            }
        }
    }
}

#[test]
fn numpy_rest_runs_fp8_gemms_and_is_verified() {
    if !python_ready("numpy_rest_fp8") {
        return;
    }
    let (o, recs) = rest_run("rest-fp8", "numpy-rest,rest-cpu", "fp8", "2", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert_eq!(recs.len(), 4, "{err}");
    for r in &recs {
        if r["engine"] == "rest-cpu" {
            assert_eq!(r["status"], "skipped", "rest-cpu has no FP8 GEMMs: {r}");
            continue;
        }
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["case"]["precision"], "fp8");
        assert_eq!(r["verification"]["passed"], true, "{r}");
        assert!(REST_COMPONENTS.iter().all(|c| r["components_ms"][c].is_array()), "{r}");
    }
}

#[test]
fn worker_gemm_operands_and_fp8_codes_and_scales_are_bit_identical_to_ours() {
    if !python_ready("rest_bit_identity") {
        return;
    }
    let spec = ExternalSpec::peer("numpy-rest", Method::Rest);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let cases = [
        (ModelShape::tiny(), Phase::Decode, 4usize, 1usize, Precision::Fp8, 42u64),
        (ModelShape { ep: 2, ..ModelShape::tiny() }, Phase::Prefill, 1, 64, Precision::Fp8, 0xDEAD_BEEF_CAFE_F00D),
        (ModelShape::small(), Phase::Decode, 3, 1, Precision::Bf16, 7),
        (ModelShape::tiny(), Phase::Decode, 2, 1, Precision::F32, 9),
        (ModelShape::deepseek_v32_exp(), Phase::Decode, 4, 1, Precision::Fp8, 42),
    ];
    let mut fp8_seen = 0;
    for (shape, phase, batch, q, precision, seed) in cases {
        let case = Case { engine: "numpy-rest".into(), method: Method::Rest, shape, phase, context: 1024, batch, query_len: q, precision, seed, kernel: Default::default() };
        let gemms = plan(&case);
        // A few GEMMs of every kind: partial k groups (tiny's k = 96, 64), partial n blocks
        // (kv_down n = 80, 576), batched products, an expert, the bf16 ones of an fp8 case.
        let names = ["q_down", "q_up", "kv_down", "q_absorb", "o_proj", "index_w", "router", "expert_down", "lm_head"];
        for g in gemms.iter().filter(|g| names.contains(&g.name)).filter(|g| !matches!(g.expert, Some(e) if e >= 2)) {
            if g.n > 20_000 && g.k > 4096 {
                continue; // the V3.2 LM head: rows of 129280 values, nothing new
            }
            let input_rows = vec![(0, 0), (g.batch - 1, g.m - 1), (g.batch / 2, g.m / 2)];
            let weight_rows = vec![(0, 0), (g.batch - 1, g.k - 1), (0, g.k / 2)];
            let got = worker_gemm_operands(&spec, &case, g, &input_rows, &weight_rows).unwrap_or_else(|e| panic!("{}: {e}", g.name));
            let what = format!("{} of {} {:?} {:?}", g.name, case.shape.name, case.phase, case.precision);
            for (j, &(b, r)) in input_rows.iter().enumerate() {
                let ours: Vec<f32> = (0..g.k).map(|c| input_value(&case, g, b, r, c)).collect();
                assert_eq!(got.input[j], bits(&ours), "{what}: input row ({b}, {r})");
                if g.fp8 {
                    let (mut scales, mut codes) = (Vec::new(), Vec::new());
                    for group in ours.chunks(FP8_BLOCK) {
                        let (s, c) = fp8_quantise_group(group);
                        scales.push(s);
                        codes.extend(c);
                    }
                    assert_eq!(got.input_scales.as_ref().unwrap()[j], bits(&scales), "{what}: input scales of row ({b}, {r})");
                    assert_eq!(got.input_codes.as_ref().unwrap()[j], bits(&codes), "{what}: input codes of row ({b}, {r})");
                }
            }
            for (j, &(b, r)) in weight_rows.iter().enumerate() {
                let ours: Vec<f32> = (0..g.n).map(|c| if g.fp8 { fp8_weight_code(&case, g, r, c) } else { weight_value(&case, g, b, r, c) }).collect();
                assert_eq!(got.weight[j], bits(&ours), "{what}: weight row ({b}, {r})");
            }
            if g.fp8 {
                fp8_seen += 1;
                let (kb, nb) = g.blocks();
                let ours: Vec<Vec<u32>> = (0..kb).map(|i| (0..nb).map(|j| fp8_weight_scale(&case, g, i, j).to_bits()).collect()).collect();
                assert_eq!(got.weight_scales.as_ref(), Some(&ours), "{what}: weight block scales");
            } else {
                assert!(got.weight_scales.is_none() && got.input_scales.is_none() && got.input_codes.is_none(), "{what}");
            }
        }
    }
    assert!(fp8_seen >= 10, "{fp8_seen} FP8 GEMMs compared");
}

#[test]
fn rest_workers_that_answer_wrongly_fail_their_case() {
    if !python_ready("faulty_rest_workers") {
        return;
    }
    let modes = ["rest-wrong-gemm", "rest-short-gemm", "rest-missing-component"];
    let specs: Vec<String> = modes.iter().map(|m| format!("bad-{m}:rest=python3 -m ctxcost_peers.faulty {m}")).collect();
    let engines = std::iter::once("rest-cpu".to_string()).chain(modes.iter().map(|m| format!("bad-{m}"))).collect::<Vec<_>>().join(",");
    let mut extra: Vec<&str> = Vec::new();
    for s in &specs {
        extra.push("--external");
        extra.push(s);
    }
    let dir = tmpdir("faulty-rest");
    let out = dir.join("r.jsonl");
    let mut args = vec![
        "run", "--preset", "cpu-quick", "--shape", "tiny", "--engines", &engines, "--contexts", "1k", "--phase", "decode", "--batch", "2", "--precision", "f32",
        "--out", out.to_str().unwrap(), "--no-report",
    ];
    args.extend(extra);
    args.extend(SAMPLING);
    let o = ctxcost(&args, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "failed cases give exit 1: {err}");
    let recs = records(&out);
    assert_eq!(recs.len(), 1 + modes.len(), "{err}");
    let by = |id: &str| recs.iter().find(|r| r["engine"] == id).unwrap_or_else(|| panic!("no record for {id}"));
    assert_eq!(by("rest-cpu")["status"], "ok");
    let expect = [
        ("rest-wrong-gemm", "first failing GEMM: #"),
        ("rest-short-gemm", "(`router`) has"),
        ("rest-missing-component", "lacks component(s) moe"),
    ];
    for (mode, needle) in expect {
        let r = by(&format!("bad-{mode}"));
        assert_eq!(r["status"], "failed", "{mode}: {r}");
        let why = r["reason"].as_str().unwrap();
        assert!(why.contains(needle), "{mode}: reason `{why}` should contain `{needle}`");
    }
    // The one wrong element is the only mismatch: the rest of the plan came back right.
    let wrong = &by("bad-rest-wrong-gemm")["verification"]["output"];
    assert_eq!(wrong["mismatches"], 1, "{wrong}");
    // The reason names the spoiled GEMM, and only it.
    let why = by("bad-rest-wrong-gemm")["reason"].as_str().unwrap().to_string();
    assert!(why.contains("`router`") && why.contains("1 of"), "{why}");
}

#[test]
fn engines_lists_the_rest_peers() {
    let o = ctxcost(&["engines"], &[]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for id in ["numpy-rest", "torch-rest"] {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(id)).unwrap_or_else(|| panic!("{id} not listed: {text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[1], cols[2]), ("rest", "external"), "{line}");
    }
}
