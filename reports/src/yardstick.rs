//! The yardstick a verdict is measured against (DESIGN.md section 3, "Same-run peers are the
//! yardstick"): which engines are ours and which are library peers, which records may carry a
//! verdict, whether two records were sampled in lockstep, and the roofline bound of the
//! DSA/dense ratio at the same-run ceilings.
//!
//! The reports never link the engine table, so what they know about an engine is what its
//! records say: the id, `case.method`, the machine, the analytic work and the samples.
//!
//! - **Ours or a library peer**: [`origin`] is the one place that decides. Our engines are the
//!   ids of [`OUR_ENGINES`]; every other engine is a library peer (cuDNN, FlashInfer, FlashMLA,
//!   DeepGEMM, PyTorch, NumPy adapters run as external engines).
//! - **Verified**: a record whose output verification passed. A record whose verification
//!   failed never carries a verdict; one that was not verified (a run with `--no-verify`) is
//!   used only where no verified record of its method exists at the point, and is marked.
//! - **Lockstep** ([`lockstep`]): two records were sampled alternately (A B A B) when they come
//!   from the same file and machine, hold the same number of samples, and their
//!   [`started_at`, `finished_at`] windows overlap. The runner measures the engines of one
//!   point in one process, preparing each and then interleaving their samples, so this holds for
//!   every pair of records of one point of one run. Only then is sample i of one engine paired
//!   with sample i of the other; otherwise the ratio's CI is an unpaired bootstrap.
//! - **Roofline** ([`roofline`]): each component of a case (dense attention; DSA's indexer,
//!   top-k and sparse attention) takes max(FLOPs / GEMM rate, bytes / copy bandwidth), with the
//!   FLOPs and bytes of the analytic model (`ctxcost_core::analytic`, DSA.md section 3). FP8
//!   matrix work (the indexer at `fp8`) counts at twice the bf16 GEMM rate; attention computes
//!   in bf16 at every precision (the FP8 cache is dequantised). The analytic model gives top-k
//!   no FLOPs and no bytes (the scores stay on chip in a fused kernel), so its bound is zero.
//!   The roofline ratio is what the method gives with both sides at the hardware's limits: a
//!   measured ratio above it is the DSA kernels' gap, one below it a dense side far from its
//!   ceilings.

use ctxcost_core::analytic::{case_work, indexer_bytes_per_token};
use ctxcost_core::record::Status;
use ctxcost_core::stats::{self, RatioCi};
use ctxcost_core::{Case, Precision};

use crate::load::LoadedRecord;

/// Our engines (the `dense-*` and `dsa-*` entries of the engine table). Every other engine id
/// in the records is a library peer.
pub const OUR_ENGINES: [&str; 4] = ["dense-cpu", "dsa-cpu", "dense-cuda", "dsa-cuda"];

/// The engine pairs compared when the user names none: ours vs ours on the same backend.
pub const OUR_PAIRS: [(&str, &str); 2] = [("dsa-cpu", "dense-cpu"), ("dsa-cuda", "dense-cuda")];

/// Below this share of the fastest engine of its method, an engine a ratio rests on is
/// flagged on the first screen.
pub const SLOW_ENGINE_SHARE: f64 = 0.8;

/// Whose kernel an engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    Ours,
    Library,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Ours => "ours",
            Origin::Library => "library",
        }
    }
}

/// Whether an engine is ours or a library peer (the one place that decides).
pub fn origin(engine: &str) -> Origin {
    if OUR_ENGINES.contains(&engine) {
        Origin::Ours
    } else {
        Origin::Library
    }
}

/// Records of the rest of the model, not attention: method `rest` (the `rest-*` engines), and
/// the legacy `gemm-*` ids of records written before cases carried that method.
pub fn is_gemm(r: &LoadedRecord) -> bool {
    r.record.case.is_rest() || r.record.engine.starts_with("gemm")
}

/// Whether a record is an attention case (not a GEMM, not a remote endpoint).
pub fn is_attention(r: &LoadedRecord) -> bool {
    r.record.endpoint.is_none() && !is_gemm(r)
}

/// A DSA engine and a dense engine to compare (`--pair dsa-cuda:dense-cuda`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EnginePair {
    pub dsa: String,
    pub dense: String,
}

impl EnginePair {
    pub fn new(dsa: &str, dense: &str) -> Self {
        Self { dsa: dsa.to_string(), dense: dense.to_string() }
    }

    /// `DSA:DENSE`, e.g. `dsa-cuda:dense-cuda`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((a, b)) if !a.trim().is_empty() && !b.trim().is_empty() && a.trim() != b.trim() => Ok(Self::new(a.trim(), b.trim())),
            _ => Err(format!("`{s}` is not a pair: write DSA_ENGINE:DENSE_ENGINE, e.g. dsa-cuda:dense-cuda")),
        }
    }

    /// `dsa-cuda vs dense-cuda`.
    pub fn label(&self) -> String {
        format!("{} vs {}", self.dsa, self.dense)
    }
}

/// Verification of a record's output against the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verified {
    /// Verification failed: never part of a verdict.
    Failed,
    /// Not verified (the run skipped verification).
    NotRun,
    Passed,
}

impl Verified {
    pub fn of(r: &LoadedRecord) -> Self {
        match &r.record.verification {
            Some(v) if v.passed => Verified::Passed,
            Some(_) => Verified::Failed,
            None => Verified::NotRun,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verified::Passed => "passed",
            Verified::NotRun => "not verified",
            Verified::Failed => "FAILED",
        }
    }
}

/// Whether a record may stand in the engine table and carry a verdict: measured (ok, finite
/// positive median) and not failing verification.
pub fn usable(r: &LoadedRecord) -> bool {
    is_attention(r) && r.record.status == Status::Ok && r.is_measured() && Verified::of(r) != Verified::Failed
}

/// Seconds since 1970 of an RFC 3339 UTC time (`2026-01-01T00:00:00Z`, fraction optional);
/// `None` when it is not one.
pub fn rfc3339_seconds(t: &str) -> Option<f64> {
    let b = t.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let rest = &t[19..];
    let frac = match rest.strip_suffix('Z') {
        Some("") => 0.0,
        Some(f) if f.starts_with('.') && f.len() > 1 && f[1..].bytes().all(|c| c.is_ascii_digit()) => format!("0{f}").parse::<f64>().ok()?,
        _ => return None,
    };
    // Days from the civil date (H. Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + s) as f64 + frac)
}

/// The [start, end] window of a record (end = start when the end is missing).
fn window(r: &LoadedRecord) -> Option<(f64, f64)> {
    let a = rfc3339_seconds(&r.record.started_at)?;
    let b = rfc3339_seconds(&r.record.finished_at).unwrap_or(a);
    Some((a, b.max(a)))
}

/// Whether two records were sampled in lockstep (see the module notes for the rule).
pub fn lockstep(a: &LoadedRecord, b: &LoadedRecord) -> bool {
    let n = a.record.samples_ms.len();
    if a.file != b.file || a.env_label != b.env_label || n == 0 || n != b.record.samples_ms.len() {
        return false;
    }
    match (window(a), window(b)) {
        (Some((a0, a1)), Some((b0, b1))) => a0 <= b1 && b0 <= a1,
        _ => false,
    }
}

/// Ratio of medians `median(num) / median(den)` with its 95% CI: paired (sample i with sample
/// i) when the two were sampled in lockstep, else an unpaired bootstrap
/// ([`stats::ratio_ci_with`]).
pub fn ratio_ci(num: &[f64], den: &[f64], in_lockstep: bool) -> RatioCi {
    stats::ratio_ci_with(num, den, in_lockstep).unwrap_or(RatioCi { ratio: stats::median(num) / stats::median(den), lo: f64::NAN, hi: f64::NAN })
}

/// The ceilings a roofline is drawn against: device copy bandwidth (bytes read + written) and
/// the bf16 GEMM rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ceilings {
    pub copy_tbps: f64,
    pub gemm_tflops: f64,
}

impl Default for Ceilings {
    /// The H200 figures of `ctxcost ceilings` in bench/NOTES.md (2026-11-29, same command as
    /// the dense/DSA run): copy 3.918 TB/s, cuBLAS bf16 GEMM 811.1 TFLOP/s.
    fn default() -> Self {
        Self { copy_tbps: 3.918, gemm_tflops: 811.1 }
    }
}

/// Keys of `env.gpu` under which a run may store its own ceilings (the names `ctxcost
/// ceilings` prints). When present on a machine's records, they replace the report's inputs.
pub const CEILING_KEYS: (&str, &str) = ("copy_tbps", "gemm_bf16_tflops");

/// Where the ceilings of a machine came from.
#[derive(Debug, Clone, PartialEq)]
pub enum CeilingSource {
    /// Stored in the records of this machine (same run).
    Records,
    /// Report inputs (`Yardstick::ceilings`), not measured with these records.
    Inputs,
}

/// The ceilings of one machine: its records' own when they carry them, else the inputs.
pub fn ceilings_of<'a>(records: impl Iterator<Item = &'a LoadedRecord>, inputs: Ceilings) -> (Ceilings, CeilingSource) {
    for r in records {
        let g = &r.record.env.gpu;
        let num = |k: &str| g.get(k).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()).filter(|v| v.is_finite() && *v > 0.0);
        if let (Some(copy_tbps), Some(gemm_tflops)) = (num(CEILING_KEYS.0), num(CEILING_KEYS.1)) {
            return (Ceilings { copy_tbps, gemm_tflops }, CeilingSource::Records);
        }
    }
    (inputs, CeilingSource::Inputs)
}

/// The roofline times of one point (seconds per case) and the DSA/dense ratio they give.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roofline {
    pub dense_s: f64,
    pub indexer_s: f64,
    pub topk_s: f64,
    pub attention_s: f64,
    /// (indexer + top-k + attention) / dense.
    pub ratio: f64,
}

/// max(FLOPs / rate, bytes / bandwidth) in seconds; `fp8_matrix` doubles the GEMM rate.
pub fn component_seconds(flops: f64, bytes: f64, fp8_matrix: bool, c: &Ceilings) -> f64 {
    let rate = c.gemm_tflops * 1e12 * if fp8_matrix { 2.0 } else { 1.0 };
    (flops / rate).max(bytes / (c.copy_tbps * 1e12))
}

/// The roofline bound of the DSA/dense ratio at one point (see the module notes).
pub fn roofline(dense: &Case, dsa: &Case, c: &Ceilings) -> Roofline {
    let dw = case_work(dense);
    let sw = case_work(dsa);
    let s = &dsa.shape;
    let fp8 = dsa.precision == Precision::Fp8;
    // Indexer: its keys over all L keys of every sequence, plus its queries.
    let indexer_bytes = dsa.batch as f64 * dsa.context as f64 * indexer_bytes_per_token(s, fp8) as f64
        + dsa.query_tokens() as f64 * (s.index_heads * s.index_dim) as f64 * dsa.precision.element_bytes() as f64;
    let indexer_bytes = indexer_bytes.min(sw.bytes);
    let dense_s = component_seconds(dw.flops, dw.bytes, false, c);
    let indexer_s = component_seconds(sw.indexer_flops, indexer_bytes, fp8, c);
    let topk_s = 0.0;
    let attention_s = component_seconds(sw.attention_flops, sw.bytes - indexer_bytes, false, c);
    Roofline { dense_s, indexer_s, topk_s, attention_s, ratio: (indexer_s + topk_s + attention_s) / dense_s }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::{Method, ModelShape, Phase};

    fn case(method: Method, precision: Precision, context: usize) -> Case {
        Case {
            engine: if method == Method::Dsa { "dsa-cpu".into() } else { "dense-cpu".into() },
            method,
            shape: ModelShape::tiny(),
            phase: Phase::Decode,
            context,
            batch: 4,
            query_len: 1,
            precision,
            seed: 1,
            kernel: Default::default(),
        }
    }

    #[test]
    fn origin_is_decided_by_the_list() {
        assert_eq!(origin("dense-cuda"), Origin::Ours);
        assert_eq!(origin("dsa-cpu"), Origin::Ours);
        assert_eq!(origin("cudnn-sdpa"), Origin::Library);
        assert_eq!(origin("dsa-cuda-experimental"), Origin::Library);
    }

    #[test]
    fn pairs_parse() {
        assert_eq!(EnginePair::parse("dsa-cuda:cudnn-sdpa").unwrap(), EnginePair::new("dsa-cuda", "cudnn-sdpa"));
        assert!(EnginePair::parse("dsa-cuda").is_err());
        assert!(EnginePair::parse("a:a").is_err());
        assert!(EnginePair::parse(":b").is_err());
    }

    #[test]
    fn times_parse_with_and_without_fractions() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(rfc3339_seconds("1970-01-02T00:00:01Z"), Some(86_401.0));
        let a = rfc3339_seconds("2026-01-01T00:00:00Z").unwrap();
        let b = rfc3339_seconds("2026-01-01T00:00:00.250Z").unwrap();
        assert!((b - a - 0.25).abs() < 1e-9);
        assert_eq!(rfc3339_seconds("yesterday"), None);
        assert_eq!(rfc3339_seconds("2026-01-01T00:00:00+01:00"), None);
    }

    #[test]
    fn unpaired_ci_ignores_pairing() {
        // Both drift together: paired, the ratio is exact; unpaired, the CI opens up.
        let den: Vec<f64> = (0..40).map(|i| 10.0 * (1.0 + i as f64 / 40.0)).collect();
        let num: Vec<f64> = den.iter().map(|d| d * 0.5).collect();
        let paired = ratio_ci(&num, &den, true);
        let unpaired = ratio_ci(&num, &den, false);
        assert!(paired.hi - paired.lo < 1e-9, "{paired:?}");
        assert!(unpaired.lo < 0.48 && unpaired.hi > 0.52, "{unpaired:?}");
        assert!((unpaired.ratio - 0.5).abs() < 1e-12);
    }

    #[test]
    fn dsa_bytes_split_into_indexer_and_attention() {
        // tiny decode B=4 at 1K, bf16: indexer keys 4 x 1024 x 64 B + queries 4 x 4 x 32 x 2 B.
        let c = Ceilings { copy_tbps: 1.0, gemm_tflops: 1e9 };
        let r = roofline(&case(Method::Dense, Precision::Bf16, 1024), &case(Method::Dsa, Precision::Bf16, 1024), &c);
        assert!((r.indexer_s - 263_168e-12).abs() < 1e-18, "{r:?}");
        // The rest of case_work's bytes: 64 selected latents x 160 B x 4 + queries and output.
        assert!((r.attention_s - 50_176e-12).abs() < 1e-18, "{r:?}");
    }

    #[test]
    fn fp8_indexer_counts_at_twice_the_gemm_rate() {
        // With bandwidth unlimited, only FLOPs count: the fp8 indexer takes half the time of
        // the bf16 one, the attention the same.
        let c = Ceilings { copy_tbps: 1e9, gemm_tflops: 1.0 };
        let d = case(Method::Dense, Precision::Bf16, 4096);
        let r16 = roofline(&d, &case(Method::Dsa, Precision::Bf16, 4096), &c);
        let r8 = roofline(&d, &case(Method::Dsa, Precision::Fp8, 4096), &c);
        // 4 x 4096 x 256 FLOPs at 1e12 (bf16) or 2e12 (fp8) FLOP/s.
        assert!((r16.indexer_s - 4_194_304e-12).abs() < 1e-18);
        assert!((r8.indexer_s - 4_194_304e-12 / 2.0).abs() < 1e-18);
        assert_eq!(r16.attention_s, r8.attention_s);
    }
}
