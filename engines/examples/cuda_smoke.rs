//! Device smoke test of `dense-cuda`: checks every kernel against the f64 reference on fresh
//! seeds (full comparisons at small sizes, sampled rows at large ones, and a bit-for-bit
//! repeat of the output after the timed runs), measures the copy and GEMM ceilings, then times
//! the dense cases and prints achieved TFLOP/s and TB/s (analytic work over the median time).
//!
//! Build: `cargo build --release -p ctxcost-engines --features cuda --example cuda_smoke`.
//! Run: `cuda_smoke [check|tiles|time|decode|all] [AXIS=VALUE ...]` (default `all`; `decode` checks
//! and times the decode cases only; each `AXIS=VALUE` is a kernel choice of every case, e.g.
//! `decode=mma`, see `ctxcost_engines::kernel_choice`); `CTXCOST_SEED` replays a seed;
//! `CTXCOST_TILES` lists the prefill tile shapes to compare (`prefill_tile` values).

#[cfg(not(feature = "cuda"))]
fn main() {
    eprintln!("cuda_smoke needs the `cuda` feature: cargo build --release -p ctxcost-engines --features cuda --example cuda_smoke");
    std::process::exit(2);
}

#[cfg(feature = "cuda")]
fn main() -> std::process::ExitCode {
    smoke::main()
}

#[cfg(feature = "cuda")]
mod smoke {
    use std::process::ExitCode;
    use std::time::Instant;

    use ctxcost_core::analytic::case_work;
    use ctxcost_core::{Case, Inputs, KernelChoice, ModelShape, Phase, Precision};
    use ctxcost_engines::check::{verify, Rows};
    use ctxcost_engines::cuda::{self, DenseCuda};
    use ctxcost_engines::kernel_choice::check_case;
    use ctxcost_engines::{Engine, Support};

    fn seed() -> u64 {
        std::env::var("CTXCOST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64);
            ctxcost_core::inputs::splitmix64(t).max(1)
        })
    }

    /// The kernel choices given after the mode (`AXIS=VALUE` ...).
    fn choices() -> KernelChoice {
        std::env::args().skip(2).filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).fold(KernelChoice::default(), |c, (k, v)| c.with(&k, &v))
    }

    fn case(phase: Phase, precision: Precision, context: usize, batch: usize, q: usize, seed: u64) -> Case {
        Case {
            engine: "dense-cuda".into(),
            method: ctxcost_core::Method::Dense,
            shape: ModelShape::deepseek_v32_exp(),
            phase,
            context,
            batch,
            query_len: q,
            precision,
            seed,
            kernel: choices(),
        }
    }

    struct Row {
        label: String,
        status: String,
        median_ms: f64,
        tflops: f64,
        tbps: f64,
    }

    fn label(c: &Case) -> String {
        format!("{} {} L={} B={} q={}", c.phase, c.precision, c.context, c.batch, c.query_len)
    }

    /// Prepare, optionally verify (and re-check after timing), time `runs` samples.
    fn measure(c: &Case, rows: Option<Rows>, runs: usize) -> Row {
        let mut row = Row { label: label(c), status: String::new(), median_ms: f64::NAN, tflops: f64::NAN, tbps: f64::NAN };
        let mut e = DenseCuda::new();
        if let Support::No(why) = e.supports(c) {
            row.status = format!("skipped: {why}");
            return row;
        }
        let inputs = Inputs::seeded(c.seed);
        let t0 = Instant::now();
        if let Err(err) = e.prepare(c, &inputs) {
            row.status = format!("prepare failed: {err}");
            return row;
        }
        let prep_s = t0.elapsed().as_secs_f64();
        let mem = e.device_memory();
        let mut first = None;
        let mut ok = true;
        if let Some(rows) = &rows {
            match e.output() {
                Ok(out) => {
                    let t1 = Instant::now();
                    let v = verify(c, &inputs, &out, rows);
                    let nan = out.values.iter().filter(|x| !x.is_finite()).count();
                    println!(
                        "  verify {:<40} {:<28} max_abs {:.3e} max_rel {:.3e} norm_rel {:.3e} mismatches {} non_finite(all) {} -> {} ({:.1}s)",
                        label(c),
                        v.method,
                        v.output.max_abs_err,
                        v.output.max_rel_err,
                        v.output.norm_rel_err,
                        v.output.mismatches,
                        nan,
                        if v.passed { "PASS" } else { "FAIL" },
                        t1.elapsed().as_secs_f64()
                    );
                    ok = v.passed && nan == 0;
                    first = Some(out.values);
                }
                Err(err) => {
                    row.status = format!("output failed: {err}");
                    return row;
                }
            }
        }
        let mut samples = Vec::new();
        let mut comps = Vec::new();
        for i in 0..runs + 2 {
            match e.run() {
                Ok(t) => {
                    if i >= 2 {
                        samples.push(t.total_ms);
                        comps = t.components.clone();
                    }
                }
                Err(err) => {
                    row.status = format!("run failed: {err}");
                    return row;
                }
            }
        }
        if let Some(first) = first {
            match e.output() {
                Ok(again) => {
                    let same = again.values.iter().zip(&first).all(|(a, b)| a.to_bits() == b.to_bits());
                    if !same {
                        println!("  REPEAT MISMATCH {}: output changed between runs (a race?)", label(c));
                        ok = false;
                    }
                }
                Err(err) => {
                    row.status = format!("output failed: {err}");
                    return row;
                }
            }
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let med = samples[samples.len() / 2];
        let w = case_work(c);
        row.median_ms = med;
        row.tflops = w.flops / (med * 1e-3) / 1e12;
        row.tbps = w.bytes / (med * 1e-3) / 1e12;
        row.status = format!(
            "{}min {:.3} max {:.3} ms; prep {:.1}s; dev {:.2} GiB{}",
            if rows.is_some() { if ok { "verified; " } else { "VERIFY FAILED; " } } else { "" },
            samples[0],
            samples[samples.len() - 1],
            prep_s,
            mem.map_or(0.0, |m| m.peak_allocated as f64 / (1u64 << 30) as f64),
            if comps.is_empty() { String::new() } else { format!("; {comps:?}") }
        );
        e.release();
        row
    }

    fn print(rows: &[Row]) {
        println!("{:<48} {:>10} {:>9} {:>8}  status", "case", "median ms", "TFLOP/s", "TB/s");
        for r in rows {
            println!("{:<48} {:>10.3} {:>9.1} {:>8.3}  {}", r.label, r.median_ms, r.tflops, r.tbps, r.status);
        }
    }

    pub fn main() -> ExitCode {
        let mode = std::env::args().nth(1).unwrap_or_else(|| "all".into());
        if let Err(e) = cuda::probe() {
            println!("no usable GPU: {e}");
            return ExitCode::from(2);
        }
        for (k, v) in cuda::device_facts().unwrap_or_default() {
            println!("device {k} = {v}");
        }
        println!("l2 flush between samples: {}", cuda::l2_flush_enabled());
        let s = seed();
        println!("seed {s}");
        let mut failed = false;

        if mode == "check" || mode == "all" {
            let sampled = |q, h| Some(Rows::Sampled { queries: q, heads: h });
            let checks: Vec<(Case, Option<Rows>)> = vec![
                // Full: q not a multiple of 128, diagonal not on a tile boundary, 2 sequences.
                (case(Phase::Prefill, Precision::Bf16, 390, 2, 200, s), Some(Rows::All)),
                (case(Phase::Prefill, Precision::Bf16, 1024, 1, 256, s ^ 1), sampled(16, 32)),
                (case(Phase::Prefill, Precision::Bf16, 1000, 1, 1000, s ^ 2), sampled(12, 32)),
                (case(Phase::Prefill, Precision::Bf16, 16384, 1, 4096, s ^ 3), sampled(6, 8)),
                (case(Phase::Prefill, Precision::Bf16, 16384, 1, 16384, s ^ 4), sampled(6, 8)),
                (case(Phase::Prefill, Precision::Bf16, 65536, 1, 4096, s ^ 5), sampled(4, 4)),
                // Decode: full at small sizes (several splits, q = 2), sampled at large.
                (case(Phase::Decode, Precision::Bf16, 3000, 4, 1, s ^ 6), Some(Rows::All)),
                (case(Phase::Decode, Precision::Fp8, 3000, 4, 1, s ^ 7), Some(Rows::All)),
                (case(Phase::Decode, Precision::Bf16, 1000, 2, 2, s ^ 8), Some(Rows::All)),
                (case(Phase::Decode, Precision::Fp8, 777, 3, 2, s ^ 9), Some(Rows::All)),
                (case(Phase::Decode, Precision::Bf16, 100, 64, 1, s ^ 10), Some(Rows::All)),
                (case(Phase::Decode, Precision::Bf16, 16384, 64, 1, s ^ 11), sampled(4, 8)),
                (case(Phase::Decode, Precision::Fp8, 16384, 64, 1, s ^ 12), sampled(4, 8)),
                (case(Phase::Decode, Precision::Bf16, 65536, 1, 1, s ^ 13), sampled(2, 16)),
            ];
            println!("== correctness");
            let mut rows = Vec::new();
            for (c, r) in &checks {
                let row = measure(c, r.clone(), 3);
                failed |= !row.status.starts_with("verified");
                rows.push(row);
            }
            print(&rows);
        }

        if mode == "decode" {
            let sampled = |q, h| Some(Rows::Sampled { queries: q, heads: h });
            let checks: Vec<(Case, Option<Rows>)> = vec![
                (case(Phase::Decode, Precision::Bf16, 3000, 4, 1, s ^ 6), Some(Rows::All)),
                (case(Phase::Decode, Precision::Bf16, 1000, 2, 2, s ^ 8), Some(Rows::All)),
                (case(Phase::Decode, Precision::Bf16, 777, 3, 2, s ^ 9), Some(Rows::All)),
                (case(Phase::Decode, Precision::Bf16, 100, 64, 1, s ^ 10), Some(Rows::All)),
                (case(Phase::Decode, Precision::Bf16, 16384, 64, 1, s ^ 11), sampled(4, 8)),
                (case(Phase::Decode, Precision::Bf16, 16384, 64, 2, s ^ 14), sampled(4, 8)),
                (case(Phase::Decode, Precision::Bf16, 65536, 1, 1, s ^ 13), sampled(2, 16)),
                (case(Phase::Decode, Precision::Fp8, 3000, 4, 1, s ^ 7), Some(Rows::All)),
            ];
            println!("== decode correctness (kernel choices: {:?})", choices().to_string());
            let mut rows = Vec::new();
            for (c, r) in &checks {
                let row = measure(c, r.clone(), 3);
                failed |= !row.status.starts_with("verified");
                rows.push(row);
            }
            print(&rows);
            println!("== decode timing (fresh seed, L2 flushed between samples)");
            let mut rows = Vec::new();
            for &l in &[4096usize, 16384, 65536, 131072] {
                rows.push(measure(&case(Phase::Decode, Precision::Bf16, l, 64, 1, s ^ 300 ^ l as u64), None, 10));
            }
            for &b in &[1usize, 8] {
                rows.push(measure(&case(Phase::Decode, Precision::Bf16, 16384, b, 1, s ^ 400 ^ b as u64), None, 10));
            }
            rows.push(measure(&case(Phase::Decode, Precision::Bf16, 16384, 64, 2, s ^ 500), None, 10));
            print(&rows);
        }

        if mode == "tiles" || mode == "all" {
            // Prefill tile shapes side by side: verified, then timed, on the same cases.
            let shapes = std::env::var("CTXCOST_TILES").unwrap_or_else(|_| "8x64,4x64x2,8x128,4x128x2,8x32".into());
            println!("== prefill tiles ({shapes})");
            let mut rows = Vec::new();
            for shape in shapes.split(',') {
                let tiled = |c: Case| Case { kernel: c.kernel.clone().with("prefill_tile", shape), ..c };
                if let Err(why) = check_case(&tiled(case(Phase::Prefill, Precision::Bf16, 390, 2, 200, s))) {
                    println!("  tile {shape}: {why}");
                    continue;
                }
                let checks = [
                    (tiled(case(Phase::Prefill, Precision::Bf16, 390, 2, 200, s ^ 600)), Some(Rows::Sampled { queries: 24, heads: 16 }), 3),
                    (tiled(case(Phase::Prefill, Precision::Bf16, 16384, 1, 4096, s ^ 601)), Some(Rows::Sampled { queries: 4, heads: 4 }), 10),
                    (tiled(case(Phase::Prefill, Precision::Bf16, 65536, 1, 4096, s ^ 602)), None, 10),
                    (tiled(case(Phase::Prefill, Precision::Bf16, 16384, 1, 16384, s ^ 603)), None, 10),
                ];
                for (c, r, n) in checks {
                    let mut row = measure(&c, r.clone(), n);
                    if r.is_some() {
                        failed |= !row.status.starts_with("verified");
                    }
                    row.label = format!("tile {shape} {}", row.label);
                    rows.push(row);
                }
            }
            print(&rows);
        }

        if mode == "time" || mode == "all" {
            println!("== ceilings");
            let copy = cuda::ceilings::copy_tbps();
            let gemm = cuda::ceilings::gemm_tflops();
            println!("copy_tbps {copy:?}");
            println!("gemm_bf16_tflops {gemm:?}");
            println!("== timing (fresh seed, L2 flushed between samples)");
            let mut cases = Vec::new();
            for &l in &[4096usize, 16384, 32768, 65536, 131072] {
                cases.push(case(Phase::Prefill, Precision::Bf16, l, 1, 4096.min(l), s ^ 100 ^ l as u64));
            }
            for &l in &[16384usize, 65536] {
                cases.push(case(Phase::Prefill, Precision::Bf16, l, 1, l, s ^ 200 ^ l as u64));
            }
            for &p in &[Precision::Bf16, Precision::Fp8] {
                for &l in &[4096usize, 16384, 65536, 131072] {
                    cases.push(case(Phase::Decode, p, l, 64, 1, s ^ 300 ^ l as u64));
                }
            }
            for &b in &[1usize, 8] {
                cases.push(case(Phase::Decode, Precision::Bf16, 16384, b, 1, s ^ 400 ^ b as u64));
            }
            cases.push(case(Phase::Decode, Precision::Bf16, 16384, 64, 2, s ^ 500));
            let mut rows = Vec::new();
            for c in &cases {
                let runs = if c.phase == Phase::Prefill && c.query_len == c.context && c.context >= 65536 { 5 } else { 10 };
                rows.push(measure(c, None, runs));
            }
            println!("== summary (ceilings: copy {copy:.3?} TB/s, gemm {gemm:.1?} TFLOP/s)");
            print(&rows);
        }
        if failed {
            println!("SOME CHECKS FAILED");
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    }
}
