//! CPU engines on candle-core: `dense-cpu`, `dsa-cpu` and `rest-cpu` (f32 and bf16).
//!
//! - [`DenseCpu`]: dense MLA, MHA mode in prefill, MQA mode in decode (`dense`).
//! - [`DsaCpu`]: lightning indexer, top-k and sparse MQA-mode attention (`dsa`).
//! - [`RestCpu`] (`rest`): the rest of a layer, its GEMMs (`rest`; see its module).
//!
//! Both compute what [`crate::reference`] computes (causal visibility, the top-k tie rule,
//! `-1` padding, output layouts). The parts: `attention`, the blocked softmax attention both
//! use; `stored`, how operands are held (f32 tensors, or bf16 widened block by block);
//! `ops`, the shared host kernels and the precision rules; `plan`, the memory estimate,
//! the refusal of cases that would not fit, and the chunking over queries that keeps the
//! working set bounded.
//!
//! `prepare` builds every operand from [`crate::reference::materialize_rounded`] (untimed);
//! `run` is timed with the monotonic clock ([`std::time::Instant`]) and includes everything
//! from the first product to the output in host memory. FP8 cases are refused: the FP8 formats
//! exist only in the CUDA engines.

mod attention;
mod dense;
mod dsa;
mod ops;
mod plan;
mod rest;
mod stored;

pub use rest::RestCpu;

use ctxcost_core::{Case, InputTensor, Inputs, Precision};

use crate::{Engine, EngineError, Output, Support, Timing};
use plan::Kind;

/// Why a case cannot run on the CPU engines, if it cannot.
fn unsupported(case: &Case, sparse: bool) -> Option<String> {
    if let Err(e) = case.validate() {
        return Some(format!("invalid case: {e}"));
    }
    if case.precision == Precision::Fp8 {
        return Some("fp8 needs the CUDA engines".into());
    }
    if sparse && !case.shape.has_indexer() {
        return Some(format!("shape `{}` has no lightning indexer, which DSA needs", case.shape.name));
    }
    if sparse && (case.batch as u64) * (case.context as u64) >= u64::from(u32::MAX) {
        return Some("batch x context must stay below 2^32 key rows".into());
    }
    if case.context > i32::MAX as usize {
        return Some("context beyond i32 key positions".into());
    }
    None
}

fn needed(kind: Kind) -> &'static [InputTensor] {
    match kind {
        Kind::DenseMha => &[InputTensor::MhaQ, InputTensor::MhaK, InputTensor::MhaV],
        Kind::DenseMqa => &[InputTensor::MqaQ, InputTensor::Latent],
        Kind::Dsa => &[InputTensor::MqaQ, InputTensor::Latent, InputTensor::IndexQ, InputTensor::IndexK, InputTensor::IndexW],
    }
}

fn supports(case: &Case, sparse: bool) -> Support {
    if let Some(why) = unsupported(case, sparse) {
        return Support::No(why);
    }
    match plan::check_fits(case, Kind::of(case, sparse)) {
        Ok(_) => Support::Yes,
        Err(why) => Support::No(why),
    }
}

/// Checks shared by both engines' `prepare`: support, inputs, memory plan.
fn admit(case: &Case, inputs: &Inputs, sparse: bool, max_chunk: Option<usize>) -> Result<(Kind, plan::Plan), EngineError> {
    if let Some(why) = unsupported(case, sparse) {
        return Err(EngineError::Unsupported(why));
    }
    let kind = Kind::of(case, sparse);
    inputs.check(case, needed(kind)).map_err(|e| EngineError::backend("case inputs", e))?;
    let mut plan = plan::check_fits(case, kind).map_err(EngineError::OutOfMemory)?;
    if let Some(m) = max_chunk {
        plan.chunk = plan.chunk.min(m);
    }
    Ok((kind, plan))
}

/// Defines one CPU engine: its struct (prepared state, last output, optional chunk cap), and
/// the `Engine` impl that both engines share; only the id, the kind and `prepare` differ.
macro_rules! cpu_engine {
    ($(#[$doc:meta])* $name:ident, $id:literal, sparse = $sparse:literal, $prepared:ty,
     |$case:ident, $inputs:ident, $kind:ident, $plan:ident| $prepare:expr) => {
        $(#[$doc])*
        #[derive(Default)]
        pub struct $name {
            prepared: Option<$prepared>,
            last: Option<Output>,
            max_chunk: Option<usize>,
        }

        impl $name {
            pub fn new() -> Self {
                Self::default()
            }

            /// Process at most `queries` queries per sequence in one step (default: as many as
            /// the memory plan allows). Results do not depend on it; tests use it to exercise
            /// chunking.
            pub fn with_max_chunk(mut self, queries: usize) -> Self {
                self.max_chunk = Some(queries.max(1));
                self
            }
        }

        impl Engine for $name {
            fn id(&self) -> &str {
                $id
            }
            fn timer(&self) -> &'static str {
                "monotonic-clock"
            }
            fn supports(&self, case: &Case) -> Support {
                supports(case, $sparse)
            }
            fn prepare(&mut self, $case: &Case, $inputs: &Inputs) -> Result<(), EngineError> {
                self.release();
                let ($kind, $plan) = admit($case, $inputs, $sparse, self.max_chunk)?;
                self.prepared = Some($prepare?);
                Ok(())
            }
            fn run(&mut self) -> Result<Timing, EngineError> {
                let p = self.prepared.as_mut().ok_or_else(|| EngineError::State(concat!($id, ": run before prepare").into()))?;
                let (timing, out) = p.run()?;
                self.last = Some(out);
                Ok(timing)
            }
            fn output(&mut self) -> Result<Output, EngineError> {
                if self.last.is_none() {
                    self.run()?;
                }
                self.last.clone().ok_or_else(|| EngineError::State(concat!($id, ": no output").into()))
            }
            fn release(&mut self) {
                self.prepared = None;
                self.last = None;
            }
        }
    };
}

cpu_engine!(
    /// Dense MLA on the CPU: MHA mode (qk `qk_nope + qk_rope`, v `v_head_dim`) for prefill, MQA
    /// mode over the whole latent for decode.
    DenseCpu, "dense-cpu", sparse = false, dense::Dense,
    |case, inputs, kind, plan| dense::Dense::prepare(case, inputs, kind, plan)
);

cpu_engine!(
    /// DSA on the CPU: indexer scores over every visible key, top-k (`min(top_k, context)`),
    /// MQA-mode attention over the selected keys. Timing components: `indexer`, `topk`,
    /// `attention`.
    DsaCpu, "dsa-cpu", sparse = true, dsa::Dsa,
    |case, inputs, _kind, plan| dsa::Dsa::prepare(case, inputs, plan)
);
