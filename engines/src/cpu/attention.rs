//! Masked softmax attention for a batch of matrices, in key blocks with an online softmax
//! (the FlashAttention recurrence), on candle matmuls.
//!
//! A [`Problem`] is `N` independent matrices: queries `q [N, R, D]`, keys stored transposed
//! `kt [N, D, K]` (the layout candle's GEMM reads fastest as the right operand; a transposed
//! view of `[K, D]` sends it through a slow strided gather), values `v [N, K, V]`; row
//! `(n, r)` attends to keys `0..visible(n, r)`.
//!
//! Keys are processed in blocks sized so that a block's scores and probabilities stay in the
//! core's cache: per block, `S = q kt_blk` (one batched matmul); a fused host pass updates each
//! row's running maximum and sum and writes the probabilities; then `O = O * alpha + P v_blk`.
//! Nothing of size `R x K` is ever allocated, so long contexts cost neither memory nor page
//! faults (a fresh multi-megabyte buffer per product costs more than the product here).
//!
//! Work is split over threads by matrices (`n` ranges) or, when there are fewer matrices than
//! threads, by key segments whose partial results are merged with their log-sum-exp weights
//! (as split-K decoding kernels do).

use std::ops::Range;

use candle_core::Tensor;

use super::ops::{backend, softmax_block, threads, with_f32};
use super::stored::Stored;
use crate::EngineError;

/// Scores per key block (elements): 1 MiB of f32, so scores and probabilities fit in L2.
const BLOCK_ELEMS: usize = 1 << 18;
/// Smallest key block, and smallest key segment worth its own thread.
const MIN_BLOCK: usize = 64;
const MIN_SEGMENT: usize = 1024;
/// Multiply-adds under which a problem runs on one thread (a few milliseconds of work: see
/// `ops::PAR_MIN_WORK` on the price of a fork-join on a busy machine).
const PAR_MIN_WORK: usize = 1 << 22;

/// One attention computation; see the module docs.
pub(crate) struct Problem<'a> {
    /// Queries `[N, *, D]`, of which rows `rows` are the problem's `R` rows.
    pub q: &'a Stored,
    pub rows: Range<usize>,
    /// Keys, transposed: `[N, D, *]`.
    pub kt: &'a Stored,
    /// Values `[N, *, V]`.
    pub v: &'a Stored,
    /// Keys `0..keys` are considered (at least the largest `visible`).
    pub keys: usize,
    /// Visible key count of row `(n, r)`: keys `0..visible` (at least 1).
    pub visible: &'a (dyn Fn(usize, usize) -> usize + Sync),
    pub scale: f32,
    /// Round the probabilities to bf16 before the value product.
    pub bf16: bool,
}

/// The running state of rows `n0..n0+nn` over one key segment.
struct Partial {
    n0: usize,
    /// Running maximum of the scaled scores, per row.
    max: Vec<f32>,
    /// Running sum of `exp(score - max)`, per row.
    sum: Vec<f32>,
    /// Unnormalised output rows `[nn * R, V]`.
    acc: Vec<f32>,
}

/// Softmax attention output `[N, R, V]` (f32, normalised).
pub(crate) fn attend(p: &Problem) -> Result<Vec<f32>, EngineError> {
    let (n, r, vd) = (p.q.dims()[0], p.rows.len(), p.v.dims()[2]);
    // Units of work: (first matrix, matrices, first key, end key).
    let d = p.q.dims()[2];
    // Small problems stay on the calling thread: a thread start costs more than they do.
    let work = n * r * p.keys * (d + vd);
    let t = if work < PAR_MIN_WORK { 1 } else { threads() };
    let mut units = Vec::new();
    if n >= t || p.keys < 2 * MIN_SEGMENT {
        let groups = t.min(n);
        for g in 0..groups {
            let (a, b) = (g * n / groups, (g + 1) * n / groups);
            if b > a {
                units.push((a, b - a, 0, p.keys));
            }
        }
    } else {
        let segs = t.div_ceil(n).min(p.keys / MIN_SEGMENT).max(1);
        for i in 0..n {
            for s in 0..segs {
                units.push((i, 1, s * p.keys / segs, (s + 1) * p.keys / segs));
            }
        }
    }
    let partials: Vec<Partial> = if units.len() == 1 {
        let (n0, nn, lo, hi) = units[0];
        vec![run_unit(p, n0, nn, lo, hi, r, vd)?]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = units[1..]
                .iter()
                .map(|&(n0, nn, lo, hi)| scope.spawn(move || run_unit(p, n0, nn, lo, hi, r, vd)))
                .collect();
            let (n0, nn, lo, hi) = units[0];
            let mut out = vec![run_unit(p, n0, nn, lo, hi, r, vd)];
            out.extend(handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))));
            out.into_iter().collect::<Result<Vec<_>, _>>()
        })?
    };
    Ok(merge(&partials, n, r, vd))
}

/// Combine partial states (one or more per matrix) into normalised output rows.
fn merge(partials: &[Partial], n: usize, r: usize, vd: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * r * vd];
    let mut max = vec![f32::NEG_INFINITY; n * r];
    for pt in partials {
        for (i, &m) in pt.max.iter().enumerate() {
            let row = pt.n0 * r + i;
            max[row] = max[row].max(m);
        }
    }
    let mut sum = vec![0f32; n * r];
    for pt in partials {
        for (i, (&m, &l)) in pt.max.iter().zip(&pt.sum).enumerate() {
            let row = pt.n0 * r + i;
            let w = if m == f32::NEG_INFINITY { 0.0 } else { (m - max[row]).exp() };
            sum[row] += w * l;
            let dst = &mut out[row * vd..(row + 1) * vd];
            for (o, &a) in dst.iter_mut().zip(&pt.acc[i * vd..(i + 1) * vd]) {
                *o += w * a;
            }
        }
    }
    for (row, o) in out.chunks_exact_mut(vd).enumerate() {
        let inv = 1.0 / sum[row];
        o.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

/// Rows of matrices `n0..n0+nn` over keys `lo..hi`, block by block.
fn run_unit(p: &Problem, n0: usize, nn: usize, lo: usize, hi: usize, r: usize, vd: usize) -> Result<Partial, EngineError> {
    let rows = nn * r;
    let mut part = Partial { n0, max: vec![f32::NEG_INFINITY; rows], sum: vec![0f32; rows], acc: vec![0f32; rows * vd] };
    let (d, mats) = (p.q.dims()[2], n0..n0 + nn);
    let q = p.q.block(mats.clone(), p.rows.clone(), 0..d)?;
    let block = (BLOCK_ELEMS / rows.max(1)).max(MIN_BLOCK).min((hi - lo).max(1));
    let mut alpha = vec![1f32; rows];
    let mut seen = vec![0usize; rows];
    let mut k0 = lo;
    while k0 < hi {
        let kb = block.min(hi - k0);
        // Keys of this block each row sees; rows that see none contribute nothing.
        for (row, sn) in seen.iter_mut().enumerate() {
            *sn = (p.visible)(n0 + row / r, row % r).saturating_sub(k0).min(kb);
        }
        if seen.iter().all(|&sn| sn == 0) {
            break; // visibility is a prefix, so later blocks are unseen too
        }
        let kt_b = p.kt.block(mats.clone(), 0..d, k0..k0 + kb)?;
        let scores = q.matmul(&kt_b).map_err(backend("q·kᵀ"))?;
        let probs = with_f32(&scores, |s| {
            let mut probs = vec![0f32; rows * kb];
            softmax_block(s, &mut probs, kb, &seen, &mut part.max, &mut part.sum, &mut alpha, p.scale, p.bf16);
            probs
        })?;
        drop(scores);
        let probs = Tensor::from_vec(probs, (nn, r, kb), q.device()).map_err(backend("probabilities"))?;
        let v_b = p.v.block(mats.clone(), k0..k0 + kb, 0..vd)?;
        let pv = probs.matmul(&v_b).map_err(backend("p·v"))?;
        with_f32(&pv, |o| {
            for ((acc, orow), &a) in part.acc.chunks_exact_mut(vd).zip(o.chunks_exact(vd)).zip(&alpha) {
                for (x, &y) in acc.iter_mut().zip(orow) {
                    *x = *x * a + y;
                }
            }
        })?;
        k0 += kb;
    }
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocked, split and merged attention equals a plain softmax computed in f64.
    #[test]
    fn matches_plain_softmax() {
        // Three matrices (split by matrix) and one (split by key segment when there are
        // several threads).
        for n in [3, 1] {
            check(n);
        }
    }

    fn check(n: usize) {
        let (r, d, k, vd) = (130, 7, 3000, 4); // n * r * k * (d + vd) is above PAR_MIN_WORK
        let val = |i: usize| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0;
        let q: Vec<f32> = (0..n * r * d).map(val).collect();
        let kt: Vec<f32> = (0..n * d * k).map(|i| val(i + 7)).collect();
        let v: Vec<f32> = (0..n * k * vd).map(|i| val(i + 13)).collect();
        let qt = Stored::new(q.clone(), [n, r, d], false).unwrap();
        let ktt = Stored::new(kt.clone(), [n, d, k], false).unwrap();
        let vt = Stored::new(v.clone(), [n, k, vd], false).unwrap();
        let visible = |i: usize, j: usize| k - 400 * i - j;
        let out = attend(&Problem { q: &qt, rows: 0..r, kt: &ktt, v: &vt, keys: k, visible: &visible, scale: 0.3, bf16: false }).unwrap();
        for i in 0..n {
            for j in 0..r {
                let vis = visible(i, j);
                let s: Vec<f64> = (0..vis)
                    .map(|key| (0..d).map(|c| f64::from(q[(i * r + j) * d + c]) * f64::from(kt[(i * d + c) * k + key])).sum::<f64>() * 0.3)
                    .collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let tot: f64 = w.iter().sum();
                for c in 0..vd {
                    let want: f64 = w.iter().enumerate().map(|(key, wk)| wk * f64::from(v[(i * k + key) * vd + c])).sum::<f64>() / tot;
                    let got = f64::from(out[(i * r + j) * vd + c]);
                    assert!((got - want).abs() < 1e-5, "n {i} r {j} c {c}: {got} vs {want}");
                }
            }
        }
    }
}
