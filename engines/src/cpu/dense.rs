//! Dense MLA attention on candle-core: MHA mode for prefill, MQA mode for decode.
//!
//! Both modes are one [`Problem`] per chunk of queries:
//! - MHA: `N = B*H` matrices (one per sequence and head), rows = the chunk's queries,
//!   keys `[B*H, qk, L]` (stored transposed), values `[B*H, L, v]`;
//! - MQA: `N = B` matrices whose rows are every (query, head) of the chunk (all heads share
//!   the latent), keys = the latent transposed `[B, kv, L]`, values = its first
//!   `kv_lora_rank` dims `[B, L, kv_lora_rank]`.
//!
//! The latent is held in both layouts (each product reads its own copy once per run): candle's
//! GEMM reads a transposed view of the other layout through a slow strided gather. A chunk
//! whose last query sits at position `p` reads keys `0..=p` only; the causal mask inside the
//! chunk is applied row by row in the softmax pass.

use std::time::Instant;

use ctxcost_core::{Case, InputTensor, Inputs, Precision};

use super::attention::{attend, Problem};
use super::ops::round_bf16;
use super::plan::{Kind, Plan};
use super::stored::{permute4, Stored};
use crate::reference::materialize_rounded;
use crate::{EngineError, Output, Timing};

/// A prepared dense case.
pub(crate) struct Dense {
    case: Case,
    kind: Kind,
    chunk: usize,
    bf16: bool,
    scale: f32,
    /// MHA: `[B*H, q, qk]`; MQA: `[B, q*H, kv]`.
    q: Stored,
    /// MHA: keys `[B*H, qk, L]`; MQA: the latent `[B, kv, L]`.
    kt: Stored,
    /// MHA: values `[B*H, L, v]`; MQA: the latent's value dims `[B, L, kv_lora_rank]`.
    v: Stored,
}

impl Dense {
    pub(crate) fn prepare(case: &Case, inputs: &Inputs, kind: Kind, plan: Plan) -> Result<Self, EngineError> {
        let s = &case.shape;
        let (b, q, l, h) = (case.batch, case.query_len, case.context, s.heads);
        let bf16 = case.precision == Precision::Bf16;
        let get = |t: InputTensor| materialize_rounded(case, inputs, t);
        let (q_s, kt, v) = match kind {
            Kind::DenseMha => {
                let (qk, vd) = (s.mha_qk_dim(), s.mha_v_dim());
                // [B, rows, H, dim] -> [B, H, rows, dim]; keys -> [B, H, dim, L].
                let queries = permute4(&get(InputTensor::MhaQ), [b, q, h, qk], [0, 2, 1, 3]);
                let keys = permute4(&get(InputTensor::MhaK), [b, l, h, qk], [0, 2, 3, 1]);
                let values = permute4(&get(InputTensor::MhaV), [b, l, h, vd], [0, 2, 1, 3]);
                (
                    Stored::new(queries, [b * h, q, qk], bf16)?,
                    Stored::new(keys, [b * h, qk, l], bf16)?,
                    Stored::new(values, [b * h, l, vd], bf16)?,
                )
            }
            Kind::DenseMqa => {
                let (kv, vd) = (s.mqa_kv_dim(), s.mqa_v_dim());
                let latent = get(InputTensor::Latent);
                let values: Vec<f32> = latent.chunks_exact(kv).flat_map(|row| row[..vd].iter().copied()).collect();
                (
                    Stored::new(get(InputTensor::MqaQ), [b, q * h, kv], bf16)?,
                    Stored::new(permute4(&latent, [b, l, kv, 1], [0, 2, 1, 3]), [b, kv, l], bf16)?,
                    Stored::new(values, [b, l, vd], bf16)?,
                )
            }
            Kind::Dsa => return Err(EngineError::State("internal: DSA case given to the dense engine".into())),
        };
        Ok(Self { case: case.clone(), kind, chunk: plan.chunk.max(1), bf16, scale: s.softmax_scale() as f32, q: q_s, kt, v })
    }

    /// One timed execution: the attention output `[B, q, H, v]`.
    pub(crate) fn run(&self) -> Result<(Timing, Output), EngineError> {
        let start = Instant::now();
        let c = &self.case;
        let (b, q, h) = (c.batch, c.query_len, c.shape.heads);
        let mha = self.kind == Kind::DenseMha;
        let vd = if mha { c.shape.mha_v_dim() } else { c.shape.mqa_v_dim() };
        let mut values = vec![0f32; b * q * h * vd];
        let mut i0 = 0;
        while i0 < q {
            let qc = self.chunk.min(q - i0);
            let first_pos = c.query_position(i0);
            let keys = first_pos + qc; // keys visible to the chunk's last query
            let (rows, visible): (_, Box<dyn Fn(usize, usize) -> usize + Sync>) = if mha {
                // Rows are the chunk's queries.
                (i0..i0 + qc, Box::new(move |_n, r| first_pos + r + 1))
            } else {
                // Rows are (query, head) pairs of the chunk.
                (i0 * h..(i0 + qc) * h, Box::new(move |_n, r| first_pos + r / h + 1))
            };
            let out = attend(&Problem {
                q: &self.q,
                rows,
                kt: &self.kt,
                v: &self.v,
                keys,
                visible: &*visible,
                scale: self.scale,
                bf16: self.bf16,
            })?;
            if mha {
                // out is [B*H, qc, vd]; values is [B, q, H, vd].
                for (bh, block) in out.chunks_exact(qc * vd).enumerate() {
                    let (bi, hi) = (bh / h, bh % h);
                    for (r, row) in block.chunks_exact(vd).enumerate() {
                        let dst = ((bi * q + i0 + r) * h + hi) * vd;
                        store(&mut values[dst..dst + vd], row, self.bf16);
                    }
                }
            } else {
                // out is [B, qc*H, vd], the layout of values' rows for this chunk.
                for (bi, block) in out.chunks_exact(qc * h * vd).enumerate() {
                    let dst = (bi * q + i0) * h * vd;
                    store(&mut values[dst..dst + block.len()], block, self.bf16);
                }
            }
            i0 += qc;
        }
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        Ok((Timing { total_ms, components: Vec::new() }, Output { values, indices: None, sampled: None }))
    }
}

/// Copy one block of output, rounded to bf16 in bf16 cases.
pub(crate) fn store(dst: &mut [f32], src: &[f32], bf16: bool) {
    if bf16 {
        dst.iter_mut().zip(src).for_each(|(d, &x)| *d = round_bf16(x));
    } else {
        dst.copy_from_slice(src);
    }
}
