//! DeepSeek Sparse Attention on candle-core: lightning indexer, top-k, and MQA-mode attention
//! over the selected latents only (DSA.md section 1).
//!
//! Per chunk of queries (see [`super::plan`]):
//! 1. indexer: per block of keys, one batched product `[B, q*H_I, d_I] x [B, d_I, keys]`
//!    (indexer keys stored transposed) gives every head's logits while they are in cache; a
//!    fused pass adds `w[j] * ReLU(logit[j][s])` over the heads into the query's score row;
//! 2. top-k: per query row, a partial selection (`select_nth_unstable`) on packed
//!    (score, position) keys, so ties go to the smaller position as in the reference;
//! 3. attention: the selected latents are gathered on the host straight into the layouts the
//!    products read (keys transposed `[B*q, kv, k]`, values `[B*q, k, kv_lora_rank]`, widened
//!    to f32; padding is zero and masked) and attended to as `N = B*q` matrices of `H` rows
//!    over `k` keys ([`attention`](super::attention)).

use std::time::Instant;

use candle_core::{Device, Tensor};
use ctxcost_core::{Case, InputTensor, Inputs, Precision};

use super::attention::{attend, Problem};
use super::dense::store;
use super::ops::{backend, index_scores_row, par_rows, par_rows2, sum_neutral, threads, topk_row, with_f32};
use super::plan::Plan;
use super::stored::{permute4, Stored, Widen};
use crate::reference::materialize_rounded;
use crate::{EngineError, Output, Timing};

/// Indexer logits per key block (elements): 1 MiB of f32, so the head sum reads them from cache.
const LOGIT_BLOCK_ELEMS: usize = 1 << 18;

/// A prepared DSA case.
pub(crate) struct Dsa {
    case: Case,
    chunk: usize,
    bf16: bool,
    scale: f32,
    /// Indexer queries `[B, q*H_I, d_I]`.
    index_q: Stored,
    /// Indexer keys, transposed: `[B, d_I, L]`.
    index_kt: Stored,
    /// Indexer head weights `[B, q, H_I]` (f32 in every precision, as the reference).
    index_w: Vec<f32>,
    /// MQA-mode queries `[B, q, H*kv]`.
    mqa_q: Stored,
    /// The latent cache, one row per (sequence, position): `[B*L, 1, kv]`.
    latent: Stored,
    /// Score rows of one chunk `[B*chunk, L]` (reused across runs).
    scores: Vec<f32>,
    /// Top-k scratch, one per worker thread.
    topk_scratch: Vec<Vec<u64>>,
}

impl Dsa {
    pub(crate) fn prepare(case: &Case, inputs: &Inputs, plan: Plan) -> Result<Self, EngineError> {
        let s = &case.shape;
        let (b, q, l, h) = (case.batch, case.query_len, case.context, s.heads);
        let (ih, id, kv) = (s.index_heads, s.index_dim, s.mqa_kv_dim());
        let bf16 = case.precision == Precision::Bf16;
        let get = |t: InputTensor| materialize_rounded(case, inputs, t);
        let chunk = plan.chunk.max(1);
        Ok(Self {
            case: case.clone(),
            chunk,
            bf16,
            scale: s.softmax_scale() as f32,
            index_q: Stored::new(get(InputTensor::IndexQ), [b, q * ih, id], bf16)?,
            index_kt: Stored::new(permute4(&get(InputTensor::IndexK), [b, l, id, 1], [0, 2, 1, 3]), [b, id, l], bf16)?,
            index_w: get(InputTensor::IndexW),
            mqa_q: Stored::new(get(InputTensor::MqaQ), [b, q, h * kv], bf16)?,
            latent: Stored::new(get(InputTensor::Latent), [b * l, 1, kv], bf16)?,
            scores: vec![0f32; b * chunk.min(q) * l],
            topk_scratch: (0..threads()).map(|_| Vec::with_capacity(l)).collect(),
        })
    }

    /// One timed execution: attention output `[B, q, H, v]` and selections `[B, q, k]`.
    pub(crate) fn run(&mut self) -> Result<(Timing, Output), EngineError> {
        let start = Instant::now();
        let c = &self.case;
        let s = &c.shape;
        let (b, q, l, h) = (c.batch, c.query_len, c.context, s.heads);
        let (ih, kv, vd) = (s.index_heads, s.mqa_kv_dim(), s.mqa_v_dim());
        let k = c.effective_top_k();
        let neutral = sum_neutral();
        let mut values = vec![0f32; b * q * h * vd];
        let mut indices = vec![-1i32; b * q * k];
        let (mut t_index, mut t_topk, mut t_attn) = (0f64, 0f64, 0f64);
        let mut i0 = 0;
        while i0 < q {
            let qc = self.chunk.min(q - i0);
            let first_pos = c.query_position(i0);
            let keys = first_pos + qc; // keys visible to the chunk's last query
            let rows = b * qc; // query rows of this chunk, row n = (sequence n / qc, query i0 + n % qc)
            let visible = |n: usize| first_pos + n % qc + 1;

            // 1. Indexer scores [rows, keys] (entries past a row's visible keys are not read).
            let t0 = Instant::now();
            let iq = self.index_q.block(0..b, i0 * ih..(i0 + qc) * ih, 0..s.index_dim)?;
            let scores = &mut self.scores[..rows * keys];
            let w = &self.index_w;
            let block = (LOGIT_BLOCK_ELEMS / (rows * ih)).max(64).min(keys);
            let mut k0 = 0;
            while k0 < keys {
                let kb = block.min(keys - k0);
                let ikt = self.index_kt.block(0..b, 0..s.index_dim, k0..k0 + kb)?;
                let logits = iq.matmul(&ikt).map_err(backend("indexer q·kᵀ"))?;
                with_f32(&logits, |lg| {
                    let mut none = vec![(); threads()];
                    par_rows(scores, keys, &mut none, lg.len(), |row0, chunk, _| {
                        for (j, out) in chunk.chunks_exact_mut(keys).enumerate() {
                            let n = row0 + j;
                            let (bi, r) = (n / qc, n % qc);
                            // Logit rows of query n are rows n*H_I .. (n+1)*H_I of [B, qc*H_I, kb].
                            let lrow = &lg[n * ih * kb..(n + 1) * ih * kb];
                            let wrow = &w[(bi * q + i0 + r) * ih..(bi * q + i0 + r + 1) * ih];
                            let seen = visible(n).saturating_sub(k0).min(kb);
                            index_scores_row(lrow, kb, wrow, seen, neutral, &mut out[k0..k0 + kb]);
                        }
                    });
                })?;
                k0 += kb;
            }
            t_index += t0.elapsed().as_secs_f64();

            // 2. Top-k per query row.
            let t1 = Instant::now();
            let mut sel = vec![-1i32; rows * k];
            {
                let scores = &self.scores[..rows * keys];
                par_rows(&mut sel, k, &mut self.topk_scratch, rows * keys, |row0, chunk, scratch| {
                    for (j, out) in chunk.chunks_exact_mut(k).enumerate() {
                        let n = row0 + j;
                        topk_row(&scores[n * keys..n * keys + visible(n)], scratch, out);
                    }
                });
            }
            for (n, row) in sel.chunks_exact(k).enumerate() {
                let dst = ((n / qc) * q + i0 + n % qc) * k;
                indices[dst..dst + k].copy_from_slice(row);
            }
            t_topk += t1.elapsed().as_secs_f64();

            // 3. Sparse MQA attention over the selected latents.
            let t2 = Instant::now();
            let (gt, gv) = self.latent.with_host(
                |lat| gather(lat, &sel, qc, l, k, kv, vd),
                |lat| gather(lat, &sel, qc, l, k, kv, vd),
            )?;
            let kt = Stored::F32(Tensor::from_vec(gt, (rows, kv, k), &Device::Cpu).map_err(backend("gathered keys"))?);
            let vs = Stored::F32(Tensor::from_vec(gv, (rows, k, vd), &Device::Cpu).map_err(backend("gathered values"))?);
            // Queries of the chunk as [rows, H, kv].
            let qs = self
                .mqa_q
                .block(0..b, i0..i0 + qc, 0..h * kv)?
                .reshape((rows, h, kv))
                .map_err(backend("chunk queries"))?;
            let qs = Stored::F32(qs);
            let valid = |n: usize, _r: usize| k.min(visible(n));
            let out = attend(&Problem { q: &qs, rows: 0..h, kt: &kt, v: &vs, keys: k, visible: &valid, scale: self.scale, bf16: self.bf16 })?;
            // out is [rows, H, vd]; row n goes to (sequence n / qc, query i0 + n % qc).
            for (n, block) in out.chunks_exact(h * vd).enumerate() {
                let dst = ((n / qc) * q + i0 + n % qc) * h * vd;
                store(&mut values[dst..dst + h * vd], block, self.bf16);
            }
            t_attn += t2.elapsed().as_secs_f64();
            i0 += qc;
        }
        let total_ms = start.elapsed().as_secs_f64() * 1e3;
        let components = vec![("indexer", t_index * 1e3), ("topk", t_topk * 1e3), ("attention", t_attn * 1e3)];
        Ok((Timing { total_ms, components }, Output { values, indices: Some(indices), sampled: None }))
    }
}

/// Gather the selected latents of every query row (`sel` is `[rows, k]`, row `n` belongs to
/// sequence `n / chunk`) into keys transposed `[rows, kv, k]` and values `[rows, k, vd]`, f32.
/// Padding (`-1`) stays zero.
fn gather<T: Widen>(latent: &[T], sel: &[i32], chunk: usize, context: usize, k: usize, kv: usize, vd: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = sel.len() / k;
    let mut gt = vec![0f32; rows * kv * k];
    let mut gv = vec![0f32; rows * k * vd];
    par_rows2(&mut gt, kv * k, &mut gv, k * vd, rows * k * (kv + vd), |row0, keys, vals| {
        for (j, (keys, vals)) in keys.chunks_exact_mut(kv * k).zip(vals.chunks_exact_mut(k * vd)).enumerate() {
            let n = row0 + j;
            for (slot, &pos) in sel[n * k..(n + 1) * k].iter().enumerate() {
                if pos >= 0 {
                    let src = &latent[((n / chunk) * context + pos as usize) * kv..][..kv];
                    for (d, &x) in src.iter().enumerate() {
                        keys[d * k + slot] = x.widen();
                    }
                    for (o, &x) in vals[slot * vd..(slot + 1) * vd].iter_mut().zip(&src[..vd]) {
                        *o = x.widen();
                    }
                }
            }
        }
    });
    (gt, gv)
}
