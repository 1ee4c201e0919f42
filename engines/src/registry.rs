//! The engine table: the one place that knows the engines this build can run.
//!
//! Each entry gives an engine's id, method (`dense` | `dsa` | `rest`), backend (`cpu`, `cuda`,
//! `external`, `http`), description, availability probe and constructor. Code asks the table
//! for an engine's method and backend; it never reads them from the id's spelling. Adding a
//! native engine is one module and one entry here. The library peers of `peers/` are listed
//! once, in `peers/ctxcost_peers/adapters.json`, which both this table and the Python package
//! read: adding a peer is its adapter module and one entry there. A user's own worker needs
//! no entry at all (`--external ID:METHOD=COMMAND` makes one at run time).

use ctxcost_core::{Backend, Method};

use crate::external::{ExternalSpec, External};
use crate::{cpu, Engine};

/// How an entry makes its engine.
#[derive(Debug, Clone, Copy)]
pub enum Make {
    /// A native engine's constructor.
    Native(fn() -> Box<dyn Engine>),
    /// A library peer served by `python3 -m ctxcost_peers ID`.
    Peer,
}

/// One engine this build knows.
#[derive(Debug, Clone)]
pub struct EngineEntry {
    pub id: &'static str,
    pub method: Method,
    pub backend: Backend,
    pub description: &'static str,
    /// `Ok(())` when it may run here, else why not. Cheap: external entries only check that
    /// their worker package can be found (the worker's own `hello` says more when it runs).
    pub probe: fn() -> Result<(), String>,
    pub make: Make,
}

impl EngineEntry {
    /// A new engine of this entry.
    pub fn make(&self) -> Box<dyn Engine> {
        match self.make {
            Make::Native(f) => f(),
            Make::Peer => Box::new(External::new(ExternalSpec::peer(self.id, self.method))),
        }
    }
}

fn always() -> Result<(), String> {
    Ok(())
}

fn peers_found() -> Result<(), String> {
    match crate::external::peers_dir() {
        Some(_) => Ok(()),
        None => Err("the `ctxcost_peers` package is not found: run from the repository root, set CTXCOST_PEERS_DIR, or `pip install ./peers`".into()),
    }
}

/// Our native engines.
const NATIVE: &[EngineEntry] = &[
    EngineEntry {
        id: "dense-cpu",
        method: Method::Dense,
        backend: Backend::Cpu,
        description: "dense MLA on the CPU (candle-core; MHA-mode prefill, MQA-mode decode; f32, bf16)",
        probe: always,
        make: Make::Native(|| Box::new(cpu::DenseCpu::new())),
    },
    EngineEntry {
        id: "dsa-cpu",
        method: Method::Dsa,
        backend: Backend::Cpu,
        description: "DSA on the CPU (candle-core; indexer, top-k, sparse MQA; f32, bf16)",
        probe: always,
        make: Make::Native(|| Box::new(cpu::DsaCpu::new())),
    },
    EngineEntry {
        id: "dense-cuda",
        method: Method::Dense,
        backend: Backend::Cuda,
        description: "dense MLA on an NVIDIA GPU (NVRTC kernels; bf16 prefill, bf16/fp8 decode)",
        probe: cuda_available,
        make: Make::Native(make_dense_cuda),
    },
    EngineEntry {
        id: "dsa-cuda",
        method: Method::Dsa,
        backend: Backend::Cuda,
        description: "DSA on an NVIDIA GPU (NVRTC kernels; bf16/fp8 indexer, radix top-k, sparse MQA)",
        probe: cuda_available,
        make: Make::Native(make_dsa_cuda),
    },
    EngineEntry {
        id: "rest-cpu",
        method: Method::Rest,
        backend: Backend::Cpu,
        description: "the rest of a layer on the CPU (candle-core GEMMs: MLA and indexer projections, router, MoE with --ep, dense MLP, LM head; tiny/small; f32, bf16)",
        probe: always,
        make: Make::Native(|| Box::new(cpu::RestCpu::new())),
    },
    EngineEntry {
        id: "rest-cuda",
        method: Method::Rest,
        backend: Backend::Cuda,
        description: "the rest of a layer on an NVIDIA GPU (MLA and indexer projections, router, MoE with --ep, dense MLP, LM head; bf16 GEMMs through cuBLAS, fp8: block-scaled FP8 linear layers through cuBLASLt on sm_90)",
        probe: cuda_available,
        make: Make::Native(make_rest_cuda),
    },
];

/// The peers' list, shared with the Python package.
const PEERS_JSON: &str = include_str!("../../peers/ctxcost_peers/adapters.json");

#[derive(serde::Deserialize)]
struct PeerLine {
    id: String,
    method: Method,
    description: String,
}

/// Every engine of this build: ours, then the library peers.
pub fn engines() -> &'static [EngineEntry] {
    static TABLE: std::sync::OnceLock<Vec<EngineEntry>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let peers: Vec<PeerLine> = serde_json::from_str(PEERS_JSON).expect("peers/ctxcost_peers/adapters.json is a list of {id, method, description, ...}");
        let mut t = NATIVE.to_vec();
        for p in peers {
            let description: &'static str = Box::leak(format!("library peer: {}", p.description).into_boxed_str());
            t.push(EngineEntry { id: Box::leak(p.id.into_boxed_str()), method: p.method, backend: Backend::External, description, probe: peers_found, make: Make::Peer });
        }
        t
    })
}

/// The entry of an id, if this build knows it.
pub fn entry(id: &str) -> Option<&'static EngineEntry> {
    engines().iter().find(|e| e.id == id)
}

/// Every engine id this build can name.
pub fn engine_ids() -> Vec<&'static str> {
    engines().iter().map(|e| e.id).collect()
}

/// The method of an engine: from the table, or from a user's `--external` spec.
pub fn method_of(id: &str, external: &[ExternalSpec]) -> Option<Method> {
    external.iter().find(|s| s.id == id).map(|s| s.method).or_else(|| entry(id).map(|e| e.method))
}

/// The backend of an engine (user specs are external).
pub fn backend_of(id: &str, external: &[ExternalSpec]) -> Option<Backend> {
    if external.iter().any(|s| s.id == id) {
        return Some(Backend::External);
    }
    entry(id).map(|e| e.backend)
}

/// An engine and whether it can run on this machine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub id: &'static str,
    pub method: Method,
    pub backend: Backend,
    pub description: &'static str,
    /// `Ok(())` when it can run here, else why not.
    pub available: Result<(), String>,
}

/// Describe every engine and probe whether it can run here (never panics without a GPU).
pub fn available_engines() -> Vec<EngineInfo> {
    engines()
        .iter()
        .map(|e| EngineInfo { id: e.id, method: e.method, backend: e.backend, description: e.description, available: (e.probe)() })
        .collect()
}

/// Whether the CUDA engines can run here, with the reason when not.
pub fn cuda_available() -> Result<(), String> {
    #[cfg(feature = "cuda")]
    {
        crate::cuda::probe()
    }
    #[cfg(not(feature = "cuda"))]
    {
        Err("this build has no CUDA support (build with `--features cuda`)".into())
    }
}

#[cfg(feature = "cuda")]
fn make_dense_cuda() -> Box<dyn Engine> {
    Box::new(crate::cuda::DenseCuda::new())
}

#[cfg(feature = "cuda")]
fn make_dsa_cuda() -> Box<dyn Engine> {
    Box::new(crate::cuda::DsaCuda::new())
}

#[cfg(feature = "cuda")]
fn make_rest_cuda() -> Box<dyn Engine> {
    Box::new(crate::cuda::RestCuda::new())
}

#[cfg(not(feature = "cuda"))]
fn make_rest_cuda() -> Box<dyn Engine> {
    Box::new(Unavailable { id: "rest-cuda" })
}

#[cfg(not(feature = "cuda"))]
fn make_dense_cuda() -> Box<dyn Engine> {
    Box::new(Unavailable { id: "dense-cuda" })
}

#[cfg(not(feature = "cuda"))]
fn make_dsa_cuda() -> Box<dyn Engine> {
    Box::new(Unavailable { id: "dsa-cuda" })
}

/// Make an engine by id: a user's `--external` spec first, then the table. `Err` names the
/// known ids.
pub fn make_engine_with(id: &str, external: &[ExternalSpec]) -> Result<Box<dyn Engine>, String> {
    if let Some(spec) = external.iter().find(|s| s.id == id) {
        return Ok(Box::new(External::new(spec.clone())));
    }
    match entry(id) {
        Some(e) => Ok(e.make()),
        None => Err(format!("unknown engine `{id}` (choose from: {}, or plug one in with `--external ID:METHOD=COMMAND`)", engine_ids().join(", "))),
    }
}

/// Make an engine of the table by id.
pub fn make_engine(id: &str) -> Result<Box<dyn Engine>, String> {
    make_engine_with(id, &[])
}

/// Stand-in for an engine this build lacks: every case is a skip with the reason.
#[cfg(not(feature = "cuda"))]
struct Unavailable {
    id: &'static str,
}

#[cfg(not(feature = "cuda"))]
impl Engine for Unavailable {
    fn id(&self) -> &str {
        self.id
    }
    fn timer(&self) -> &'static str {
        "none"
    }
    fn supports(&self, _case: &ctxcost_core::Case) -> crate::Support {
        crate::Support::No(cuda_available().err().unwrap_or_default())
    }
    fn prepare(&mut self, _: &ctxcost_core::Case, _: &ctxcost_core::Inputs) -> Result<(), crate::EngineError> {
        Err(crate::EngineError::Unsupported(cuda_available().err().unwrap_or_default()))
    }
    fn run(&mut self) -> Result<crate::Timing, crate::EngineError> {
        Err(crate::EngineError::State("unavailable".into()))
    }
    fn output(&mut self) -> Result<crate::Output, crate::EngineError> {
        Err(crate::EngineError::State("unavailable".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_every_entry_builds_an_engine_with_its_id() {
        let mut ids = engine_ids();
        ids.sort_unstable();
        let n = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), n, "duplicate engine ids");
        for e in engines() {
            assert_eq!(e.make().id(), e.id);
        }
        // The peers' list of the Python package is part of the table.
        assert_eq!(backend_of("numpy-dsa", &[]), Some(Backend::External));
    }

    #[test]
    fn method_and_backend_come_from_the_table_not_the_spelling() {
        assert_eq!(method_of("cudnn-sdpa", &[]), Some(Method::Dense));
        assert_eq!(method_of("torch-eager-dsa", &[]), Some(Method::Dsa));
        assert_eq!(backend_of("dense-cuda", &[]), Some(Backend::Cuda));
        assert_eq!((method_of("rest-cpu", &[]), method_of("rest-cuda", &[])), (Some(Method::Rest), Some(Method::Rest)));
        assert_eq!(backend_of("rest-cuda", &[]), Some(Backend::Cuda));
        // A user's engine named like one of ours still has the method it was registered with.
        let mine = ExternalSpec { id: "dsa-lookalike".into(), method: Method::Dense, command: vec!["x".into()] };
        assert_eq!(method_of("dsa-lookalike", std::slice::from_ref(&mine)), Some(Method::Dense));
        assert_eq!(backend_of("dsa-lookalike", &[mine]), Some(Backend::External));
        assert_eq!(method_of("nope", &[]), None);
        assert!(make_engine("nope").err().unwrap().contains("--external"));
    }
}
