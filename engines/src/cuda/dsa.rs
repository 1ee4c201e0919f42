//! `dsa-cuda`: DeepSeek Sparse Attention on an NVIDIA GPU, three kernels in a row on one stream:
//!
//! 1. **indexer** (`kernels/indexer.cu`): `I[t,s] = sum_j w[t,j] ReLU(q[t,j] . k[s])` for 64 heads x 128
//!    dims on tensor cores: bf16 (`mma.sync` m16n8k16), or FP8 e4m3 with the 132-byte indexer cache
//!    (128 e4m3 codes + one power-of-two fp32 scale per key) and one power-of-two scale per (query,
//!    head): `wgmma` m64n64k32 on sm_90 (the module is compiled for sm_90a), `mma.sync` m16n8k32
//!    elsewhere (sm_89+) or with the kernel choice `indexer=mma`. Scores `[B, q, Lp]` fp32, causal
//!    (query at position `p` gets keys `0..=p`). FP8 decode key tiles arrive by one TMA tensor copy
//!    each (128-byte swizzle) and their scales by one bulk copy, issued by one thread on full/empty
//!    mbarriers (`indexer_fp8_tma3_q1`: 3 stages, two CTAs per SM; `indexer_load=tma4`: 4 stages, one
//!    CTA per SM; `=cpasync`: the earlier cp.async pipeline `indexer_fp8_wgmma_q1`); prefill chunks
//!    use cp.async.
//! 2. **top-k** (`kernels/topk.cu`): exact radix select per query row (no sort), ties to the smaller
//!    position, output `[B, q, k]` ascending with `-1` padding.
//! 3. **attention** (`kernels/sparse_mla.cu`): MLA in MQA mode over each query's selected latents
//!    (128 heads, 576-dim keys, 512-dim values, online softmax, bf16 operands, fp32 accumulation), from
//!    the bf16 latent cache or the 656-byte FP8 one. With a bf16 cache on compute capability 9.0 it runs
//!    on wgmma (the module compiled for sm_90a), by default `sparse_mla_bf16_wgmma_split` (rows
//!    gathered by bulk copies, tile buffers released after the last ldmatrix of a tile, the value
//!    product split over the value dims between the warpgroups); the kernel choice `sparse` picks
//!    another (`split2`, `early`, `bulk`, `cpa`, or `mma`, the mma.sync kernel that runs everywhere
//!    else and for the FP8 cache), in every phase.
//!
//! The kernel choices, their entry points and shared-memory sizes live in
//! [`crate::kernel_choice`]; the launches in `launch`; the host codec of loaded inputs in `codec`.
//! `run` times the three with CUDA events recorded between them and reports them as the components
//! `indexer`, `topk`, `attention`. Inputs are generated on the device from the case seed with the shared
//! generator (bit-identical to `ctxcost_core::inputs::uniform` and to the roundings of
//! `reference::round_row`), or uploaded when loaded from a file. The attention output and the selection
//! are poisoned before the first run, so anything a kernel fails to write fails verification.

use std::sync::Arc;

use cudarc::driver::CudaFunction;
use ctxcost_core::{Case, InputTensor, Inputs, Precision};
use ctxcost_kernels::KernelId;

use super::codec::{fp8_latent_cache, host_bf16, host_e4m3_pow2};
use super::device::{device, driver_err, Device, EventTimer};
use super::launch::{self, CacheBuf, DsaBuffers, DsaDims, IndexBuf};
use crate::kernel_choice::{
    check_case, indexer_launch_smem, indexer_load, indexer_queries_per_cta, indexer_tile_keys, sparse_kernel, topk_smem, use_wgmma_indexer,
    IndexerLoad, SparseKernel,
};
use crate::{DeviceMemory, Engine, EngineError, Output, Support, Timing};

/// The key split of an indexer launch, `(splits, tiles_per_split)`: about eight CTAs per
/// multiprocessor in total when the work allows (so the last wave is a small share), at most 8
/// tiles (decode) or 16 (prefill) per CTA, each split a whole number of 256-key tiles.
pub fn indexer_splits(sm_count: usize, batch: usize, query_len: usize, context: usize) -> (usize, usize) {
    let qg = indexer_queries_per_cta(query_len);
    let tiles = context.div_ceil(indexer_tile_keys()).max(1);
    let groups = (batch * query_len.div_ceil(qg)).max(1);
    let cap = if qg == 1 { 8 } else { 16 };
    let per = (groups * tiles).div_ceil(8 * sm_count.max(1)).clamp(1, cap).min(tiles);
    (tiles.div_ceil(per), per)
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

struct Kernels {
    indexer: CudaFunction,
    topk: CudaFunction,
    attention: CudaFunction,
}

struct Prepared {
    dev: Arc<Device>,
    dims: DsaDims,
    kernels: Kernels,
    bufs: DsaBuffers,
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

/// The kernels a case runs on a device of compute capability `cc`.
struct KernelPlan {
    attn: SparseKernel,
    /// Whether the FP8 indexer runs on wgmma.
    wgmma: bool,
    ix_load: IndexerLoad,
}

/// The kernels of a case from its kernel choices (the devices's defaults where it has none), or
/// why its choices cannot run it here.
fn kernel_plan(case: &Case, cc: (i32, i32)) -> Result<KernelPlan, String> {
    check_case(case)?;
    let attn = sparse_kernel(case, cc)?;
    let wgmma = use_wgmma_indexer(case, cc)?;
    let ix_load = indexer_load(case, wgmma, indexer_queries_per_cta(case.query_len))?;
    Ok(KernelPlan { attn, wgmma, ix_load })
}

impl DsaCuda {
    fn prepare_inner(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        dsa_geometry_support(case).map_err(EngineError::Unsupported)?;
        let dev = device().map_err(EngineError::Unsupported)?;
        let s = &case.shape;
        let needed = [InputTensor::IndexQ, InputTensor::IndexK, InputTensor::IndexW, InputTensor::MqaQ, InputTensor::Latent];
        inputs.check(case, &needed).map_err(|e| EngineError::Unsupported(e.to_string()))?;
        let need = dsa_device_bytes(case);
        let free_before = dev.room_for(need, 256 << 20, "case", "")?;
        let fp8 = case.precision == Precision::Fp8;
        let (b, h, l, q) = (case.batch, s.heads, case.context, case.query_len);
        let lp = scores_stride(l);
        let qg = indexer_queries_per_cta(q);
        let (splits, tiles_per_split) = indexer_splits(dev.sm_count as usize, b, q, l);
        let KernelPlan { attn, wgmma, ix_load } = kernel_plan(case, dev.cc).map_err(EngineError::Unsupported)?;
        let dims = DsaDims {
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
        let indexer_entry = ix_load.indexer_entry(fp8, qg, wgmma);
        let kernels = Kernels {
            indexer: dev.function(KernelId::Indexer, indexer_entry, ix_opts)?,
            topk: dev.function(KernelId::Topk, "topk_radix", &[])?,
            attention: dev.function(KernelId::SparseMla, attn.entry(fp8), &attn.options())?,
        };
        launch::set_smem(&kernels.indexer, indexer_launch_smem(fp8, qg, ix_load))?;
        launch::set_smem(&kernels.topk, topk_smem())?;
        launch::set_smem(&kernels.attention, attn.smem(fp8))?;

        let rows = b * q;
        let bufs = if inputs.loaded.is_some() {
            let (index_q, index_qs, index_k, index_ks) = if fp8 {
                let (qc, qs) = host_e4m3_pow2(case, inputs, InputTensor::IndexQ, q * 64);
                let (kc, ks) = host_e4m3_pow2(case, inputs, InputTensor::IndexK, lp);
                (
                    IndexBuf::Fp8(dev.upload(&qc, "indexer queries")?),
                    dev.upload(&qs, "indexer query scales")?,
                    IndexBuf::Fp8(dev.upload(&kc, "indexer keys")?),
                    dev.upload(&ks, "indexer key scales")?,
                )
            } else {
                (
                    IndexBuf::Bf16(dev.upload(&host_bf16(case, inputs, InputTensor::IndexQ, 1, false), "indexer queries")?),
                    dev.upload(&[1.0f32], "unused scales")?,
                    IndexBuf::Bf16(dev.upload(&host_bf16(case, inputs, InputTensor::IndexK, 1, false), "indexer keys")?),
                    dev.upload(&[1.0f32], "unused scales")?,
                )
            };
            let w: Vec<f32> = inputs.materialize(case, InputTensor::IndexW);
            let index_w = dev.upload(&w, "indexer head weights")?;
            let mqa_q = dev.upload(&host_bf16(case, inputs, InputTensor::MqaQ, 1, false), "attention queries")?;
            let cache = if fp8 {
                CacheBuf::Fp8(dev.upload(&fp8_latent_cache(case, inputs), "FP8 latent cache")?)
            } else {
                CacheBuf::Bf16(dev.upload(&host_bf16(case, inputs, InputTensor::Latent, 1, false), "latent cache")?)
            };
            let scores = launch::alloc::<f32>(&dev, rows * lp, "indexer scores")?;
            let sel = launch::alloc::<i32>(&dev, rows * dims.k, "top-k selection")?;
            let out = launch::alloc::<u16>(&dev, rows * h * 512, "attention output")?;
            DsaBuffers { index_q, index_qs, index_w, index_k, index_ks, ix_map: None, scores, sel, mqa_q, cache, out }
        } else {
            let seed = inputs.seed;
            let g16 = dev.function(KernelId::Generate, "gen_bf16", &[])?;
            let (index_q, index_qs, index_k, index_ks) = if fp8 {
                let g8 = dev.function(KernelId::Indexer, "gen_e4m3_pow2", ix_opts)?;
                let mut qc = launch::alloc::<u8>(&dev, rows * 64 * 128, "indexer queries")?;
                let mut qs = launch::alloc::<f32>(&dev, rows * 64, "indexer query scales")?;
                launch::gen_e4m3_pow2(&dev, &g8, &mut qc, &mut qs, seed, InputTensor::IndexQ.stream(), rows * 64, rows * 64, rows * 64)?;
                let mut kc = launch::alloc::<u8>(&dev, b * l * 128, "indexer keys")?;
                let mut ks = launch::alloc::<f32>(&dev, b * lp, "indexer key scales")?;
                launch::gen_e4m3_pow2(&dev, &g8, &mut kc, &mut ks, seed, InputTensor::IndexK.stream(), b * l, l, lp)?;
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
            launch::gen_f32(&dev, &gf, &mut index_w, seed, InputTensor::IndexW.stream())?;
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
            DsaBuffers { index_q, index_qs, index_w, index_k, index_ks, ix_map: None, scores, sel, mqa_q, cache, out }
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
        self.memory = Some(dev.prepared_memory("generating the DSA inputs", need, free_before)?);
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
        let plan = match kernel_plan(case, dev.cc) {
            Ok(p) => p,
            Err(e) => return Support::No(e),
        };
        let smem = indexer_launch_smem(fp8, qg, plan.ix_load).max(topk_smem()).max(plan.attn.smem(fp8));
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
        launch::dsa_indexer(&dev, &p.kernels.indexer, &p.dims, &mut p.bufs)?;
        p.timer.mark(&dev, 0)?;
        launch::dsa_topk(&dev, &p.kernels.topk, &p.dims, &p.bufs.scores, &mut p.bufs.sel)?;
        p.timer.mark(&dev, 1)?;
        launch::sparse_attention(&dev, &p.kernels.attention, &p.dims, &mut p.bufs)?;
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
            kernel: Default::default(),
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
            assert!(n * per * indexer_tile_keys() >= l, "{b} {q} {l}: {n} x {per}");
            assert!((n - 1) * per * indexer_tile_keys() < l, "empty trailing split: {b} {q} {l}");
            assert!(per <= 16);
        }
        // Decode at 128K, batch 64: 8 tiles a CTA, 64 splits (4096 CTAs, ~15.5 waves of 264).
        assert_eq!(indexer_splits(132, 64, 1, 131072), (64, 8));
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
        for &name in SparseKernel::NAMES {
            let k = SparseKernel::from_name(name).unwrap();
            for fp8 in [false, true] {
                assert!(text.contains(&format!(".entry {}(", k.entry(fp8))), "{k:?} {fp8}");
            }
        }
    }
}
