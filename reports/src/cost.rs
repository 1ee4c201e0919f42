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
//! from `rest` records where they exist, else analytic `2 * active_params / achieved rate`.
//!
//! A `rest` record times one layer's non-attention GEMMs by component at the case's token
//! count (`ctxcost_core::rest`), so with it the whole model is
//!
//! ```text
//! whole-model = layers x (attention + rest of the layer) + head
//!             = layers x attention + other
//! other       = (layers x mla_proj + moe_layers x (router + moe) + dense_layers x dense_mlp
//!                + head) / query_tokens                         (both sides)
//!             + layers x indexer_proj / query_tokens             (the DSA side only)
//! ```
//!
//! The indexer's projections are charged to the DSA side only: the dense baseline
//! (V3.1-Terminus) has no indexer. Legacy `gemm-*` records (the whole rest of the model per
//! token in one number) are still read.
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
    /// Median of measured legacy GEMM records (engine ids starting with `gemm`).
    Measured { engine: String, records: usize },
    /// Measured `rest` records (one layer's non-attention GEMMs by component), scaled to the
    /// model by [`ctxcost_core::rest::model_ms`].
    Rest(RestSource),
}

/// What the `rest` records behind a measured rest of the model were.
#[derive(Debug, Clone, PartialEq)]
pub struct RestSource {
    pub engine: String,
    pub records: usize,
    /// Query tokens of the rest records (batch x query_len).
    pub query_tokens: usize,
    /// Query tokens of the series' attention cases, when the rest records had to be taken
    /// at another token count (none measured at the series' own).
    pub series_tokens: Option<usize>,
    pub precision: ctxcost_core::Precision,
    /// Expert-parallel degree of the measured MoE.
    pub ep: usize,
    /// Median ms of each component in one run (one layer; the head once).
    pub components_ms: Vec<(String, f64)>,
    /// The other `rest` engines measured at the same tokens, precision and EP, each with its
    /// whole-model ms per token (`engine 0.123 ms/token`), slowest last.
    pub others: Vec<String>,
}

/// Per-token cost of the rest of the model with its provenance.
#[derive(Debug, Clone, PartialEq)]
pub struct OtherCost {
    /// Both sides (the dense baseline's rest of the model).
    pub seconds_per_token: f64,
    /// Added on the DSA side only: the indexer's projections (0 unless measured by `rest`).
    pub dsa_extra_seconds_per_token: f64,
    pub source: OtherSource,
}

/// What a measured rest of the model leaves out, and how a measured whole-model cost differs
/// from DeepSeek's Fig. 3 (the Assumptions section lists these when `rest` records are used).
pub const REST_DIFFERENCES: [&str; 5] = [
    "Measured rest of the model: whole model = layers x (attention + the rest of one layer) + the LM head, with the rest of a layer timed by a `rest` engine at the series' token count: MLA projections (and in decode the absorbed per-head products), the indexer's projections (charged to the DSA side only: the dense baseline V3.1 has none), the router, the MoE (shared expert and this GPU's routed experts) in the 58 MoE layers, the dense MLP in the 3 dense layers, the LM head once per token (once per sequence in prefill). GEMMs only: norms, RoPE, the SwiGLU activation, the router's top-k and the embedding lookup are not timed.",
    "Expert parallelism: tokens are routed uniformly at random (not by a trained router); with EP N this GPU holds 256/N experts and runs them on their share of N GPUs' tokens (the EP degree is in each series' rest-of-model line). The all-to-all dispatch and combine of expert parallelism, and any other communication (tensor or pipeline parallelism, prefill/decode disaggregation), are not measured: the measured whole model is a lower bound on a serving system's cost.",
    "Against DeepSeek's Fig. 3: Fig. 3 is DeepSeek's estimate from its deployed service on H800 clusters at $2 per GPU-hour; these records are one GPU (see Environment; an H200 has the H800's compute and more, faster memory), at the batch and chunk of each series (DeepSeek's serving batch is not published), in the precision each record names (DeepSeek serves FP8 weights and an FP8 KV cache: a `bf16` rest of the model reads twice the weight bytes of FP8; an `fp8` one runs the linear layers block-scaled FP8 as DeepSeek's inference code does, with the absorbed per-head products, the router, the indexer's head weights and the LM head in bf16), without DeepSeek's kernels' fusion and overlap. Compare the shapes of the curves and the ratios before the absolute values.",
    "Per position: the cost table and the whole-model chart give absolute USD per million tokens at each measured position beside Fig. 3's two curves at the same position; the rest of the model is the same at every position, so the whole-model ratio moves towards 1 wherever the rest dominates attention.",
    "Decode batch: the rest of the model per token falls as the batch grows (the weights are read once per step for all sequences), so the whole-model cost and ratio of a decode series depend on its batch as much as on the attention kernels.",
];

/// Per-token seconds of the rest of the model from one `rest` record's component medians
/// (ms of one run): `(both sides, DSA side only)`.
pub fn rest_seconds_per_token(shape: &ctxcost_core::ModelShape, components_ms: &[(String, f64)], query_tokens: usize) -> (f64, f64) {
    let ms = |c: ctxcost_core::rest::Component| components_ms.iter().find(|(n, _)| n == c.name()).map_or(0.0, |x| x.1);
    let (base, indexer) = ctxcost_core::rest::model_ms(shape, ms);
    (base / 1e3 / query_tokens as f64, indexer / 1e3 / query_tokens as f64)
}

impl OtherCost {
    /// An assumed rest of the model (no record measured it).
    pub fn analytic(active_params: f64, tflops: f64) -> Self {
        OtherCost {
            seconds_per_token: analytic_other_seconds_per_token(active_params, tflops),
            dsa_extra_seconds_per_token: 0.0,
            source: OtherSource::Analytic { active_params, tflops },
        }
    }

    /// Seconds per token of the rest of the model on one side (`sparse`: the DSA side).
    pub fn side(&self, sparse: bool) -> f64 {
        if sparse {
            self.seconds_per_token + self.dsa_extra_seconds_per_token
        } else {
            self.seconds_per_token
        }
    }

    /// Whether the rest of the model was measured (not assumed).
    pub fn is_measured(&self) -> bool {
        !matches!(self.source, OtherSource::Analytic { .. })
    }

    /// One sentence saying what `other` is and where it came from.
    pub fn describe(&self) -> String {
        match &self.source {
            OtherSource::Rest(r) => {
                let parts: Vec<String> = r.components_ms.iter().map(|(n, ms)| format!("{n} {ms:.4}")).collect();
                let tokens = match r.series_tokens {
                    Some(t) => format!("{} tokens (none measured at this series' {t}: the nearest token count)", r.query_tokens),
                    None => format!("{} tokens", r.query_tokens),
                };
                let precision = match r.precision {
                    ctxcost_core::Precision::Fp8 => "fp8 (block-scaled FP8 linear layers; bf16 absorbed products, router, indexer head weights and LM head)".to_string(),
                    p => p.to_string(),
                };
                format!(
                    "measured: `{}` (the fastest verified `rest` engine here{}), median of {} record(s), {precision} GEMMs at {tokens}, EP {}; one layer in ms: {}; \
                     layers x mla_proj + MoE layers x (router + moe) + dense-MLP layers x dense_mlp + head = {:.4} ms per token, \
                     plus layers x indexer_proj = {:.4} ms per token on the DSA side only",
                    r.engine,
                    if r.others.is_empty() { String::new() } else { format!("; also measured: {}", r.others.join(", ")) },
                    r.records,
                    r.ep,
                    parts.join(", "),
                    self.seconds_per_token * 1e3,
                    self.dsa_extra_seconds_per_token * 1e3
                )
            }
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
    fn rest_components_scale_to_the_model_by_hand() {
        // tiny: 61 layers, 3 dense-MLP layers, 58 MoE layers; 4 tokens per run.
        let shape = ctxcost_core::ModelShape::tiny();
        let c = |n: &str, ms: f64| (n.to_string(), ms);
        let comps = [c("mla_proj", 0.1), c("indexer_proj", 0.02), c("router", 0.01), c("moe", 0.3), c("dense_mlp", 0.5), c("head", 0.4)];
        let (both, dsa) = rest_seconds_per_token(&shape, &comps, 4);
        // (61 x 0.1 + 58 x 0.31 + 3 x 0.5 + 0.4) ms / 4 = 25.98 / 4 ms; 61 x 0.02 / 4 ms.
        assert!((both - 25.98e-3 / 4.0).abs() < 1e-15, "{both}");
        assert!((dsa - 1.22e-3 / 4.0).abs() < 1e-15, "{dsa}");
        let o = OtherCost { seconds_per_token: both, dsa_extra_seconds_per_token: dsa, source: OtherSource::Measured { engine: "x".into(), records: 1 } };
        assert_eq!((o.side(false), o.side(true)), (both, both + dsa));
        assert!(o.is_measured() && !OtherCost::analytic(37e9, 400.0).is_measured());
        // A component the record lacks (no indexer on V3.1) counts as 0.
        assert_eq!(rest_seconds_per_token(&shape, &comps[..1], 1).1, 0.0);
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
