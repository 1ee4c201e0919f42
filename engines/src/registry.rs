//! The engines this build knows, how to make one by id, and whether each can run here.

use crate::{cpu, Engine};

/// Every engine id this build can name.
pub const ENGINE_IDS: &[&str] = &["dense-cpu", "dsa-cpu", "dense-cuda", "dsa-cuda"];

/// An engine and whether it can run on this machine.
#[derive(Debug, Clone)]
pub struct EngineInfo {
    pub id: &'static str,
    pub description: &'static str,
    /// `Ok(())` when it can run here, else why not.
    pub available: Result<(), String>,
}

/// Describe every engine and probe whether it can run here (never panics without a GPU).
pub fn available_engines() -> Vec<EngineInfo> {
    let cuda = cuda_available();
    vec![
        EngineInfo { id: "dense-cpu", description: "dense MLA on the CPU (candle-core; MHA-mode prefill, MQA-mode decode; f32, bf16)", available: Ok(()) },
        EngineInfo { id: "dsa-cpu", description: "DSA on the CPU (candle-core; indexer, top-k, sparse MQA; f32, bf16)", available: Ok(()) },
        EngineInfo { id: "dense-cuda", description: "dense MLA on an NVIDIA GPU (NVRTC kernels; bf16 prefill, bf16/fp8 decode)", available: cuda.clone() },
        EngineInfo { id: "dsa-cuda", description: "DSA on an NVIDIA GPU (NVRTC kernels; bf16/fp8 indexer, radix top-k, sparse MQA)", available: cuda },
    ]
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

/// Make an engine by id. `Err` names the known ids.
pub fn make_engine(id: &str) -> Result<Box<dyn Engine>, String> {
    match id {
        "dense-cpu" => Ok(Box::new(cpu::DenseCpu::new())),
        "dsa-cpu" => Ok(Box::new(cpu::DsaCpu::new())),
        #[cfg(feature = "cuda")]
        "dense-cuda" => Ok(Box::new(crate::cuda::DenseCuda::new())),
        #[cfg(feature = "cuda")]
        "dsa-cuda" => Ok(Box::new(crate::cuda::DsaCuda::new())),
        #[cfg(not(feature = "cuda"))]
        "dense-cuda" | "dsa-cuda" => Ok(Box::new(Unavailable { id: if id == "dense-cuda" { "dense-cuda" } else { "dsa-cuda" } })),
        _ => Err(format!("unknown engine `{id}` (choose from: {})", ENGINE_IDS.join(", "))),
    }
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
