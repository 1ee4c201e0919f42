//! End-to-end test of the `rest` engines: `ctxcost run --ep N` with `rest-cpu` beside the
//! attention engines writes verified rest records carrying the EP degree, `rest-cuda` is a skip
//! with its reason on a machine without a GPU, and the report's whole model is then measured.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ctxcost")).args(args).output().expect("binary runs")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ctxcost-test-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sweep(dir: &Path) -> PathBuf {
    let p = dir.join("sweep.toml");
    std::fs::write(
        &p,
        r#"
base = "cpu-quick"
name = "rest-test"
contexts = "256,1k"
decode_batch = [4]
[sampling]
warmup = 1
target_rel_ci = 0.05
min_samples = 3
max_samples = 6
max_seconds = 0.5
"#,
    )
    .unwrap();
    p
}

#[test]
fn rest_cpu_records_make_the_whole_model_measured() {
    let dir = tmpdir("rest");
    let sw = sweep(&dir);
    let out = dir.join("r.jsonl");
    let o = run(&[
        "run",
        "--sweep",
        sw.to_str().unwrap(),
        "--engines",
        "dense-cpu,dsa-cpu,rest-cpu,rest-cuda",
        "--phase",
        "decode",
        "--ep",
        "4",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let recs: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 2 * 4, "2 contexts x 4 engines");
    let rest: Vec<&serde_json::Value> = recs.iter().filter(|r| r["engine"] == "rest-cpu").collect();
    assert_eq!(rest.len(), 2);
    for r in &rest {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["case"]["method"], "rest");
        assert_eq!(r["case"]["shape"]["ep"], 4);
        assert!(r["key"].as_str().unwrap().ends_with("|ep=4"), "{}", r["key"]);
        assert_eq!(r["verification"]["passed"], true);
        assert_eq!(r["verification"]["method"], "full");
        for c in ["mla_proj", "indexer_proj", "router", "moe", "dense_mlp", "head"] {
            assert!(r["components_ms"][c].as_array().is_some_and(|v| !v.is_empty()), "{c} missing: {r}");
        }
        assert!(r["work"]["flops"].as_f64().unwrap() > 0.0 && r["memory"]["kv_bytes_model"] == 0.0);
    }
    if !Path::new("/dev/nvidia0").exists() {
        let cuda = recs.iter().filter(|r| r["engine"] == "rest-cuda").collect::<Vec<_>>();
        assert_eq!(cuda.len(), 2);
        assert!(cuda.iter().all(|r| r["status"] == "skipped" && r["reason"].as_str().is_some_and(|s| !s.is_empty())), "{cuda:?}");
    }
    // The end-of-run table pairs dense with DSA only; the rest of the layer has its own lines.
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("rest of the layer: rest-cpu decode f32 B=4").count(), 2, "{stdout}");
        let md = std::fs::read_to_string(dir.join("r-report").join("REPORT.md")).unwrap();
    assert!(md.contains("Rest of the model for decode") && md.contains("measured: `rest-cpu` (the fastest verified `rest` engine here), median of 2 record(s), f32 GEMMs at 4 tokens, EP 4"), "{md}");
    assert!(md.contains("all-to-all"));
}

#[test]
fn ep_that_does_not_divide_the_experts_is_refused() {
    let o = run(&["run", "--shape", "tiny", "--engines", "rest-cpu", "--ep", "3", "--no-report"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--ep 3") && err.contains("16 routed experts"), "{err}");
}
