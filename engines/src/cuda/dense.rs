//! `dense-cuda`: dense MLA on an NVIDIA GPU. Prefill runs MHA mode through
//! `dense_prefill_bf16` (bf16 only); decode runs MQA mode through split-K
//! `dense_decode_{bf16,fp8}` and `dense_decode_combine` (bf16 cache, or the 656-byte FP8 cache).
//! On compute capability 9.0 the bf16 decode runs `dense_decode_bf16_wgmma_tma` instead (wgmma,
//! TMA key tiles; the module is compiled for sm_90a); the kernel choice `decode=mma` selects the
//! mma.sync kernel there too, `=pipe` the pipelined wgmma variant (slower on the H200 so far), and
//! `prefill_tile` / `fp8_cvt` pick the prefill tile and the e4m3 decode ([`crate::kernel_choice`]).
//!
//! Inputs are generated on the device from the case seed (bit-identical to
//! `ctxcost_core::inputs::uniform` and the roundings of `reference::round_row`), or uploaded
//! when the inputs were loaded from a file. The output buffer is poisoned with NaNs before the
//! first run, so an element the kernel never writes fails verification.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice};
use ctxcost_core::{Case, InputTensor, Inputs, Phase, Precision};
use ctxcost_kernels::KernelId;

use super::codec::{fp8_latent_cache, host_bf16};
use super::device::{device, driver_err, Device, EventTimer};
use super::launch::{self, CacheBuf, DecodeDims, PrefillDims, TensorMap};
use crate::kernel_choice::{check_case, decode_kernel, decode_options, prefill_tile};
use crate::check::Rows;
use crate::{DeviceMemory, Engine, EngineError, Output, Support, Timing};

/// The dense CUDA engine.
#[derive(Default)]
pub struct DenseCuda {
    prepared: Option<Prepared>,
    memory: Option<DeviceMemory>,
}

impl DenseCuda {
    pub fn new() -> Self {
        Self::default()
    }
}

struct Prepared {
    dev: Arc<Device>,
    work: Work,
    timer: EventTimer,
    ran: bool,
}

enum Work {
    Prefill {
        dims: PrefillDims,
        f: CudaFunction,
        q: CudaSlice<u16>,
        k: CudaSlice<u16>,
        v: CudaSlice<u16>,
        o: CudaSlice<u16>,
    },
    Decode {
        dims: DecodeDims,
        f: CudaFunction,
        combine: CudaFunction,
        /// The cache's tensor map (wgmma kernel only; it records the address of `cache`).
        tmap: Option<TensorMap>,
        q: CudaSlice<u16>,
        cache: CacheBuf,
        out: CudaSlice<u16>,
        ws_o: CudaSlice<f32>,
        ws_ml: CudaSlice<f32>,
    },
}

/// The key-split of a decode launch: `(n_splits, tiles_per_split)` so that
/// `batch * row_blocks * n_splits` CTAs fill about one wave of `sm_count` multiprocessors,
/// each split a whole number of 64-key tiles.
pub fn decode_splits(sm_count: usize, batch: usize, query_len: usize, heads: usize, context: usize) -> (usize, usize) {
    let ctas = (batch * query_len * heads / 64).max(1);
    let tiles = context.div_ceil(64).max(1);
    let want = (sm_count / ctas).clamp(1, tiles);
    let per = tiles.div_ceil(want);
    (tiles.div_ceil(per), per)
}

/// Why a case does not fit these kernels (geometry and precision), or `Ok`.
pub fn geometry_support(case: &Case) -> Result<(), String> {
    let s = &case.shape;
    match case.phase {
        Phase::Prefill => {
            match case.precision {
                Precision::Bf16 => {}
                Precision::Fp8 => return Err("dense prefill runs in bf16 only (the fp8 variant is the decode KV cache)".into()),
                Precision::F32 => return Err("the CUDA kernels compute in bf16 (and fp8 for the decode cache); use dense-cpu for f32".into()),
            }
            if s.mha_qk_dim() != 192 || s.mha_v_dim() != 128 {
                return Err(format!(
                    "dense prefill kernel is built for qk 192 / v 128 (DeepSeek MLA); shape `{}` has {} / {}",
                    s.name,
                    s.mha_qk_dim(),
                    s.mha_v_dim()
                ));
            }
            if s.heads > 65535 || case.batch > 65535 {
                return Err("heads and batch must be at most 65535".into());
            }
        }
        Phase::Decode => {
            if case.precision == Precision::F32 {
                return Err("the CUDA kernels compute in bf16 (and fp8 for the decode cache); use dense-cpu for f32".into());
            }
            if s.kv_lora_rank != 512 || s.qk_rope_dim != 64 {
                return Err(format!(
                    "dense decode kernel is built for a 512 + 64 latent (DeepSeek MLA); shape `{}` has {} + {}",
                    s.name, s.kv_lora_rank, s.qk_rope_dim
                ));
            }
            if s.heads % 64 != 0 {
                return Err(format!("dense decode needs a multiple of 64 query heads; shape `{}` has {}", s.name, s.heads));
            }
            if case.batch > 65535 {
                return Err("batch must be at most 65535".into());
            }
        }
    }
    if case.context > i32::MAX as usize / 2 {
        return Err("context too long for 32-bit key indices".into());
    }
    Ok(())
}

/// Device bytes a case allocates (inputs, output, workspace).
pub fn device_bytes(case: &Case, sm_count: usize) -> u64 {
    let (b, h, l, q) = (case.batch as u64, case.shape.heads as u64, case.context as u64, case.query_len as u64);
    match case.phase {
        Phase::Prefill => 2 * (b * h * q * 192 + b * h * l * 192 + b * h * l * 128 + b * q * h * 128),
        Phase::Decode => {
            let row = if case.precision == Precision::Fp8 { 656 } else { 1152 };
            let rows = b * q * h;
            let (splits, _) = decode_splits(sm_count, case.batch, case.query_len, case.shape.heads, case.context);
            let ws = if splits > 1 { rows * splits as u64 * (512 * 4 + 8) } else { 0 };
            2 * rows * 576 + b * l * row + 2 * rows * 512 + ws
        }
    }
}

impl DenseCuda {
    fn prepare_inner(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        geometry_support(case).map_err(EngineError::Unsupported)?;
        check_case(case).map_err(EngineError::Unsupported)?;
        let dev = device().map_err(EngineError::Unsupported)?;
        let s = &case.shape;
        let needed: &[InputTensor] = match case.phase {
            Phase::Prefill => &[InputTensor::MhaQ, InputTensor::MhaK, InputTensor::MhaV],
            Phase::Decode => &[InputTensor::MqaQ, InputTensor::Latent],
        };
        inputs.check(case, needed).map_err(|e| EngineError::Unsupported(e.to_string()))?;
        let need = device_bytes(case, dev.sm_count as usize);
        // Keep room for the L2 flush buffer and the driver's own allocations.
        let free_before = dev.room_for(need, 256 << 20, "case", "")?;
        let (b, h, l, ql) = (case.batch, s.heads, case.context, case.query_len);
        let scale_log2 = (s.softmax_scale() * std::f64::consts::LOG2_E) as f32;
        let seed = inputs.seed;
        let gen = || dev.function(KernelId::Generate, "gen_bf16", &[]);
        let work = match case.phase {
            Phase::Prefill => {
                let tile = prefill_tile(case).map_err(EngineError::Unsupported)?;
                let opts = tile.options();
                let opts: Vec<&str> = opts.iter().map(String::as_str).collect();
                let f = dev.function(KernelId::DensePrefill, "dense_prefill_bf16", &opts)?;
                launch::set_smem(&f, tile.smem())?;
                let dims = PrefillDims { tile, batch: b, heads: h, context: l, query_len: ql, scale_log2 };
                let (q, k, v) = if inputs.loaded.is_some() {
                    (
                        dev.upload(&host_bf16(case, inputs, InputTensor::MhaQ, h, true), "Q")?,
                        dev.upload(&host_bf16(case, inputs, InputTensor::MhaK, h, true), "K")?,
                        dev.upload(&host_bf16(case, inputs, InputTensor::MhaV, h, true), "V")?,
                    )
                } else {
                    let g = gen()?;
                    let mut q = launch::alloc::<u16>(&dev, b * h * ql * 192, "Q")?;
                    let mut k = launch::alloc::<u16>(&dev, b * h * l * 192, "K")?;
                    let mut v = launch::alloc::<u16>(&dev, b * h * l * 128, "V")?;
                    launch::gen_bf16(&dev, &g, &mut q, seed, InputTensor::MhaQ.stream(), [b, ql, h, 192], true)?;
                    launch::gen_bf16(&dev, &g, &mut k, seed, InputTensor::MhaK.stream(), [b, l, h, 192], true)?;
                    launch::gen_bf16(&dev, &g, &mut v, seed, InputTensor::MhaV.stream(), [b, l, h, 128], true)?;
                    (q, k, v)
                };
                let mut o = launch::alloc::<u16>(&dev, b * ql * h * 128, "output")?;
                launch::fill_bytes(&dev, &mut o, 0xFF)?;
                Work::Prefill { dims, f, q, k, v, o }
            }
            Phase::Decode => {
                let fp8 = case.precision == Precision::Fp8;
                let kernel = decode_kernel(case, dev.cc).map_err(EngineError::Unsupported)?;
                let opts = decode_options(case, dev.cc, kernel).map_err(EngineError::Unsupported)?;
                let f = dev.function(KernelId::DenseDecode, kernel.entry(fp8), &opts)?;
                launch::set_smem(&f, kernel.smem(fp8))?;
                let combine = dev.function(KernelId::DenseDecode, "dense_decode_combine", &[])?;
                let (n_splits, tiles_per_split) = decode_splits(dev.sm_count as usize, b, ql, h, l);
                let dims =
                    DecodeDims { batch: b, heads: h, context: l, query_len: ql, n_splits, tiles_per_split, scale_log2, fp8, kernel };
                let rows = dims.rows();
                let (q, cache) = if inputs.loaded.is_some() {
                    let q = dev.upload(&host_bf16(case, inputs, InputTensor::MqaQ, h, false), "Q")?;
                    let cache = if fp8 {
                        CacheBuf::Fp8(dev.upload(&fp8_latent_cache(case, inputs), "FP8 latent cache")?)
                    } else {
                        CacheBuf::Bf16(dev.upload(&host_bf16(case, inputs, InputTensor::Latent, 1, false), "latent cache")?)
                    };
                    (q, cache)
                } else {
                    let g = gen()?;
                    let mut q = launch::alloc::<u16>(&dev, rows * 576, "Q")?;
                    launch::gen_bf16(&dev, &g, &mut q, seed, InputTensor::MqaQ.stream(), [b, ql, h, 576], false)?;
                    let cache = if fp8 {
                        let g8 = dev.function(KernelId::Generate, "gen_latent_fp8", &[])?;
                        let mut c = launch::alloc::<u8>(&dev, b * l * 656, "FP8 latent cache")?;
                        launch::gen_latent_fp8(&dev, &g8, &mut c, seed, InputTensor::Latent.stream(), b, l, 512, 64)?;
                        CacheBuf::Fp8(c)
                    } else {
                        let mut c = launch::alloc::<u16>(&dev, b * l * 576, "latent cache")?;
                        launch::gen_bf16(&dev, &g, &mut c, seed, InputTensor::Latent.stream(), [b, l, 1, 576], false)?;
                        CacheBuf::Bf16(c)
                    };
                    (q, cache)
                };
                let mut out = launch::alloc::<u16>(&dev, rows * 512, "output")?;
                launch::fill_bytes(&dev, &mut out, 0xFF)?;
                let ws_len = if n_splits > 1 { rows * n_splits } else { 1 };
                let ws_o = launch::alloc::<f32>(&dev, ws_len * 512, "split workspace")?;
                let ws_ml = launch::alloc::<f32>(&dev, ws_len * 2, "split workspace")?;
                let tmap = match (&cache, kernel) {
                    (CacheBuf::Bf16(c), k) if k.wgmma() => Some(launch::latent_tensor_map(&dev, c, b * l)?),
                    _ => None,
                };
                Work::Decode { dims, f, combine, tmap, q, cache, out, ws_o, ws_ml }
            }
        };
        self.memory = Some(dev.prepared_memory("generating inputs", need, free_before)?);
        let timer = EventTimer::new(&dev, 2)?;
        self.prepared = Some(Prepared { dev, work, timer, ran: false });
        Ok(())
    }
}

impl Engine for DenseCuda {
    fn id(&self) -> &str {
        "dense-cuda"
    }

    fn timer(&self) -> &'static str {
        "cuda-events"
    }

    fn supports(&self, case: &Case) -> Support {
        if let Err(e) = super::probe() {
            return Support::No(e);
        }
        if let Err(e) = geometry_support(case) {
            return Support::No(e);
        }
        let dev = match device() {
            Ok(d) => d,
            Err(e) => return Support::No(e),
        };
        if dev.cc < KernelId::DenseDecode.min_compute_capability() {
            return Support::No(format!("{} (sm_{}{}) is older than sm_80, which the kernels need", dev.name, dev.cc.0, dev.cc.1));
        }
        let smem = match case.phase {
            Phase::Prefill => prefill_tile(case).map(|t| t.smem()),
            Phase::Decode => decode_kernel(case, dev.cc)
                .and_then(|k| decode_options(case, dev.cc, k).map(|_| k.smem(case.precision == Precision::Fp8))),
        };
        let smem = match check_case(case).and(smem) {
            Ok(s) => s,
            Err(e) => return Support::No(e),
        };
        if smem as usize > dev.max_smem_optin {
            return Support::No(format!("kernel needs {smem} bytes of shared memory per block, {} offers {}", dev.name, dev.max_smem_optin));
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
        let timing = match &mut p.work {
            Work::Prefill { dims, f, q, k, v, o } => {
                launch::dense_prefill(&dev, f, *dims, q, k, v, o)?;
                p.timer.mark(&dev, 0)?;
                let ms = p.timer.elapsed_first(1)?;
                Timing { total_ms: ms[0], components: Vec::new() }
            }
            Work::Decode { dims, f, combine, tmap, q, cache, out, ws_o, ws_ml } => {
                launch::dense_decode(&dev, f, *dims, tmap.as_ref(), q, cache, out, ws_o, ws_ml)?;
                p.timer.mark(&dev, 0)?;
                if dims.n_splits > 1 {
                    launch::decode_combine(&dev, combine, *dims, ws_o, ws_ml, out)?;
                    p.timer.mark(&dev, 1)?;
                    let ms = p.timer.elapsed_first(2)?;
                    Timing { total_ms: ms[1], components: vec![("attention", ms[0]), ("combine", ms[1] - ms[0])] }
                } else {
                    let ms = p.timer.elapsed_first(1)?;
                    Timing { total_ms: ms[0], components: Vec::new() }
                }
            }
        };
        p.ran = true;
        Ok(timing)
    }

    fn output(&mut self) -> Result<Output, EngineError> {
        if !self.prepared.as_ref().ok_or_else(|| EngineError::State("output before prepare".into()))?.ran {
            self.run()?;
        }
        let p = self.prepared.as_ref().expect("checked above");
        let buf = match &p.work {
            Work::Prefill { o, .. } => o,
            Work::Decode { out, .. } => out,
        };
        p.dev.sync("waiting for the kernels")?;
        let bits: Vec<u16> = p.dev.stream.clone_dtoh(buf).map_err(|e| driver_err("copying the output back", e))?;
        Ok(Output { values: bits.into_iter().map(|x| f32::from_bits((x as u32) << 16)).collect(), indices: None, sampled: None })
    }

    /// As [`Rows::auto`], but sampled decode checks compare 8 heads (not all 128): the f64
    /// reference of one MQA row costs L x 1088 multiply-adds per head, which dominates the
    /// check at 64K-128K keys and batch 64.
    fn verify_rows(&self, case: &Case) -> Rows {
        match Rows::auto(case) {
            Rows::Sampled { queries, heads } if case.phase == Phase::Decode => Rows::Sampled { queries, heads: heads.min(8) },
            r => r,
        }
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
