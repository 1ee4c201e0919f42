//! Ceilings measured on the same device in the same run, so achieved rates have a yardstick:
//! device-to-device copy bandwidth (an NVRTC-built 16-byte copy kernel, bytes read plus bytes
//! written) and the bf16 matrix rate (cuBLAS GEMM 8192^3, fp32 accumulation). Both run on
//! seeded random data (never zeros), after warm-up, and report the median of timed repeats
//! measured with CUDA events.

use ctxcost_kernels::KernelId;

use super::device::{device, Device, EventTimer};
use super::launch;
use crate::EngineError;

const WARMUP: usize = 3;
const REPEATS: usize = 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn time_median(dev: &Device, mut f: impl FnMut() -> Result<(), EngineError>) -> Result<f64, EngineError> {
    for _ in 0..WARMUP {
        f()?;
    }
    let timer = EventTimer::new(dev, 1)?;
    let mut samples = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        timer.start(dev)?;
        f()?;
        timer.mark(dev, 0)?;
        samples.push(timer.elapsed()?[0]);
    }
    Ok(median(samples))
}

/// Device-to-device copy bandwidth in TB/s (bytes read + bytes written), over 1 GiB buffers.
pub fn copy_tbps() -> Result<f64, String> {
    let dev = device()?;
    let run = || -> Result<f64, EngineError> {
        let elems = 1usize << 29; // 1 GiB of u16
        let gen = dev.function(KernelId::Generate, "gen_bf16", &[])?;
        let copy = dev.function(KernelId::Generate, "copy_u4", &[])?;
        let mut src = launch::alloc::<u16>(&dev, elems, "copy source")?;
        let mut dst = launch::alloc::<u16>(&dev, elems, "copy destination")?;
        launch::gen_bf16(&dev, &gen, &mut src, 11, 99, [1, elems / 512, 1, 512], false)?;
        let ms = time_median(&dev, || launch::copy_u4(&dev, &copy, &src, &mut dst))?;
        dev.sync("copy ceiling")?;
        Ok(2.0 * (elems * 2) as f64 / (ms * 1e-3) / 1e12)
    };
    run().map_err(|e| e.to_string())
}

/// bf16 GEMM rate in TFLOP/s (cuBLAS, 8192 x 8192 x 8192, fp32 accumulation).
pub fn gemm_tflops() -> Result<f64, String> {
    let dev = device()?;
    // SAFETY: only tries to dlopen libcublas (cudarc panics on use when it is missing).
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err("cuBLAS (libcublas.so) not found: add its folder to LD_LIBRARY_PATH".into());
    }
    let run = || -> Result<f64, EngineError> {
        let n = 8192usize;
        let blas = cudarc::cublas::CudaBlas::new(dev.stream.clone()).map_err(|e| EngineError::backend("cublasCreate", e))?;
        let gen = dev.function(KernelId::Generate, "gen_bf16", &[])?;
        let mut a = launch::alloc::<u16>(&dev, n * n, "GEMM A")?;
        let mut b = launch::alloc::<u16>(&dev, n * n, "GEMM B")?;
        let mut c = launch::alloc::<u16>(&dev, n * n, "GEMM C")?;
        launch::gen_bf16(&dev, &gen, &mut a, 12, 1, [1, n, 1, n], false)?;
        launch::gen_bf16(&dev, &gen, &mut b, 12, 2, [1, n, 1, n], false)?;
        let ms = time_median(&dev, || launch::gemm_bf16(&blas, &dev, n, &a, &b, &mut c))?;
        dev.sync("GEMM ceiling")?;
        Ok(2.0 * (n as f64).powi(3) / (ms * 1e-3) / 1e12)
    };
    run().map_err(|e| e.to_string())
}
