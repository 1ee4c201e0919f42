//! CUDA engines (feature `cuda`, detected at run time). Placeholder until the kernels land.

use ctxcost_core::{Case, Inputs};

use crate::{Engine, EngineError, Output, Support, Timing};

/// Whether a CUDA driver and NVRTC can be loaded here, without panicking.
pub fn probe() -> Result<(), String> {
    // SAFETY: `is_culib_present` only tries to dlopen the library and reports whether it could.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        return Err("no CUDA driver (libcuda.so not found): no NVIDIA GPU on this machine".into());
    }
    // SAFETY: as above, for libnvrtc.
    let nvrtc = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !nvrtc {
        return Err("CUDA driver found but NVRTC (libnvrtc.so) is missing: install the CUDA toolkit runtime".into());
    }
    Err("CUDA engines are not implemented in this build yet".into())
}

macro_rules! placeholder {
    ($name:ident, $id:literal) => {
        /// Placeholder engine.
        pub struct $name;
        impl $name {
            pub fn new() -> Self {
                Self
            }
        }
        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }
        impl Engine for $name {
            fn id(&self) -> &str {
                $id
            }
            fn timer(&self) -> &'static str {
                "cuda-events"
            }
            fn supports(&self, _case: &Case) -> Support {
                match probe() {
                    Ok(()) => Support::Yes,
                    Err(e) => Support::No(e),
                }
            }
            fn prepare(&mut self, _: &Case, _: &Inputs) -> Result<(), EngineError> {
                Err(EngineError::Unsupported(probe().err().unwrap_or_default()))
            }
            fn run(&mut self) -> Result<Timing, EngineError> {
                Err(EngineError::State("not prepared".into()))
            }
            fn output(&mut self) -> Result<Output, EngineError> {
                Err(EngineError::State("not prepared".into()))
            }
        }
    };
}
placeholder!(DenseCuda, "dense-cuda");
placeholder!(DsaCuda, "dsa-cuda");
