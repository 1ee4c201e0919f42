//! What one measured case is.
//!
//! A case is one engine on one layer's attention: `batch` sequences, each with `query_len`
//! new query tokens at positions `[context - query_len, context)` attending causally to
//! `context` keys (DESIGN.md section 3). Prefill: a chunk of a prompt (`query_len = context`
//! is a whole-prompt prefill); dense prefill uses MLA in MHA mode. Decode: usually one query
//! token per sequence (two with MTP); dense decode uses MQA mode. DSA always uses the indexer,
//! top-k and MQA-mode attention over the selected keys.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{CoreError, ModelShape};

/// Prefill or decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Prefill,
    Decode,
}

impl Phase {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "prefill" => Ok(Phase::Prefill),
            "decode" => Ok(Phase::Decode),
            _ => Err(CoreError::Unknown { kind: "phase", value: s.into(), choices: "prefill, decode".into() }),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Numeric precision of inputs and caches. `fp8` means an FP8 indexer and the FP8 KV cache
/// (656-byte latent + 132-byte indexer entry per token), compute in bf16/fp32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    Fp8,
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "fp8" | "e4m3" => Ok(Precision::Fp8),
            _ => Err(CoreError::Unknown { kind: "precision", value: s.into(), choices: "f32, bf16, fp8".into() }),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Fp8 => "fp8",
        }
    }
    /// Bytes per element of the compute inputs (fp8 caches are counted by the analytic model).
    pub fn element_bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 | Precision::Fp8 => 2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What an engine computes: dense attention, DeepSeek sparse attention (indexer, top-k,
/// sparse MQA), or the rest of a layer (its non-attention GEMMs: projections, router, MoE or
/// dense MLP, and the LM head; [`crate::rest`]). The engine table says which; code never reads
/// it from an id's spelling. A `rest` case uses the case's token count (`batch x query_len`)
/// and shape; its context does not change the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Dense,
    Dsa,
    Rest,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Dense => "dense",
            Method::Dsa => "dsa",
            Method::Rest => "rest",
        }
    }
    pub fn parse(s: &str) -> Result<Self, CoreError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dense" => Ok(Method::Dense),
            "dsa" | "sparse" => Ok(Method::Dsa),
            "rest" => Ok(Method::Rest),
            _ => Err(CoreError::Unknown { kind: "method", value: s.into(), choices: "dense, dsa, rest".into() }),
        }
    }
    /// The method of a record written before cases carried one (schema 1 and 2): those ids
    /// were `dense-*` and `dsa-*` (and `gemm-*`/`http-*`, which are neither and read as dense).
    pub fn legacy_from_id(engine: &str) -> Method {
        if engine.starts_with("dsa") {
            Method::Dsa
        } else {
            Method::Dense
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where an engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
    /// Another process, spoken to over the JSON-lines protocol (`peers/PROTOCOL.md`).
    External,
    /// A remote OpenAI-compatible endpoint.
    Http,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::External => "external",
            Backend::Http => "http",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// The kernel choices of a case: axis -> value (`sparse=bulk`), the variants of an engine's
/// kernels (DESIGN.md section 3, "Kernel choices are case axes"). Empty: the engine's defaults.
/// The engines crate knows each engine's axes and checks them with the rest of the plan; this
/// crate knows no engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KernelChoice(pub BTreeMap<String, String>);

impl KernelChoice {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value chosen for an axis.
    pub fn get(&self, axis: &str) -> Option<&str> {
        self.0.get(axis).map(String::as_str)
    }

    /// This choice with `axis` set to `value`.
    pub fn with(mut self, axis: &str, value: &str) -> Self {
        self.0.insert(axis.to_string(), value.to_string());
        self
    }

    /// `(axis, value)` pairs in axis order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(a, v)| (a.as_str(), v.as_str()))
    }
}

impl fmt::Display for KernelChoice {
    /// `axis=value` pairs joined by `,` (empty for the defaults).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, v)) in self.iter().enumerate() {
            write!(f, "{}{a}={v}", if i > 0 { "," } else { "" })?;
        }
        Ok(())
    }
}

/// What pairs records: the point of a case ([`Case::point_key`]), everything of a case but its
/// engine, kernel choices and seed, and for a remote endpoint case its API, output length and
/// load ([`crate::record::Record::point_key`]). Ordered by shape, phase, endpoint part, batch,
/// query tokens, precision, then context, so the points of one series sort by context.
/// Written as `shape|phase|L=..|B=..|q=..|precision` plus the endpoint part
/// (`|api=chat|out=128|load=c4`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointKey {
    pub shape: String,
    pub phase: Phase,
    /// `|api=..|out=..|load=..` for an endpoint case ([`crate::endpoint::key_suffix`]); empty
    /// for a kernel case.
    pub endpoint: String,
    pub batch: usize,
    pub query_len: usize,
    pub precision: Precision,
    pub context: usize,
}

impl fmt::Display for PointKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|{}|L={}|B={}|q={}|{}{}",
            self.shape, self.phase, self.context, self.batch, self.query_len, self.precision, self.endpoint
        )
    }
}

/// One measured case. Serialised into every record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "CaseRepr")]
pub struct Case {
    /// Engine id, e.g. `dense-cpu`, `dsa-cuda`, `cudnn-sdpa`.
    pub engine: String,
    /// What the engine computes (from the engine table).
    pub method: Method,
    pub shape: ModelShape,
    pub phase: Phase,
    /// Keys each query sequence attends to (the position L of DESIGN.md).
    pub context: usize,
    /// Independent sequences.
    pub batch: usize,
    /// New query tokens per sequence, at positions [context - query_len, context).
    pub query_len: usize,
    pub precision: Precision,
    /// Seed of the generated inputs.
    pub seed: u64,
    /// Kernel choices (`--variant`, a sweep's `[variants]`); empty: the engine's defaults. Left
    /// out of the record and the key when empty, so cases without a choice keep their keys.
    #[serde(default, skip_serializing_if = "KernelChoice::is_empty")]
    pub kernel: KernelChoice,
}

/// A case as stored: records before schema 3 have no `method`, records without a kernel choice
/// no `kernel`.
#[derive(Deserialize)]
struct CaseRepr {
    engine: String,
    #[serde(default)]
    method: Option<Method>,
    shape: ModelShape,
    phase: Phase,
    context: usize,
    batch: usize,
    query_len: usize,
    precision: Precision,
    seed: u64,
    #[serde(default)]
    kernel: KernelChoice,
}

impl From<CaseRepr> for Case {
    fn from(r: CaseRepr) -> Case {
        let method = r.method.unwrap_or_else(|| Method::legacy_from_id(&r.engine));
        Case {
            engine: r.engine,
            method,
            shape: r.shape,
            phase: r.phase,
            context: r.context,
            batch: r.batch,
            query_len: r.query_len,
            precision: r.precision,
            seed: r.seed,
            kernel: r.kernel,
        }
    }
}

impl Case {
    /// DSA's k for this case: min(top_k, context).
    pub fn effective_top_k(&self) -> usize {
        self.shape.top_k.min(self.context)
    }

    /// Position of query `i` (0-based within the chunk).
    pub fn query_position(&self, i: usize) -> usize {
        self.context - self.query_len + i
    }

    /// Number of query tokens in the case (batch x query_len).
    pub fn query_tokens(&self) -> usize {
        self.batch * self.query_len
    }

    /// Whether this case runs DSA (the engine's method).
    pub fn is_sparse(&self) -> bool {
        self.method == Method::Dsa
    }

    /// Whether this case measures the rest of a layer (not attention).
    pub fn is_rest(&self) -> bool {
        self.method == Method::Rest
    }

    /// The key that identifies a case across runs (for `--resume` and comparisons):
    /// everything but the seed. A `rest` case adds its expert-parallel degree, a case with kernel
    /// choices `|axis=value` for each (so variants of one engine are told apart).
    pub fn key(&self) -> String {
        let ep = if self.is_rest() { format!("|ep={}", self.shape.ep) } else { String::new() };
        let kernel: String = self.kernel.iter().map(|(a, v)| format!("|{a}={v}")).collect();
        format!(
            "{}|{}|{}|L={}|B={}|q={}|{}|k={}{ep}{kernel}",
            self.engine,
            self.shape.name,
            self.phase,
            self.context,
            self.batch,
            self.query_len,
            self.precision,
            self.shape.top_k
        )
    }

    /// The key of the point this case belongs to: the case without its engine, kernel choices
    /// and seed. Dense and DSA cases of one point share it. A record's key
    /// ([`crate::record::Record::point_key`]) adds an endpoint case's API, output length and
    /// load; that is the one pairing key.
    pub fn point_key(&self) -> PointKey {
        PointKey {
            shape: self.shape.name.clone(),
            phase: self.phase,
            endpoint: String::new(),
            batch: self.batch,
            query_len: self.query_len,
            precision: self.precision,
            context: self.context,
        }
    }

    /// Check the case is well-formed; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), CoreError> {
        self.shape.validate()?;
        if self.context == 0 {
            return Err(CoreError::Invalid {
                field: "context",
                value: "0".into(),
                why: "a case needs at least one key; use e.g. `--contexts 1k..64k`".into(),
            });
        }
        if self.batch == 0 {
            return Err(CoreError::Invalid { field: "batch", value: "0".into(), why: "use `--batch 1` or more".into() });
        }
        if self.query_len == 0 {
            return Err(CoreError::Invalid {
                field: "query_len",
                value: "0".into(),
                why: "each sequence needs at least one query token".into(),
            });
        }
        if self.query_len > self.context {
            return Err(CoreError::Invalid {
                field: "query_len",
                value: self.query_len.to_string(),
                why: format!("query tokens cannot exceed the context ({})", self.context),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod kernel_choice_tests {
    use super::*;

    fn case() -> Case {
        Case {
            engine: "dsa-cuda".into(),
            method: Method::Dsa,
            shape: ModelShape::tiny(),
            phase: Phase::Decode,
            context: 1024,
            batch: 4,
            query_len: 1,
            precision: Precision::Bf16,
            seed: 1,
            kernel: KernelChoice::default(),
        }
    }

    #[test]
    fn kernel_choices_are_in_the_key_only_when_set() {
        let plain = case();
        let bulk = Case { kernel: KernelChoice::default().with("sparse", "bulk"), ..case() };
        let split = Case { kernel: KernelChoice::default().with("sparse", "split"), ..case() };
        assert!(!plain.key().contains("sparse"));
        assert_eq!(bulk.key(), format!("{}|sparse=bulk", plain.key()));
        assert_ne!(bulk.key(), split.key());
        assert_eq!(bulk.point_key(), plain.point_key());
        let two = Case { kernel: bulk.kernel.clone().with("indexer", "mma"), ..case() };
        assert!(two.key().ends_with("|indexer=mma|sparse=bulk"), "{}", two.key());
        assert_eq!(two.kernel.to_string(), "indexer=mma,sparse=bulk");
    }

    #[test]
    fn kernel_choices_round_trip_and_stay_out_of_plain_records() {
        let plain = serde_json::to_string(&case()).unwrap();
        assert!(!plain.contains("kernel"), "{plain}");
        assert_eq!(serde_json::from_str::<Case>(&plain).unwrap(), case());
        let bulk = Case { kernel: KernelChoice::default().with("sparse", "bulk"), ..case() };
        let text = serde_json::to_string(&bulk).unwrap();
        assert!(text.contains(r#""kernel":{"sparse":"bulk"}"#), "{text}");
        assert_eq!(serde_json::from_str::<Case>(&text).unwrap(), bulk);
    }
}
