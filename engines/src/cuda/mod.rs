//! CUDA engines (feature `cuda`, detected at run time): `dense-cuda` and `dsa-cuda`.
//!
//! - [`probe`] says whether this machine can run them, without panicking: it asks cudarc
//!   whether `libcuda` and `libnvrtc` can be loaded before making any other cudarc call, then
//!   opens the device once per process.
//! - `device`: context and stream, NVRTC compilation for the device's own architecture cached
//!   by (kernel, options), event timing, the L2 flush between samples (`CTXCOST_L2_FLUSH=0`
//!   turns it off), memory figures, out-of-memory mapping.
//! - `launch`: every `unsafe` call (allocations, memsets, kernel launches: the input generators,
//!   dense and DSA kernels; cuBLAS).
//! - `codec`: the host bf16/FP8 codec and the device layouts of inputs loaded from a file.
//! - The kernel variants (entry points, options, shared memory) are [`crate::kernel_choice`].
//! - [`DenseCuda`]: dense MLA (MHA-mode prefill, MQA-mode split-K decode, bf16 and FP8 cache).
//! - [`DsaCuda`] (`dsa`): DSA (indexer, radix top-k, sparse MQA attention; bf16 and FP8).
//! - [`RestCuda`] (`rest`): the rest of a layer's GEMMs through cuBLAS (bf16).
//! - [`ceilings`]: the copy-bandwidth and GEMM ceilings measured on the same device.

pub mod ceilings;
mod codec;
mod dense;
mod device;
mod fp8_gemm;
pub mod dsa;
mod launch;
mod rest;

pub use dsa::DsaCuda;
pub use rest::{rest_device_bytes, RestCuda};

pub use codec::{e4m3_bits, encode_fp8_latent_row};
pub use dense::{decode_splits, device_bytes, geometry_support, DenseCuda};
pub use crate::kernel_choice::{prefill_tile, PrefillTile};
pub use device::{l2_flush_enabled, Device};

/// Whether `libcuda` and `libnvrtc` can be loaded (no other cudarc call before this).
pub(crate) fn probe_libraries() -> Result<(), String> {
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
    Ok(())
}

/// Whether the CUDA engines can run here (libraries present, a device opens), with the
/// reason when not. Never panics; the device is opened once per process.
pub fn probe() -> Result<(), String> {
    probe_libraries()?;
    device::device().map(|_| ())
}

/// The device this process uses, opened on first call (after [`probe`]'s library checks).
pub fn open_device() -> Result<std::sync::Arc<Device>, String> {
    device::device()
}

/// A few facts about the device for records and reports: name, compute capability,
/// multiprocessors, L2 and memory size.
pub fn device_facts() -> Result<Vec<(&'static str, String)>, String> {
    let dev = device::device()?;
    let total = dev.mem_info().map(|(_, t)| t).unwrap_or(0);
    Ok(vec![
        ("name", dev.name.clone()),
        ("compute_capability", format!("{}.{}", dev.cc.0, dev.cc.1)),
        ("multiprocessors", dev.sm_count.to_string()),
        ("l2_bytes", dev.l2_bytes.to_string()),
        ("memory_bytes", total.to_string()),
        ("nvrtc_arch", dev.arch.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, Support};
    use ctxcost_core::{Case, Inputs};
    use ctxcost_core::{ModelShape, Phase, Precision};
    use ctxcost_kernels::KernelId;

    fn case(phase: Phase, precision: Precision, context: usize, batch: usize, q: usize) -> Case {
        Case {
            engine: "dense-cuda".into(),
            method: ctxcost_core::Method::Dense,
            shape: ModelShape::deepseek_v32_exp(),
            phase,
            context,
            batch,
            query_len: q,
            precision,
            seed: 1,
            kernel: Default::default(),
        }
    }

    #[test]
    fn probe_never_panics_and_engines_skip_without_a_gpu() {
        let r = probe();
        if let Err(why) = &r {
            assert!(!why.is_empty());
            let c = case(Phase::Prefill, Precision::Bf16, 1024, 1, 256);
            let mut e = DenseCuda::new();
            assert!(matches!(e.supports(&c), Support::No(_)));
            assert!(e.prepare(&c, &Inputs::seeded(1)).is_err());
            assert!(e.run().is_err());
            assert!(e.output().is_err());
            let mut d = DsaCuda::new();
            assert!(matches!(d.supports(&c), Support::No(_)));
            assert!(d.prepare(&c, &Inputs::seeded(1)).is_err());
            let rest = Case { engine: "rest-cuda".into(), method: ctxcost_core::Method::Rest, phase: Phase::Decode, query_len: 1, batch: 16, ..c.clone() };
            let mut r = RestCuda::new();
            assert!(matches!(r.supports(&rest), Support::No(ref w) if w == why), "{:?}", r.supports(&rest));
            assert!(matches!(r.prepare(&rest, &Inputs::seeded(1)), Err(crate::EngineError::Unsupported(_))));
            assert!(r.run().is_err());
            assert!(r.output().is_err());
            assert!(r.device_memory().is_none());
            assert!(open_device().is_err());
            assert!(device_facts().is_err());
            assert!(ceilings::copy_tbps().is_err());
            assert!(ceilings::gemm_tflops().is_err());
        }
    }

    #[test]
    fn geometry_rules() {
        assert!(geometry_support(&case(Phase::Prefill, Precision::Bf16, 4096, 1, 4096)).is_ok());
        assert!(geometry_support(&case(Phase::Prefill, Precision::Fp8, 4096, 1, 4096)).is_err());
        assert!(geometry_support(&case(Phase::Decode, Precision::Fp8, 4096, 8, 1)).is_ok());
        assert!(geometry_support(&case(Phase::Decode, Precision::F32, 4096, 8, 1)).is_err());
        let tiny = Case { shape: ModelShape::tiny(), ..case(Phase::Prefill, Precision::Bf16, 64, 1, 64) };
        assert!(geometry_support(&tiny).unwrap_err().contains("192"));
    }

    #[test]
    fn decode_splits_fill_the_machine_and_cover_the_context() {
        for &(b, q, l) in &[(1usize, 1usize, 16384usize), (4, 1, 3000), (64, 1, 65536), (64, 2, 16384), (2, 1, 100), (1, 2, 64)] {
            let (n, per) = decode_splits(132, b, q, 128, l);
            assert!(n >= 1 && per >= 1);
            assert!(n * per * 64 >= l, "{b} {q} {l}: {n} x {per}");
            assert!((n - 1) * per * 64 < l, "an empty trailing split: {b} {q} {l}");
            assert!(b * q * 2 * n <= 132 || n == 1, "{b} {q} {l}: {n} splits overfill");
        }
        assert_eq!(decode_splits(132, 64, 1, 128, 65536), (1, 1024));
    }

    /// Compiles every kernel with NVRTC when libnvrtc can be loaded (no GPU needed);
    /// passes trivially elsewhere. `CTXCOST_PTX_DIR` keeps the PTX for inspection.
    #[test]
    fn kernels_compile_with_nvrtc_when_available() {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("libnvrtc not found: NVRTC compile check skipped");
            return;
        }
        for &k in KernelId::ALL {
            let ptx = device::compile(k, "sm_90", &[]).unwrap_or_else(|e| panic!("{e}"));
            let text = ptx.to_src();
            for e in k.entry_points() {
                assert!(text.contains(&format!(".entry {e}(")), "{e} missing from the PTX of {}", k.file_name());
            }
            if let Ok(dir) = std::env::var("CTXCOST_PTX_DIR") {
                std::fs::write(format!("{dir}/{}.ptx", k.file_name().trim_end_matches(".cu")), text).unwrap();
            }
        }
        let ptx = device::compile(KernelId::DenseDecode, "sm_90", &["-DDC_FP8_HWCVT"]).unwrap_or_else(|e| panic!("{e}"));
        if let Ok(dir) = std::env::var("CTXCOST_PTX_DIR") {
            std::fs::write(format!("{dir}/dense_decode_hwcvt.ptx"), ptx.to_src()).unwrap();
        }
        // The options the engine uses on a 9.0 device: the wgmma decode with TMA key tiles.
        let ptx = device::compile(KernelId::DenseDecode, "sm_90", &["-DDC_FP8_HWCVT", "--gpu-architecture=sm_90a"])
            .unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        assert!(text.contains(".target sm_90a"));
        for needle in [
            "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16",
            "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16",
            "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes",
            ".entry dense_decode_bf16_wgmma_tma(",
            ".entry dense_decode_bf16_wgmma_pipe(",
            ".entry dense_decode_combine(",
        ] {
            assert!(text.contains(needle), "{needle} missing from the sm_90a PTX of dense_decode.cu");
        }
        if let Ok(dir) = std::env::var("CTXCOST_PTX_DIR") {
            std::fs::write(format!("{dir}/dense_decode_sm90a.ptx"), text).unwrap();
        }
        for shape in ["8x64", "4x64x2", "8x128", "4x128x2", "8x32", "4x32x2"] {
            let tile = PrefillTile::parse(shape).unwrap();
            let opts = tile.options();
            let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
            let ptx = device::compile(KernelId::DensePrefill, "sm_90", &opts).unwrap_or_else(|e| panic!("{shape}: {e}"));
            if let Ok(dir) = std::env::var("CTXCOST_PTX_DIR") {
                std::fs::write(format!("{dir}/prefill_{shape}.ptx"), ptx.to_src()).unwrap();
            }
        }
    }
}
