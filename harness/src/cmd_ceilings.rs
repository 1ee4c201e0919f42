//! `ctxcost ceilings`: this GPU's copy bandwidth and cuBLAS bf16 GEMM rate, one
//! `name value unit` line each.

use std::process::ExitCode;

use anyhow::{bail, Result};

use ctxcost_engines::registry::cuda_available;

#[cfg(feature = "cuda")]
use crate::envinfo;

/// `ctxcost ceilings`.
pub fn run() -> Result<ExitCode> {
    if let Err(why) = cuda_available() {
        bail!("ceilings need a usable NVIDIA GPU: {why}");
    }
    #[cfg(feature = "cuda")]
    {
        print_ceilings()?;
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(feature = "cuda"))]
    {
        bail!("this build has no CUDA support")
    }
}

/// Print the GPU ceilings (device copy, cuBLAS GEMM), one `name value unit` line each, so
/// scripts can read them.
#[cfg(feature = "cuda")]
pub fn print_ceilings() -> Result<()> {
    use ctxcost_engines::cuda::ceilings;
    let env = envinfo::capture();
    println!("gpu {}", env.gpu.get("name").map(String::as_str).unwrap_or("unknown"));
    match ceilings::copy_tbps() {
        Ok(v) => println!("copy_tbps {v:.3} TB/s (device-to-device copy, bytes read + written)"),
        Err(e) => println!("copy_tbps unavailable: {e}"),
    }
    match ceilings::gemm_tflops() {
        Ok(v) => println!("gemm_bf16_tflops {v:.1} TFLOP/s (cuBLAS 8192^3, random inputs)"),
        Err(e) => println!("gemm_bf16_tflops unavailable: {e}"),
    }
    Ok(())
}
