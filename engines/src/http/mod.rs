//! Remote endpoints: OpenAI-compatible servers (vLLM, SGLang, hosted APIs) measured over
//! sweeps of prompt length, in the same record schema as the kernel engines.
//!
//! - [`sse`]: incremental server-sent-events parser (any byte split gives the same events).
//! - [`openai`]: request bodies and the meaning of streamed events (vLLM and DeepSeek usage).
//! - [`prompt`]: prompts of an exact token length with a unique leading nonce.
//! - [`client`]: one streamed request with raw timestamps; faults classified; URLs joined
//!   and redacted (credentials and query values never reach a text), redirects to another
//!   server refused.
//! - [`load`]: closed-loop (concurrency) and open-loop (Poisson) load over one or two sides.
//! - [`mock`]: a local OpenAI-style streaming server with injected delays and faults.
//!
//! [`Bench`] ties them together: it fits prompt lengths per side (calibration), then runs a
//! case on every side at once and returns one [`EndpointBlock`] per side. Metric definitions
//! are in [`ctxcost_core::endpoint`].

pub mod client;
pub mod load;
pub mod mock;
pub mod openai;
pub mod prompt;
pub mod sse;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ctxcost_core::endpoint::{self, ApiPricing, EndpointBlock, Load, RequestLog, Slo};
use ctxcost_core::Phase;

pub use client::{Endpoint, RequestLimits};
pub use load::{LoadSpec, Progress};
use openai::Api;
use prompt::{within_tolerance, LengthModel, PromptBuilder};

/// One side as the user described it.
#[derive(Debug, Clone)]
pub struct SideSpec {
    pub label: String,
    pub url: String,
    pub model: String,
    pub api: Api,
    /// Name of the environment variable holding the API key (the key itself is never kept
    /// beyond the HTTP client).
    pub key_env: Option<String>,
    pub price: Option<ApiPricing>,
    pub ignore_eos: bool,
}

/// Settings shared by every case of a run.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub requests: usize,
    pub max_duration: Duration,
    pub limits: RequestLimits,
    /// Unrecorded requests per side before each case.
    pub warmup: usize,
    pub slo: Slo,
    pub seed: u64,
    pub usd_per_gpu_hour: Option<f64>,
    pub gpus: Option<usize>,
    /// Flag a case whose cached share of prompt tokens exceeds this.
    pub cache_threshold: f64,
}

/// One case: a phase at a prompt length with an output length and a load.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSpec {
    pub phase: Phase,
    /// Prompt tokens.
    pub context: usize,
    /// `max_tokens` (1 for prefill cases).
    pub max_tokens: usize,
    pub load: Load,
}

struct Side {
    spec: SideSpec,
    ep: Arc<Endpoint>,
    length: Option<LengthModel>,
}

/// A run over one or two endpoints.
pub struct Bench {
    sides: Vec<Side>,
    builder: PromptBuilder,
    settings: RunSettings,
    tokenizer: Option<tokenizers::Tokenizer>,
}

/// What calibration found for a side.
#[derive(Debug, Clone)]
pub struct Calibration {
    pub label: String,
    pub method: &'static str,
    /// (filler words, server prompt tokens) of each calibration request.
    pub points: Vec<(usize, u64)>,
    pub description: String,
}

impl Bench {
    /// Build the HTTP clients. Reads each side's key from its environment variable; a named
    /// variable that is unset is an error.
    pub fn new(sides: Vec<SideSpec>, settings: RunSettings, tokenizer: Option<&Path>) -> Result<Bench, String> {
        if sides.is_empty() || sides.len() > 2 {
            return Err("give one endpoint, or two for an A/B run".into());
        }
        if sides.len() == 2 && sides[0].label == sides[1].label {
            return Err(format!("both sides are labelled `{}`: give distinct --a-label and --b-label", sides[0].label));
        }
        let tokenizer = tokenizer.map(LengthModel::load_tokenizer).transpose()?;
        let mut out = Vec::new();
        for s in sides {
            let key = match &s.key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| format!("the API key variable `{var}` of side `{}` is not set", s.label))?),
                None => None,
            };
            let ep = Endpoint::new(&s.label, &s.url, &s.model, s.api, key, s.ignore_eos)?;
            out.push(Side { spec: s, ep: Arc::new(ep), length: None });
        }
        Ok(Bench { sides: out, builder: PromptBuilder::new(settings.seed), settings, tokenizer })
    }

    pub fn labels(&self) -> Vec<String> {
        self.sides.iter().map(|s| s.spec.label.clone()).collect()
    }

    fn body(&self, side: usize, prompt: &str, max_tokens: usize) -> Arc<Vec<u8>> {
        let s = &self.sides[side];
        let v = openai::request_body(s.spec.api, &s.spec.model, prompt, max_tokens, s.spec.ignore_eos);
        Arc::new(serde_json::to_vec(&v).expect("JSON body"))
    }

    /// Send one unrecorded request of `words` filler words with `max_tokens = 1`; return the
    /// server's prompt tokens.
    async fn probe(&self, side: usize, tag: u64, words: usize) -> Result<u64, String> {
        let nonce = self.builder.nonce(u64::MAX - tag, side as u64, 0);
        let body = self.body(side, &self.builder.prompt(&nonce, words), 1);
        let t0 = tokio::time::Instant::now();
        let log = client::send(self.sides[side].ep.clone(), body, 0, t0, t0, self.settings.limits).await;
        match (log.ok, log.prompt_tokens) {
            (true, Some(p)) => Ok(p),
            (true, None) => Err("the server's stream had no usage block: it must honour stream_options.include_usage, \
                                 or give --tokenizer so prompts can be fitted locally"
                .into()),
            (false, _) => Err(log.faults.last().map(|f| format!("{}: {}", f.kind.as_str(), f.detail)).unwrap_or_default()),
        }
    }

    /// Fit prompt lengths on every side for targets up to `max_target` tokens.
    pub async fn calibrate(&mut self, max_target: usize) -> Result<Vec<Calibration>, String> {
        let mut out = Vec::new();
        for i in 0..self.sides.len() {
            let label = self.sides[i].spec.label.clone();
            let err = |e: String| format!("calibrating the prompt length on `{label}` ({}): {e}", self.sides[i].ep.public_url());
            let nonce = self.builder.nonce(u64::MAX, i as u64, 0);
            let (model, points) = if let Some(tok) = &self.tokenizer {
                // One request measures the template overhead over the local count.
                let words = (max_target / 2).clamp(16, 4096);
                let p = self.probe(i, 1, words).await.map_err(err)?;
                let local = LengthModel::local_count(tok, &self.builder.prompt(&nonce, words))? as i64;
                (LengthModel::Tokenizer { tokenizer: Box::new(tok.clone()), overhead: p as i64 - local }, vec![(words, p)])
            } else {
                // A line through a short and a long prompt, then secant steps at the largest
                // target until it is within tolerance.
                let w0 = 32usize;
                let p0 = self.probe(i, 1, w0).await.map_err(err)?;
                let w1 = ((max_target as f64 / 1.3) as usize).max(w0 + 64);
                let p1 = self.probe(i, 2, w1).await.map_err(err)?;
                let mut pts = vec![(w0, p0), (w1, p1)];
                let line = |pts: &[(usize, u64)]| {
                    let ((wa, pa), (wb, pb)) = (pts[pts.len() - 2], pts[pts.len() - 1]);
                    let b = (pb as f64 - pa as f64) / (wb as f64 - wa as f64);
                    LengthModel::Linear { a: pa as f64 - b * wa as f64, b }
                };
                let mut m = line(&pts);
                for step in 0..3 {
                    if let LengthModel::Linear { b, .. } = m {
                        if !(b > 0.0 && b.is_finite()) {
                            return Err(err(format!("the server's prompt_tokens do not grow with the prompt ({pts:?})")));
                        }
                    }
                    let w = m.words_for(&self.builder, &nonce, max_target)?;
                    if pts.iter().any(|&(pw, _)| pw == w) {
                        break;
                    }
                    let p = self.probe(i, 3 + step, w).await.map_err(err)?;
                    pts.push((w, p));
                    if within_tolerance(p, max_target) {
                        break;
                    }
                    m = line(&pts);
                }
                (m, pts)
            };
            let description = match &model {
                LengthModel::Tokenizer { overhead, .. } => format!("tokenizer count + {overhead} template tokens"),
                LengthModel::Linear { a, b } => format!("{a:.1} + {b:.4} tokens per filler word"),
            };
            out.push(Calibration { label: label.clone(), method: model.method(), points, description });
            self.sides[i].length = Some(model);
        }
        Ok(out)
    }

    /// Run one case on every side at once. `case_no` makes the nonces of this case unique.
    pub async fn run_case(&self, case_no: u64, case: &CaseSpec, progress: Progress) -> Result<Vec<EndpointBlock>, String> {
        let st = &self.settings;
        let mut bodies = Vec::new();
        let mut warm = Vec::new();
        for (s, side) in self.sides.iter().enumerate() {
            let model = side.length.as_ref().ok_or("calibrate before running cases")?;
            let nonce0 = self.builder.nonce(case_no, s as u64, 0);
            let words = model.words_for(&self.builder, &nonce0, case.context)?;
            let mk = |i: u64| self.body(s, &self.builder.prompt(&self.builder.nonce(case_no, s as u64, i), words), case.max_tokens);
            bodies.push((0..st.requests as u64).map(mk).collect::<Vec<_>>());
            // Warm-up prompts use nonces outside the measured range.
            warm.push((0..st.warmup as u64).map(|i| mk(1 << 32 | i)).collect::<Vec<_>>());
        }
        // Warm-up, not recorded: sequential per side; the sides at once, or one after the other
        // when the load takes them in turn.
        let mut ws = Vec::new();
        for (s, w) in warm.into_iter().enumerate() {
            let (ep, limits) = (self.sides[s].ep.clone(), st.limits);
            let warm_side = async move {
                for b in w {
                    let t0 = tokio::time::Instant::now();
                    client::send(ep.clone(), b, 0, t0, t0, limits).await;
                }
            };
            if matches!(case.load, Load::Alternate { .. }) {
                warm_side.await;
            } else {
                ws.push(tokio::spawn(warm_side));
            }
        }
        for w in ws {
            let _ = w.await;
        }
        let spec = LoadSpec {
            load: case.load.clone(),
            requests: st.requests,
            max_duration: st.max_duration,
            limits: st.limits,
            seed: st.seed ^ case_no.wrapping_mul(0x5851_F42D),
        };
        let eps: Vec<Arc<Endpoint>> = self.sides.iter().map(|s| s.ep.clone()).collect();
        let logs = load::run_case(&eps, bodies, &spec, progress).await;
        Ok(logs.into_iter().enumerate().map(|(s, reqs)| self.block(s, case, reqs)).collect())
    }

    fn block(&self, s: usize, case: &CaseSpec, requests: Vec<RequestLog>) -> EndpointBlock {
        let side = &self.sides[s];
        let st = &self.settings;
        let mut metrics = endpoint::metrics(&requests, &st.slo, &case.load);
        metrics.prompt_check = endpoint::prompt_check(&requests, case.context);
        let cache = endpoint::cache_check(&requests, st.cache_threshold);
        let cost = endpoint::cost(&requests, &metrics, side.spec.price.clone(), st.usd_per_gpu_hour, st.gpus);
        EndpointBlock {
            side: ["a", "b"][s].to_string(),
            label: side.spec.label.clone(),
            url: side.ep.public_url(),
            model: side.spec.model.clone(),
            api: side.spec.api.as_str().to_string(),
            load: case.load.clone(),
            target_prompt_tokens: case.context,
            prompt_fit: side.length.as_ref().map(|m| m.method()).unwrap_or("none").to_string(),
            max_tokens: case.max_tokens,
            slo: st.slo,
            requests,
            metrics,
            cache,
            cost,
        }
    }
}

/// The per-request values a record's `samples_ms` holds: TTFT for prefill, TPOT for decode.
pub fn primary_samples(phase: Phase, requests: &[RequestLog]) -> Vec<f64> {
    requests.iter().filter_map(|r| endpoint::primary(phase, r)).collect()
}
