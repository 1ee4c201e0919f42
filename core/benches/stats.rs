//! Criterion benchmarks of the statistics every record and every comparison pays for: the
//! bootstrap CI of a median ([`median_ci`], run once per case by the runner's stopping rule,
//! often after every sample) and of a ratio of medians ([`ratio_ci`], paired and unpaired),
//! at sample counts the runner produces (a quick case: 15, a capped case: 200).
//!
//! ```text
//! cargo bench --bench stats -- --save-baseline main     # record a baseline
//! cargo bench --bench stats -- --baseline main          # compare with it
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use ctxcost_core::inputs::splitmix64;
use ctxcost_core::stats::{median_ci, ratio_ci, summarize};

/// Deterministic positive samples with a little spread, like latencies in ms.
fn samples(n: usize, seed: u64) -> Vec<f64> {
    (0..n).map(|i| 10.0 + (splitmix64(seed ^ i as u64) % 1000) as f64 / 1000.0).collect()
}

fn bench_stats(c: &mut Criterion) {
    let mut group = c.benchmark_group("stats");
    group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for n in [15usize, 200] {
        let a = samples(n, 1);
        let b = samples(n, 2);
        let b_short = samples(n - n / 4, 3);
        group.bench_with_input(BenchmarkId::new("median_ci", n), &a, |bench, a| bench.iter(|| median_ci(black_box(a))));
        group.bench_with_input(BenchmarkId::new("summarize", n), &a, |bench, a| bench.iter(|| summarize(black_box(a))));
        group.bench_with_input(BenchmarkId::new("ratio_ci_paired", n), &(&a, &b), |bench, (a, b)| {
            bench.iter(|| ratio_ci(black_box(a), black_box(b)))
        });
        group.bench_with_input(BenchmarkId::new("ratio_ci_unpaired", n), &(&a, &b_short), |bench, (a, b)| {
            bench.iter(|| ratio_ci(black_box(a), black_box(b)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_stats);
criterion_main!(benches);
