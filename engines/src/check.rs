//! Verification of an engine's output against the f64 reference, before any timing.
//!
//! Small cases are compared in full; large ones on sampled rows (a few queries of a few
//! sequences, all or some heads) recomputed from the seeded generator, so verification never
//! needs the whole input on the host. DSA selections are compared with
//! [`ctxcost_core::verify::compare_selection`] (exact, up to near-ties at the k-th score), and
//! the attention output is checked over the engine's own selection, so an accepted near-tie
//! swap cannot fail the output comparison.

use ctxcost_core::record::Verification;
use ctxcost_core::verify::{compare, compare_selection, Tolerance};
use ctxcost_core::{Case, InputTensor, Inputs, Phase};

use crate::reference::{indexer_scores, mha_row, mqa_rows, topk, View};
use crate::Output;

/// Which rows verification compares.
#[derive(Debug, Clone, PartialEq)]
pub enum Rows {
    /// Every sequence, query and head.
    All,
    /// `queries` (sequence, query) pairs spread over the case, `heads` heads of each.
    Sampled { queries: usize, heads: usize },
}

/// Reference work (multiply-adds) above which verification samples rows.
pub const FULL_CHECK_LIMIT: f64 = 4e9;

impl Rows {
    /// Full comparison when the reference is cheap, else sampled rows.
    pub fn auto(case: &Case) -> Rows {
        if case.is_rest() {
            return crate::rest::verify_rows(case);
        }
        let s = &case.shape;
        let per_pair = if case.is_sparse() {
            (s.index_heads * s.index_dim) as f64 + (case.effective_top_k() as f64 / case.context as f64) * (s.heads * (s.mqa_kv_dim() + s.mqa_v_dim())) as f64
        } else if case.phase == Phase::Prefill {
            (s.heads * (s.mha_qk_dim() + s.mha_v_dim())) as f64
        } else {
            (s.heads * (s.mqa_kv_dim() + s.mqa_v_dim())) as f64
        };
        if case.query_tokens() as f64 * case.context as f64 * per_pair <= FULL_CHECK_LIMIT {
            Rows::All
        } else {
            Rows::Sampled { queries: 4, heads: if case.phase == Phase::Prefill && !case.is_sparse() { 4 } else { s.heads } }
        }
    }

    /// The (sequence, query) pairs and heads compared.
    pub fn pick(&self, case: &Case) -> (Vec<(usize, usize)>, Vec<usize>) {
        match *self {
            Rows::All => {
                let qs = (0..case.batch).flat_map(|b| (0..case.query_len).map(move |i| (b, i))).collect();
                (qs, (0..case.shape.heads).collect())
            }
            Rows::Sampled { queries, heads } => {
                let mut qs = Vec::new();
                let n = queries.max(1);
                for j in 0..n {
                    let b = (j * 7919 + 1) % case.batch;
                    // Spread over the chunk, always including the first and last query.
                    let i = if n == 1 { case.query_len - 1 } else { j * (case.query_len - 1) / (n - 1) };
                    if !qs.contains(&(b, i)) {
                        qs.push((b, i));
                    }
                }
                let nh = heads.clamp(1, case.shape.heads);
                let hs = (0..nh).map(|j| j * case.shape.heads / nh).collect();
                (qs, hs)
            }
        }
    }
}

/// Compare an engine's output with the reference on the chosen rows (`rest` cases: the
/// GEMM elements of [`crate::rest`]).
pub fn verify(case: &Case, inputs: &Inputs, out: &Output, rows: &Rows) -> Verification {
    if case.is_rest() {
        return crate::rest::verify(case, out, rows);
    }
    let s = &case.shape;
    let tol = Tolerance::for_precision(case.precision);
    let dense_mha = !case.is_sparse() && case.phase == Phase::Prefill;
    let v_dim = if dense_mha { s.mha_v_dim() } else { s.mqa_v_dim() };
    let (queries, heads) = rows.pick(case);
    let view = if *rows == Rows::All {
        let ts: &[InputTensor] = if dense_mha {
            &[InputTensor::MhaQ, InputTensor::MhaK, InputTensor::MhaV]
        } else if case.is_sparse() {
            &[InputTensor::MqaQ, InputTensor::Latent, InputTensor::IndexQ, InputTensor::IndexK, InputTensor::IndexW]
        } else {
            &[InputTensor::MqaQ, InputTensor::Latent]
        };
        View::cached(case, inputs, ts)
    } else {
        View::new(case, inputs)
    };
    let expected_len = case.query_tokens() * s.heads * v_dim;
    let mut got = Vec::new();
    let mut want = Vec::new();
    let mut selection = None;
    if out.sampled.is_none() && out.values.len() != expected_len {
        let c = compare(&[], &[0.0], tol);
        return Verification { method: method(rows), output: c, selection, passed: false };
    }
    // Rows the engine sent: position of each (sequence, query) and head in `out.sampled`.
    let sampled_at = |b: usize, i: usize| out.sampled.as_ref().and_then(|s| s.queries.iter().position(|&q| q == (b, i)));
    let head_at = |h: usize| out.sampled.as_ref().and_then(|s| s.heads.iter().position(|&x| x == h));
    let k = case.effective_top_k();
    let (mut got_sel, mut want_sel, mut sel_rows) = (Vec::new(), Vec::new(), Vec::new());
    for &(b, i) in &queries {
        let base = (b * case.query_len + i) * s.heads * v_dim;
        let outs: Vec<Vec<f64>> = if dense_mha {
            heads.iter().map(|&h| mha_row(&view, b, i, h)).collect()
        } else if case.is_sparse() {
            let empty = Vec::new();
            let idx = match (&out.indices, &out.sampled) {
                (Some(ix), _) => Some(ix),
                (None, Some(sm)) if sm.indices.is_some() => Some(&empty),
                _ => None,
            };
            let Some(idx) = idx else {
                return Verification { method: method(rows), output: Default::default(), selection, passed: false };
            };
            let row = (b * case.query_len + i) * k;
            let engine_sel = match &out.sampled {
                Some(sm) => sampled_at(b, i).and_then(|j| sm.indices.as_ref().and_then(|ix| ix.get(j))).map(Vec::as_slice),
                None => idx.get(row..row + k),
            };
            let Some(engine_sel) = engine_sel else {
                return Verification { method: method(rows), output: Default::default(), selection, passed: false };
            };
            let ref_sel = topk(&indexer_scores(&view, b, i), k);
            got_sel.extend_from_slice(engine_sel);
            want_sel.extend(ref_sel);
            sel_rows.push((b, i));
            // Attention over the engine's own selection (valid, in-range entries only).
            let visible = case.query_position(i) as i32;
            let clean: Vec<i32> = engine_sel.iter().copied().filter(|&x| x >= 0 && x <= visible).collect();
            mqa_rows(&view, b, i, &heads, Some(&clean))
        } else {
            mqa_rows(&view, b, i, &heads, None)
        };
        for (o, &h) in outs.iter().zip(&heads) {
            let vals = match &out.sampled {
                Some(sm) => match (sampled_at(b, i), head_at(h)) {
                    (Some(j), Some(hk)) => sm.values.get(j).and_then(|r| r.get(hk * v_dim..(hk + 1) * v_dim)),
                    _ => None,
                },
                None => out.values.get(base + h * v_dim..base + (h + 1) * v_dim),
            };
            let Some(vals) = vals else {
                let c = compare(&[], &[0.0], tol);
                return Verification { method: method(rows), output: c, selection, passed: false };
            };
            got.extend_from_slice(vals);
            want.extend_from_slice(o);
        }
    }
    let output = compare(&got, &want, tol);
    if case.is_sparse() {
        let tie_tol = tie_tolerance(case.precision);
        let mut scores = |r: usize| {
            let (b, i) = sel_rows[r];
            indexer_scores(&view, b, i)
        };
        selection = Some(compare_selection(&got_sel, &want_sel, k, tie_tol, &mut scores));
    }
    let passed = output.passed && selection.as_ref().map_or(true, |s| s.passed);
    Verification { method: method(rows), output, selection, passed }
}

fn method(rows: &Rows) -> String {
    match rows {
        Rows::All => "full".into(),
        Rows::Sampled { queries, heads } => format!("sampled ({queries} queries x {heads} heads)"),
    }
}

/// How close (relative to the row's score range) an index's reference score must be to the
/// k-th largest for a differing top-k entry to count as a near-tie that rounding may flip.
pub fn tie_tolerance(precision: ctxcost_core::Precision) -> f64 {
    match precision {
        ctxcost_core::Precision::F32 => 1e-6,
        ctxcost_core::Precision::Bf16 => 1e-3,
        ctxcost_core::Precision::Fp8 => 1e-2,
    }
}

