//! DeepSeek's published numbers, shipped with the crate (`reports/data/`, see its README for
//! the citations): the four cost curves of the V3.2-Exp report's Figure 3 and the API price
//! table before and after the V3.2-Exp launch. The report sets them beside the measurements;
//! nothing here is measured by this project.

use ctxcost_core::Phase;

use crate::error::ReportError;

/// The Fig. 3 samples as shipped (`reports/data/deepseek-v32-exp-fig3.csv`).
pub const FIG3_CSV: &str = include_str!("../data/deepseek-v32-exp-fig3.csv");
/// The API price table as shipped (`core/data/deepseek-api-prices.csv`).
pub const API_PRICES_CSV: &str = ctxcost_core::prices::API_PRICES_CSV;
/// Citation of Fig. 3, printed under every table or chart that uses it.
pub const FIG3_CITATION: &str = "DeepSeek-AI, DeepSeek-V3.2-Exp technical report, Fig. 3 \
(inference cost on H800 clusters at $2/GPU-hour, marginal cost per token position; values read off the figure, +-0.001 USD)";
/// Tokens per "K" on the Fig. 3 axis.
pub const TOKENS_PER_K: f64 = 1024.0;

/// One Fig. 3 sample: position (tokens) and the four curves (USD per million tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fig3Row {
    pub position: f64,
    pub prefill_v31: f64,
    pub prefill_v32: f64,
    pub decode_v31: f64,
    pub decode_v32: f64,
}

/// A curve as (position in tokens, USD per million tokens) points.
pub type Curve = Vec<(f64, f64)>;

/// DeepSeek's Fig. 3 curves.
#[derive(Debug, Clone)]
pub struct Fig3 {
    pub rows: Vec<Fig3Row>,
}

impl Fig3 {
    /// The shipped curves.
    pub fn shipped() -> Self {
        Self::parse(FIG3_CSV).expect("the shipped Fig. 3 table parses")
    }

    /// Parse the CSV layout of `deepseek-v32-exp-fig3.csv`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let v: Vec<f64> = line
                .split(',')
                .map(|x| x.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("line {}: {e}", i + 1))?;
            if v.len() != 5 {
                return Err(format!("line {}: expected 5 columns, found {}", i + 1, v.len()));
            }
            rows.push(Fig3Row { position: v[0] * TOKENS_PER_K, prefill_v31: v[1], prefill_v32: v[2], decode_v31: v[3], decode_v32: v[4] });
        }
        if rows.len() < 2 {
            return Err("fewer than two rows".into());
        }
        Ok(Self { rows })
    }

    /// Largest position the figure covers (tokens).
    pub fn max_position(&self) -> f64 {
        self.rows.last().map(|r| r.position).unwrap_or(0.0)
    }

    /// The (dense V3.1, sparse V3.2) curves of a phase as (position, USD/M) points.
    pub fn curves(&self, phase: Phase) -> (Curve, Curve) {
        let pick = |r: &Fig3Row| match phase {
            Phase::Prefill => (r.prefill_v31, r.prefill_v32),
            Phase::Decode => (r.decode_v31, r.decode_v32),
        };
        (self.rows.iter().map(|r| (r.position, pick(r).0)).collect(), self.rows.iter().map(|r| (r.position, pick(r).1)).collect())
    }

    /// Marginal cost (dense V3.1, sparse V3.2) at a position, linear between samples;
    /// `None` outside the figure.
    pub fn at(&self, phase: Phase, position: f64) -> Option<(f64, f64)> {
        if !(0.0..=self.max_position()).contains(&position) {
            return None;
        }
        let (d, s) = self.curves(phase);
        Some((linear(&d, position), linear(&s, position)))
    }

    /// Marginal sparse/dense ratio at a position.
    pub fn ratio_at(&self, phase: Phase, position: f64) -> Option<f64> {
        self.at(phase, position).map(|(d, s)| s / d)
    }

    /// Whole-request ratio at length `l`: the average marginal cost over positions 0..l,
    /// sparse over dense (trapezoids between the 1K samples).
    pub fn request_ratio_at(&self, phase: Phase, l: f64) -> Option<f64> {
        if !(l > 0.0 && l <= self.max_position()) {
            return None;
        }
        let (d, s) = self.curves(phase);
        Some(trapezoid_average(&s, l) / trapezoid_average(&d, l))
    }
}

/// Linear interpolation on sorted (x, y) points, clamped at the ends.
fn linear(pts: &[(f64, f64)], x: f64) -> f64 {
    if x <= pts[0].0 {
        return pts[0].1;
    }
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x <= x1 {
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
        }
    }
    pts[pts.len() - 1].1
}

/// Average of a piecewise-linear curve over [first x, l].
fn trapezoid_average(pts: &[(f64, f64)], l: f64) -> f64 {
    let mut area = 0.0;
    for w in pts.windows(2) {
        let ((x0, y0), (x1, _)) = (w[0], w[1]);
        if x0 >= l {
            break;
        }
        let xe = x1.min(l);
        let ye = linear(pts, xe);
        area += (xe - x0) * (y0 + ye) / 2.0;
    }
    area / (l - pts[0].0)
}

pub use ctxcost_core::prices::ApiPrice;

/// Parse the API price CSV (see [`ctxcost_core::prices::parse_api_prices`]).
pub fn parse_api_prices(text: &str) -> Result<Vec<ApiPrice>, ReportError> {
    ctxcost_core::prices::parse_api_prices(text).map_err(|(line, why)| ReportError::Prices { line, why })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fig3_ratios_match_dsa_md_table() {
        let f = Fig3::shipped();
        let k = TOKENS_PER_K;
        // DSA.md section 4: decode ratio 0.47 at 16K, 0.12 at 128K; prefill 0.57 at 32K.
        assert!((f.ratio_at(Phase::Decode, 16.0 * k).unwrap() - 0.475).abs() < 0.01);
        assert!((f.ratio_at(Phase::Decode, 128.0 * k).unwrap() - 0.116).abs() < 0.01);
        assert!((f.ratio_at(Phase::Prefill, 32.0 * k).unwrap() - 0.573).abs() < 0.01);
        assert!(f.ratio_at(Phase::Prefill, 200.0 * k).is_none());
        // Whole-prompt prefill averages: 0.80 at 32K, 0.56 at 64K, 0.39 at 128K.
        assert!((f.request_ratio_at(Phase::Prefill, 32.0 * k).unwrap() - 0.80).abs() < 0.01);
        assert!((f.request_ratio_at(Phase::Prefill, 64.0 * k).unwrap() - 0.56).abs() < 0.01);
        assert!((f.request_ratio_at(Phase::Prefill, 128.0 * k).unwrap() - 0.39).abs() < 0.01);
    }

    #[test]
    fn api_prices_parse_with_sources() {
        let p = parse_api_prices(API_PRICES_CSV).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].item, "output");
        assert!((p[2].ratio() - 0.25).abs() < 1e-12);
        assert!((p[1].ratio() - 0.5).abs() < 1e-12);
        assert!(p.iter().all(|r| r.source.contains("DeepSeek") && r.effective_date == "2025-09-29"));
        assert!(parse_api_prices("a,b\n1,2").is_err());
    }
}
