//! Output verification against the reference: dtype-aware tolerances and top-k selection
//! comparison.

use serde::{Deserialize, Serialize};

use crate::Precision;

/// Tolerances for comparing an engine's output with the f64 reference computed on the same
/// (rounded) inputs: `|got - ref| <= abs + rel * |ref|` element-wise, and the norm-relative
/// error `||got - ref|| / ||ref||` under `norm`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub abs: f64,
    pub rel: f64,
    pub norm: f64,
}

impl Tolerance {
    /// Tolerance for outputs computed in a precision (fp32 accumulation in every case).
    pub fn for_precision(p: Precision) -> Self {
        match p {
            Precision::F32 => Tolerance { abs: 1e-4, rel: 1e-3, norm: 1e-4 },
            // bf16 operands (P rounded to bf16 in the value product): 1e-3..1e-2 norm error.
            Precision::Bf16 => Tolerance { abs: 2e-2, rel: 5e-2, norm: 2e-2 },
            Precision::Fp8 => Tolerance { abs: 6e-2, rel: 1.5e-1, norm: 6e-2 },
        }
    }
}

/// Result of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Comparison {
    pub compared: usize,
    pub max_abs_err: f64,
    pub max_rel_err: f64,
    pub norm_rel_err: f64,
    /// Elements over the element-wise tolerance.
    pub mismatches: usize,
    /// NaN or infinite outputs.
    pub non_finite: usize,
    pub passed: bool,
}

/// Compare `got` with `want` under `tol`.
pub fn compare(got: &[f32], want: &[f64], tol: Tolerance) -> Comparison {
    let mut c = Comparison { compared: got.len().min(want.len()), ..Default::default() };
    let (mut num, mut den) = (0f64, 0f64);
    for (&g, &w) in got.iter().zip(want) {
        let g = g as f64;
        if !g.is_finite() {
            c.non_finite += 1;
            continue;
        }
        let d = (g - w).abs();
        num += d * d;
        den += w * w;
        c.max_abs_err = c.max_abs_err.max(d);
        if w.abs() > tol.abs {
            c.max_rel_err = c.max_rel_err.max(d / w.abs());
        }
        if d > tol.abs + tol.rel * w.abs() {
            c.mismatches += 1;
        }
    }
    c.norm_rel_err = if den > 0.0 { (num / den).sqrt() } else { num.sqrt() };
    c.passed = got.len() == want.len() && c.non_finite == 0 && c.mismatches == 0 && c.norm_rel_err <= tol.norm;
    c
}

/// Result of comparing top-k selections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SelectionCheck {
    pub rows: usize,
    /// Rows whose sets differ exactly.
    pub rows_differing: usize,
    /// Differing entries not explained by a near-tie at the k-th score.
    pub unexplained: usize,
    pub passed: bool,
}

/// Compare selected index sets row by row. Each row of `got`/`want` holds `k` indices
/// (`-1` = padding), in any order. A difference is accepted only when every index in the
/// symmetric difference has a reference score within `tie_tol` (relative to the score range)
/// of the k-th largest reference score of that row: a near-tie that rounding may flip.
/// `scores(row)` returns the reference scores of a row over all keys.
pub fn compare_selection(
    got: &[i32],
    want: &[i32],
    k: usize,
    tie_tol: f64,
    scores: &mut dyn FnMut(usize) -> Vec<f64>,
) -> SelectionCheck {
    let rows = if k == 0 { 0 } else { want.len() / k };
    let mut out = SelectionCheck { rows, ..Default::default() };
    if got.len() != want.len() {
        out.unexplained = got.len().abs_diff(want.len()).max(1);
        return out;
    }
    for r in 0..rows {
        let mut g: Vec<i32> = got[r * k..(r + 1) * k].to_vec();
        let mut w: Vec<i32> = want[r * k..(r + 1) * k].to_vec();
        g.sort_unstable();
        w.sort_unstable();
        if g == w {
            continue;
        }
        out.rows_differing += 1;
        let sc = scores(r);
        let valid: Vec<f64> = w.iter().filter(|&&i| i >= 0).map(|&i| sc[i as usize]).collect();
        let kth = valid.iter().copied().fold(f64::INFINITY, f64::min);
        let range = sc.iter().copied().fold(0f64, |m, x| m.max(x.abs())).max(1e-30);
        let diff = g.iter().filter(|i| !w.contains(i)).chain(w.iter().filter(|i| !g.contains(i)));
        for &i in diff {
            let near = i >= 0 && (i as usize) < sc.len() && (sc[i as usize] - kth).abs() <= tie_tol * range;
            if !near {
                out.unexplained += 1;
            }
        }
    }
    out.passed = out.unexplained == 0;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_catches_perturbation_and_nan() {
        let want = vec![1.0, -2.0, 0.5];
        let tol = Tolerance::for_precision(Precision::F32);
        assert!(compare(&[1.0, -2.0, 0.5], &want, tol).passed);
        assert!(!compare(&[1.0, -2.0, 0.51], &want, tol).passed);
        assert!(!compare(&[1.0, f32::NAN, 0.5], &want, tol).passed);
        assert!(!compare(&[1.0, -2.0], &want, tol).passed);
    }

    #[test]
    fn selection_accepts_near_ties_only() {
        let scores = vec![5.0, 4.0, 3.0, 2.9999999, 1.0];
        let mut sc = |_r: usize| scores.clone();
        // k = 3: reference keeps {0,1,2}; swapping 2 for its near-tie 3 is accepted.
        assert!(compare_selection(&[0, 1, 3], &[0, 1, 2], 3, 1e-6, &mut sc).passed);
        assert!(compare_selection(&[2, 1, 0], &[0, 1, 2], 3, 1e-6, &mut sc).passed);
        assert!(!compare_selection(&[0, 1, 4], &[0, 1, 2], 3, 1e-6, &mut sc).passed);
    }
}
