//! The building blocks the CPU engines share: candle helpers (reading a tensor's f32 data in
//! place) and fused host kernels that candle-core has no single op for
//! (a vectorisable `exp`, the indexer's ReLU-weighted head sum, top-k selection), run on
//! scoped threads over whole rows.
//!
//! Precision: matrix products always accumulate in f32. In `bf16` cases the operands are
//! stored in bf16 and widened to f32 right before each product ([`super::stored`]), the
//! softmax probabilities are rounded to bf16 before the value product, and the attention
//! output is rounded to bf16.

use std::sync::OnceLock;

use candle_core::{CpuStorage, Storage, Tensor};

use crate::EngineError;

/// Define `$name` as `$imp` compiled twice: for the build's baseline target and with AVX2
/// (chosen at run time). Results are bit-identical: the kernels fix their reduction order
/// (explicit 8-lane accumulators) and use no fused operations, so only the vector width differs.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:ident) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: `wide` only requires AVX2, which the CPU was just found to have.
                    return unsafe { wide($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

/// Map a candle error to an engine error with the step that failed.
pub(crate) fn backend(step: &'static str) -> impl Fn(candle_core::Error) -> EngineError {
    move |e| EngineError::backend(format!("candle ({step})"), e)
}

/// Worker threads for the host kernels (the machine's parallelism; `RAYON_NUM_THREADS`, which
/// candle's GEMM obeys, caps it too).
pub(crate) fn threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        let hw = std::thread::available_parallelism().map_or(1, |n| n.get());
        let cap = std::env::var("RAYON_NUM_THREADS").ok().and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0);
        cap.map_or(hw, |c| c.min(hw)).max(1)
    })
}

/// Work (elements touched) under which a kernel stays on the calling thread. A thread start
/// costs tens of microseconds on an idle machine, but a fork-join can wait milliseconds for a
/// time slice on a busy one, so only about a millisecond of work or more is split.
pub(crate) const PAR_MIN_WORK: usize = 1 << 20;

/// Run `f(first_row, rows, scratch)` over groups of whole rows of `out` (`row_len` elements per
/// row), one group per thread, each with its own `scratch` entry. Runs inline when `work` is
/// small or there is one row.
pub(crate) fn par_rows<T: Send, S: Send>(
    out: &mut [T],
    row_len: usize,
    scratch: &mut [S],
    work: usize,
    f: impl Fn(usize, &mut [T], &mut S) + Sync,
) {
    assert!(!scratch.is_empty(), "par_rows needs at least one scratch entry");
    let rows = out.len().checked_div(row_len).unwrap_or(0);
    let groups = if work < PAR_MIN_WORK { 1 } else { threads().min(scratch.len()).min(rows).max(1) };
    if groups == 1 {
        f(0, out, &mut scratch[0]);
        return;
    }
    let per = rows.div_ceil(groups);
    let f = &f;
    std::thread::scope(|scope| {
        let mut rest = out;
        let mut row0 = 0;
        let mut scratches = scratch.iter_mut();
        while row0 < rows {
            let take = per.min(rows - row0);
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(take * row_len);
            rest = tail;
            let sc = scratches.next().expect("one scratch entry per group");
            let first = row0;
            row0 += take;
            if row0 >= rows {
                f(first, head, sc); // the last group runs on this thread
            } else {
                scope.spawn(move || f(first, head, sc));
            }
        }
    });
}

/// [`par_rows`] over two buffers with the same number of rows (`a_row` and `b_row` elements
/// per row): `f(first_row, a_rows, b_rows)`.
pub(crate) fn par_rows2<A: Send, B: Send>(
    a: &mut [A],
    a_row: usize,
    b: &mut [B],
    b_row: usize,
    work: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    let rows = a.len().checked_div(a_row).unwrap_or(0);
    debug_assert_eq!(rows, b.len().checked_div(b_row).unwrap_or(0));
    let groups = if work < PAR_MIN_WORK { 1 } else { threads().min(rows).max(1) };
    if groups == 1 {
        f(0, a, b);
        return;
    }
    let per = rows.div_ceil(groups);
    let f = &f;
    std::thread::scope(|scope| {
        let (mut rest_a, mut rest_b) = (a, b);
        let mut row0 = 0;
        while row0 < rows {
            let take = per.min(rows - row0);
            let (ha, ta) = std::mem::take(&mut rest_a).split_at_mut(take * a_row);
            let (hb, tb) = std::mem::take(&mut rest_b).split_at_mut(take * b_row);
            (rest_a, rest_b) = (ta, tb);
            let first = row0;
            row0 += take;
            if row0 >= rows {
                f(first, ha, hb);
            } else {
                scope.spawn(move || f(first, ha, hb));
            }
        }
    });
}

/// Call `f` with the f32 elements of a contiguous f32 tensor, in place (no copy).
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R, EngineError> {
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| EngineError::State("internal: expected a contiguous tensor".into()))?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(&v[start..end])),
        _ => Err(EngineError::State(format!("internal: expected an f32 CPU tensor, got {:?}", t.dtype()))),
    }
}

/// Round to the nearest bf16 (ties to even), branch-free for finite inputs.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    f32::from_bits(b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000)
}

/// `e^x` for `x <= 0`, relative error about 2e-7 (range reduction to `[-ln2/2, ln2/2]`, a
/// degree-6 polynomial, and the exponent written into the bits). Branch-free so loops over it
/// vectorise; `x < -87` is clamped (its true value is below 1.7e-38).
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.max(-87.0);
    let shifted = x * LOG2E + ROUND; // the integer n sits in the low mantissa bits
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the bits of `shifted` (ROUND's bits are 0x4B40_0000), no float-to-int conversion
    // (Rust's saturating `as` would keep the loop scalar).
    let two_n = shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23;
    p * f32::from_bits(two_n)
}

/// Maximum of a non-empty slice (eight lanes, so it vectorises).
#[inline(always)]
fn max_of(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = s.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = l.max(x);
        }
    }
    tail.iter().fold(lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max), |m, &x| m.max(x))
}

/// Sum of a slice in a fixed order (eight lanes, so it vectorises the same way everywhere).
#[inline(always)]
fn sum_of(s: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = s.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

/// The value `Iterator::sum` starts from for f32 (the reference sums its f64 terms with it, and
/// the sign of an all-zero score decides ties in top-k).
pub(crate) fn sum_neutral() -> f32 {
    std::iter::empty::<f32>().sum()
}

simd_dispatch! {
    /// Lightning-indexer scores of one query over its first `visible` keys:
    /// `out[s] = sum_j w[j] * ReLU(logits[j][s])`, terms added in head order from `neutral`, as
    /// the reference does. `logits` holds one row of `stride` keys per indexer head.
    pub(crate) fn index_scores_row(logits: &[f32], stride: usize, w: &[f32], visible: usize, neutral: f32, out: &mut [f32]) => index_scores_row_impl
}

#[inline(always)]
fn index_scores_row_impl(logits: &[f32], stride: usize, w: &[f32], visible: usize, neutral: f32, out: &mut [f32]) {
    let out = &mut out[..visible];
    out.fill(neutral);
    for (j, &wj) in w.iter().enumerate() {
        let l = &logits[j * stride..j * stride + visible];
        for (o, &x) in out.iter_mut().zip(l) {
            *o += wj * x.max(0.0);
        }
    }
}

simd_dispatch! {
    /// One key block of the online softmax, for every row of the block: row `i` of `s`
    /// (`kb` scores) sees its first `seen[i]` keys. Updates the row's running `max` (of the
    /// scaled scores) and `sum`, writes `exp(scale*s - max)` into `p` (zero past `seen[i]`;
    /// rounded to bf16 when `bf16`), and sets `alpha[i]`, the factor the row's accumulated
    /// output must be multiplied by before this block's `p v` is added.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn softmax_block(
        s: &[f32],
        p: &mut [f32],
        kb: usize,
        seen: &[usize],
        max: &mut [f32],
        sum: &mut [f32],
        alpha: &mut [f32],
        scale: f32,
        bf16: bool,
    ) => softmax_block_impl
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn softmax_block_impl(s: &[f32], p: &mut [f32], kb: usize, seen: &[usize], max: &mut [f32], sum: &mut [f32], alpha: &mut [f32], scale: f32, bf16: bool) {
    for (i, (srow, prow)) in s.chunks_exact(kb).zip(p.chunks_exact_mut(kb)).enumerate() {
        let n = seen[i].min(kb);
        prow[n..].fill(0.0);
        if n == 0 {
            alpha[i] = 1.0;
            continue;
        }
        let (srow, prow) = (&srow[..n], &mut prow[..n]);
        let new_max = max[i].max(max_of(srow) * scale);
        alpha[i] = if max[i] == f32::NEG_INFINITY { 0.0 } else { exp_nonpositive(max[i] - new_max) };
        for (o, &x) in prow.iter_mut().zip(srow.iter()) {
            *o = exp_nonpositive(x * scale - new_max);
        }
        let block_sum = sum_of(prow);
        if bf16 {
            prow.iter_mut().for_each(|x| *x = round_bf16(*x));
        }
        sum[i] = sum[i] * alpha[i] + block_sum;
        max[i] = new_max;
    }
}

/// A u32 whose unsigned order is `f32::total_cmp`'s order.
#[inline(always)]
fn order_bits(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The f32 whose [`order_bits`] are `u`.
#[inline(always)]
fn from_order_bits(u: u32) -> f32 {
    f32::from_bits(if u >> 31 == 1 { u & 0x7FFF_FFFF } else { !u })
}

/// The packed sort key of a score: score order in the high half, reversed position in the
/// low half, so the k largest keys are the top-k with ties going to the smaller position.
#[inline(always)]
fn topk_key(x: f32, pos: u32) -> u64 {
    (u64::from(order_bits(x)) << 32) | u64::from(u32::MAX - pos)
}

/// Rows longer than this many times `k` are pre-filtered by a sampled threshold.
const TOPK_PREFILTER_RATIO: usize = 8;

/// Top-k of one row (the reference rule): the `out.len()` keys with the largest scores, ties
/// to the smaller position, written ascending with `-1` padding when fewer keys are visible.
/// `keys` is scratch space (reused, so no allocation once it has grown).
///
/// Long rows are first cut down with a threshold: the score ranked about `2k` in a strided
/// sample of the row. Every key at or above it is a candidate; when there are at least `k`
/// candidates, the top-k of the row is the top-k of the candidates (a key below the threshold
/// ranks below `k` candidates), otherwise the whole row is selected from. Either way the
/// result is exact.
pub(crate) fn topk_row(scores: &[f32], keys: &mut Vec<u64>, out: &mut [i32]) {
    let (n, k) = (scores.len(), out.len());
    if n <= k {
        for (o, pos) in out.iter_mut().zip(0..) {
            *o = pos;
        }
        out[n..].fill(-1);
        return;
    }
    keys.clear();
    if k > 0 && n >= TOPK_PREFILTER_RATIO * k {
        // Sample about 8k keys; their (2k * sample / n)-th largest is about the 2k-th of the row.
        let step = n / (TOPK_PREFILTER_RATIO * k);
        keys.extend(scores.iter().step_by(step).map(|&x| u64::from(order_bits(x))));
        let rank = (2 * k * keys.len()).div_ceil(n).clamp(1, keys.len());
        let cut = keys.len() - rank;
        let (_, &mut threshold, _) = keys.select_nth_unstable(cut);
        let threshold = from_order_bits(threshold as u32);
        keys.clear();
        // `x >= threshold` in floats also admits -0 against +0, a harmless extra candidate.
        // Blocks of eight are tested together (vectorised); hits are rare.
        let blocks = scores.chunks_exact(8);
        let tail = blocks.remainder();
        for (b, block) in blocks.enumerate() {
            if block.iter().fold(false, |any, &x| any | (x >= threshold)) {
                for (&x, pos) in block.iter().zip(8 * b as u32..) {
                    if x >= threshold {
                        keys.push(topk_key(x, pos));
                    }
                }
            }
        }
        for (&x, pos) in tail.iter().zip((n - tail.len()) as u32..) {
            if x >= threshold {
                keys.push(topk_key(x, pos));
            }
        }
        if keys.len() < k {
            keys.clear();
        }
    }
    if keys.is_empty() {
        keys.extend(scores.iter().zip(0u32..).map(|(&x, pos)| topk_key(x, pos)));
    }
    let cut = keys.len() - k;
    keys.select_nth_unstable(cut);
    for (o, &key) in out.iter_mut().zip(&keys[cut..]) {
        *o = (u32::MAX - key as u32) as i32;
    }
    out.sort_unstable();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_rows_cover_every_row_once() {
        let (rows, a_row, b_row) = (37, 5, 3);
        let mut a = vec![0usize; rows * a_row];
        let mut b = vec![0usize; rows * b_row];
        let mut scratch = vec![0usize; threads()];
        par_rows(&mut a, a_row, &mut scratch, PAR_MIN_WORK, |row0, chunk, calls| {
            *calls += 1;
            for (j, row) in chunk.chunks_exact_mut(a_row).enumerate() {
                row.iter_mut().for_each(|x| *x += row0 + j + 1);
            }
        });
        assert_eq!(scratch.iter().sum::<usize>(), threads().min(rows));
        par_rows2(&mut a, a_row, &mut b, b_row, PAR_MIN_WORK, |row0, ca, cb| {
            for (j, (ra, rb)) in ca.chunks_exact_mut(a_row).zip(cb.chunks_exact_mut(b_row)).enumerate() {
                ra.iter_mut().for_each(|x| *x *= 2);
                rb.iter_mut().for_each(|x| *x = row0 + j + 1);
            }
        });
        for r in 0..rows {
            assert!(a[r * a_row..(r + 1) * a_row].iter().all(|&x| x == 2 * (r + 1)));
            assert!(b[r * b_row..(r + 1) * b_row].iter().all(|&x| x == r + 1));
        }
    }

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -(i as f32) * 4.3e-4;
            let got = exp_nonpositive(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert!(exp_nonpositive(-1000.0) < 2e-38);
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn topk_matches_the_reference_rule() {
        let s = [1.0f32, 3.0, 3.0, 2.0, 3.0, -0.0, 0.0];
        let mut keys = Vec::new();
        let mut out = [0i32; 2];
        topk_row(&s, &mut keys, &mut out);
        assert_eq!(out, [1, 2]);
        let mut out = [0i32; 4];
        topk_row(&s, &mut keys, &mut out);
        assert_eq!(out, [1, 2, 3, 4]);
        let mut out = [0i32; 6];
        topk_row(&s, &mut keys, &mut out);
        assert_eq!(out, [0, 1, 2, 3, 4, 6]); // +0 ranks above -0, as total_cmp says
        let mut out = [0i32; 4];
        topk_row(&s[..2], &mut keys, &mut out);
        assert_eq!(out, [0, 1, -1, -1]);
        let s64: Vec<f64> = s.iter().map(|&x| f64::from(x)).collect();
        assert_eq!(crate::reference::topk(&s64, 6), vec![0, 1, 2, 3, 4, 6]);
    }

    #[test]
    fn prefiltered_topk_equals_the_reference_on_long_rows() {
        let mut keys = Vec::new();
        for (n, k, levels) in [(5000, 64, 1 << 20), (5000, 64, 7), (4096, 512, 3), (700, 64, 1 << 20), (9000, 1, 50)] {
            // Few levels force many exact ties; a rising trend makes the sample misleading.
            let s: Vec<f32> = (0..n)
                .map(|i| {
                    let h = ctxcost_core::inputs::splitmix64(i as u64 ^ (n * k) as u64);
                    (h % levels) as f32 - if i % 3 == 0 { (i as f32) * 1e-3 } else { 0.0 }
                })
                .collect();
            let mut out = vec![0i32; k];
            topk_row(&s, &mut keys, &mut out);
            let s64: Vec<f64> = s.iter().map(|&x| f64::from(x)).collect();
            assert_eq!(out, crate::reference::topk(&s64, k), "n {n} k {k} levels {levels}");
        }
    }
}
