//! `rest-cpu`: the rest of a layer on the CPU (candle-core GEMMs), for the `tiny` and `small`
//! shapes: every GEMM of [`ctxcost_core::rest::plan`] once per run, timed per component with
//! the monotonic clock.
//!
//! Operands are held as f32 tensors in both precisions (bf16 cases hold bf16-rounded values and
//! round the output to bf16 when it is read back for verification): candle-core has no bf16
//! GEMM kernel on the CPU, it widens to f32 too.

use std::time::Instant;

use candle_core::{Device, Tensor};
use ctxcost_core::rest::{input_value, plan, weight_value, Component, Gemm};
use ctxcost_core::{Case, Inputs, Precision};

use super::ops::{backend, round_bf16};
use crate::rest::{gather, spans};
use crate::{Engine, EngineError, Output, Support, Timing};

/// Host bytes above which `rest-cpu` refuses a case (operands and outputs as f32).
pub const MAX_HOST_BYTES: f64 = 2.0 * (1u64 << 30) as f64;

fn unsupported(case: &Case) -> Option<String> {
    if let Some(why) = ctxcost_core::rest::unsupported(case) {
        return Some(why);
    }
    if case.precision == Precision::Fp8 {
        return Some("fp8 GEMMs need the CUDA engines".into());
    }
    let bytes: f64 = plan(case)
        .iter()
        .map(|g| {
            let (i, w, o) = g.elements();
            4.0 * (i + w + o) as f64
        })
        .sum();
    if bytes > MAX_HOST_BYTES {
        return Some(format!(
            "the rest of a `{}` layer needs {:.1} GiB of operands on the host: rest-cpu is for the tiny and small shapes",
            case.shape.name,
            bytes / (1u64 << 30) as f64
        ));
    }
    None
}

struct Prepared {
    case: Case,
    gemms: Vec<Gemm>,
    /// The component spans of `gemms` ([`spans`]), timed one by one.
    spans: Vec<(Component, usize, usize)>,
    /// Per GEMM: input `[batch, m, k]` and weight `[batch, k, n]`.
    operands: Vec<(Tensor, Tensor)>,
}

/// The rest of a layer on the CPU: projections, indexer projections, router, MoE (shared and
/// this GPU's routed experts), dense MLP and LM head as candle GEMMs. Timing components:
/// `mla_proj`, `indexer_proj` (shapes with an indexer), `router`, `moe`, `dense_mlp`, `head`.
#[derive(Default)]
pub struct RestCpu {
    prepared: Option<Prepared>,
    last: Option<Vec<Tensor>>,
}

impl RestCpu {
    pub fn new() -> Self {
        Self::default()
    }
}

fn tensor(case: &Case, g: &Gemm, weight: bool) -> Result<Tensor, EngineError> {
    let (rows, cols) = if weight { (g.k, g.n) } else { (g.m, g.k) };
    let mut data = Vec::with_capacity(g.batch * rows * cols);
    for b in 0..g.batch {
        for r in 0..rows {
            for c in 0..cols {
                data.push(if weight { weight_value(case, g, b, r, c) } else { input_value(case, g, b, r, c) });
            }
        }
    }
    Tensor::from_vec(data, (g.batch, rows, cols), &Device::Cpu).map_err(backend("rest operand"))
}

impl Engine for RestCpu {
    fn id(&self) -> &str {
        "rest-cpu"
    }
    fn timer(&self) -> &'static str {
        "monotonic-clock"
    }
    fn supports(&self, case: &Case) -> Support {
        match unsupported(case) {
            Some(why) => Support::No(why),
            None => Support::Yes,
        }
    }
    fn prepare(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        self.release();
        if let Some(why) = unsupported(case) {
            return Err(EngineError::Unsupported(why));
        }
        if inputs.loaded.is_some() {
            return Err(EngineError::Unsupported("rest cases use seeded operands only (no --tensors)".into()));
        }
        let gemms = plan(case);
        let operands = gemms.iter().map(|g| Ok((tensor(case, g, false)?, tensor(case, g, true)?))).collect::<Result<Vec<_>, EngineError>>()?;
        self.prepared = Some(Prepared { case: case.clone(), spans: spans(&gemms), gemms, operands });
        Ok(())
    }
    fn run(&mut self) -> Result<Timing, EngineError> {
        let p = self.prepared.as_ref().ok_or_else(|| EngineError::State("rest-cpu: run before prepare".into()))?;
        let mut outs = Vec::with_capacity(p.gemms.len());
        let mut components = Vec::with_capacity(p.spans.len());
        let start = Instant::now();
        for &(component, first, end) in &p.spans {
            let t0 = Instant::now();
            for (x, w) in &p.operands[first..end] {
                outs.push(x.matmul(w).map_err(backend("rest GEMM"))?);
            }
            components.push((component.name(), t0.elapsed().as_secs_f64() * 1e3));
        }
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        self.last = Some(outs);
        Ok(Timing { total_ms, components })
    }
    fn output(&mut self) -> Result<Output, EngineError> {
        if self.last.is_none() {
            self.run()?;
        }
        let p = self.prepared.as_ref().ok_or_else(|| EngineError::State("rest-cpu: no case".into()))?;
        let outs = self.last.as_ref().ok_or_else(|| EngineError::State("rest-cpu: no output".into()))?;
        let rows = self.verify_rows(&p.case);
        let bf16 = p.case.precision == Precision::Bf16;
        let mut values = Vec::new();
        for (g, t) in p.gemms.iter().zip(outs) {
            let flat = t.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(backend("rest output"))?;
            gather(g, &rows, |i| if bf16 { round_bf16(flat[i]) } else { flat[i] }, &mut values);
        }
        Ok(Output { values, indices: None, sampled: None })
    }
    fn release(&mut self) {
        self.prepared = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{self, Rows};
    use ctxcost_core::{Method, ModelShape, Phase};

    fn case(phase: Phase, batch: usize, q: usize, precision: Precision, ep: usize) -> Case {
        Case {
            engine: "rest-cpu".into(),
            method: Method::Rest,
            shape: ModelShape { ep, ..ModelShape::tiny() },
            phase,
            context: 512,
            batch,
            query_len: q,
            precision,
            seed: 3,
            kernel: Default::default(),
        }
    }

    #[test]
    fn rest_cpu_is_verified_on_tiny_and_times_every_component() {
        for c in [
            case(Phase::Decode, 4, 1, Precision::F32, 1),
            case(Phase::Decode, 8, 1, Precision::Bf16, 4),
            case(Phase::Prefill, 1, 128, Precision::F32, 2),
        ] {
            let mut e = RestCpu::new();
            assert_eq!(e.supports(&c), Support::Yes);
            e.prepare(&c, &Inputs::seeded(c.seed)).unwrap();
            let rows = e.verify_rows(&c);
            assert_eq!(rows, Rows::All, "tiny is checked in full");
            let out = e.output().unwrap();
            let v = check::verify(&c, &Inputs::seeded(c.seed), &out, &rows);
            assert!(v.passed, "{:?}: {:?}", c.key(), v.output);
            let total: usize = plan(&c).iter().map(|g| g.elements().2).sum();
            assert_eq!(v.output.compared, total);
            let t = e.run().unwrap();
            let names: Vec<&str> = t.components.iter().map(|x| x.0).collect();
            assert_eq!(names, ["mla_proj", "indexer_proj", "router", "moe", "dense_mlp", "head"]);
            assert!(t.total_ms > 0.0 && t.total_ms + 1e-9 >= t.components.iter().map(|x| x.1).sum::<f64>());
        }
    }

    #[test]
    fn a_wrong_element_fails_verification_and_sampling_reaches_every_gemm() {
        let c = case(Phase::Decode, 4, 1, Precision::F32, 1);
        let mut e = RestCpu::new();
        e.prepare(&c, &Inputs::seeded(3)).unwrap();
        let mut out = e.output().unwrap();
        let n = out.values.len();
        out.values[n / 2] += 1.0;
        let v = check::verify(&c, &Inputs::seeded(3), &out, &Rows::All);
        assert!(!v.passed && v.output.mismatches == 1, "{:?}", v.output);
        // Another seed's reference does not match either.
        let other = Case { seed: 4, ..c.clone() };
        assert!(!check::verify(&other, &Inputs::seeded(4), &e.output().unwrap(), &Rows::All).passed);
        // Sampled rows and columns: what the big shapes use.
        let sampled = Rows::Sampled { queries: 2, heads: 3 };
        let mut values = Vec::new();
        let p = e.prepared.as_ref().unwrap();
        for (g, t) in p.gemms.iter().zip(e.last.as_ref().unwrap()) {
            let flat = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            gather(g, &sampled, |i| flat[i], &mut values);
        }
        let got = Output { values, indices: None, sampled: None };
        let v = check::verify(&c, &Inputs::seeded(3), &got, &sampled);
        assert!(v.passed && v.method.starts_with("sampled"), "{v:?}");
    }

    #[test]
    fn refuses_fp8_and_the_full_model() {
        let e = RestCpu::new();
        assert!(matches!(e.supports(&case(Phase::Decode, 4, 1, Precision::Fp8, 1)), Support::No(_)));
        let big = Case { shape: ModelShape::deepseek_v32_exp(), ..case(Phase::Decode, 4, 1, Precision::Bf16, 1) };
        assert!(matches!(e.supports(&big), Support::No(why) if why.contains("tiny and small")));
        let old = Case { shape: ModelShape { hidden_dim: 0, ..ModelShape::tiny() }, ..case(Phase::Decode, 4, 1, Precision::F32, 1) };
        assert!(matches!(e.supports(&old), Support::No(why) if why.contains("geometry")));
    }
}
