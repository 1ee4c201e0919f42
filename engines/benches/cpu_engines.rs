//! Criterion benchmarks of the CPU engines: one timed `run` of `dense-cpu` and `dsa-cpu`, prefill
//! (a 128-token chunk at the end of the context, batch 1) and decode (one token, batch 4), on
//! the `tiny` shape at two contexts, the same geometry as the `cpu-quick` preset.
//!
//! Inputs are prepared once per case, untimed, as the runner does; only `Engine::run` is in the
//! measured loop. A case the engine refuses (it reports why) is skipped, not failed.
//!
//! ```text
//! cargo bench --bench cpu_engines -- --save-baseline main     # record a baseline
//! cargo bench --bench cpu_engines -- --baseline main          # compare with it
//! cargo test  --benches                                       # run each once (smoke test)
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use ctxcost_core::{Case, Inputs, ModelShape, Phase, Precision};
use ctxcost_engines::{make_engine, Support};

const ENGINES: [&str; 2] = ["dense-cpu", "dsa-cpu"];
const CONTEXTS: [usize; 2] = [1024, 4096];

fn case(engine: &str, phase: Phase, context: usize) -> Case {
    let (batch, query_len) = match phase {
        Phase::Prefill => (1, 128.min(context)),
        Phase::Decode => (4, 1),
    };
    Case { engine: engine.into(), method: ctxcost_core::Method::legacy_from_id(engine), shape: ModelShape::tiny(), phase, context, batch, query_len, precision: Precision::F32, seed: 42, kernel: Default::default() }
}

fn bench_phase(c: &mut Criterion, phase: Phase) {
    let mut group = c.benchmark_group(format!("cpu-{phase}"));
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for engine in ENGINES {
        for context in CONTEXTS {
            let case = case(engine, phase, context);
            let mut eng = make_engine(engine).expect("engine id from the registry");
            if let Support::No(why) = eng.supports(&case) {
                eprintln!("skipping {}: {why}", case.key());
                continue;
            }
            if let Err(e) = eng.prepare(&case, &Inputs::seeded(case.seed)) {
                eprintln!("skipping {}: prepare failed: {e}", case.key());
                continue;
            }
            group.bench_function(BenchmarkId::new(engine, context), |b| {
                b.iter(|| black_box(eng.run().expect("a prepared engine runs")));
            });
            eng.release();
        }
    }
    group.finish();
}

fn prefill(c: &mut Criterion) {
    bench_phase(c, Phase::Prefill);
}

fn decode(c: &mut Criterion) {
    bench_phase(c, Phase::Decode);
}

criterion_group!(benches, prefill, decode);
criterion_main!(benches);
