//! ctxcost-workloads: what to run.
//!
//! A [`sweep::Sweep`] (from a preset, a TOML file or flags) expands into points, each a set
//! of cases (one per engine) that the runner measures interleaved. Inputs are seeded (see
//! `ctxcost_core::inputs`) or loaded from a safetensors file ([`tensors`]).

pub mod sweep;
pub mod tensors;

pub use sweep::{Point, Sampling, Sweep, PRESETS};

/// Errors of sweep and tensor loading.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error(transparent)]
    Core(#[from] ctxcost_core::CoreError),
    #[error("unknown preset `{0}` (choose one of: cpu-quick, cpu-full, h200)")]
    UnknownPreset(String),
    #[error("cannot read sweep file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid sweep file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("cannot load tensors from {path}: {message}")]
    Tensors { path: String, message: String },
}
