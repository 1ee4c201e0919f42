//! Statistics over raw samples: median, percentiles, a bootstrap 95% CI of the median, and a
//! bootstrap CI of the ratio of two paired sample sets (dense and sparse samples interleaved
//! A B A B, so sample i of each was taken at nearly the same time).
//!
//! The bootstrap is deterministic (a fixed-seed generator), so recomputing statistics from
//! stored raw samples gives the same numbers.

use serde::{Deserialize, Serialize};

use crate::inputs::splitmix64;

/// Resamples used by the bootstrap.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// An undefined statistic (no samples; a relative width over a zero median) is `NaN` in
/// memory and absent in a record, never `null` where a reader expects a number.
fn undefined() -> f64 {
    f64::NAN
}

fn is_undefined(x: &f64) -> bool {
    !x.is_finite()
}

/// Summary of one sample set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    pub n: usize,
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub median: f64,
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub mean: f64,
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub min: f64,
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub max: f64,
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub p10: f64,
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub p90: f64,
    /// Bootstrap 95% CI of the median.
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub ci_lo: f64,
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub ci_hi: f64,
    /// (ci_hi - ci_lo) / 2 / median.
    #[serde(default = "undefined", skip_serializing_if = "is_undefined")]
    pub rel_half_width: f64,
}

/// A ratio with its 95% CI.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RatioCi {
    pub ratio: f64,
    pub lo: f64,
    pub hi: f64,
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(1);
        (splitmix64(self.0) % n as u64) as usize
    }
}

fn sorted(xs: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// Percentile `p` in [0, 100] of sorted data, linear interpolation between ranks.
pub fn percentile_sorted(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0).clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (rank - lo as f64)
}

/// Median of unsorted data (NaN when empty).
pub fn median(xs: &[f64]) -> f64 {
    percentile_sorted(&sorted(xs), 50.0)
}

/// Percentile of unsorted data.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    percentile_sorted(&sorted(xs), p)
}

/// Bootstrap 95% CI of the median (percentile method).
pub fn median_ci(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    if n == 1 {
        return (xs[0], xs[0]);
    }
    let mut rng = Rng(0x5EED_0001 ^ n as u64);
    let mut meds = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let mut buf = vec![0.0; n];
    for _ in 0..BOOTSTRAP_RESAMPLES {
        for slot in buf.iter_mut() {
            *slot = xs[rng.below(n)];
        }
        meds.push(median(&buf));
    }
    let m = sorted(&meds);
    (percentile_sorted(&m, 2.5), percentile_sorted(&m, 97.5))
}

/// Full summary of a sample set.
pub fn summarize(xs: &[f64]) -> Summary {
    let v = sorted(xs);
    if v.is_empty() {
        return Summary { n: 0, median: f64::NAN, mean: f64::NAN, min: f64::NAN, max: f64::NAN, p10: f64::NAN, p90: f64::NAN, ci_lo: f64::NAN, ci_hi: f64::NAN, rel_half_width: f64::NAN };
    }
    let med = percentile_sorted(&v, 50.0);
    let (ci_lo, ci_hi) = median_ci(&v);
    Summary {
        n: v.len(),
        median: med,
        mean: v.iter().sum::<f64>() / v.len() as f64,
        min: v[0],
        max: v[v.len() - 1],
        p10: percentile_sorted(&v, 10.0),
        p90: percentile_sorted(&v, 90.0),
        ci_lo,
        ci_hi,
        // Over a zero median (a buffering proxy's TPOT) the relative width is 0 when the CI
        // is a point, else undefined.
        rel_half_width: if med != 0.0 { (ci_hi - ci_lo) / 2.0 / med } else if ci_hi == ci_lo { 0.0 } else { f64::NAN },
    }
}

/// Ratio of medians `median(num) / median(den)` with a bootstrap 95% CI.
///
/// When both sets have the same length they are treated as paired (sample i of each taken
/// together) and pairs are resampled jointly, which cancels slow machine drift; otherwise
/// the two sets are resampled independently.
pub fn ratio_ci(num: &[f64], den: &[f64]) -> Option<RatioCi> {
    ratio_ci_with(num, den, num.len() == den.len())
}

/// [`ratio_ci`] with the pairing said by the caller: pairs are resampled jointly only when
/// `paired` and both sets have the same length, else the two sets are resampled
/// independently (same generator and seed as [`ratio_ci`]).
pub fn ratio_ci_with(num: &[f64], den: &[f64], paired: bool) -> Option<RatioCi> {
    if num.is_empty() || den.is_empty() {
        return None;
    }
    let ratio = median(num) / median(den);
    let paired = paired && num.len() == den.len();
    let mut rng = Rng(0x5EED_0002 ^ ((num.len() as u64) << 20) ^ den.len() as u64);
    let mut rs = Vec::with_capacity(BOOTSTRAP_RESAMPLES);
    let (mut a, mut b) = (vec![0.0; num.len()], vec![0.0; den.len()]);
    for _ in 0..BOOTSTRAP_RESAMPLES {
        if paired {
            for i in 0..num.len() {
                let j = rng.below(num.len());
                a[i] = num[j];
                b[i] = den[j];
            }
        } else {
            for slot in a.iter_mut() {
                *slot = num[rng.below(num.len())];
            }
            for slot in b.iter_mut() {
                *slot = den[rng.below(den.len())];
            }
        }
        rs.push(median(&a) / median(&b));
    }
    let r = sorted(&rs);
    Some(RatioCi { ratio, lo: percentile_sorted(&r, 2.5), hi: percentile_sorted(&r, 97.5) })
}

/// Least-squares slope of log(y) on log(x): the growth exponent (1 = linear, 2 = quadratic).
pub fn loglog_slope(xs: &[f64], ys: &[f64]) -> f64 {
    let pts: Vec<(f64, f64)> = xs.iter().zip(ys).filter(|(x, y)| **x > 0.0 && **y > 0.0).map(|(x, y)| (x.ln(), y.ln())).collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return f64::NAN;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(percentile(&[0.0, 10.0], 90.0), 9.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn median_ci_brackets_and_shrinks() {
        let small: Vec<f64> = (0..10).map(|i| 100.0 + (i % 5) as f64).collect();
        let big: Vec<f64> = (0..200).map(|i| 100.0 + (i % 5) as f64).collect();
        let (lo, hi) = median_ci(&small);
        let s = summarize(&small);
        assert!(lo <= s.median && s.median <= hi);
        let (blo, bhi) = median_ci(&big);
        assert!(bhi - blo <= hi - lo);
        // Deterministic.
        assert_eq!(median_ci(&small), median_ci(&small));
    }

    #[test]
    fn paired_ratio_cancels_drift() {
        // Both engines drift together by 50%; the paired ratio stays 0.5 with a tight CI.
        let den: Vec<f64> = (0..40).map(|i| 10.0 * (1.0 + i as f64 / 80.0)).collect();
        let num: Vec<f64> = den.iter().map(|d| d * 0.5).collect();
        let r = ratio_ci(&num, &den).unwrap();
        assert!((r.ratio - 0.5).abs() < 1e-12);
        assert!(r.hi - r.lo < 1e-9, "{r:?}");
        // Unpaired (different lengths): the CI widens but still brackets the ratio.
        let r2 = ratio_ci(&num[..30], &den).unwrap();
        assert!(r2.lo < r2.ratio && r2.ratio < r2.hi);
        // Same length but not paired: each set resampled on its own, so the CI opens up.
        let r3 = ratio_ci_with(&num, &den, false).unwrap();
        assert!(r3.lo < 0.49 && r3.hi > 0.51, "{r3:?}");
        assert_eq!(ratio_ci_with(&num, &den, true), Some(r));
    }

    #[test]
    fn loglog_slope_recovers_exponents() {
        let x = [1.0, 2.0, 4.0, 8.0];
        let y2: Vec<f64> = x.iter().map(|v| 3.0 * v * v).collect();
        assert!((loglog_slope(&x, &y2) - 2.0).abs() < 1e-9);
    }
}
