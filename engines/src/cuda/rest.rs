//! `rest-cuda`: the rest of a layer on an NVIDIA GPU, every GEMM of
//! [`ctxcost_core::rest::plan`] as one cuBLAS bf16 GEMM (fp32 accumulation; the per-head
//! absorbed products as one strided-batched GEMM; one GEMM per routed expert that receives
//! tokens, no grouped GEMM), timed per component with CUDA events after an L2 flush.
//!
//! Precision: bf16 only. FP8 block-scaled GEMMs (cuBLASLt, DeepGEMM) are not implemented:
//! `fp8` cases are skipped with that reason, so a record's `case.precision` says what ran.
//! Operands are generated on the device by `gen_bf16` from the seeded streams of
//! [`ctxcost_core::rest`]; outputs are poisoned with NaN before the first run.

use std::sync::Arc;

use cudarc::cublas::CudaBlas;
use cudarc::driver::CudaSlice;
use ctxcost_core::rest::{plan, Component, Gemm};
use ctxcost_core::{Case, Inputs, Precision};
use ctxcost_kernels::KernelId;

use super::device::{device, driver_err, Device, EventTimer};
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
        Precision::Fp8 => return Some("rest-cuda runs bf16 GEMMs (cuBLAS) only: FP8 block-scaled GEMMs are not implemented".into()),
        Precision::F32 => return Some("rest-cuda runs bf16 GEMMs only".into()),
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

/// Device bytes of a case's operands and outputs (bf16).
pub fn rest_device_bytes(case: &Case) -> u64 {
    plan(case)
        .iter()
        .map(|g| {
            let (i, w, o) = g.elements();
            2 * (i + w + o) as u64
        })
        .sum()
}

struct Operands {
    input: CudaSlice<u16>,
    weight: CudaSlice<u16>,
    out: CudaSlice<u16>,
}

struct Prepared {
    dev: Arc<Device>,
    blas: CudaBlas,
    case: Case,
    gemms: Vec<Gemm>,
    /// The component spans of `gemms` ([`spans`]), one timing mark each.
    spans: Vec<(Component, usize, usize)>,
    operands: Vec<Operands>,
    timer: EventTimer,
    ran: bool,
}

/// The rest of a layer on an NVIDIA GPU (cuBLAS bf16). Timing components: `mla_proj`,
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
        let mut operands = Vec::with_capacity(gemms.len());
        for g in &gemms {
            let (ni, nw, no) = g.elements();
            // Generated flat ([1, 1, 1, len] rounded up to the generator's 8-element chunks): the
            // flat index of a row-major [batch, rows, cols] element is its generator index.
            let (ni8, nw8) = (ni.next_multiple_of(8), nw.next_multiple_of(8));
            let mut input = launch::alloc::<u16>(&dev, ni8, "rest GEMM input")?;
            let mut weight = launch::alloc::<u16>(&dev, nw8, "rest GEMM weight")?;
            let mut out = launch::alloc::<u16>(&dev, no, "rest GEMM output")?;
            launch::gen_bf16(&dev, &gen, &mut input, case.seed, g.input_stream, [1, 1, 1, ni8], false)?;
            launch::gen_bf16(&dev, &gen, &mut weight, case.seed, g.weight_stream, [1, 1, 1, nw8], false)?;
            launch::fill_bytes(&dev, &mut out, 0xFF)?;
            operands.push(Operands { input, weight, out });
        }
        let spans = spans(&gemms);
        let timer = EventTimer::new(&dev, spans.len())?;
        self.memory = Some(dev.prepared_memory("generating the rest operands", need, free_before)?);
        self.prepared = Some(Prepared { dev, blas, case: case.clone(), gemms, spans, operands, timer, ran: false });
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
                launch::gemm_bf16_rows(&p.blas, &dev, g.batch, g.m, g.k, g.n, &o.input, &o.weight, &mut o.out)?;
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
