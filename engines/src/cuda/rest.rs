//! `rest-cuda`: the rest of a layer on an NVIDIA GPU, every GEMM of
//! [`ctxcost_core::rest::plan`] as one library GEMM (fp32 accumulation; the per-head absorbed
//! products as one strided-batched GEMM; one GEMM per routed expert that receives tokens, no
//! grouped GEMM), timed per component with CUDA events after an L2 flush.
//!
//! Precisions: `bf16` runs every GEMM in bf16 through cuBLAS. `fp8` runs the GEMMs
//! [`Gemm::fp8`] marks as block-scaled FP8 through cuBLASLt ([`super::fp8_gemm`]: e4m3, 128 x
//! 128 weight blocks, 1 x 128 activation groups, bf16 output; sm_90), each preceded inside the
//! timed span by the kernel that quantises its bf16 input (`quant_fp8_groups`); the other
//! GEMMs of an `fp8` case stay bf16 (cuBLAS). An FP8 GEMM's token rows are padded to a
//! multiple of 16 (cuBLASLt's scale layouts need multiples of 4); the padding rows are zero.
//! Operands are generated on the device from the seeded streams of [`ctxcost_core::rest`]
//! (`gen_bf16`; FP8 weights as a checkpoint of codes and block scales, `gen_fp8_weight`);
//! outputs are poisoned with NaN before the first run.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaSlice;
use ctxcost_core::rest::{plan, Component, Gemm};
use ctxcost_core::{Case, Inputs, Precision};
use ctxcost_kernels::KernelId;

use super::device::{device, driver_err, Device, EventTimer};
use super::fp8_gemm::{self, Fp8Gemm, LtHandle};
use super::launch;
use crate::rest::{picked, spans};
use crate::{DeviceMemory, Engine, EngineError, Output, Support, Timing};

/// Why `rest-cuda` cannot run a case here, if it cannot (no GPU first).
fn unsupported(case: &Case) -> Option<String> {
    if let Err(why) = super::probe() {
        return Some(why);
    }
    // SAFETY: only tries to dlopen libcublas (cudarc panics on use when it is missing).
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Some("cuBLAS (libcublas.so) not found: add its folder to LD_LIBRARY_PATH".into());
    }
    if let Some(why) = ctxcost_core::rest::unsupported(case) {
        return Some(why);
    }
    match case.precision {
        Precision::Bf16 => {}
        Precision::Fp8 => {
            let dev = match device() {
                Ok(d) => d,
                Err(why) => return Some(why),
            };
            if let Some(why) = fp8_gemm::unsupported(&dev) {
                return Some(why);
            }
        }
        Precision::F32 => return Some("rest-cuda runs bf16 and fp8 GEMMs, not f32".into()),
    }
    let too_big = |g: &Gemm| {
        let (i, w, o) = g.elements();
        i.max(w).max(o) > (i32::MAX as usize) - 8
    };
    if let Some(g) = plan(case).iter().find(|g| too_big(g)) {
        return Some(format!("GEMM `{}` has an operand beyond 2^31 elements", g.name));
    }
    None
}

/// Token rows of an FP8 GEMM's padded operands.
fn padded_rows(m: usize) -> usize {
    m.next_multiple_of(16)
}

/// Rounded up to 4 (cuBLASLt's 128 x 128 scale layout pads the k blocks so).
fn l4(k: usize) -> usize {
    k.div_ceil(128).next_multiple_of(4)
}

/// Device bytes of one GEMM's operands and outputs: bf16, or for an FP8 GEMM the bf16 input,
/// its codes and scales, the weight codes and scales and the bf16 output over padded rows.
fn gemm_device_bytes(g: &Gemm) -> u64 {
    let (i, w, o) = g.elements();
    if g.fp8 {
        let mp = padded_rows(g.m);
        let (kb, nb) = g.blocks();
        (2 * i + mp * g.k + 4 * kb * mp + w + 4 * l4(g.k) * nb + 2 * mp * g.n) as u64
    } else {
        2 * (i + w + o) as u64
    }
}

/// Device bytes of a case's operands, outputs and (FP8) the cuBLASLt workspace.
pub fn rest_device_bytes(case: &Case) -> u64 {
    let gemms = plan(case);
    let lt = if gemms.iter().any(|g| g.fp8) { fp8_gemm::WORKSPACE_BYTES as u64 } else { 0 };
    gemms.iter().map(gemm_device_bytes).sum::<u64>() + lt
}

/// An FP8 GEMM's operands beside its bf16 input: codes and scales of both sides, and the
/// cuBLASLt descriptors bound to the scale buffers (declared first, so dropped first).
struct Fp8Operands {
    gemm: Fp8Gemm,
    input_codes: CudaSlice<u8>,
    input_scales: CudaSlice<f32>,
    weight_codes: CudaSlice<u8>,
    _weight_scales: CudaSlice<f32>,
}

/// A GEMM's weight: bf16, or an FP8 checkpoint with its quantised-input buffers.
enum Weight {
    Bf16(CudaSlice<u16>),
    Fp8(Fp8Operands),
}

struct Operands {
    input: CudaSlice<u16>,
    weight: Weight,
    out: CudaSlice<u16>,
}

struct Prepared {
    dev: Arc<Device>,
    blas: CudaBlas,
    /// The FP8 quantiser and the cuBLASLt workspace (fp8 cases only).
    quant: Option<(cudarc::driver::CudaFunction, CudaSlice<u8>)>,
    case: Case,
    gemms: Vec<Gemm>,
    /// The component spans of `gemms` ([`spans`]), one timing mark each.
    spans: Vec<(Component, usize, usize)>,
    operands: Vec<Operands>,
    timer: EventTimer,
    ran: bool,
}

/// The rest of a layer on an NVIDIA GPU (cuBLAS bf16, cuBLASLt FP8). Timing components: `mla_proj`,
/// `indexer_proj` (shapes with an indexer), `router`, `moe`, `dense_mlp`, `head`.
#[derive(Default)]
pub struct RestCuda {
    prepared: Option<Prepared>,
    memory: Option<DeviceMemory>,
}

impl RestCuda {
    pub fn new() -> Self {
        Self::default()
    }

    fn prepare_inner(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        if let Some(why) = unsupported(case) {
            return Err(EngineError::Unsupported(why));
        }
        if inputs.loaded.is_some() {
            return Err(EngineError::Unsupported("rest cases use seeded operands only (no --tensors)".into()));
        }
        let dev = device().map_err(EngineError::Unsupported)?;
        let need = rest_device_bytes(case);
        let free_before = dev.room_for(need, 512 << 20, "the rest of the layer", " (a higher --ep holds fewer experts)")?;
        let blas = CudaBlas::new(dev.stream.clone()).map_err(|e| EngineError::backend("cublasCreate", e))?;
        let gen = dev.function(KernelId::Generate, "gen_bf16", &[])?;
        let gemms = plan(case);
        let fp8 = gemms.iter().any(|g| g.fp8);
        let (lt, quant) = if fp8 {
            let lt = LtHandle::new()?;
            let quant = dev.function(KernelId::RestFp8, "quant_fp8_groups", &[])?;
            (Some((lt, dev.function(KernelId::RestFp8, "gen_fp8_weight", &[])?)), Some((quant, launch::alloc::<u8>(&dev, fp8_gemm::WORKSPACE_BYTES, "cuBLASLt workspace")?)))
        } else {
            (None, None)
        };
        let mut operands = Vec::with_capacity(gemms.len());
        for g in &gemms {
            let (ni, nw, no) = g.elements();
            // Generated flat ([1, 1, 1, len] rounded up to the generator's 8-element chunks): the
            // flat index of a row-major [batch, rows, cols] element is its generator index.
            let (ni8, nw8) = (ni.next_multiple_of(8), nw.next_multiple_of(8));
            let mut input = launch::alloc::<u16>(&dev, ni8, "rest GEMM input")?;
            launch::gen_bf16(&dev, &gen, &mut input, case.seed, g.input_stream, [1, 1, 1, ni8], false)?;
            let (weight, out) = match (&lt, g.fp8) {
                (Some((lt, gen_w)), true) => {
                    let mp = padded_rows(g.m);
                    let (kb, nb) = g.blocks();
                    let mut weight_codes = launch::alloc::<u8>(&dev, g.k * g.n, "FP8 weight codes")?;
                    let mut weight_scales = launch::alloc::<f32>(&dev, l4(g.k) * nb, "FP8 weight scales")?;
                    let streams = (g.weight_stream, ctxcost_core::rest::weight_scale_stream(g));
                    launch::gen_fp8_weight(&dev, gen_w, &mut weight_codes, &mut weight_scales, case.seed, streams, (g.k, g.n), l4(g.k))?;
                    let input_codes = launch::alloc::<u8>(&dev, mp * g.k, "FP8 input codes")?;
                    let input_scales = launch::alloc::<f32>(&dev, kb * mp, "FP8 input scales")?;
                    let gemm = Fp8Gemm::new(lt, &dev, (mp, g.k, g.n), &weight_scales, &input_scales)?;
                    let mut out = launch::alloc::<u16>(&dev, mp * g.n, "rest GEMM output")?;
                    launch::fill_bytes(&dev, &mut out, 0xFF)?;
                    let ops = Fp8Operands { gemm, input_codes, input_scales, weight_codes, _weight_scales: weight_scales };
                    (Weight::Fp8(ops), out)
                }
                _ => {
                    let mut weight = launch::alloc::<u16>(&dev, nw8, "rest GEMM weight")?;
                    launch::gen_bf16(&dev, &gen, &mut weight, case.seed, g.weight_stream, [1, 1, 1, nw8], false)?;
                    let mut out = launch::alloc::<u16>(&dev, no, "rest GEMM output")?;
                    launch::fill_bytes(&dev, &mut out, 0xFF)?;
                    (Weight::Bf16(weight), out)
                }
            };
            operands.push(Operands { input, weight, out });
        }
        let spans = spans(&gemms);
        let timer = EventTimer::new(&dev, spans.len())?;
        self.memory = Some(dev.prepared_memory("generating the rest operands", need, free_before)?);
        self.prepared = Some(Prepared { dev, blas, quant, case: case.clone(), gemms, spans, operands, timer, ran: false });
        Ok(())
    }
}

impl Engine for RestCuda {
    fn id(&self) -> &str {
        "rest-cuda"
    }
    fn timer(&self) -> &'static str {
        "cuda-events"
    }
    fn supports(&self, case: &Case) -> Support {
        match unsupported(case) {
            Some(why) => Support::No(why),
            None => Support::Yes,
        }
    }
    fn prepare(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        self.release();
        self.memory = None;
        self.prepare_inner(case, inputs)
    }
    fn run(&mut self) -> Result<Timing, EngineError> {
        let p = self.prepared.as_mut().ok_or_else(|| EngineError::State("rest-cuda: run before prepare".into()))?;
        let dev = p.dev.clone();
        let spans = &p.spans;
        dev.flush_l2()?;
        p.timer.start(&dev)?;
        for (i, &(_, first, end)) in spans.iter().enumerate() {
            for (g, o) in p.gemms[first..end].iter().zip(&mut p.operands[first..end]) {
                match (&mut o.weight, &mut p.quant) {
                    (Weight::Fp8(f), Some((quant, workspace))) => {
                        launch::quant_fp8_groups(&dev, quant, &o.input, &mut f.input_codes, &mut f.input_scales, (g.m, f.gemm.m, g.k))?;
                        f.gemm.run(&dev, &f.weight_codes, &f.input_codes, &mut o.out, workspace)?;
                    }
                    (Weight::Bf16(w), _) => launch::gemm_bf16_rows(&p.blas, &dev, g.batch, g.m, g.k, g.n, &o.input, w, &mut o.out)?,
                    (Weight::Fp8(_), None) => return Err(EngineError::State("rest-cuda: an FP8 GEMM without its quantiser".into())),
                }
            }
            p.timer.mark(&dev, i)?;
        }
        let ms = p.timer.elapsed_first(spans.len())?;
        let mut components = Vec::with_capacity(spans.len());
        let mut prev = 0.0;
        for (&(component, _, _), &t) in spans.iter().zip(&ms) {
            components.push((component.name(), t - prev));
            prev = t;
        }
        p.ran = true;
        Ok(Timing { total_ms: prev, components })
    }
    fn output(&mut self) -> Result<Output, EngineError> {
        if !self.prepared.as_ref().ok_or_else(|| EngineError::State("rest-cuda: output before prepare".into()))?.ran {
            self.run()?;
        }
        let p = self.prepared.as_ref().expect("checked above");
        p.dev.sync("waiting for the GEMMs")?;
        let rows = self.verify_rows(&p.case);
        let mut values = Vec::new();
        for (g, o) in p.gemms.iter().zip(&p.operands) {
            let (rs, cs) = picked(g, &rows);
            for b in 0..g.batch {
                for &r in &rs {
                    let start = (b * g.m + r) * g.n;
                    let view = o.out.slice(start..start + g.n);
                    let row: Vec<u16> = p.dev.stream.clone_dtoh(&view).map_err(|e| driver_err("copying a GEMM row back", e))?;
                    values.extend(cs.iter().map(|&c| f32::from_bits(u32::from(row[c]) << 16)));
                }
            }
        }
        Ok(Output { values, indices: None, sampled: None })
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
