//! ctxcost-engines: the engine seam and its implementations.
//!
//! - [`Engine`]: the small trait every engine implements (DESIGN.md section 3).
//! - [`reference`]: naive f64 implementations, the oracle every engine is checked against.
//! - [`cpu`]: candle-core engines `dense-cpu` and `dsa-cpu` (f32, bf16).
//! - `cuda` (feature `cuda`, detected at run time): `dense-cuda`, `dsa-cuda`.
//! - `http` (feature `http`): remote OpenAI-compatible endpoints (vLLM, SGLang, hosted APIs).
//! - [`external`]: engines in another process (library peers in `peers/`, anyone's kernel),
//!   spoken to over JSON lines (`peers/PROTOCOL.md`).
//! - [`check`]: verification of an engine's output against the reference.
//! - [`kernel_choice`]: the kernel variants of the CUDA engines, chosen per case (`--variant`).
//! - [`rest`]: what the `rest` engines (the rest of a layer's GEMMs) share: their verification.
//! - [`registry`]: the engines this build knows, and whether each can run here.

pub mod check;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "http")]
pub mod http;
pub mod external;
pub mod kernel_choice;
pub mod reference;
pub mod registry;
pub mod rest;

use ctxcost_core::{Case, Inputs};

pub use registry::{available_engines, backend_of, engine_ids, engines, make_engine, make_engine_with, method_of, EngineEntry, EngineInfo};

/// Errors of engines.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The case cannot run on this engine (becomes a `skipped` record).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The device ran out of memory (becomes `skipped: out of memory`).
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// Anything the backend reported.
    #[error("{context}: {source}")]
    Backend { context: String, source: Box<dyn std::error::Error + Send + Sync> },
    /// Misuse of the engine API (e.g. run before prepare).
    #[error("{0}")]
    State(String),
}

impl EngineError {
    pub fn backend(context: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        EngineError::Backend { context: context.into(), source: Box::new(source) }
    }
}

/// Whether an engine supports a case.
#[derive(Debug, Clone, PartialEq)]
pub enum Support {
    Yes,
    No(String),
}

/// The time of one run, as the engine measured it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timing {
    pub total_ms: f64,
    /// Named parts of the run (DSA: `indexer`, `topk`, `attention`).
    pub components: Vec<(&'static str, f64)>,
}

/// An engine's result for verification.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Attention output `[B, q, H, v_dim]` (v_dim: MHA 128 for dense prefill, else 512).
    pub values: Vec<f32>,
    /// DSA: selected key positions `[B, q, k]`, `k = min(top_k, context)`, each row
    /// ascending with `-1` padding at the end.
    pub indices: Option<Vec<i32>>,
    /// Only the rows verification asks for (engines in another process send these instead
    /// of the whole output; `values` and `indices` are then empty).
    pub sampled: Option<SampledOutput>,
}

/// Some rows of an output: for each `(sequence, query)` in `queries`, the values of `heads`
/// (in that order, `v_dim` each) and, for DSA, the selected positions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SampledOutput {
    pub queries: Vec<(usize, usize)>,
    pub heads: Vec<usize>,
    pub values: Vec<Vec<f32>>,
    pub indices: Option<Vec<Vec<i32>>>,
}

/// Device memory figures an engine can report.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DeviceMemory {
    pub peak_allocated: u64,
    pub free_before: Option<u64>,
    pub free_after: Option<u64>,
}

/// The engine seam. One engine instance measures one case at a time:
/// `supports` -> `prepare` (untimed) -> `output` (verification) -> `run` x N (timed).
pub trait Engine {
    /// Stable id used in records (`dense-cpu`, `dsa-cuda`, ...).
    fn id(&self) -> &str;
    /// How `run` measures time (`monotonic-clock`, `cuda-events`).
    fn timer(&self) -> &'static str;
    /// Whether the case can run here; a `No` is recorded as a skip with its reason.
    fn supports(&self, case: &Case) -> Support;
    /// Allocate, generate or load inputs, compile kernels. Untimed.
    fn prepare(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError>;
    /// One timed execution.
    fn run(&mut self) -> Result<Timing, EngineError>;
    /// The result of the last run (runs once if none yet).
    fn output(&mut self) -> Result<Output, EngineError>;
    /// How verification should compare (full at small sizes, sampled rows at large).
    fn verify_rows(&self, case: &Case) -> check::Rows {
        check::Rows::auto(case)
    }
    /// Device memory figures, for device engines.
    fn device_memory(&self) -> Option<DeviceMemory> {
        None
    }
    /// Free everything `prepare` allocated.
    fn release(&mut self) {}
}
