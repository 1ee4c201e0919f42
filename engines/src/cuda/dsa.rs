//! `dsa-cuda`: DeepSeek Sparse Attention on an NVIDIA GPU, three kernels in a row on one stream:
//!
//! 1. **indexer** (`kernels/indexer.cu`): `I[t,s] = sum_j w[t,j] ReLU(q[t,j] . k[s])` for 64 heads x 128
//!    dims on tensor cores: bf16 (`mma.sync` m16n8k16), or FP8 e4m3 with the 132-byte indexer cache
//!    (128 e4m3 codes + one power-of-two fp32 scale per key) and one power-of-two scale per (query,
//!    head): `wgmma` m64n64k32 on sm_90 (the module is compiled for sm_90a), `mma.sync` m16n8k32
//!    elsewhere (sm_89+) or with `CTXCOST_DSA_INDEXER=mma`. Scores `[B, q, Lp]` fp32, causal (query at
//!    position `p` gets keys `0..=p`). FP8 decode key tiles arrive by one TMA tensor copy each (128-byte
//!    swizzle) and their scales by one bulk copy, issued by one thread on full/empty mbarriers
//!    (`indexer_fp8_tma3_q1`: 3 stages, two CTAs per SM; `CTXCOST_INDEXER_LOAD=tma4`: 4 stages, one CTA
//!    per SM; `=cpasync`: the earlier cp.async pipeline `indexer_fp8_wgmma_q1`); prefill chunks use
//!    cp.async.
//! 2. **top-k** (`kernels/topk.cu`): exact radix select per query row (no sort), ties to the smaller
//!    position, output `[B, q, k]` ascending with `-1` padding.
//! 3. **attention** (`kernels/sparse_mla.cu`): MLA in MQA mode over each query's selected latents
//!    (128 heads, 576-dim keys, 512-dim values, online softmax, bf16 operands, fp32 accumulation), from
//!    the bf16 latent cache or the 656-byte FP8 one. With a bf16 cache on compute capability 9.0 it runs
//!    on wgmma (`sparse_mla_bf16_wgmma`: rows gathered by bulk copies, the module compiled for sm_90a);
//!    `CTXCOST_SPARSE_DECODE=mma` selects the mma.sync kernel there too (it runs everywhere else and for
//!    the FP8 cache), `=cpa` the wgmma kernel with cp.async gathers. The switch applies to every phase.
//!    The default is `sparse_mla_bf16_wgmma_split` (tile buffers released after the last ldmatrix of a
//!    tile, so the next gather starts sooner, and the value product split over the value dims between
//!    the warpgroups: half the V^T ldmatrix traffic, wgmma N = 64). `CTXCOST_SPARSE_VARIANT=bulk` runs
//!    the first wgmma kernel `sparse_mla_bf16_wgmma`, `=early` `sparse_mla_bf16_wgmma_early` (early
//!    release only), `=split2` `sparse_mla_bf16_wgmma_split2` (S^T split over the 576 dims too: half
//!    the K ldmatrix traffic, partial sums through shared memory).
//!
//! `run` times the three with CUDA events recorded between them and reports them as the components
//! `indexer`, `topk`, `attention`. Inputs are generated on the device from the case seed with the shared
//! generator (bit-identical to `ctxcost_core::inputs::uniform` and to the roundings of
//! `reference::round_row`), or uploaded when loaded from a file. The attention output and the selection
//! are poisoned before the first run, so anything a kernel fails to write fails verification.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use ctxcost_core::numeric::{e4m3_scale, round_bf16, round_e4m3, ScaleKind};
use ctxcost_core::{Case, InputTensor, Inputs, Precision};
use ctxcost_kernels::KernelId;

use super::dense::{e4m3_bits, encode_fp8_latent_row};
use super::device::{device, driver_err, CudaError, Device, EventTimer};
use super::launch::{self, CacheBuf};
use crate::{DeviceMemory, Engine, EngineError, Output, Support, Timing};

/// Keys per indexer tile (8 warps x 32 keys; must match `IX_TK` in indexer.cu).
pub const INDEXER_TILE_KEYS: usize = 256;
/// Threads of a top-k CTA (one CTA per query row; `TK_THREADS` in topk.cu).
const TOPK_THREADS: u32 = 1024;
/// Shared-memory bytes of `topk_radix` (`TK_SMEM_WORDS` words in topk.cu).
pub const TOPK_SMEM: u32 = (4096 + 12288 + 32 + 8) * 4;
/// Shared-memory bytes of `sparse_mla_bf16` / `sparse_mla_fp8` (`SM_SMEM_*` in sparse_mla.cu).
pub const SPARSE_SMEM_BF16: u32 = (3 * 64 * 576 + 64 * 64) * 2 + 6 * 64 * 4;
pub const SPARSE_SMEM_FP8: u32 = (2 * 64 * 576 + 64 * 64) * 2 + 64 * 656 + 6 * 64 * 4;
/// Shared-memory bytes of the wgmma kernels (`SW_SMEM` in sparse_mla.cu): Q, two gathered tiles of
/// 64 rows (1152 bytes each, plus 896 bytes of row offsets), P^T, per-warp maxima, four mbarriers.
pub const SPARSE_SMEM_BF16_WGMMA: u32 = 64 * 576 * 2 + 2 * (64 * 1152 + 896) + 64 * 64 * 2 + 1024 + 32;

/// The sparse attention kernel of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SparseKernel {
    /// `sparse_mla_bf16` / `sparse_mla_fp8`: mma.sync, cp.async gathers (any sm_80+ device).
    Mma,
    /// `sparse_mla_bf16_wgmma`: wgmma (sm_90a), one bulk copy per gathered row.
    WgmmaBulk,
    /// `sparse_mla_bf16_wgmma_cpa`: wgmma (sm_90a), gathers by cp.async.
    WgmmaCpAsync,
    /// `sparse_mla_bf16_wgmma_early`: as `WgmmaBulk`, a tile buffer released once each warp has issued
    /// the wgmma on its last ldmatrix fragments of the tile (not after that wgmma completes), so the next
    /// gather starts sooner.
    WgmmaEarly,
    /// `sparse_mla_bf16_wgmma_split`: as `WgmmaEarly`, the value product split over the value dims
    /// between the two warpgroups (each loads half of V^T; wgmma N = 64 over all 64 heads).
    WgmmaSplit,
    /// `sparse_mla_bf16_wgmma_split2`: as `WgmmaSplit`, S^T split over the 576 dims as well (each
    /// warpgroup loads half of the K tile; the partial sums cross through shared memory).
    WgmmaSplit2,
}

impl SparseKernel {
    pub fn entry(self, fp8: bool) -> &'static str {
        match (self, fp8) {
            (_, true) => "sparse_mla_fp8",
            (SparseKernel::Mma, false) => "sparse_mla_bf16",
            (SparseKernel::WgmmaBulk, false) => "sparse_mla_bf16_wgmma",
            (SparseKernel::WgmmaCpAsync, false) => "sparse_mla_bf16_wgmma_cpa",
            (SparseKernel::WgmmaEarly, false) => "sparse_mla_bf16_wgmma_early",
            (SparseKernel::WgmmaSplit, false) => "sparse_mla_bf16_wgmma_split",
            (SparseKernel::WgmmaSplit2, false) => "sparse_mla_bf16_wgmma_split2",
        }
    }

    pub fn smem(self, fp8: bool) -> u32 {
        match (self, fp8) {
            (_, true) => SPARSE_SMEM_FP8,
            (SparseKernel::Mma, false) => SPARSE_SMEM_BF16,
            _ => SPARSE_SMEM_BF16_WGMMA,
        }
    }

    /// NVRTC options of the module that holds the entry. Knobs for timing experiments with the wgmma
    /// kernels: `CTXCOST_SPARSE_BULK_ROWS=32` gathers half of each tile's rows by cp.async in
    /// `sparse_mla_bf16_wgmma`; `CTXCOST_SPARSE_DECOUPLE=0` puts a `__syncthreads` back at the end of
    /// every tile (the warpgroups otherwise meet only through the buffers' empty barriers);
    /// `CTXCOST_SPARSE_DIAG=1` (loads only) or `=2` (math only) build variants whose outputs are wrong
    /// by construction (run those with `--no-verify`).
    pub fn options(self) -> Vec<&'static str> {
        if self == SparseKernel::Mma {
            return Vec::new();
        }
        let mut o = vec!["--gpu-architecture=sm_90a"];
        match std::env::var("CTXCOST_SPARSE_BULK_ROWS").as_deref() {
            Ok("32") => o.push("-DSW_BULK_ROWS=32"),
            Ok("64") | Err(_) => {}
            Ok(other) => eprintln!("CTXCOST_SPARSE_BULK_ROWS={other} ignored (32 or 64)"),
        }
        if matches!(std::env::var("CTXCOST_SPARSE_DECOUPLE").as_deref(), Ok("0")) {
            o.push("-DSW_DECOUPLE=0");
        }
        match std::env::var("CTXCOST_SPARSE_DIAG").as_deref() {
            Ok("1") => o.push("-DSW_DIAG=1"),
            Ok("2") => o.push("-DSW_DIAG=2"),
            _ => {}
        }
        o
    }
}

/// The sparse attention kernel for a device and cache precision: wgmma with bulk-copy gathers for a
/// bf16 cache on compute capability 9.0; `CTXCOST_SPARSE_DECODE=mma` asks for the mma.sync kernel (the
/// one for the FP8 cache and every other device), `=cpa` for the wgmma kernel with cp.async gathers.
/// The default is the split variant (bulk-copy gathers, early buffer release, the value product split
/// between the warpgroups: 265 TFLOP/s at decode B=64 on the H200 against 244 for `bulk`);
/// `CTXCOST_SPARSE_VARIANT=bulk` selects the first wgmma kernel, `=early` its early-release variant,
/// `=split2` the variant that splits S^T over the 576 dims as well.
pub fn sparse_kernel(cc: (i32, i32), fp8: bool) -> SparseKernel {
    if fp8 || cc != (9, 0) {
        return SparseKernel::Mma;
    }
    let variant = std::env::var("CTXCOST_SPARSE_VARIANT").ok();
    wgmma_choice(std::env::var("CTXCOST_SPARSE_DECODE").ok().as_deref(), variant.as_deref())
}

/// The kernel for a bf16 cache on a 9.0 device from the values of `CTXCOST_SPARSE_DECODE` and
/// `CTXCOST_SPARSE_VARIANT` (unset: `None`).
fn wgmma_choice(decode: Option<&str>, variant: Option<&str>) -> SparseKernel {
    match decode {
        Some("mma") => SparseKernel::Mma,
        Some("cpa") => SparseKernel::WgmmaCpAsync,
        _ => match variant {
            Some("early") => SparseKernel::WgmmaEarly,
            Some("bulk") => SparseKernel::WgmmaBulk,
            Some("split2") => SparseKernel::WgmmaSplit2,
            None | Some("") | Some("default") | Some("split") => SparseKernel::WgmmaSplit,
            Some(other) => {
                eprintln!("CTXCOST_SPARSE_VARIANT={other} ignored (split, bulk, early, split2 or default)");
                SparseKernel::WgmmaSplit
            }
        },
    }
}

/// Shared-memory bytes of an indexer launch with `qg` queries per CTA (`IxSmem` in indexer.cu):
/// queries, head weights, the key-tile pipeline and (FP8) the key scales.
pub fn indexer_smem(fp8: bool, qg: usize) -> u32 {
    let rb = if fp8 { 128 } else { 256 };
    let stages = if fp8 { 3 } else { 2 };
    let scales = if fp8 { stages * INDEXER_TILE_KEYS * 4 } else { 0 };
    (qg * 64 * rb + qg * 64 * 4 + stages * INDEXER_TILE_KEYS * rb + scales) as u32
}

/// Queries per indexer CTA: one for decode (each sequence has its own keys), four for a prefill
/// chunk (a key tile read once serves four queries).
pub fn indexer_queries_per_cta(query_len: usize) -> usize {
    if query_len == 1 {
        1
    } else {
        4
    }
}

/// The key split of an indexer launch, `(splits, tiles_per_split)`: about eight CTAs per
/// multiprocessor in total when the work allows (so the last wave is a small share), at most 8
/// tiles (decode) or 16 (prefill) per CTA, each split a whole number of 256-key tiles.
pub fn indexer_splits(sm_count: usize, batch: usize, query_len: usize, context: usize) -> (usize, usize) {
    let qg = indexer_queries_per_cta(query_len);
    let tiles = context.div_ceil(INDEXER_TILE_KEYS).max(1);
    let groups = (batch * query_len.div_ceil(qg)).max(1);
    let cap = if qg == 1 { 8 } else { 16 };
    let per = (groups * tiles).div_ceil(8 * sm_count.max(1)).clamp(1, cap).min(tiles);
    (tiles.div_ceil(per), per)
}

/// How the FP8 wgmma indexer brings its key tiles into shared memory (decode, one query per CTA;
/// prefill always uses the cp.async kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexerLoad {
    /// `indexer_fp8_wgmma_q{1,4}`: cp.async by every thread, 3 stages (the default).
    CpAsync,
    /// `indexer_fp8_tma3_q1`: one TMA tensor copy per tile and one bulk copy of its scales, issued by
    /// one thread, full/empty mbarriers, 3 stages (two CTAs per multiprocessor).
    Tma3,
    /// `indexer_fp8_tma4_q1`: as `Tma3` with 4 stages (one CTA per multiprocessor).
    Tma4,
}

impl IndexerLoad {
    /// Stages of the TMA pipelines (`STAGES` of `indexer_tma_body`); `None` for cp.async.
    pub fn tma_stages(self) -> Option<usize> {
        match self {
            IndexerLoad::CpAsync => None,
            IndexerLoad::Tma3 => Some(3),
            IndexerLoad::Tma4 => Some(4),
        }
    }

    /// Shared-memory bytes of a one-query TMA launch (`IxTmaSmem<1, STAGES>::TOTAL` in indexer.cu): key
    /// tiles, scales, the query, head weights, 2 x STAGES mbarriers and 1024 bytes to align the base.
    pub fn tma_smem(stages: usize) -> u32 {
        (stages * INDEXER_TILE_KEYS * 128 + stages * INDEXER_TILE_KEYS * 4 + 64 * 128 + 64 * 4 + 2 * stages * 8 + 1024) as u32
    }
}

/// The key-tile load of the FP8 wgmma indexer for a decode (one query per CTA): TMA with 3 stages by
/// default (3.94 TB/s at B=64, 128K on the H200, against 2.15 for cp.async), `CTXCOST_INDEXER_LOAD=
/// tma4` with 4 stages, `=cpasync` the cp.async pipeline; prefill chunks and the mma.sync path keep
/// cp.async.
pub fn indexer_load(wgmma: bool, qg: usize) -> IndexerLoad {
    indexer_load_choice(wgmma, qg, std::env::var("CTXCOST_INDEXER_LOAD").ok().as_deref())
}

fn indexer_load_choice(wgmma: bool, qg: usize, var: Option<&str>) -> IndexerLoad {
    if !wgmma || qg != 1 {
        return IndexerLoad::CpAsync;
    }
    match var {
        Some("cpasync") | Some("cp.async") => IndexerLoad::CpAsync,
        Some("tma4") => IndexerLoad::Tma4,
        None | Some("") | Some("tma") | Some("tma3") => IndexerLoad::Tma3,
        Some(other) => {
            eprintln!("CTXCOST_INDEXER_LOAD={other} ignored (tma, tma4 or cpasync)");
            IndexerLoad::Tma3
        }
    }
}

/// Shared-memory bytes of the indexer launch a case runs.
fn indexer_launch_smem(fp8: bool, qg: usize, load: IndexerLoad) -> u32 {
    match load.tma_stages() {
        Some(stages) => IndexerLoad::tma_smem(stages),
        None => indexer_smem(fp8, qg),
    }
}

/// Whether the FP8 indexer runs on wgmma (native FP8 tensor cores; `indexer.cu` compiled for sm_90a):
/// on compute capability 9.0 unless `CTXCOST_DSA_INDEXER=mma` asks for the mma.sync kernels (on sm_90
/// their e4m3 path is lowered to f16 tensor-core ops, so FP8 runs at the bf16 rate there).
pub fn use_wgmma_indexer(cc: (i32, i32)) -> bool {
    cc == (9, 0) && !matches!(std::env::var("CTXCOST_DSA_INDEXER").as_deref(), Ok("mma"))
}

/// Scores row stride: the context rounded up to a multiple of 4 (16-byte aligned rows).
pub fn scores_stride(context: usize) -> usize {
    context.div_ceil(4) * 4
}

/// Why a case does not fit these kernels, or `Ok`.
pub fn dsa_geometry_support(case: &Case) -> Result<(), String> {
    let s = &case.shape;
    match case.precision {
        Precision::Bf16 | Precision::Fp8 => {}
        Precision::F32 => return Err("the CUDA kernels compute in bf16 (fp8 indexer and cache with `fp8`); use dsa-cpu for f32".into()),
    }
    if !s.has_indexer() {
        return Err(format!("shape `{}` has no lightning indexer (DSA needs index heads and a top-k)", s.name));
    }
    if s.index_heads != 64 || s.index_dim != 128 {
        return Err(format!(
            "the indexer kernel is built for 64 heads x 128 dims (DeepSeek-V3.2); shape `{}` has {} x {}",
            s.name, s.index_heads, s.index_dim
        ));
    }
    if s.kv_lora_rank != 512 || s.qk_rope_dim != 64 {
        return Err(format!(
            "the sparse attention kernel is built for a 512 + 64 latent (DeepSeek MLA); shape `{}` has {} + {}",
            s.name, s.kv_lora_rank, s.qk_rope_dim
        ));
    }
    if s.heads % 64 != 0 {
        return Err(format!("sparse attention needs a multiple of 64 query heads; shape `{}` has {}", s.name, s.heads));
    }
    if case.batch > 65535 || case.query_len > 65535 {
        return Err("batch and query tokens per sequence must be at most 65535".into());
    }
    if case.context > i32::MAX as usize / 2 {
        return Err("context too long for 32-bit key indices".into());
    }
    Ok(())
}

/// Device bytes a case allocates (indexer inputs and cache, scores, selection, attention inputs,
/// latent cache, output).
pub fn dsa_device_bytes(case: &Case) -> u64 {
    let fp8 = case.precision == Precision::Fp8;
    let (b, q, l, h) = (case.batch as u64, case.query_len as u64, case.context as u64, case.shape.heads as u64);
    let (lp, k) = (scores_stride(case.context) as u64, case.effective_top_k() as u64);
    let rows = b * q;
    let el = if fp8 { 1 } else { 2 };
    let index_q = rows * 64 * 128 * el + if fp8 { rows * 64 * 4 } else { 0 };
    let index_w = rows * 64 * 4;
    let index_k = b * l * 128 * el + if fp8 { b * lp * 4 } else { 0 };
    let scores = rows * lp * 4;
    let sel = rows * k * 4;
    let mqa_q = rows * h * 576 * 2;
    let latent = b * l * if fp8 { 656 } else { 1152 };
    let out = rows * h * 512 * 2;
    index_q + index_w + index_k + scores + sel + mqa_q + latent + out
}

/// An indexer operand: bf16 values or e4m3 codes (the kernels read both as bytes).
enum IndexBuf {
    Bf16(CudaSlice<u16>),
    Fp8(CudaSlice<u8>),
}

impl IndexBuf {
    fn bytes(&self) -> usize {
        match self {
            IndexBuf::Bf16(c) => c.num_bytes(),
            IndexBuf::Fp8(c) => c.num_bytes(),
        }
    }
}

/// Geometry of one prepared case, shared by the launches.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    context: usize,
    query_len: usize,
    /// Scores row stride.
    lp: usize,
    /// min(top_k, context).
    k: usize,
    fp8: bool,
    /// The attention kernel.
    attn: SparseKernel,
    /// Queries per indexer CTA.
    qg: usize,
    /// Key-tile load of the indexer.
    ix_load: IndexerLoad,
    splits: usize,
    tiles_per_split: usize,
    scale_log2: f32,
}

struct Kernels {
    indexer: CudaFunction,
    topk: CudaFunction,
    attention: CudaFunction,
}

struct Buffers {
    index_q: IndexBuf,
    /// FP8: one scale per (query, head); bf16: one unused element.
    index_qs: CudaSlice<f32>,
    index_w: CudaSlice<f32>,
    index_k: IndexBuf,
    /// FP8: one scale per key, stride `lp` per sequence; bf16: one unused element.
    index_ks: CudaSlice<f32>,
    /// The keys' tensor map (TMA indexer entries only).
    ix_map: Option<launch::TensorMap>,
    scores: CudaSlice<f32>,
    sel: CudaSlice<i32>,
    mqa_q: CudaSlice<u16>,
    cache: CacheBuf,
    out: CudaSlice<u16>,
}

struct Prepared {
    dev: Arc<Device>,
    dims: Dims,
    kernels: Kernels,
    bufs: Buffers,
    timer: EventTimer,
    ran: bool,
}

/// The DSA CUDA engine.
#[derive(Default)]
pub struct DsaCuda {
    prepared: Option<Prepared>,
    memory: Option<DeviceMemory>,
}

impl DsaCuda {
    pub fn new() -> Self {
        Self::default()
    }
}

// ---------------------------------------------------------------- launches

fn check(cond: bool, what: &str) -> Result<(), EngineError> {
    if cond {
        Ok(())
    } else {
        Err(EngineError::backend("DSA launch argument check", CudaError(what.into())))
    }
}

fn grid_blocks(items: u64, block: u32, sm_count: u32) -> u32 {
    items.div_ceil(block as u64).clamp(1, sm_count as u64 * 32) as u32
}

/// `gen_f32`: `n` seeded fp32 values (the indexer head weights).
fn gen_f32(dev: &Device, f: &CudaFunction, out: &mut CudaSlice<f32>, seed: u64, stream: u64) -> Result<(), EngineError> {
    let n = out.len() as u64;
    let cfg = LaunchConfig { grid_dim: (grid_blocks(n, 256, dev.sm_count), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
    let mut l = dev.stream.launch_builder(f);
    l.arg(out).arg(&seed).arg(&stream).arg(&n);
    // SAFETY: gen_f32(float* out, u64 seed, u64 stream, u64 n) writes out[0..n) with a grid-stride
    // loop; n is the buffer's own length.
    unsafe { l.launch(cfg) }.map_err(|e| driver_err("launching gen_f32", e)).map(|_| ())
}

/// `gen_e4m3_pow2`: `rows` rows of 128 seeded values as e4m3 codes plus one power-of-two scale per
/// row, the scale of row `r` at `(r / per_seq) * stride + r % per_seq`.
#[allow(clippy::too_many_arguments)]
fn gen_e4m3_pow2(
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
    let cfg = LaunchConfig {
        grid_dim: (grid_blocks(rows as u64 * 32, 256, dev.sm_count), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
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
fn launch_indexer(dev: &Device, f: &CudaFunction, d: &Dims, bufs: &mut Buffers) -> Result<(), EngineError> {
    let (b, q, l) = (d.batch, d.query_len, d.context);
    let el = if d.fp8 { 1 } else { 2 };
    check(matches!(bufs.index_q, IndexBuf::Fp8(_)) == d.fp8 && matches!(bufs.index_k, IndexBuf::Fp8(_)) == d.fp8, "indexer buffers do not match the precision")?;
    check(bufs.index_q.bytes() >= b * q * 64 * 128 * el && bufs.index_w.len() >= b * q * 64, "indexer queries too small")?;
    check(bufs.index_k.bytes() >= b * l * 128 * el, "indexer keys too small")?;
    if d.fp8 {
        check(bufs.index_qs.len() >= b * q * 64 && bufs.index_ks.len() >= b * d.lp, "indexer scales too small")?;
    }
    check(bufs.scores.len() >= b * q * d.lp && d.lp >= l && d.lp % 4 == 0, "scores buffer too small")?;
    check(d.splits * d.tiles_per_split * INDEXER_TILE_KEYS >= l, "indexer splits do not cover the context")?;
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
fn launch_topk(dev: &Device, f: &CudaFunction, d: &Dims, scores: &CudaSlice<f32>, sel: &mut CudaSlice<i32>) -> Result<(), EngineError> {
    let (b, q) = (d.batch, d.query_len);
    check(scores.len() >= b * q * d.lp && sel.len() >= b * q * d.k, "top-k buffers too small")?;
    check(d.k >= 1 && d.k <= d.context && q <= i32::MAX as usize && b <= 65535, "top-k geometry")?;
    let cfg = LaunchConfig { grid_dim: (q as u32, b as u32, 1), block_dim: (TOPK_THREADS, 1, 1), shared_mem_bytes: TOPK_SMEM };
    let (qi, li, lpi, ki) = (q as i32, d.context as i32, d.lp as i32, d.k as i32);
    let mut lb = dev.stream.launch_builder(f);
    lb.arg(scores).arg(sel).arg(&qi).arg(&li).arg(&lpi).arg(&ki);
    // SAFETY: topk_radix(const float* scores, int* out, int q_len, int L, int Lp, int k) with one CTA
    // of 1024 threads per (query, sequence) reads scores[row*Lp + s] for s below the query's visible
    // count (<= L <= Lp; rows are 16-byte aligned since Lp % 4 == 0 and loads stop at the 4-aligned
    // end) and writes out[row*k .. row*k + k); sizes checked above; TOPK_SMEM bytes of dynamic shared
    // memory as the kernel lays out (limit raised by set_smem).
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching the DSA top-k", e)).map(|_| ())
}

/// Sparse MQA attention over each query's selection: out `[B, q, H, 512]`.
fn launch_attention(dev: &Device, f: &CudaFunction, d: &Dims, bufs: &mut Buffers) -> Result<(), EngineError> {
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
    // out rows below B*q*H; all sized above. 256 threads and the SPARSE_SMEM_* bytes of dynamic shared
    // memory are what the kernel lays out (limit raised by set_smem).
    unsafe { lb.launch(cfg) }.map_err(|e| driver_err("launching the DSA sparse attention", e)).map(|_| ())
}

// ---------------------------------------------------------------- inputs

fn bf16_bits(x: f32) -> u16 {
    (round_bf16(x).to_bits() >> 16) as u16
}

/// A loaded tensor as bf16 bits in its logical layout `[B, rows, cols]`.
fn host_bf16(case: &Case, inputs: &Inputs, t: InputTensor) -> Vec<u16> {
    let [b, r, c] = t.dims(case);
    let mut out = Vec::with_capacity(b * r * c);
    for bi in 0..b {
        for ri in 0..r {
            out.extend((0..c).map(|ci| bf16_bits(inputs.value(case, t, bi, ri, ci))));
        }
    }
    out
}

/// A loaded indexer tensor as e4m3 codes with one power-of-two scale per 128-value block (as
/// `reference::round_row` quantises it). Scales of block `j` of row `r` of sequence `b` land at
/// `b * scale_stride + r * blocks + j`.
fn host_e4m3_pow2(case: &Case, inputs: &Inputs, t: InputTensor, scale_stride: usize) -> (Vec<u8>, Vec<f32>) {
    let [b, r, c] = t.dims(case);
    let blocks = c / 128;
    let mut codes = Vec::with_capacity(b * r * c);
    let mut scales = vec![1.0f32; b * scale_stride];
    for bi in 0..b {
        for ri in 0..r {
            let raw = inputs.row(case, t, bi, ri);
            for (j, block) in raw.chunks(128).enumerate() {
                let s = e4m3_scale(block, ScaleKind::Pow2);
                scales[bi * scale_stride + ri * blocks + j] = s;
                codes.extend(block.iter().map(|&x| e4m3_bits(round_e4m3(x / s))));
            }
        }
    }
    (codes, scales)
}

fn upload<T: cudarc::driver::DeviceRepr>(dev: &Device, host: &[T], what: &str) -> Result<CudaSlice<T>, EngineError> {
    dev.stream.clone_htod(host).map_err(|e| driver_err(&format!("uploading {what}"), e))
}

impl DsaCuda {
    fn prepare_inner(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        dsa_geometry_support(case).map_err(EngineError::Unsupported)?;
        let dev = device().map_err(EngineError::Unsupported)?;
        let s = &case.shape;
        let needed = [InputTensor::IndexQ, InputTensor::IndexK, InputTensor::IndexW, InputTensor::MqaQ, InputTensor::Latent];
        inputs.check(case, &needed).map_err(|e| EngineError::Unsupported(e.to_string()))?;
        let (free_before, _) = dev.mem_info()?;
        let need = dsa_device_bytes(case);
        let reserve = 2 * dev.l2_bytes as u64 + (256 << 20);
        if need + reserve > free_before {
            return Err(EngineError::OutOfMemory(format!(
                "case needs {:.2} GiB of device memory, {:.2} GiB free",
                need as f64 / (1u64 << 30) as f64,
                free_before as f64 / (1u64 << 30) as f64
            )));
        }
        let fp8 = case.precision == Precision::Fp8;
        let (b, h, l, q) = (case.batch, s.heads, case.context, case.query_len);
        let lp = scores_stride(l);
        let qg = indexer_queries_per_cta(q);
        let (splits, tiles_per_split) = indexer_splits(dev.sm_count as usize, b, q, l);
        let attn = sparse_kernel(dev.cc, fp8);
        let wgmma = fp8 && use_wgmma_indexer(dev.cc);
        let ix_load = indexer_load(wgmma, qg);
        let dims = Dims {
            batch: b,
            heads: h,
            context: l,
            query_len: q,
            lp,
            k: case.effective_top_k(),
            fp8,
            attn,
            qg,
            ix_load,
            splits,
            tiles_per_split,
            scale_log2: (s.softmax_scale() * std::f64::consts::LOG2_E) as f32,
        };

        let ix_opts: &[&str] = if wgmma { &["--gpu-architecture=sm_90a"] } else { &[] };
        let indexer_entry = match (fp8, qg, wgmma) {
            (true, 1, true) => match ix_load {
                IndexerLoad::CpAsync => "indexer_fp8_wgmma_q1",
                IndexerLoad::Tma3 => "indexer_fp8_tma3_q1",
                IndexerLoad::Tma4 => "indexer_fp8_tma4_q1",
            },
            (true, _, true) => "indexer_fp8_wgmma_q4",
            (true, 1, false) => "indexer_fp8_q1",
            (true, _, false) => "indexer_fp8_q4",
            (false, 1, _) => "indexer_bf16_q1",
            (false, _, _) => "indexer_bf16_q4",
        };
        let kernels = Kernels {
            indexer: dev.function(KernelId::Indexer, indexer_entry, ix_opts)?,
            topk: dev.function(KernelId::Topk, "topk_radix", &[])?,
            attention: dev.function(KernelId::SparseMla, attn.entry(fp8), &attn.options())?,
        };
        launch::set_smem(&kernels.indexer, indexer_launch_smem(fp8, qg, ix_load))?;
        if std::env::var_os("CTXCOST_INDEXER_LOAD").is_some() {
            let f = &kernels.indexer;
            eprintln!(
                "dsa-cuda: indexer on {indexer_entry} ({:?} registers, {:?} bytes of local memory a thread, {} bytes of shared memory)",
                f.num_regs().ok(),
                f.local_size_bytes().ok(),
                indexer_launch_smem(fp8, qg, ix_load)
            );
        }
        launch::set_smem(&kernels.topk, TOPK_SMEM)?;
        launch::set_smem(&kernels.attention, attn.smem(fp8))?;
        if std::env::var_os("CTXCOST_SPARSE_VARIANT").is_some() {
            // Which kernel the switch selected, and whether it spills (for comparing the variants).
            let f = &kernels.attention;
            eprintln!(
                "dsa-cuda: sparse attention on {} ({:?} registers, {:?} bytes of local memory a thread)",
                attn.entry(fp8),
                f.num_regs().ok(),
                f.local_size_bytes().ok()
            );
        }

        let rows = b * q;
        let bufs = if inputs.loaded.is_some() {
            let (index_q, index_qs, index_k, index_ks) = if fp8 {
                let (qc, qs) = host_e4m3_pow2(case, inputs, InputTensor::IndexQ, q * 64);
                let (kc, ks) = host_e4m3_pow2(case, inputs, InputTensor::IndexK, lp);
                (
                    IndexBuf::Fp8(upload(&dev, &qc, "indexer queries")?),
                    upload(&dev, &qs, "indexer query scales")?,
                    IndexBuf::Fp8(upload(&dev, &kc, "indexer keys")?),
                    upload(&dev, &ks, "indexer key scales")?,
                )
            } else {
                (
                    IndexBuf::Bf16(upload(&dev, &host_bf16(case, inputs, InputTensor::IndexQ), "indexer queries")?),
                    upload(&dev, &[1.0f32], "unused scales")?,
                    IndexBuf::Bf16(upload(&dev, &host_bf16(case, inputs, InputTensor::IndexK), "indexer keys")?),
                    upload(&dev, &[1.0f32], "unused scales")?,
                )
            };
            let w: Vec<f32> = inputs.materialize(case, InputTensor::IndexW);
            let index_w = upload(&dev, &w, "indexer head weights")?;
            let mqa_q = upload(&dev, &host_bf16(case, inputs, InputTensor::MqaQ), "attention queries")?;
            let cache = if fp8 {
                let mut bytes = Vec::with_capacity(b * l * 656);
                for bi in 0..b {
                    for key in 0..l {
                        encode_fp8_latent_row(&inputs.row(case, InputTensor::Latent, bi, key), s.kv_lora_rank, &mut bytes);
                    }
                }
                CacheBuf::Fp8(upload(&dev, &bytes, "FP8 latent cache")?)
            } else {
                CacheBuf::Bf16(upload(&dev, &host_bf16(case, inputs, InputTensor::Latent), "latent cache")?)
            };
            let scores = launch::alloc::<f32>(&dev, rows * lp, "indexer scores")?;
            let sel = launch::alloc::<i32>(&dev, rows * dims.k, "top-k selection")?;
            let out = launch::alloc::<u16>(&dev, rows * h * 512, "attention output")?;
            Buffers { index_q, index_qs, index_w, index_k, index_ks, ix_map: None, scores, sel, mqa_q, cache, out }
        } else {
            let seed = inputs.seed;
            let g16 = dev.function(KernelId::Generate, "gen_bf16", &[])?;
            let (index_q, index_qs, index_k, index_ks) = if fp8 {
                let g8 = dev.function(KernelId::Indexer, "gen_e4m3_pow2", ix_opts)?;
                let mut qc = launch::alloc::<u8>(&dev, rows * 64 * 128, "indexer queries")?;
                let mut qs = launch::alloc::<f32>(&dev, rows * 64, "indexer query scales")?;
                gen_e4m3_pow2(&dev, &g8, &mut qc, &mut qs, seed, InputTensor::IndexQ.stream(), rows * 64, rows * 64, rows * 64)?;
                let mut kc = launch::alloc::<u8>(&dev, b * l * 128, "indexer keys")?;
                let mut ks = launch::alloc::<f32>(&dev, b * lp, "indexer key scales")?;
                gen_e4m3_pow2(&dev, &g8, &mut kc, &mut ks, seed, InputTensor::IndexK.stream(), b * l, l, lp)?;
                (IndexBuf::Fp8(qc), qs, IndexBuf::Fp8(kc), ks)
            } else {
                let mut qv = launch::alloc::<u16>(&dev, rows * 64 * 128, "indexer queries")?;
                launch::gen_bf16(&dev, &g16, &mut qv, seed, InputTensor::IndexQ.stream(), [b, q, 64, 128], false)?;
                let mut kv = launch::alloc::<u16>(&dev, b * l * 128, "indexer keys")?;
                launch::gen_bf16(&dev, &g16, &mut kv, seed, InputTensor::IndexK.stream(), [b, l, 1, 128], false)?;
                let mut unused_q = launch::alloc::<f32>(&dev, 1, "unused scales")?;
                let mut unused_k = launch::alloc::<f32>(&dev, 1, "unused scales")?;
                launch::fill_bytes(&dev, &mut unused_q, 0)?;
                launch::fill_bytes(&dev, &mut unused_k, 0)?;
                (IndexBuf::Bf16(qv), unused_q, IndexBuf::Bf16(kv), unused_k)
            };
            let gf = dev.function(KernelId::Indexer, "gen_f32", ix_opts)?;
            let mut index_w = launch::alloc::<f32>(&dev, rows * 64, "indexer head weights")?;
            gen_f32(&dev, &gf, &mut index_w, seed, InputTensor::IndexW.stream())?;
            let mut mqa_q = launch::alloc::<u16>(&dev, rows * h * 576, "attention queries")?;
            launch::gen_bf16(&dev, &g16, &mut mqa_q, seed, InputTensor::MqaQ.stream(), [b, q, h, 576], false)?;
            let cache = if fp8 {
                let gl = dev.function(KernelId::Generate, "gen_latent_fp8", &[])?;
                let mut c = launch::alloc::<u8>(&dev, b * l * 656, "FP8 latent cache")?;
                launch::gen_latent_fp8(&dev, &gl, &mut c, seed, InputTensor::Latent.stream(), b, l, 512, 64)?;
                CacheBuf::Fp8(c)
            } else {
                let mut c = launch::alloc::<u16>(&dev, b * l * 576, "latent cache")?;
                launch::gen_bf16(&dev, &g16, &mut c, seed, InputTensor::Latent.stream(), [b, l, 1, 576], false)?;
                CacheBuf::Bf16(c)
            };
            let scores = launch::alloc::<f32>(&dev, rows * lp, "indexer scores")?;
            let sel = launch::alloc::<i32>(&dev, rows * dims.k, "top-k selection")?;
            let out = launch::alloc::<u16>(&dev, rows * h * 512, "attention output")?;
            Buffers { index_q, index_qs, index_w, index_k, index_ks, ix_map: None, scores, sel, mqa_q, cache, out }
        };
        let mut bufs = bufs;
        if ix_load != IndexerLoad::CpAsync {
            let IndexBuf::Fp8(keys) = &bufs.index_k else {
                return Err(EngineError::State("the TMA indexer needs FP8 keys".into()));
            };
            bufs.ix_map = Some(launch::indexer_key_tensor_map(&dev, keys, b, l)?);
        }
        // Poison: NaN scores, selections of 0x7F7F7F7F (out of range) and NaN outputs, so anything
        // a kernel fails to write shows in verification.
        launch::fill_bytes(&dev, &mut bufs.scores, 0xFF)?;
        launch::fill_bytes(&dev, &mut bufs.sel, 0x7F)?;
        launch::fill_bytes(&dev, &mut bufs.out, 0xFF)?;
        dev.sync("generating the DSA inputs")?;
        let (free_after, _) = dev.mem_info()?;
        self.memory = Some(DeviceMemory { peak_allocated: need, free_before: Some(free_before), free_after: Some(free_after) });
        let timer = EventTimer::new(&dev, 3)?;
        self.prepared = Some(Prepared { dev, dims, kernels, bufs, timer, ran: false });
        Ok(())
    }
}

impl Engine for DsaCuda {
    fn id(&self) -> &str {
        "dsa-cuda"
    }

    fn timer(&self) -> &'static str {
        "cuda-events"
    }

    fn supports(&self, case: &Case) -> Support {
        if let Err(e) = super::probe() {
            return Support::No(e);
        }
        if let Err(e) = dsa_geometry_support(case) {
            return Support::No(e);
        }
        let dev = match device() {
            Ok(d) => d,
            Err(e) => return Support::No(e),
        };
        let need_cc = KernelId::Indexer.min_compute_capability();
        if dev.cc < need_cc {
            return Support::No(format!(
                "{} (sm_{}{}) is older than sm_{}{}, which the FP8 indexer kernels need",
                dev.name, dev.cc.0, dev.cc.1, need_cc.0, need_cc.1
            ));
        }
        let fp8 = case.precision == Precision::Fp8;
        let qg = indexer_queries_per_cta(case.query_len);
        let smem = indexer_launch_smem(fp8, qg, indexer_load(fp8 && use_wgmma_indexer(dev.cc), qg))
            .max(TOPK_SMEM)
            .max(sparse_kernel(dev.cc, fp8).smem(fp8));
        if smem as usize > dev.max_smem_optin {
            return Support::No(format!("kernels need {smem} bytes of shared memory per block, {} offers {}", dev.name, dev.max_smem_optin));
        }
        Support::Yes
    }

    fn prepare(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        self.release();
        self.memory = None;
        self.prepare_inner(case, inputs)
    }

    fn run(&mut self) -> Result<Timing, EngineError> {
        let p = self.prepared.as_mut().ok_or_else(|| EngineError::State("run before prepare".into()))?;
        let dev = p.dev.clone();
        dev.flush_l2()?;
        p.timer.start(&dev)?;
        launch_indexer(&dev, &p.kernels.indexer, &p.dims, &mut p.bufs)?;
        p.timer.mark(&dev, 0)?;
        launch_topk(&dev, &p.kernels.topk, &p.dims, &p.bufs.scores, &mut p.bufs.sel)?;
        p.timer.mark(&dev, 1)?;
        launch_attention(&dev, &p.kernels.attention, &p.dims, &mut p.bufs)?;
        p.timer.mark(&dev, 2)?;
        let ms = p.timer.elapsed()?;
        p.ran = true;
        Ok(Timing { total_ms: ms[2], components: vec![("indexer", ms[0]), ("topk", ms[1] - ms[0]), ("attention", ms[2] - ms[1])] })
    }

    fn output(&mut self) -> Result<Output, EngineError> {
        if !self.prepared.as_ref().ok_or_else(|| EngineError::State("output before prepare".into()))?.ran {
            self.run()?;
        }
        let p = self.prepared.as_ref().expect("checked above");
        p.dev.sync("waiting for the DSA kernels")?;
        let bits: Vec<u16> = p.dev.stream.clone_dtoh(&p.bufs.out).map_err(|e| driver_err("copying the attention output back", e))?;
        let sel: Vec<i32> = p.dev.stream.clone_dtoh(&p.bufs.sel).map_err(|e| driver_err("copying the selection back", e))?;
        Ok(Output { values: bits.into_iter().map(|x| f32::from_bits((x as u32) << 16)).collect(), indices: Some(sel), sampled: None })
    }

    fn device_memory(&self) -> Option<DeviceMemory> {
        self.memory
    }

    fn release(&mut self) {
        if let Some(p) = self.prepared.take() {
            let dev = p.dev.clone();
            drop(p);
            let _ = dev.sync("releasing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::{ModelShape, Phase};

    fn case(phase: Phase, precision: Precision, context: usize, batch: usize, q: usize) -> Case {
        Case {
            engine: "dsa-cuda".into(),
            method: ctxcost_core::Method::Dsa,
            shape: ModelShape::deepseek_v32_exp(),
            phase,
            context,
            batch,
            query_len: q,
            precision,
            seed: 1,
        }
    }

    #[test]
    fn geometry_rules() {
        assert!(dsa_geometry_support(&case(Phase::Decode, Precision::Fp8, 131072, 64, 1)).is_ok());
        assert!(dsa_geometry_support(&case(Phase::Prefill, Precision::Bf16, 4096, 1, 4096)).is_ok());
        assert!(dsa_geometry_support(&case(Phase::Decode, Precision::F32, 4096, 8, 1)).unwrap_err().contains("f32"));
        let tiny = Case { shape: ModelShape::tiny(), ..case(Phase::Decode, Precision::Bf16, 64, 1, 1) };
        assert!(dsa_geometry_support(&tiny).unwrap_err().contains("64 heads x 128"));
        let dense = Case { shape: ModelShape::deepseek_v31_terminus(), ..case(Phase::Decode, Precision::Bf16, 64, 1, 1) };
        assert!(dsa_geometry_support(&dense).unwrap_err().contains("no lightning indexer"));
    }

    #[test]
    fn indexer_splits_cover_the_context_and_fill_the_machine() {
        for &(b, q, l) in &[(64usize, 1usize, 131072usize), (64, 1, 4096), (1, 4096, 131072), (2, 1, 3000), (1, 1, 1), (1, 150, 150), (64, 2, 32768)] {
            let (n, per) = indexer_splits(132, b, q, l);
            assert!(n >= 1 && per >= 1);
            assert!(n * per * INDEXER_TILE_KEYS >= l, "{b} {q} {l}: {n} x {per}");
            assert!((n - 1) * per * INDEXER_TILE_KEYS < l, "empty trailing split: {b} {q} {l}");
            assert!(per <= 16);
        }
        // Decode at 128K, batch 64: 8 tiles a CTA, 64 splits (4096 CTAs, ~15.5 waves of 264).
        assert_eq!(indexer_splits(132, 64, 1, 131072), (64, 8));
    }

    #[test]
    fn shared_memory_fits_an_h200_block() {
        let optin = 232_448usize; // 227 KiB
        for fp8 in [false, true] {
            for qg in [1, 4] {
                assert!((indexer_smem(fp8, qg) as usize) <= optin, "{fp8} {qg}");
            }
        }
        // Two FP8 decode CTAs per multiprocessor (228 KiB, 1 KiB reserved per block).
        assert!(2 * (indexer_smem(true, 1) as usize + 1024) <= 233_472);
        // TMA indexer: 3 stages still fit two CTAs per multiprocessor, 4 stages one.
        assert_eq!(IndexerLoad::tma_smem(3), 110_896);
        assert_eq!(IndexerLoad::tma_smem(4), 144_704);
        assert!(2 * (IndexerLoad::tma_smem(3) as usize + 1024) <= 233_472);
        assert!((IndexerLoad::tma_smem(4) as usize) <= optin);
        assert!((SPARSE_SMEM_BF16 as usize) <= optin && (SPARSE_SMEM_FP8 as usize) <= optin && (TOPK_SMEM as usize) <= optin);
        assert!((SPARSE_SMEM_BF16_WGMMA as usize) <= optin);
        assert_eq!(SPARSE_SMEM_BF16_WGMMA, 232_224);
    }

    #[test]
    fn device_bytes_count_the_scores_and_caches() {
        let c = case(Phase::Decode, Precision::Fp8, 131072, 64, 1);
        let bytes = dsa_device_bytes(&c) as f64;
        // Latent 656 B + indexer 128 B + scale 4 B + scores 4 B per key and sequence dominate.
        let per_key = 64.0 * 131072.0 * (656.0 + 128.0 + 4.0 + 4.0);
        assert!(bytes > per_key && bytes < per_key * 1.05, "{bytes} vs {per_key}");
        assert_eq!(scores_stride(3001), 3004);
        assert_eq!(scores_stride(3000), 3000);
    }

    /// NVRTC builds the indexer for sm_90a with native FP8 wgmma in it (no GPU needed; skipped where
    /// libnvrtc cannot be loaded).
    #[test]
    fn indexer_builds_for_sm90a_with_wgmma() {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("libnvrtc not found: sm_90a compile check skipped");
            return;
        }
        let ptx = super::super::device::compile(KernelId::Indexer, "sm_90", &["--gpu-architecture=sm_90a"]).unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        assert!(text.contains(".target sm_90a"));
        assert!(text.contains("wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3"));
        assert!(text.contains("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes"));
        assert!(text.contains("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"));
        for e in ["indexer_fp8_wgmma_q1", "indexer_fp8_wgmma_q4", "indexer_fp8_tma3_q1", "indexer_fp8_tma4_q1", "gen_e4m3_pow2", "gen_f32"] {
            assert!(text.contains(&format!(".entry {e}(")), "{e}");
        }
    }

    /// NVRTC builds the sparse attention for sm_90a with the register-operand wgmma and the bulk row
    /// copies in it (no GPU needed; skipped where libnvrtc cannot be loaded).
    #[test]
    fn sparse_attention_builds_for_sm90a_with_wgmma() {
        // SAFETY: only tries to dlopen libnvrtc.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("libnvrtc not found: sm_90a compile check skipped");
            return;
        }
        let ptx = super::super::device::compile(KernelId::SparseMla, "sm_90", &["--gpu-architecture=sm_90a"]).unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        assert!(text.contains(".target sm_90a"));
        assert!(text.contains("wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16"));
        assert!(text.contains("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16"));
        assert!(text.contains("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"));
        use SparseKernel::*;
        for k in [Mma, WgmmaBulk, WgmmaCpAsync, WgmmaEarly, WgmmaSplit, WgmmaSplit2] {
            for fp8 in [false, true] {
                assert!(text.contains(&format!(".entry {}(", k.entry(fp8))), "{k:?} {fp8}");
            }
        }
    }

    #[test]
    fn indexer_load_choice_keeps_the_default() {
        use IndexerLoad::*;
        assert_eq!(indexer_load_choice(true, 1, None), Tma3);
        assert_eq!(indexer_load_choice(true, 1, Some("cpasync")), CpAsync);
        assert_eq!(indexer_load_choice(true, 1, Some("bogus")), Tma3);
        assert_eq!(indexer_load_choice(true, 1, Some("tma")), Tma3);
        assert_eq!(indexer_load_choice(true, 1, Some("tma4")), Tma4);
        // Prefill (four queries per CTA) and the mma.sync path ignore the switch.
        assert_eq!(indexer_load_choice(true, 4, Some("tma")), CpAsync);
        assert_eq!(indexer_load_choice(false, 1, Some("tma")), CpAsync);
        assert_eq!(indexer_launch_smem(true, 1, CpAsync), indexer_smem(true, 1));
        assert_eq!(indexer_launch_smem(true, 1, Tma4), IndexerLoad::tma_smem(4));
    }

    #[test]
    fn sparse_kernel_choice() {
        // Other devices and the FP8 cache keep mma.sync whatever the switch says.
        assert_eq!(sparse_kernel((8, 9), false), SparseKernel::Mma);
        assert_eq!(sparse_kernel((9, 0), true), SparseKernel::Mma);
        assert_eq!(SparseKernel::WgmmaBulk.smem(true), SPARSE_SMEM_FP8);
        assert_eq!(SparseKernel::Mma.entry(false), "sparse_mla_bf16");
        // The default on a 9.0 device with a bf16 cache, and the switches.
        assert_eq!(wgmma_choice(None, None), SparseKernel::WgmmaSplit);
        assert_eq!(wgmma_choice(None, Some("default")), SparseKernel::WgmmaSplit);
        assert_eq!(wgmma_choice(None, Some("bulk")), SparseKernel::WgmmaBulk);
        assert_eq!(wgmma_choice(None, Some("early")), SparseKernel::WgmmaEarly);
        assert_eq!(wgmma_choice(None, Some("bogus")), SparseKernel::WgmmaSplit);
        assert_eq!(wgmma_choice(Some("mma"), Some("early")), SparseKernel::Mma);
        assert_eq!(wgmma_choice(Some("cpa"), None), SparseKernel::WgmmaCpAsync);
        assert_eq!(SparseKernel::WgmmaEarly.entry(false), "sparse_mla_bf16_wgmma_early");
        assert_eq!(SparseKernel::WgmmaEarly.entry(true), "sparse_mla_fp8");
        assert_eq!(SparseKernel::WgmmaEarly.smem(false), SPARSE_SMEM_BF16_WGMMA);
        assert_eq!(wgmma_choice(None, Some("split")), SparseKernel::WgmmaSplit);
        assert_eq!(SparseKernel::WgmmaSplit.entry(false), "sparse_mla_bf16_wgmma_split");
        assert_eq!(SparseKernel::WgmmaSplit.smem(false), SPARSE_SMEM_BF16_WGMMA);
        assert_eq!(wgmma_choice(None, Some("split2")), SparseKernel::WgmmaSplit2);
        assert_eq!(SparseKernel::WgmmaSplit2.entry(false), "sparse_mla_bf16_wgmma_split2");
        assert_eq!(SparseKernel::WgmmaSplit2.entry(true), "sparse_mla_fp8");
    }

    #[test]
    fn host_fp8_indexer_rows_match_the_reference_rounding() {
        let c = Case { batch: 1, ..case(Phase::Decode, Precision::Fp8, 8, 1, 1) };
        let inputs = Inputs::seeded(7);
        let (codes, scales) = host_e4m3_pow2(&c, &inputs, InputTensor::IndexK, 8);
        let view = crate::reference::View::new(&c, &inputs);
        for key in 0..8 {
            let want = view.row(InputTensor::IndexK, 0, key);
            for d in 0..128 {
                let bits = codes[key * 128 + d] as u32;
                let e = ((bits >> 3) & 0xF) as i32;
                let m = (bits & 7) as f32;
                let v = if e == 0 { m * 2f32.powi(-9) } else { (1.0 + m / 8.0) * 2f32.powi(e - 7) };
                let v = if bits & 0x80 != 0 { -v } else { v };
                assert_eq!((v * scales[key]) as f64, want[d], "key {key} dim {d}");
            }
            assert_eq!(scales[key], scales[key].log2().round().exp2(), "power of two");
        }
    }
}
