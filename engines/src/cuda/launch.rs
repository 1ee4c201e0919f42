//! Every `unsafe` call of the CUDA engines: uninitialised allocations, raw memsets, kernel
//! launches and the cuBLAS GEMM. Each states, in a `// SAFETY:` comment, why its arguments
//! match what the kernel reads and writes. Sizes are checked here, before the launch, so a
//! wrong buffer is an error rather than an out-of-bounds access on the device. The cuBLASLt
//! FP8 GEMM's descriptors and call, which own state across calls, are in `fp8_gemm.rs`.

use cudarc::driver::{CudaFunction, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};

use super::device::{driver_err, CudaError, Device};
use crate::kernel_choice::{indexer_launch_smem, indexer_tile_keys, topk_smem, topk_threads, DecodeKernel, IndexerLoad, PrefillTile, SparseKernel};
use crate::EngineError;

fn check(cond: bool, what: &str) -> Result<(), EngineError> {
    if cond {
        Ok(())
    } else {
        Err(EngineError::backend("launch argument check", CudaError(what.into())))
    }
}

/// Allocate `len` elements, left uninitialised (every caller fills the buffer before it is read).
pub fn alloc<T: DeviceRepr>(dev: &Device, len: usize, what: &str) -> Result<CudaSlice<T>, EngineError> {
    // SAFETY: the memory is uninitialised; each call site writes it (generation kernel, memset
    // or upload) before any kernel reads it.
    unsafe { dev.stream.alloc::<T>(len.max(1)) }.map_err(|e| driver_err(&format!("allocating {what}"), e))
}

/// Set every byte of a buffer to `byte` (0xFF makes bf16 NaNs: poison for unwritten outputs).
pub fn fill_bytes<T>(dev: &Device, buf: &mut CudaSlice<T>, byte: u8) -> Result<(), EngineError> {
    let bytes = buf.num_bytes();
    let (ptr, _sync) = buf.device_ptr_mut(&dev.stream);
    // SAFETY: `ptr` is the start of a live allocation of `bytes` bytes owned by `buf`, which is
    // borrowed mutably for the duration of the call; the memset is ordered on the same stream.
    unsafe { cudarc::driver::result::memset_d8_async(ptr, byte, bytes, dev.stream.cu_stream()) }
        .map_err(|e| driver_err("cuMemsetD8Async", e))
}

fn grid_for(items: u64, block: u32, sm_count: u32) -> LaunchConfig {
    let blocks = items.div_ceil(block as u64).clamp(1, sm_count as u64 * 32) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// `gen_bf16`: the seeded bf16 tensor [B, R, H, D] (logical order), written head-major
/// ([B, H, R, D]) when `head_major`.
#[allow(clippy::too_many_arguments)]
pub fn gen_bf16(
    dev: &Device,
    f: &CudaFunction,
    out: &mut CudaSlice<u16>,
    seed: u64,
    stream_id: u64,
    dims: [usize; 4],
    head_major: bool,
) -> Result<(), EngineError> {
    let [b, r, h, d] = dims;
    check(d % 8 == 0, "gen_bf16 needs D % 8 == 0")?;
    check(out.len() >= b * r * h * d, "gen_bf16 output too small")?;
    let cfg = grid_for((b * r * h * d / 8) as u64, 256, dev.sm_count);
    let (bi, ri, hi, di, hm) = (b as i32, r as i32, h as i32, d as i32, head_major as i32);
    let mut l = dev.stream.launch_builder(f);
    l.arg(out).arg(&seed).arg(&stream_id).arg(&bi).arg(&ri).arg(&hi).arg(&di).arg(&hm);
    // SAFETY: gen_bf16(u16* out, u64, u64, int B, int R, int H, int D, int) writes exactly
    // B*R*H*D elements (checked above against out.len()), D is a multiple of 8 so every 16-byte
    // store is aligned (cudaMalloc bases are 256-byte aligned).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching gen_bf16", e)).map(|_| ())
}

/// `gen_latent_fp8`: the FP8 latent cache [B, L, latent + 4*latent/128 + 2*rope] bytes.
#[allow(clippy::too_many_arguments)]
pub fn gen_latent_fp8(
    dev: &Device,
    f: &CudaFunction,
    out: &mut CudaSlice<u8>,
    seed: u64,
    stream_id: u64,
    b: usize,
    l: usize,
    lat: usize,
    rope: usize,
) -> Result<(), EngineError> {
    check(lat % 128 == 0 && rope % 2 == 0, "gen_latent_fp8 needs latent % 128 == 0, even rope")?;
    let row = lat + 4 * (lat / 128) + 2 * rope;
    check(out.len() >= b * l * row, "gen_latent_fp8 output too small")?;
    let mut cfg = grid_for((b * l) as u64 * 32, 256, dev.sm_count);
    cfg.block_dim = (256, 1, 1);
    let (bi, li, lati, ropei) = (b as i32, l as i32, lat as i32, rope as i32);
    let mut lb = dev.stream.launch_builder(f);
    lb.arg(out).arg(&seed).arg(&stream_id).arg(&bi).arg(&li).arg(&lati).arg(&ropei);
    // SAFETY: gen_latent_fp8(u8* out, u64, u64, int B, int L, int LAT, int ROPE) writes B*L rows
    // of `row` bytes (checked above); scales land at row + LAT (4-aligned since LAT % 128 == 0)
    // and RoPE values at row + LAT + 4*LAT/128 (2-aligned).
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching gen_latent_fp8", e)).map(|_| ())
}

/// `copy_u4`: dst[i] = src[i] for `bytes / 16` 16-byte words.
pub fn copy_u4(dev: &Device, f: &CudaFunction, src: &CudaSlice<u16>, dst: &mut CudaSlice<u16>) -> Result<(), EngineError> {
    check(src.len() == dst.len() && src.num_bytes() % 16 == 0, "copy_u4 needs equal sizes, multiple of 16 bytes")?;
    let n = (src.num_bytes() / 16) as u64;
    let cfg = LaunchConfig { grid_dim: (dev.sm_count * 8, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
    let mut l = dev.stream.launch_builder(f);
    l.arg(src).arg(dst).arg(&n);
    // SAFETY: copy_u4(const uint4*, uint4*, u64 n) reads and writes n 16-byte words; both
    // buffers hold n*16 bytes (checked above) and are 16-byte aligned.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching copy_u4", e)).map(|_| ())
}

/// A CUDA tensor map (`CUtensorMap`: 128 bytes, 64-byte aligned), passed to a kernel by value.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct TensorMap(pub [u64; 16]);

// SAFETY: plain 128-byte data with CUtensorMap's size and alignment; the kernels declare the
// parameter as a 64-byte aligned struct of 16 u64 (TensorMap in common.cuh) and only hand its address to TMA.
unsafe impl cudarc::driver::DeviceRepr for TensorMap {}

/// Encode a tiled tensor map with 128-byte swizzle, 256-byte L2 promotion and zero fill past the
/// tensor's edges. `dims`, `boxes` have one entry per dimension (innermost first), `strides` one fewer
/// (bytes). The caller has checked that `ptr` is a live allocation covering `dims` and that strides are
/// multiples of 16 and boxes within TMA's limits.
fn encode_tiled<const R: usize>(
    ptr: u64,
    dtype: cudarc::driver::sys::CUtensorMapDataType,
    dims: [u64; R],
    strides: &[u64],
    boxes: [u32; R],
    what: &str,
) -> Result<TensorMap, EngineError> {
    use cudarc::driver::sys;
    check(strides.len() + 1 == R, "tensor map: one stride fewer than dimensions")?;
    let elem_strides = [1u32; R];
    let mut map = sys::CUtensorMap { opaque: [0; 16] };
    // SAFETY: `map` is a writable CUtensorMap; `dims`, `boxes` and `elem_strides` hold R entries and
    // `strides` R - 1 (checked above); the address and extents were checked by the caller. The map only
    // records the address.
    let r = unsafe {
        sys::cuTensorMapEncodeTiled(
            &mut map,
            dtype,
            R as u32,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(EngineError::backend(format!("cuTensorMapEncodeTiled ({what})"), CudaError(format!("{r:?}"))));
    }
    Ok(TensorMap(map.opaque))
}

/// The tensor map of a bf16 latent cache seen as a `[rows, 576]` matrix: boxes of 64 rows x 64
/// dims (128 bytes), 128-byte swizzle, zeros past the last row (what the wgmma decode kernels
/// expect).
pub fn latent_tensor_map(dev: &Device, cache: &CudaSlice<u16>, rows: usize) -> Result<TensorMap, EngineError> {
    // The allocation holds at least rows * 1152 bytes, 256-byte aligned by the allocator (TMA
    // needs 16); the row stride 1152 is a multiple of 16.
    check(cache.len() >= rows * 576 && rows > 0 && rows < (1usize << 32), "tensor map: cache too small or too many rows")?;
    let (ptr, _sync) = cache.device_ptr(&dev.stream);
    let bf16 = cudarc::driver::sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
    encode_tiled(ptr, bf16, [576, rows as u64], &[576 * 2], [64, 64], "latent cache")
}

/// The tensor map of the FP8 indexer keys `[batch, context, 128]` (e4m3 codes, one byte each): boxes
/// of 128 bytes x 256 keys of one sequence, 128-byte swizzle, zeros past the sequence's last key (what
/// `indexer_fp8_tma{3,4}_q1` expect).
pub fn indexer_key_tensor_map(dev: &Device, keys: &CudaSlice<u8>, batch: usize, context: usize) -> Result<TensorMap, EngineError> {
    // The allocation holds at least batch * context * 128 bytes, 256-byte aligned; the strides are
    // multiples of 16, the inner box is 128 bytes (the 128-byte swizzle's limit), no box dimension
    // exceeds 256.
    check(
        batch > 0 && context > 0 && keys.len() >= batch * context * 128 && context < (1usize << 31) && batch < (1usize << 31),
        "tensor map: indexer keys too small or too many",
    )?;
    let (ptr, _sync) = keys.device_ptr(&dev.stream);
    let u8t = cudarc::driver::sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8;
    encode_tiled(ptr, u8t, [128, context as u64, batch as u64], &[128, context as u64 * 128], [128, 256, 1], "indexer keys")
}

/// Allow a kernel to use `bytes` of dynamic shared memory.
pub fn set_smem(f: &CudaFunction, bytes: u32) -> Result<(), EngineError> {
    f.set_attribute(
        cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        bytes as i32,
    )
    .map_err(|e| driver_err("cuFuncSetAttribute(max dynamic shared memory)", e))
}

/// Geometry of one dense prefill launch.
#[derive(Debug, Clone, Copy)]
pub struct PrefillDims {
    pub tile: PrefillTile,
    pub batch: usize,
    pub heads: usize,
    pub context: usize,
    pub query_len: usize,
    pub scale_log2: f32,
}

/// `dense_prefill_bf16` over Q [B,H,q,192], K [B,H,L,192], V [B,H,L,128] -> O [B,q,H,128].
pub fn dense_prefill(
    dev: &Device,
    f: &CudaFunction,
    d: PrefillDims,
    q: &CudaSlice<u16>,
    k: &CudaSlice<u16>,
    v: &CudaSlice<u16>,
    o: &mut CudaSlice<u16>,
) -> Result<(), EngineError> {
    let (b, h, l, ql) = (d.batch, d.heads, d.context, d.query_len);
    check(ql >= 1 && ql <= l, "prefill needs 1 <= q <= L")?;
    check(q.len() >= b * h * ql * 192 && k.len() >= b * h * l * 192, "prefill Q/K too small")?;
    check(v.len() >= b * h * l * 128 && o.len() >= b * ql * h * 128, "prefill V/O too small")?;
    check(h <= 65535 && b <= 65535, "prefill grid: heads and batch must be <= 65535")?;
    let cfg = LaunchConfig {
        grid_dim: (ql.div_ceil(d.tile.rows()) as u32, h as u32, b as u32),
        block_dim: (32 * d.tile.warps as u32, 1, 1),
        shared_mem_bytes: d.tile.smem(),
    };
    let (hi, li, qi) = (h as i32, l as i32, ql as i32);
    let mut lb = dev.stream.launch_builder(f);
    lb.arg(q).arg(k).arg(v).arg(o).arg(&hi).arg(&li).arg(&qi).arg(&d.scale_log2);
    // SAFETY: dense_prefill_bf16(const u16* Q, K, V, u16* O, int H, int L, int q_len, float)
    // reads Q/K/V rows only below q_len / L (tail rows are zero-filled, not read) and writes O
    // rows below q_len; the sizes were checked above; 32*warps threads and tile.smem() bytes
    // of dynamic shared memory are what the kernel was compiled for (the -D options of the
    // same PrefillTile; the limit was raised by set_smem when the function was loaded).
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching dense_prefill_bf16", e)).map(|_| ())
}

/// Geometry of one dense decode launch.
#[derive(Debug, Clone, Copy)]
pub struct DecodeDims {
    pub batch: usize,
    pub heads: usize,
    pub context: usize,
    pub query_len: usize,
    pub n_splits: usize,
    pub tiles_per_split: usize,
    pub scale_log2: f32,
    pub fp8: bool,
    pub kernel: DecodeKernel,
}

impl DecodeDims {
    /// Query rows of all sequences (B * q * H).
    pub fn rows(&self) -> usize {
        self.batch * self.query_len * self.heads
    }
    /// Bytes of one cache row.
    pub fn cache_row_bytes(&self) -> usize {
        if self.fp8 {
            656
        } else {
            1152
        }
    }
}

/// The latent cache of a decode case: bf16 [B, L, 576] or FP8 [B, L, 656 bytes].
pub enum CacheBuf {
    Bf16(CudaSlice<u16>),
    Fp8(CudaSlice<u8>),
}

impl CacheBuf {
    pub fn bytes(&self) -> usize {
        match self {
            CacheBuf::Bf16(c) => c.num_bytes(),
            CacheBuf::Fp8(c) => c.num_bytes(),
        }
    }
}

/// `dense_decode_bf16` / `dense_decode_fp8`, or `dense_decode_bf16_wgmma_{tma,pipe}` with the
/// cache's tensor map (the caller adds `dense_decode_combine` when split).
#[allow(clippy::too_many_arguments)]
pub fn dense_decode(
    dev: &Device,
    f: &CudaFunction,
    d: DecodeDims,
    tmap: Option<&TensorMap>,
    q: &CudaSlice<u16>,
    cache: &CacheBuf,
    out: &mut CudaSlice<u16>,
    ws_o: &mut CudaSlice<f32>,
    ws_ml: &mut CudaSlice<f32>,
) -> Result<(), EngineError> {
    let rows = d.rows();
    check(d.heads % 64 == 0, "decode needs heads % 64 == 0")?;
    check(d.query_len >= 1 && d.query_len <= d.context, "decode needs 1 <= q <= L")?;
    check(d.tiles_per_split * 64 * d.n_splits >= d.context, "decode splits do not cover the context")?;
    check(q.len() >= rows * 576 && out.len() >= rows * 512, "decode Q/out too small")?;
    check(cache.bytes() >= d.batch * d.context * d.cache_row_bytes(), "decode cache too small")?;
    check(matches!(cache, CacheBuf::Fp8(_)) == d.fp8, "decode cache precision does not match the kernel")?;
    if d.n_splits > 1 {
        check(ws_o.len() >= rows * d.n_splits * 512 && ws_ml.len() >= rows * d.n_splits * 2, "decode workspace too small")?;
    }
    check(d.n_splits <= 65535 && d.batch <= 65535, "decode grid: splits and batch must be <= 65535")?;
    check(
        d.kernel.wgmma() == tmap.is_some() && !(d.kernel.wgmma() && d.fp8),
        "the wgmma decode kernel takes a bf16 cache and its tensor map, the mma.sync one no map",
    )?;
    let cfg = LaunchConfig {
        grid_dim: ((d.query_len * d.heads / 64) as u32, d.n_splits as u32, d.batch as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: d.kernel.smem(d.fp8),
    };
    let (hi, li, qi, si, ti) = (d.heads as i32, d.context as i32, d.query_len as i32, d.n_splits as i32, d.tiles_per_split as i32);
    let mut lb = dev.stream.launch_builder(f);
    if let Some(m) = tmap {
        lb.arg(m);
    }
    lb.arg(q);
    match cache {
        CacheBuf::Bf16(c) => lb.arg(c),
        CacheBuf::Fp8(c) => lb.arg(c),
    };
    lb.arg(out).arg(ws_o).arg(ws_ml).arg(&hi).arg(&li).arg(&qi).arg(&si).arg(&ti).arg(&d.scale_log2);
    // SAFETY: dense_decode_{bf16,fp8}(const u16* Q, const cache*, u16* out, float* ws_o,
    // float2* ws_ml, int H, int L, int q_len, int n_splits, int tiles_per_split, float) reads
    // Q rows < B*q*H, cache rows < B*L (tail rows zero-filled) and writes either out (one
    // split) or ws_o/ws_ml (several splits), all sized above; ws_ml holds float pairs, so an
    // f32 buffer of 2 per entry is the float2 array the kernel expects (8-byte aligned).
    // dense_decode_bf16_wgmma_{tma,pipe} take the same arguments after the tensor map (by value);
    // the map was made by latent_tensor_map over this cache's B*L rows (the copy engine
    // zero-fills past them), and this entry is only loaded from the sm_90a build on a 9.0 device.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching dense_decode", e)).map(|_| ())
}

/// `dense_decode_combine`: merge the splits of every row into `out`.
pub fn decode_combine(
    dev: &Device,
    f: &CudaFunction,
    d: DecodeDims,
    ws_o: &CudaSlice<f32>,
    ws_ml: &CudaSlice<f32>,
    out: &mut CudaSlice<u16>,
) -> Result<(), EngineError> {
    let rows = d.rows();
    check(ws_o.len() >= rows * d.n_splits * 512 && ws_ml.len() >= rows * d.n_splits * 2, "combine workspace too small")?;
    check(out.len() >= rows * 512, "combine output too small")?;
    let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
    let si = d.n_splits as i32;
    let mut lb = dev.stream.launch_builder(f);
    lb.arg(ws_o).arg(ws_ml).arg(out).arg(&si).arg(&d.scale_log2);
    // SAFETY: dense_decode_combine(const float* ws_o, const float2* ws_ml, u16* out, int, float)
    // with one 128-thread block per row reads rows*n_splits*512 floats and rows*n_splits float
    // pairs and writes rows*512 bf16 values, all within the sizes checked above.
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching dense_decode_combine", e)).map(|_| ())
}

// ---------------------------------------------------------------- DSA: indexer, top-k, sparse attention

/// An indexer operand: bf16 values or e4m3 codes (the kernels read both as bytes).
pub enum IndexBuf {
    Bf16(CudaSlice<u16>),
    Fp8(CudaSlice<u8>),
}

impl IndexBuf {
    pub fn bytes(&self) -> usize {
        match self {
            IndexBuf::Bf16(c) => c.num_bytes(),
            IndexBuf::Fp8(c) => c.num_bytes(),
        }
    }
}

/// Geometry of one prepared DSA case, shared by its launches.
#[derive(Debug, Clone, Copy)]
pub struct DsaDims {
    pub batch: usize,
    pub heads: usize,
    pub context: usize,
    pub query_len: usize,
    /// Scores row stride.
    pub lp: usize,
    /// min(top_k, context).
    pub k: usize,
    pub fp8: bool,
    /// The attention kernel.
    pub attn: SparseKernel,
    /// Queries per indexer CTA.
    pub qg: usize,
    /// Key-tile load of the indexer.
    pub ix_load: IndexerLoad,
    pub splits: usize,
    pub tiles_per_split: usize,
    pub scale_log2: f32,
}

/// The device buffers of a prepared DSA case.
pub struct DsaBuffers {
    pub index_q: IndexBuf,
    /// FP8: one scale per (query, head); bf16: one unused element.
    pub index_qs: CudaSlice<f32>,
    pub index_w: CudaSlice<f32>,
    pub index_k: IndexBuf,
    /// FP8: one scale per key, stride `lp` per sequence; bf16: one unused element.
    pub index_ks: CudaSlice<f32>,
    /// The keys' tensor map (TMA indexer entries only).
    pub ix_map: Option<TensorMap>,
    pub scores: CudaSlice<f32>,
    pub sel: CudaSlice<i32>,
    pub mqa_q: CudaSlice<u16>,
    pub cache: CacheBuf,
    pub out: CudaSlice<u16>,
}

/// `gen_f32`: `n` seeded fp32 values (the indexer head weights).
pub fn gen_f32(dev: &Device, f: &CudaFunction, out: &mut CudaSlice<f32>, seed: u64, stream: u64) -> Result<(), EngineError> {
    let n = out.len() as u64;
    let cfg = grid_for(n, 256, dev.sm_count);
    let mut l = dev.stream.launch_builder(f);
    l.arg(out).arg(&seed).arg(&stream).arg(&n);
    // SAFETY: gen_f32(float* out, u64 seed, u64 stream, u64 n) writes out[0..n) with a grid-stride
    // loop; n is the buffer's own length.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching gen_f32", e)).map(|_| ())
}

/// `gen_e4m3_pow2`: `rows` rows of 128 seeded values as e4m3 codes plus one power-of-two scale per
/// row, the scale of row `r` at `(r / per_seq) * stride + r % per_seq`.
#[allow(clippy::too_many_arguments)]
pub fn gen_e4m3_pow2(
    dev: &Device,
    f: &CudaFunction,
    codes: &mut CudaSlice<u8>,
    scales: &mut CudaSlice<f32>,
    seed: u64,
    stream: u64,
    rows: usize,
    per_seq: usize,
    stride: usize,
) -> Result<(), EngineError> {
    check(per_seq >= 1 && stride >= per_seq && rows % per_seq == 0, "gen_e4m3_pow2: rows must be whole sequences")?;
    check(codes.len() >= rows * 128, "gen_e4m3_pow2: codes buffer too small")?;
    check(scales.len() >= (rows / per_seq) * stride, "gen_e4m3_pow2: scales buffer too small")?;
    let cfg = grid_for(rows as u64 * 32, 256, dev.sm_count);
    let (r, ps, st) = (rows as u64, per_seq as u64, stride as u64);
    let mut l = dev.stream.launch_builder(f);
    l.arg(codes).arg(scales).arg(&seed).arg(&stream).arg(&r).arg(&ps).arg(&st);
    // SAFETY: gen_e4m3_pow2(u8* codes, float* scales, u64 seed, u64 stream, u64 rows, u64 per_seq,
    // u64 stride) writes codes[0..rows*128) (4-byte stores at multiples of 4) and scales at indices
    // below (rows/per_seq)*stride; both sizes were checked above.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching gen_e4m3_pow2", e)).map(|_| ())
}

fn push_index_buf<'a>(l: &mut cudarc::driver::LaunchArgs<'a>, buf: &'a IndexBuf) {
    match buf {
        IndexBuf::Bf16(c) => l.arg(c),
        IndexBuf::Fp8(c) => l.arg(c),
    };
}

/// The indexer: scores `[B, q, Lp]` of every query against its visible keys.
pub fn dsa_indexer(dev: &Device, f: &CudaFunction, d: &DsaDims, bufs: &mut DsaBuffers) -> Result<(), EngineError> {
    let (b, q, l) = (d.batch, d.query_len, d.context);
    let el = if d.fp8 { 1 } else { 2 };
    check(matches!(bufs.index_q, IndexBuf::Fp8(_)) == d.fp8 && matches!(bufs.index_k, IndexBuf::Fp8(_)) == d.fp8, "indexer buffers do not match the precision")?;
    check(bufs.index_q.bytes() >= b * q * 64 * 128 * el && bufs.index_w.len() >= b * q * 64, "indexer queries too small")?;
    check(bufs.index_k.bytes() >= b * l * 128 * el, "indexer keys too small")?;
    if d.fp8 {
        check(bufs.index_qs.len() >= b * q * 64 && bufs.index_ks.len() >= b * d.lp, "indexer scales too small")?;
    }
    check(bufs.scores.len() >= b * q * d.lp && d.lp >= l && d.lp % 4 == 0, "scores buffer too small")?;
    check(d.splits * d.tiles_per_split * indexer_tile_keys() >= l, "indexer splits do not cover the context")?;
    check(d.splits <= i32::MAX as usize && q.div_ceil(d.qg) <= 65535 && b <= 65535, "indexer grid too large")?;
    let cfg = LaunchConfig {
        grid_dim: (d.splits as u32, q.div_ceil(d.qg) as u32, b as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: indexer_launch_smem(d.fp8, d.qg, d.ix_load),
    };
    check(d.ix_load.tma_stages().is_some() == bufs.ix_map.is_some(), "the TMA indexer takes the keys' tensor map, the others none")?;
    check(d.ix_load == IndexerLoad::CpAsync || (d.fp8 && d.qg == 1), "the TMA indexer is the FP8 one-query (decode) kernel")?;
    let (qi, li, lpi, ti) = (q as i32, l as i32, d.lp as i32, d.tiles_per_split as i32);
    let mut lb = dev.stream.launch_builder(f);
    if let Some(m) = &bufs.ix_map {
        lb.arg(m);
    }
    push_index_buf(&mut lb, &bufs.index_q);
    lb.arg(&bufs.index_qs).arg(&bufs.index_w);
    push_index_buf(&mut lb, &bufs.index_k);
    lb.arg(&bufs.index_ks).arg(&mut bufs.scores).arg(&qi).arg(&li).arg(&lpi).arg(&ti);
    // SAFETY: indexer_{fp8,fp8_wgmma,bf16}_q{1,4}(const u8* q, const float* qscale, const float* w, const u8* k,
    // const float* kscale, float* scores, int q_len, int L, int Lp, int tiles_per_split) reads q rows
    // below B*q*64 (128 or 256 bytes each), w (and FP8 qscale) below B*q*64, key rows below B*L and FP8
    // key scales below B*Lp (the last partial 16-byte chunk of a sequence is read only up to key L), and
    // writes scores[(b*q + i)*Lp + s] for s <= the query's position < L; every size was checked above.
    // 256 threads and indexer_smem() bytes of dynamic shared memory are what the kernel is built for
    // (the limit was raised by set_smem when the function was loaded); qg matches the entry point; the
    // wgmma entries are only chosen when the module was compiled for sm_90a on a 9.0 device.
    // indexer_fp8_tma{3,4}_q1 take the same arguments after the keys' tensor map (by value), made by
    // indexer_key_tensor_map over these B x L keys (zeros past L; the kernel reads key scales up to the
    // query's position rounded up to 4, <= Lp).
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching the DSA indexer", e)).map(|_| ())
}

/// Top-k per query row: the selection `[B, q, k]`.
pub fn dsa_topk(dev: &Device, f: &CudaFunction, d: &DsaDims, scores: &CudaSlice<f32>, sel: &mut CudaSlice<i32>) -> Result<(), EngineError> {
    let (b, q) = (d.batch, d.query_len);
    check(scores.len() >= b * q * d.lp && sel.len() >= b * q * d.k, "top-k buffers too small")?;
    check(d.k >= 1 && d.k <= d.context && q <= i32::MAX as usize && b <= 65535, "top-k geometry")?;
    let cfg = LaunchConfig { grid_dim: (q as u32, b as u32, 1), block_dim: (topk_threads(), 1, 1), shared_mem_bytes: topk_smem() };
    let (qi, li, lpi, ki) = (q as i32, d.context as i32, d.lp as i32, d.k as i32);
    let mut lb = dev.stream.launch_builder(f);
    lb.arg(scores).arg(sel).arg(&qi).arg(&li).arg(&lpi).arg(&ki);
    // SAFETY: topk_radix(const float* scores, int* out, int q_len, int L, int Lp, int k) with one CTA
    // of 1024 threads per (query, sequence) reads scores[row*Lp + s] for s below the query's visible
    // count (<= L <= Lp; rows are 16-byte aligned since Lp % 4 == 0 and loads stop at the 4-aligned
    // end) and writes out[row*k .. row*k + k); sizes checked above; topk_smem() bytes of dynamic shared
    // memory as the kernel lays out (limit raised by set_smem).
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching the DSA top-k", e)).map(|_| ())
}

/// Sparse MQA attention over each query's selection: out `[B, q, H, 512]`.
pub fn sparse_attention(dev: &Device, f: &CudaFunction, d: &DsaDims, bufs: &mut DsaBuffers) -> Result<(), EngineError> {
    let (b, q, h, l) = (d.batch, d.query_len, d.heads, d.context);
    let rows = b * q * h;
    check(h % 64 == 0 && q <= 65535 && b <= 65535, "sparse attention grid")?;
    check(bufs.mqa_q.len() >= rows * 576 && bufs.out.len() >= rows * 512, "sparse attention Q/out too small")?;
    check(bufs.sel.len() >= b * q * d.k, "selection too small")?;
    check(matches!(bufs.cache, CacheBuf::Fp8(_)) == d.fp8, "latent cache precision does not match the kernel")?;
    check(bufs.cache.bytes() >= b * l * if d.fp8 { 656 } else { 1152 }, "latent cache too small")?;
    let cfg = LaunchConfig {
        grid_dim: ((h / 64) as u32, q as u32, b as u32),
        block_dim: (256, 1, 1),
        shared_mem_bytes: d.attn.smem(d.fp8),
    };
    let (hi, li, qi, ki) = (h as i32, l as i32, q as i32, d.k as i32);
    let mut lb = dev.stream.launch_builder(f);
    lb.arg(&bufs.mqa_q);
    match &bufs.cache {
        CacheBuf::Bf16(c) => lb.arg(c),
        CacheBuf::Fp8(c) => lb.arg(c),
    };
    lb.arg(&bufs.sel).arg(&mut bufs.out).arg(&hi).arg(&li).arg(&qi).arg(&ki).arg(&d.scale_log2);
    // SAFETY: sparse_mla_{bf16,fp8}(const u16* Q, const cache*, const int* idx, u16* out, int H, int L,
    // int q_len, int k, float) reads Q rows below B*q*H, selection rows of k entries below B*q, cache rows
    // of its own sequence only at selected positions in [0, L) (anything else reads zeros), and writes
    // out rows below B*q*H; all sized above. 256 threads and the SparseKernel::smem bytes of dynamic shared
    // memory are what the kernel lays out (limit raised by set_smem).
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching the DSA sparse attention", e)).map(|_| ())
}

/// C[m,n] = A[m,k] B[k,n] in bf16 with fp32 accumulation through cuBLAS (column-major,
/// no transposes; all three buffers hold bf16 bits).
pub fn gemm_bf16(
    blas: &cudarc::cublas::CudaBlas,
    dev: &Device,
    n: usize,
    a: &CudaSlice<u16>,
    b: &CudaSlice<u16>,
    c: &mut CudaSlice<u16>,
) -> Result<(), EngineError> {
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
    check(a.len() >= n * n && b.len() >= n * n && c.len() >= n * n, "gemm buffers too small")?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let ni = n as i32;
    let (pa, _ra) = a.device_ptr(&dev.stream);
    let (pb, _rb) = b.device_ptr(&dev.stream);
    let (pc, _rc) = c.device_ptr_mut(&dev.stream);
    // SAFETY: A, B and C are live n*n bf16 buffers (checked above) on the stream the handle
    // uses; alpha and beta are f32 as CUBLAS_COMPUTE_32F requires and outlive the call.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_N,
            cublasOperation_t::CUBLAS_OP_N,
            ni,
            ni,
            ni,
            (&alpha) as *const f32 as *const _,
            pa as *const _,
            cudaDataType_t::CUDA_R_16BF,
            ni,
            pb as *const _,
            cudaDataType_t::CUDA_R_16BF,
            ni,
            (&beta) as *const f32 as *const _,
            pc as *mut _,
            cudaDataType_t::CUDA_R_16BF,
            ni,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| EngineError::backend("cublasGemmEx", e))
}

/// `batch` row-major products `out[b] = input[b] x weight[b]` (input `[m, k]`, weight `[k, n]`,
/// output `[m, n]`, each batch contiguous) in bf16 with fp32 accumulation, through one cuBLAS
/// strided-batched GEMM. Row-major `out = input x weight` is column-major
/// `out^T = weight^T x input^T`, so cuBLAS sees (n x k) times (k x m) with no transposes.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bf16_rows(
    blas: &cudarc::cublas::CudaBlas,
    dev: &Device,
    batch: usize,
    m: usize,
    k: usize,
    n: usize,
    input: &CudaSlice<u16>,
    weight: &CudaSlice<u16>,
    out: &mut CudaSlice<u16>,
) -> Result<(), EngineError> {
    use cudarc::cublas::sys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t};
    check(batch >= 1 && m >= 1 && k >= 1 && n >= 1, "empty GEMM")?;
    check(input.len() >= batch * m * k && weight.len() >= batch * k * n && out.len() >= batch * m * n, "GEMM buffers too small")?;
    let fits = |x: usize| i32::try_from(x).is_ok();
    check(fits(m) && fits(k) && fits(n) && fits(batch), "GEMM dims beyond i32")?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (pi, _ri) = input.device_ptr(&dev.stream);
    let (pw, _rw) = weight.device_ptr(&dev.stream);
    let (po, _ro) = out.device_ptr_mut(&dev.stream);
    // SAFETY: input, weight and out are live bf16 buffers holding at least batch*m*k,
    // batch*k*n and batch*m*n elements (checked above), used on the stream the handle uses;
    // the strides step over whole contiguous matrices; alpha and beta are f32 as
    // CUBLAS_COMPUTE_32F requires and outlive the call.
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            *blas.handle(),
            cublasOperation_t::CUBLAS_OP_N,
            cublasOperation_t::CUBLAS_OP_N,
            n as i32,
            m as i32,
            k as i32,
            (&alpha) as *const f32 as *const _,
            pw as *const _,
            cudaDataType_t::CUDA_R_16BF,
            n as i32,
            (k * n) as i64,
            pi as *const _,
            cudaDataType_t::CUDA_R_16BF,
            k as i32,
            (m * k) as i64,
            (&beta) as *const f32 as *const _,
            po as *mut _,
            cudaDataType_t::CUDA_R_16BF,
            n as i32,
            (m * n) as i64,
            batch as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| EngineError::backend("cublasGemmStridedBatchedEx", e))
}

/// `gen_fp8_weight`: a GEMM's FP8 weight checkpoint, codes K-major `[n][k]` and the 128 x 128
/// block scales K-major `[n blocks][l4]` (see `rest_fp8.cu`).
#[allow(clippy::too_many_arguments)]
pub fn gen_fp8_weight(
    dev: &Device,
    f: &CudaFunction,
    codes: &mut CudaSlice<u8>,
    scales: &mut CudaSlice<f32>,
    seed: u64,
    (stream_id, scale_stream): (u64, u64),
    (k, n): (usize, usize),
    l4: usize,
) -> Result<(), EngineError> {
    let (kb, nb) = (k.div_ceil(128), n.div_ceil(128));
    check(l4 >= kb && l4 % 4 == 0, "gen_fp8_weight: l4 must cover the k blocks, a multiple of 4")?;
    check(codes.len() >= k * n && scales.len() >= l4 * nb, "gen_fp8_weight output too small")?;
    check(i32::try_from(k).is_ok() && i32::try_from(n).is_ok(), "gen_fp8_weight dims beyond i32")?;
    let cfg = grid_for((k * n) as u64, 256, dev.sm_count);
    let (ki, ni, l4i) = (k as i32, n as i32, l4 as i32);
    let mut l = dev.stream.launch_builder(f);
    l.arg(codes).arg(scales).arg(&seed).arg(&stream_id).arg(&scale_stream).arg(&ki).arg(&ni).arg(&l4i);
    // SAFETY: gen_fp8_weight(u8*, float*, u64, u64, u64, int K, int N, int L4) writes K*N codes
    // and L4*NB scales, both within the buffers (checked above).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching gen_fp8_weight", e)).map(|_| ())
}

/// `quant_fp8_groups`: the bf16 activations `[m, k]` to e4m3 codes `[m_pad, k]` and token-major
/// group scales `[k blocks][m_pad]` (rows from `m` on are zero).
#[allow(clippy::too_many_arguments)]
pub fn quant_fp8_groups(
    dev: &Device,
    f: &CudaFunction,
    input: &CudaSlice<u16>,
    codes: &mut CudaSlice<u8>,
    scales: &mut CudaSlice<f32>,
    (m, m_pad, k): (usize, usize, usize),
) -> Result<(), EngineError> {
    let g = k.div_ceil(128);
    check(m <= m_pad && input.len() >= m * k && codes.len() >= m_pad * k && scales.len() >= g * m_pad, "quant_fp8_groups buffers too small")?;
    check(i32::try_from(m_pad * k).is_ok(), "quant_fp8_groups dims beyond i32")?;
    // One warp per (row, group).
    let cfg = grid_for((m_pad * g) as u64 * 32, 256, dev.sm_count);
    let (mi, mpi, ki) = (m as i32, m_pad as i32, k as i32);
    let mut l = dev.stream.launch_builder(f);
    l.arg(input).arg(codes).arg(scales).arg(&mi).arg(&mpi).arg(&ki);
    // SAFETY: quant_fp8_groups(const u16*, u8*, float*, int M, int M_PAD, int K) reads M*K
    // inputs and writes M_PAD*K codes and G*M_PAD scales, within the buffers (checked above).
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching quant_fp8_groups", e)).map(|_| ())
}
