//! Sweeps: engines x shape x phase x contexts x batch x precision, with the sampling rule.
//!
//! Three presets are built in: `cpu-quick` (the `tiny` shape up to 8K, both phases and
//! engines, under two minutes on two cores), `cpu-full` (the `small` shape up to 32K) and
//! `h200` (DeepSeek-V3.2-Exp's full attention geometry, 1K..128K, for the CUDA engines).
//! A TOML sweep file has the same fields as [`Sweep`]; every field is optional and falls back
//! to the `base` preset it names (default `cpu-quick`). Its `[variants]` table is the kernel
//! choices axis (`sparse = ["split", "bulk"]`): each case of an engine with that choice is
//! measured once per value, interleaved in the same point.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use ctxcost_core::units::parse_contexts;
use ctxcost_core::{Case, CoreError, Method, ModelShape, Phase, Precision};

use crate::WorkloadError;

/// Preset names.
pub const PRESETS: &[&str] = &["cpu-quick", "cpu-full", "h200"];

/// When to stop sampling a point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Untimed runs before sampling.
    pub warmup: usize,
    /// Stop once the median's bootstrap 95% CI half-width is under this fraction...
    pub target_rel_ci: f64,
    /// ...and at least this many samples were taken...
    pub min_samples: usize,
    /// ...or at this many samples...
    pub max_samples: usize,
    /// ...or after this many seconds of sampling one point.
    pub max_seconds: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self { warmup: 2, target_rel_ci: 0.02, min_samples: 5, max_samples: 200, max_seconds: 20.0 }
    }
}

/// A sweep, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sweep {
    pub name: String,
    pub engines: Vec<String>,
    pub shape: ModelShape,
    pub phases: Vec<Phase>,
    pub contexts: Vec<usize>,
    /// Sequences per prefill case.
    pub prefill_batch: Vec<usize>,
    /// Sequences per decode case.
    pub decode_batch: Vec<usize>,
    /// Query tokens per prefill case (the chunk), capped at the context.
    pub prefill_chunk: usize,
    /// Query tokens per sequence per decode step (1, or 2 with MTP).
    pub decode_query_len: usize,
    pub precisions: Vec<Precision>,
    pub seed: u64,
    pub sampling: Sampling,
    /// Kernel choices to sweep: axis -> values (`sparse = ["split", "bulk"]`). Checked against the
    /// engines' axes where the plan is made (this crate knows no engine).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variants: BTreeMap<String, Vec<String>>,
}

/// One point of the grid: the cases of all engines at the same shape, phase, context,
/// batch and precision, measured interleaved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub cases: Vec<Case>,
}

impl Sweep {
    /// A built-in preset.
    pub fn preset(name: &str) -> Result<Sweep, WorkloadError> {
        let both = vec![Phase::Prefill, Phase::Decode];
        match name {
            "cpu-quick" => Ok(Sweep {
                name: name.into(),
                engines: vec!["dense-cpu".into(), "dsa-cpu".into()],
                shape: ModelShape::tiny(),
                phases: both,
                contexts: parse_contexts("1k..8k")?,
                prefill_batch: vec![1],
                decode_batch: vec![16],
                prefill_chunk: 128,
                decode_query_len: 1,
                precisions: vec![Precision::F32],
                seed: 42,
                sampling: Sampling { warmup: 2, target_rel_ci: 0.02, min_samples: 5, max_samples: 60, max_seconds: 4.0 },
                variants: BTreeMap::new(),
            }),
            "cpu-full" => Ok(Sweep {
                name: name.into(),
                engines: vec!["dense-cpu".into(), "dsa-cpu".into()],
                shape: ModelShape::small(),
                phases: both,
                contexts: parse_contexts("1k..32k")?,
                prefill_batch: vec![1],
                decode_batch: vec![8],
                prefill_chunk: 256,
                decode_query_len: 1,
                precisions: vec![Precision::F32, Precision::Bf16],
                seed: 42,
                sampling: Sampling { max_seconds: 15.0, ..Sampling::default() },
                variants: BTreeMap::new(),
            }),
            "h200" => Ok(Sweep {
                name: name.into(),
                engines: vec!["dense-cuda".into(), "dsa-cuda".into()],
                shape: ModelShape::deepseek_v32_exp(),
                phases: both,
                contexts: parse_contexts("1k..128k")?,
                prefill_batch: vec![1],
                decode_batch: vec![64],
                prefill_chunk: 4096,
                decode_query_len: 1,
                precisions: vec![Precision::Bf16, Precision::Fp8],
                seed: 42,
                sampling: Sampling { warmup: 3, target_rel_ci: 0.01, min_samples: 10, max_samples: 200, max_seconds: 5.0 },
                variants: BTreeMap::new(),
            }),
            _ => Err(WorkloadError::UnknownPreset(name.into())),
        }
    }

    /// Read a TOML sweep file.
    pub fn from_toml_file(path: &str) -> Result<Sweep, WorkloadError> {
        let text = std::fs::read_to_string(path).map_err(|source| WorkloadError::Read { path: path.into(), source })?;
        Self::from_toml_str(&text).map_err(|e| match e {
            WorkloadError::Parse { message, .. } => WorkloadError::Parse { path: path.into(), message },
            other => WorkloadError::Parse { path: path.into(), message: other.to_string() },
        })
    }

    /// Parse a TOML sweep (see [`SweepFile`] for the fields).
    pub fn from_toml_str(text: &str) -> Result<Sweep, WorkloadError> {
        let f: SweepFile = toml::from_str(text).map_err(|e| WorkloadError::Parse { path: String::new(), message: e.to_string().trim().replace('\n', " ") })?;
        let mut s = Sweep::preset(f.base.as_deref().unwrap_or("cpu-quick"))?;
        if let Some(n) = f.name {
            s.name = n;
        }
        if let Some(e) = f.engines {
            s.engines = e;
        }
        if let Some(sh) = f.shape {
            s.shape = ModelShape::by_name(&sh)?;
        }
        if let Some(k) = f.top_k {
            s.shape.top_k = k;
        }
        if let Some(p) = f.phases {
            s.phases = p.iter().map(|x| Phase::parse(x)).collect::<Result<_, _>>()?;
        }
        if let Some(c) = f.contexts {
            s.contexts = c.into_list()?;
        }
        if f.batch.is_some() && (f.prefill_batch.is_some() || f.decode_batch.is_some()) {
            return Err(WorkloadError::Parse {
                path: String::new(),
                message: "`batch` sets both phases' batches; give either `batch` or `prefill_batch`/`decode_batch`, not both".into(),
            });
        }
        if let Some(b) = f.batch {
            s.prefill_batch = b.clone();
            s.decode_batch = b;
        }
        if let Some(b) = f.prefill_batch {
            s.prefill_batch = b;
        }
        if let Some(b) = f.decode_batch {
            s.decode_batch = b;
        }
        if let Some(q) = f.prefill_chunk {
            s.prefill_chunk = q;
        }
        if let Some(q) = f.decode_query_len {
            s.decode_query_len = q;
        }
        if let Some(p) = f.precisions {
            s.precisions = p.iter().map(|x| Precision::parse(x)).collect::<Result<_, _>>()?;
        }
        if let Some(x) = f.seed {
            s.seed = x;
        }
        if let Some(x) = f.sampling {
            s.sampling = x;
        }
        if let Some(v) = f.variants {
            s.variants = v;
        }
        Ok(s)
    }

    /// Check every field; the error names the field and the fix.
    pub fn validate(&self) -> Result<(), CoreError> {
        self.shape.validate()?;
        // The name becomes a file name under runs/: no separators, no leading dot.
        if self.name.is_empty() || self.name.starts_with('.') || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(CoreError::Invalid { field: "name", value: self.name.clone(), why: "a sweep name is letters, digits, `-`, `_` and `.` (not first), since it names the record file".into() });
        }
        let nonempty = |field: &'static str, empty: bool| {
            if empty {
                Err(CoreError::Invalid { field, value: "[]".into(), why: "needs at least one entry".into() })
            } else {
                Ok(())
            }
        };
        nonempty("engines", self.engines.is_empty())?;
        nonempty("phases", self.phases.is_empty())?;
        nonempty("contexts", self.contexts.is_empty())?;
        nonempty("precisions", self.precisions.is_empty())?;
        for (field, list) in [("prefill_batch", &self.prefill_batch), ("decode_batch", &self.decode_batch)] {
            nonempty(field, list.is_empty())?;
            if list.contains(&0) {
                return Err(CoreError::Invalid { field, value: "0".into(), why: "batch must be at least 1 (e.g. `--batch 1`)".into() });
            }
        }
        if self.contexts.contains(&0) {
            return Err(CoreError::Invalid { field: "contexts", value: "0".into(), why: "a context needs at least one token (e.g. `--contexts 1k..64k`)".into() });
        }
        if self.prefill_chunk == 0 {
            return Err(CoreError::Invalid { field: "prefill_chunk", value: "0".into(), why: "use a positive chunk, e.g. 4096".into() });
        }
        if self.decode_query_len == 0 || self.decode_query_len > 2 {
            return Err(CoreError::Invalid { field: "decode_query_len", value: self.decode_query_len.to_string(), why: "use 1 (plain decode) or 2 (MTP)".into() });
        }
        let sm = &self.sampling;
        if !(sm.target_rel_ci > 0.0 && sm.target_rel_ci < 1.0) {
            return Err(CoreError::Invalid { field: "sampling.target_rel_ci", value: sm.target_rel_ci.to_string(), why: "use a fraction such as 0.02".into() });
        }
        if sm.min_samples == 0 || sm.max_samples < sm.min_samples {
            return Err(CoreError::Invalid { field: "sampling.max_samples", value: sm.max_samples.to_string(), why: format!("needs 1 <= min_samples ({}) <= max_samples", sm.min_samples) });
        }
        if !(sm.max_seconds > 0.0 && sm.max_seconds.is_finite()) {
            return Err(CoreError::Invalid { field: "sampling.max_seconds", value: sm.max_seconds.to_string(), why: "use a positive number of seconds".into() });
        }
        Ok(())
    }

    /// Expand into points, in a stable order: phase, precision, batch, context (growing, so
    /// a sweep that runs out of time has its small contexts done). `method_of` gives each
    /// engine's method and `varies(case, axis)` whether a kernel choice axis applies to a case
    /// (the engine table and its kernel choices know; this crate knows no engine). A case is
    /// measured once per value of every axis that applies to it, all in the same point.
    pub fn points(&self, method_of: &dyn Fn(&str) -> Method, varies: &dyn Fn(&Case, &str) -> bool) -> Vec<Point> {
        let mut out = Vec::new();
        for &phase in &self.phases {
            let batches = if phase == Phase::Prefill { &self.prefill_batch } else { &self.decode_batch };
            for &precision in &self.precisions {
                for &batch in batches {
                    for &context in &self.contexts {
                        let query_len = match phase {
                            Phase::Prefill => self.prefill_chunk.min(context),
                            Phase::Decode => self.decode_query_len.min(context),
                        };
                        let mut cases = Vec::new();
                        for e in &self.engines {
                            let base = Case { engine: e.clone(), method: method_of(e), shape: self.shape.clone(), phase, context, batch, query_len, precision, seed: self.seed, kernel: Default::default() };
                            let mut variants = vec![base.clone()];
                            for (axis, values) in self.variants.iter().filter(|(axis, _)| varies(&base, axis)) {
                                variants = variants
                                    .iter()
                                    .flat_map(|c| values.iter().map(move |v| Case { kernel: c.kernel.clone().with(axis, v), ..c.clone() }))
                                    .collect();
                            }
                            cases.extend(variants);
                        }
                        out.push(Point { cases });
                    }
                }
            }
        }
        out
    }
}

/// Contexts in a TOML file: a list of sizes or a string such as `"1k..64k"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ContextSpec {
    Text(String),
    List(Vec<ContextItem>),
}

/// One context: a number or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ContextItem {
    Number(usize),
    Text(String),
}

impl ContextSpec {
    fn into_list(self) -> Result<Vec<usize>, CoreError> {
        match self {
            ContextSpec::Text(t) => parse_contexts(&t),
            ContextSpec::List(items) => {
                let text: Vec<String> = items.into_iter().map(|i| match i {
                    ContextItem::Number(n) => n.to_string(),
                    ContextItem::Text(t) => t,
                }).collect();
                parse_contexts(&text.join(","))
            }
        }
    }
}

/// The TOML form of a sweep; every field optional, falling back to the `base` preset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepFile {
    pub base: Option<String>,
    pub name: Option<String>,
    pub engines: Option<Vec<String>>,
    pub shape: Option<String>,
    pub top_k: Option<usize>,
    pub phases: Option<Vec<String>>,
    pub contexts: Option<ContextSpec>,
    pub batch: Option<Vec<usize>>,
    pub prefill_batch: Option<Vec<usize>>,
    pub decode_batch: Option<Vec<usize>>,
    pub prefill_chunk: Option<usize>,
    pub decode_query_len: Option<usize>,
    pub precisions: Option<Vec<String>>,
    pub seed: Option<u64>,
    pub sampling: Option<Sampling>,
    /// Kernel choices: `[variants]` with `axis = ["value", ...]`.
    pub variants: Option<BTreeMap<String, Vec<String>>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_expand() {
        let q = Sweep::preset("cpu-quick").unwrap();
        q.validate().unwrap();
        let pts = q.points(&Method::legacy_from_id, &|_, _| false);
        assert_eq!(pts.len(), 2 * 4); // 2 phases x 4 contexts
        assert!(pts.iter().all(|p| p.cases.len() == 2));
        assert_eq!(pts[0].cases[0].query_len, 128);
        let h = Sweep::preset("h200").unwrap();
        assert_eq!(h.contexts.last(), Some(&131072));
        assert!(Sweep::preset("nope").is_err());
    }

    #[test]
    fn toml_overrides_preset() {
        let s = Sweep::from_toml_str(
            r#"
            base = "cpu-quick"
            contexts = "1k..4k"
            phases = ["decode"]
            decode_batch = [2, 8]
            top_k = 32
            [sampling]
            warmup = 1
            target_rel_ci = 0.05
            min_samples = 3
            max_samples = 10
            max_seconds = 1.0
            "#,
        )
        .unwrap();
        assert_eq!(s.contexts, vec![1024, 2048, 4096]);
        assert_eq!(s.points(&Method::legacy_from_id, &|_, _| false).len(), 2 * 3);
        assert_eq!(s.shape.top_k, 32);
        let s2 = Sweep::from_toml_str("contexts = [1024, \"2k\"]").unwrap();
        assert_eq!(s2.contexts, vec![1024, 2048]);
        assert!(Sweep::from_toml_str("contxts = \"1k\"").unwrap_err().to_string().contains("contxts"));
        assert!(Sweep::from_toml_str("contexts = \"0\"").is_err());
        assert!(Sweep::from_toml_str("top_k = 0").unwrap().validate().is_err());
    }

    #[test]
    fn variants_multiply_only_the_cases_they_apply_to() {
        let s = Sweep::from_toml_str(
            r#"
            contexts = "1k,2k"
            phases = ["decode"]
            [variants]
            sparse = ["split", "bulk"]
            indexer = ["wgmma", "mma"]
            "#,
        )
        .unwrap();
        assert_eq!(s.variants["sparse"], vec!["split", "bulk"]);
        // Only dsa-cpu takes `sparse` here; `indexer` applies to nothing.
        let pts = s.points(&Method::legacy_from_id, &|c, axis| c.engine == "dsa-cpu" && axis == "sparse");
        assert_eq!(pts.len(), 2);
        let engines: Vec<(&str, String)> = pts[0].cases.iter().map(|c| (c.engine.as_str(), c.kernel.to_string())).collect();
        assert_eq!(engines, vec![("dense-cpu", String::new()), ("dsa-cpu", "sparse=split".into()), ("dsa-cpu", "sparse=bulk".into())]);
        let keys: std::collections::BTreeSet<String> = pts[0].cases.iter().map(Case::key).collect();
        assert_eq!(keys.len(), 3, "every variant has its own key");
        assert!(pts[0].cases.iter().all(|c| c.point_key() == pts[0].cases[0].point_key()));
        // Two axes that apply multiply.
        let pts = s.points(&Method::legacy_from_id, &|c, _| c.engine == "dsa-cpu");
        assert_eq!(pts[0].cases.len(), 1 + 4);
        assert!(pts[0].cases.iter().any(|c| c.kernel.to_string() == "indexer=mma,sparse=bulk"));
        assert!(Sweep::from_toml_str("[variants]\nsparse = \"split\"").is_err());
    }
}
