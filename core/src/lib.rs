//! ctxcost-core: the shared vocabulary of ctxcost.
//!
//! Everything the other crates agree on lives here and nowhere else: model shapes
//! ([`shape`]), what one measured case is ([`case`]), the analytic FLOP/byte/KV model of
//! DSA.md section 3 ([`analytic`]), the seeded input generator that CPU and GPU engines
//! reproduce bit for bit ([`inputs`]), the versioned record schema ([`record`]), the
//! statistics used by the runner and the reports ([`stats`]), output verification
//! helpers ([`verify`]), the records of remote endpoints ([`endpoint`]), the API price
//! table ([`prices`]), the GEMMs of the rest of a layer ([`rest`]) and where a record was
//! measured in a sweep spread over GPUs and hosts ([`placement`]). This crate knows no
//! engine.

pub mod analytic;
pub mod case;
pub mod endpoint;
pub mod error;
pub mod inputs;
pub mod jsonl;
pub mod numeric;
pub mod placement;
pub mod prices;
pub mod record;
pub mod rest;
pub mod shape;
pub mod stats;
pub mod units;
pub mod verify;

pub use case::{Backend, Case, KernelChoice, Method, Phase, PointKey, Precision};
pub use error::CoreError;
pub use inputs::{InputTensor, Inputs};
pub use shape::ModelShape;
