//! The cost model of DESIGN.md section 5, and the curve arithmetic behind per-request costs.
//!
//! ```text
//! usd_per_million_tokens = seconds_per_token * usd_per_gpu_hour / 3600 * 1e6
//! seconds_per_token      = median_case_seconds / query_tokens          (one layer)
//! attention-only         = layers * seconds_per_token
//! whole-model            = layers * seconds_per_token + other_seconds_per_token
//! ```
//!
//! `query_tokens` is `batch * query_len`: per chunk token in prefill, per sequence token of
//! the batch in decode. `other` (MoE, projections, norms) is per-token constant: measured
//! from a GEMM record where one exists, else analytic `2 * active_params / achieved rate`.
//!
//! A measured point at context L is the *marginal* cost of a token near position L (as in
//! DeepSeek's Fig. 3). The cost *per request* of L tokens is the average of the marginal
//! curve over positions 0..L: between measured contexts the curve is interpolated as a
//! power law (straight in log-log space), and below the smallest measured context it is
//! held at the first measured value.

/// Seconds in an hour.
const HOUR_S: f64 = 3600.0;

/// USD per million tokens for a per-token time at a GPU-hour price.
pub fn usd_per_million(seconds_per_token: f64, usd_per_gpu_hour: f64) -> f64 {
    seconds_per_token * usd_per_gpu_hour / HOUR_S * 1e6
}

/// Seconds per token of one case: median case time over its query tokens.
pub fn seconds_per_token(median_ms: f64, query_tokens: usize) -> f64 {
    median_ms / 1e3 / query_tokens as f64
}

/// Analytic seconds per token of the rest of the model: 2 FLOPs per active parameter at an
/// achieved rate (TFLOP/s).
pub fn analytic_other_seconds_per_token(active_params: f64, achieved_tflops: f64) -> f64 {
    2.0 * active_params / (achieved_tflops * 1e12)
}

/// Where the per-token cost of the rest of the model came from.
#[derive(Debug, Clone, PartialEq)]
pub enum OtherSource {
    /// `2 * active_params / (tflops * 1e12)`: assumed, not measured.
    Analytic { active_params: f64, tflops: f64 },
    /// Median of measured GEMM records (engine ids starting with `gemm`).
    Measured { engine: String, records: usize },
}

/// Per-token cost of the rest of the model with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherCost {
    pub seconds_per_token: f64,
    pub source: OtherSource,
}

impl OtherCost {
    /// One sentence saying what `other` is and where it came from.
    pub fn describe(&self) -> String {
        match &self.source {
            OtherSource::Analytic { active_params, tflops } => format!(
                "analytic: 2 x {:.3e} active parameters / {} TFLOP/s assumed achieved = {:.4} ms per token (not measured)",
                active_params,
                fmt_num(*tflops),
                self.seconds_per_token * 1e3
            ),
            OtherSource::Measured { engine, records } => format!(
                "measured: median of {records} `{engine}` GEMM record(s) = {:.4} ms per token",
                self.seconds_per_token * 1e3
            ),
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x}")
    }
}

/// The marginal curve at position `x` from measured points `(position, value)` sorted by
/// position: power-law interpolation between points, the first value below the first point,
/// power-law extrapolation of the last segment above the last point.
pub fn log_interp(pts: &[(f64, f64)], x: f64) -> f64 {
    match pts.len() {
        0 => f64::NAN,
        1 => pts[0].1,
        _ => {
            if x <= pts[0].0 {
                return pts[0].1;
            }
            let seg = pts.windows(2).find(|w| x <= w[1].0).unwrap_or(&pts[pts.len() - 2..]);
            let ((xa, ya), (xb, yb)) = (seg[0], seg[1]);
            if ya > 0.0 && yb > 0.0 {
                let s = (yb / ya).ln() / (xb / xa).ln();
                ya * (x / xa).powf(s)
            } else {
                ya + (yb - ya) * (x.ln() - xa.ln()) / (xb.ln() - xa.ln())
            }
        }
    }
}

/// Integral of a power law through `(xa, ya)` and `(xb, yb)` from `xa` to `xe`.
fn power_segment_integral(xa: f64, ya: f64, xb: f64, yb: f64, xe: f64) -> f64 {
    if !(ya > 0.0 && yb > 0.0) {
        // Not a power law: trapezoid in linear space.
        let ye = ya + (yb - ya) * (xe - xa) / (xb - xa);
        return (xe - xa) * (ya + ye) / 2.0;
    }
    let s = (yb / ya).ln() / (xb / xa).ln();
    if (s + 1.0).abs() < 1e-12 {
        ya * xa * (xe / xa).ln()
    } else {
        ya * xa / (s + 1.0) * ((xe / xa).powf(s + 1.0) - 1.0)
    }
}

/// Average of the marginal curve over positions 0..`l` (the per-request cost per token).
/// Below the first measured position the curve is its first value; above the last it is the
/// extrapolated last segment (callers ask only up to measured positions).
pub fn request_average(pts: &[(f64, f64)], l: f64) -> f64 {
    if pts.is_empty() || l <= 0.0 {
        return f64::NAN;
    }
    let (x0, y0) = pts[0];
    let mut area = y0 * l.min(x0);
    if l > x0 {
        let segs: Vec<((f64, f64), (f64, f64))> = if pts.len() == 1 {
            vec![((x0, y0), (2.0 * x0, y0))]
        } else {
            pts.windows(2).map(|w| (w[0], w[1])).collect()
        };
        let last = segs.len() - 1;
        for (i, &((xa, ya), (xb, yb))) in segs.iter().enumerate() {
            if xa >= l {
                break;
            }
            let xe = if i == last { l } else { xb.min(l) };
            area += power_segment_integral(xa, ya, xb, yb, xe);
        }
    }
    area / l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_formula() {
        // 1 ms per token at $3.6/h: 1e-3 * 3.6 / 3600 * 1e6 = 1 USD per million tokens.
        assert!((usd_per_million(1e-3, 3.6) - 1.0).abs() < 1e-12);
        assert!((seconds_per_token(8.0, 4) - 2e-3).abs() < 1e-15);
        // 2 * 37e9 / 400e12 = 0.185 ms.
        assert!((analytic_other_seconds_per_token(37e9, 400.0) - 1.85e-4).abs() < 1e-15);
    }

    #[test]
    fn linear_curve_request_average() {
        // c(p) = c0 below 1024, c0 * p / 1024 above: average over 0..2048 is
        // (1024 c0 + c0 (2048^2 - 1024^2) / 2048) / 2048 = 1.25 c0.
        let pts = [(1024.0, 2.0), (2048.0, 4.0), (4096.0, 8.0)];
        assert!((request_average(&pts, 2048.0) - 2.5).abs() < 1e-12);
        assert!((request_average(&pts, 1024.0) - 2.0).abs() < 1e-12);
        assert!((request_average(&pts, 512.0) - 2.0).abs() < 1e-12);
        // Over 0..4096: (1024 * 2 + (4096^2 - 1024^2) / 1024) / 4096 = (2048 + 15360) / 4096 = 4.25.
        assert!((request_average(&pts, 4096.0) - 4.25).abs() < 1e-12);
        assert!((log_interp(&pts, 3072.0) - 6.0).abs() < 1e-12);
        assert_eq!(log_interp(&pts, 10.0), 2.0);
    }

    #[test]
    fn constant_and_inverse_segments() {
        let flat = [(1000.0, 3.0), (4000.0, 3.0)];
        assert!((request_average(&flat, 4000.0) - 3.0).abs() < 1e-12);
        // y = 1000/x: slope -1, integral ln-shaped.
        let inv = [(1000.0, 1.0), (2000.0, 0.5)];
        let want = (1000.0 + 1000.0 * 2f64.ln()) / 2000.0;
        assert!((request_average(&inv, 2000.0) - want).abs() < 1e-12);
    }
}
