//! Block-scaled FP8 GEMMs through cuBLASLt (cuBLAS 12.9 and later, Hopper): e4m3 operands,
//! fp32 accumulation, a bf16 output, one fp32 scale per 128 x 128 weight block
//! (`CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F`) and per 1 x 128 activation group
//! (`CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F`), DeepSeek-V3's recipe.
//!
//! Row-major `out[m, n] = x[m, k] w[k, n]` is column-major `out^T = w^T x^T`: cuBLASLt's A is the
//! weight stored K-major (`[n][k]`, transposed, as its FP8 kernels require: "TN"), its B the
//! activation codes `[m][k]`, its D the output `[m][n]`. The scale layouts are cuBLASLt's
//! (cuBLAS documentation, "128-element 1D and 128x128 2D block scaling for FP8 data types"):
//! weight scales K-major `[nb][L4]` (L4 = k blocks rounded up to 4), activation scales
//! token-major `[k blocks][m]`; `m` and `n` must be multiples of 4.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::device::{CudaError, Device};
use crate::EngineError;

/// Workspace offered to cuBLASLt's algorithms.
pub const WORKSPACE_BYTES: usize = 32 << 20;

fn lt_err(what: &str, e: impl std::fmt::Debug) -> EngineError {
    EngineError::backend(what, CudaError(format!("{e:?}")))
}

/// Why block-scaled FP8 GEMMs cannot run on this device, if they cannot.
pub fn unsupported(dev: &Device) -> Option<String> {
    // SAFETY: only tries to dlopen libcublasLt.
    if !unsafe { sys::is_culib_present() } {
        return Some("cuBLASLt (libcublasLt.so) not found: add its folder to LD_LIBRARY_PATH".into());
    }
    if dev.cc.0 != 9 {
        return Some(format!(
            "FP8 GEMMs with 128-block scales run on Hopper (sm_90) through cuBLASLt; this device is sm_{}{}",
            dev.cc.0, dev.cc.1
        ));
    }
    None
}

/// A cuBLASLt handle.
pub struct LtHandle(sys::cublasLtHandle_t);

impl LtHandle {
    pub fn new() -> Result<Arc<LtHandle>, EngineError> {
        lt::create_handle().map(|h| Arc::new(LtHandle(h))).map_err(|e| lt_err("cublasLtCreate", e))
    }
}

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: the handle was created by cublasLtCreate and is destroyed once.
        let _ = unsafe { lt::destroy_handle(self.0) };
    }
}

// SAFETY: a cuBLASLt handle is not tied to a thread; it is used from one thread at a time here.
unsafe impl Send for LtHandle {}
unsafe impl Sync for LtHandle {}

/// One FP8 GEMM's descriptors and the algorithm cuBLASLt chose for it, made once in `prepare`.
pub struct Fp8Gemm {
    handle: Arc<LtHandle>,
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

// SAFETY: the descriptors are plain host objects owned by this value.
unsafe impl Send for Fp8Gemm {}

impl Fp8Gemm {
    /// Descriptors for `out[m, n] = x[m, k] w[k, n]` with the given device scale buffers (their
    /// addresses are bound into the descriptor: the buffers must outlive it).
    pub fn new(
        handle: &Arc<LtHandle>,
        dev: &Device,
        (m, k, n): (usize, usize, usize),
        weight_scales: &CudaSlice<f32>,
        input_scales: &CudaSlice<f32>,
    ) -> Result<Fp8Gemm, EngineError> {
        if m % 4 != 0 || n % 4 != 0 || k % 16 != 0 {
            return Err(EngineError::Unsupported(format!("FP8 GEMM {m} x {k} x {n}: m and n must be multiples of 4 and k of 16")));
        }
        let (ws, _g1) = weight_scales.device_ptr(&dev.stream);
        let (xs, _g2) = input_scales.device_ptr(&dev.stream);
        let desc = lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F)
            .map_err(|e| lt_err("cublasLtMatmulDescCreate", e))?;
        let mut g = Fp8Gemm {
            handle: handle.clone(),
            desc,
            a: std::ptr::null_mut(),
            b: std::ptr::null_mut(),
            d: std::ptr::null_mut(),
            // SAFETY: a plain C struct of integers; overwritten by the heuristic below.
            algo: unsafe { std::mem::zeroed() },
            m,
            k,
            n,
        };
        use sys::cublasLtMatmulDescAttributes_t as A;
        let t = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T;
        let nn = cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N;
        let blk = sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
        let vec = sys::cublasLtMatmulMatrixScale_t::CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
        let set = |attr: A, ptr: *const c_void, size: usize| {
            // SAFETY: `ptr` points at a live value of `size` bytes of the type the attribute takes.
            unsafe { lt::set_matmul_desc_attribute(desc, attr, ptr, size) }.map_err(|e| lt_err(&format!("cublasLtMatmulDescSetAttribute({attr:?})"), e))
        };
        set(A::CUBLASLT_MATMUL_DESC_TRANSA, (&t) as *const _ as *const c_void, std::mem::size_of_val(&t))?;
        set(A::CUBLASLT_MATMUL_DESC_TRANSB, (&nn) as *const _ as *const c_void, std::mem::size_of_val(&nn))?;
        set(A::CUBLASLT_MATMUL_DESC_A_SCALE_MODE, (&blk) as *const _ as *const c_void, std::mem::size_of_val(&blk))?;
        set(A::CUBLASLT_MATMUL_DESC_B_SCALE_MODE, (&vec) as *const _ as *const c_void, std::mem::size_of_val(&vec))?;
        set(A::CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, (&ws) as *const _ as *const c_void, std::mem::size_of_val(&ws))?;
        set(A::CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, (&xs) as *const _ as *const c_void, std::mem::size_of_val(&xs))?;
        let e4m3 = sys::cudaDataType_t::CUDA_R_8F_E4M3;
        let layout = |ty, rows: usize, cols: usize, ld: usize| {
            lt::create_matrix_layout(ty, rows as u64, cols as u64, ld as i64).map_err(|e| lt_err("cublasLtMatrixLayoutCreate", e))
        };
        g.a = layout(e4m3, k, n, k)?;
        g.b = layout(e4m3, k, m, k)?;
        g.d = layout(sys::cudaDataType_t::CUDA_R_16BF, n, m, n)?;
        let pref = lt::create_matmul_pref().map_err(|e| lt_err("cublasLtMatmulPreferenceCreate", e))?;
        let wsb = WORKSPACE_BYTES as u64;
        // SAFETY: `wsb` is the u64 the attribute takes; the preference is destroyed right after.
        let found = unsafe {
            let r = lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&wsb) as *const u64 as *const c_void,
                8,
            )
            .and_then(|_| lt::get_matmul_algo_heuristic(handle.0, g.desc, g.a, g.b, g.d, g.d, pref));
            let _ = lt::destroy_matmul_pref(pref);
            r
        };
        let heuristic = found.map_err(|e| {
            EngineError::Unsupported(format!(
                "cuBLASLt has no block-scaled FP8 algorithm for {m} x {k} x {n} here ({e:?}; it needs cuBLAS 12.9 or later on sm_90)"
            ))
        })?;
        g.algo = heuristic.algo;
        Ok(g)
    }

    /// Enqueue `out = x w` on the device's stream.
    pub fn run(
        &self,
        dev: &Device,
        weight_codes: &CudaSlice<u8>,
        input_codes: &CudaSlice<u8>,
        out: &mut CudaSlice<u16>,
        workspace: &mut CudaSlice<u8>,
    ) -> Result<(), EngineError> {
        if weight_codes.len() < self.k * self.n || input_codes.len() < self.m * self.k || out.len() < self.m * self.n || workspace.len() < WORKSPACE_BYTES {
            return Err(EngineError::State("FP8 GEMM buffers too small".into()));
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (pw, _g1) = weight_codes.device_ptr(&dev.stream);
        let (px, _g2) = input_codes.device_ptr(&dev.stream);
        let (po, _g3) = out.device_ptr_mut(&dev.stream);
        let (pws, _g4) = workspace.device_ptr_mut(&dev.stream);
        // SAFETY: every buffer is live and at least as large as the layouts bound in `new` say
        // (checked above); the scale buffers bound in `new` are owned beside this value and
        // outlive it; alpha and beta are f32 host values as the f32 scale type requires; the
        // work is ordered on the engine's stream.
        unsafe {
            lt::matmul(
                self.handle.0,
                self.desc,
                (&alpha) as *const f32 as *const c_void,
                (&beta) as *const f32 as *const c_void,
                pw as *const c_void,
                self.a,
                px as *const c_void,
                self.b,
                po as *const c_void,
                self.d,
                po as *mut c_void,
                self.d,
                &self.algo,
                pws as *mut c_void,
                WORKSPACE_BYTES,
                dev.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| lt_err("cublasLtMatmul (FP8, block scales)", e))
    }
}

impl Drop for Fp8Gemm {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created once by cuBLASLt (or is null and skipped).
        unsafe {
            for l in [self.a, self.b, self.d] {
                if !l.is_null() {
                    let _ = lt::destroy_matrix_layout(l);
                }
            }
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}
