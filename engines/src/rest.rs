//! What the `rest` engines share: which output elements verification compares, and the
//! comparison itself against an f64 GEMM recomputed from the seeded generator.
//!
//! A `rest` case runs the GEMMs of [`ctxcost_core::rest::plan`]. Its [`crate::Output`] holds,
//! in `values`, the compared elements of every GEMM in plan order: for each GEMM, each of its
//! `batch` products, each picked row, each picked column. [`Rows::All`] picks every row and
//! column; [`Rows::Sampled`] reads `queries` as the rows (token rows spread over the GEMM,
//! first and last included) and `heads` as the output columns (spread over `n`) of every
//! product of every GEMM. Each GEMM reads its own seeded input, so an element's reference is
//! one f64 dot product of a generated input row and a generated weight column.

use ctxcost_core::record::Verification;
use ctxcost_core::rest::{plan, reference_input_row, reference_weight, Gemm};
use ctxcost_core::verify::{compare, Tolerance};
use ctxcost_core::{Case, Precision};

use crate::check::Rows;

/// Multiply-adds of the reference under which `rest` verification compares everything.
pub const FULL_CHECK_MACS: f64 = 3e8;

/// Full comparison when the reference is cheap, else 4 rows x 16 columns of every GEMM.
pub fn verify_rows(case: &Case) -> Rows {
    let macs: f64 = plan(case).iter().map(|g| g.flops() / 2.0).sum();
    if macs <= FULL_CHECK_MACS {
        Rows::All
    } else {
        Rows::Sampled { queries: 4, heads: 16 }
    }
}

/// Up to `count` indices spread over `0..n`, first and last included, ascending.
fn spread(n: usize, count: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let c = count.clamp(1, n);
    if c == 1 {
        return vec![n - 1];
    }
    let mut v: Vec<usize> = (0..c).map(|j| j * (n - 1) / (c - 1)).collect();
    v.dedup();
    v
}

/// The rows and columns of a GEMM that verification compares.
pub fn picked(g: &Gemm, rows: &Rows) -> (Vec<usize>, Vec<usize>) {
    match *rows {
        Rows::All => ((0..g.m).collect(), (0..g.n).collect()),
        Rows::Sampled { queries, heads } => (spread(g.m, queries), spread(g.n, heads)),
    }
}

/// Gather the compared elements of one GEMM's output `[batch, m, n]` (row-major, read through
/// `at(flat index)`) in the order verification expects.
pub fn gather(g: &Gemm, rows: &Rows, at: impl Fn(usize) -> f32, into: &mut Vec<f32>) {
    let (rs, cs) = picked(g, rows);
    for b in 0..g.batch {
        for &r in &rs {
            for &c in &cs {
                into.push(at((b * g.m + r) * g.n + c));
            }
        }
    }
}

/// The reference of the compared elements of every GEMM (f64 over the operands as each GEMM
/// multiplies them: rounded, or FP8-quantised).
pub fn reference(case: &Case, rows: &Rows) -> Vec<f64> {
    let mut want = Vec::new();
    for g in plan(case) {
        let (rs, cs) = picked(&g, rows);
        for b in 0..g.batch {
            let inputs: Vec<Vec<f64>> = rs.iter().map(|&r| reference_input_row(case, &g, b, r)).collect();
            let weights: Vec<Vec<f64>> = cs.iter().map(|&c| (0..g.k).map(|k| reference_weight(case, &g, b, k, c)).collect()).collect();
            for x in &inputs {
                for w in &weights {
                    want.push(x.iter().zip(w).map(|(a, b)| a * b).sum());
                }
            }
        }
    }
    want
}

/// Compare a `rest` engine's output with the f64 reference. A failure names the first GEMM
/// (in plan order) whose elements do not match.
pub fn verify(case: &Case, out: &crate::Output, rows: &Rows) -> Verification {
    // The reference multiplies the very FP8 operands the engine does, so an FP8 GEMM differs
    // from it only by accumulation order and its bf16 output: the bf16 tolerance applies.
    let tol = Tolerance::for_precision(if case.precision == Precision::Fp8 { Precision::Bf16 } else { case.precision });
    let want = reference(case, rows);
    let output = compare(&out.values, &want, tol);
    let mut method = match rows {
        Rows::All => "full".to_string(),
        Rows::Sampled { queries, heads } => format!("sampled ({queries} rows x {heads} columns of every GEMM)"),
    };
    if !output.passed && out.values.len() == want.len() {
        let mut at = 0;
        for (i, g) in plan(case).iter().enumerate() {
            let (rs, cs) = picked(g, rows);
            let n = g.batch * rs.len() * cs.len();
            let part = compare(&out.values[at..at + n], &want[at..at + n], tol);
            if !part.passed {
                let precision = if g.fp8 { "fp8" } else { "bf16 or f32" };
                method.push_str(&format!(
                    "; first failing GEMM: #{i} `{}` ({precision}, {} x {} x {}), {} of {n} elements over tolerance",
                    g.name, g.m, g.k, g.n, part.mismatches + part.non_finite
                ));
                break;
            }
            at += n;
        }
    }
    let passed = output.passed;
    Verification { method, output, selection: None, passed }
}

/// The component spans of a plan: `(component, first GEMM, end)` in run order.
pub fn spans(gemms: &[Gemm]) -> Vec<(ctxcost_core::rest::Component, usize, usize)> {
    let mut out: Vec<(ctxcost_core::rest::Component, usize, usize)> = Vec::new();
    for (i, g) in gemms.iter().enumerate() {
        match out.last_mut() {
            Some(last) if last.0 == g.component => last.2 = i + 1,
            _ => out.push((g.component, i, i + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_includes_both_ends() {
        assert_eq!(spread(10, 4), vec![0, 3, 6, 9]);
        assert_eq!(spread(3, 16), vec![0, 1, 2]);
        assert_eq!(spread(5, 1), vec![4]);
        assert!(spread(0, 4).is_empty());
    }
}
