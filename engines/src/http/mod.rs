//! Remote endpoints: OpenAI-compatible servers (vLLM, SGLang, hosted APIs) measured over
//! sweeps of prompt length, in the same record schema as the kernel engines.
//!
//! - [`sse`]: incremental server-sent-events parser (any byte split gives the same events).
//! - [`openai`]: request bodies and the meaning of streamed events (vLLM and DeepSeek usage).
//! - [`prompt`]: prompts of an exact token length with a unique leading nonce, of real text
//!   (a shipped public-domain corpus or a file) or synthetic filler words.
//! - [`client`]: one streamed request with raw timestamps; faults classified; URLs joined
//!   and redacted (credentials and query values never reach a text), redirects to another
//!   server refused.
//! - [`load`]: closed-loop (concurrency) and open-loop (Poisson) load over one or two sides.
//! - [`mock`]: a local OpenAI-style streaming server with injected delays and faults.
//!
//! [`Bench`] ties them together: it checks every side and fits prompt lengths per side and
//! target (calibration, then a probe search per target), then runs a case on every side at
//! once and returns one [`EndpointBlock`] per side. Metric definitions
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

use std::collections::BTreeMap;

use ctxcost_core::endpoint::{self, ApiPricing, EndpointBlock, FaultKind, Load, RequestLog, Slo};
use ctxcost_core::Phase;

pub use client::{Endpoint, RequestLimits};
pub use load::{LoadSpec, Progress};
use openai::Api;
use prompt::{LengthSearch, PromptBuilder, PromptText, TokenizerModel, MAX_PROBES_PER_TARGET};

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
    /// With `--tokenizer`: the local model, its overhead measured by calibration.
    tokenizer: Option<TokenizerModel>,
    /// Without: the probes so far and the refused length, shared by every target.
    search: LengthSearch,
    /// The server's context limit from `/v1/models`, where it gives one.
    max_model_len: Option<u64>,
    /// The least target refused for the server's limit, with why.
    refused_target: Option<(usize, String)>,
    /// Fitted units of text per target, or why the target cannot be reached.
    fits: BTreeMap<usize, Result<Fit, String>>,
    /// Probes sent (each gets its own nonce).
    probes: u64,
}

/// How a side's prompts of one target length were fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    /// Units of text (words, [`prompt`]) of the case's prompts.
    pub words: usize,
    /// The server's prompt tokens for that many words in a probe (`None` with a tokenizer).
    pub probed_tokens: Option<u64>,
    /// Probes this target took (0: an earlier probe already hit it, or a tokenizer).
    pub probes: usize,
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
    /// (units of text, server prompt tokens) of each calibration request.
    pub points: Vec<(usize, u64)>,
    pub description: String,
}

/// A probe that failed: the server refused the request (HTTP 4xx but 429: a prompt beyond
/// its limit, a field it does not take), or anything else.
enum ProbeError {
    Refused(String),
    Other(String),
}

impl ProbeError {
    fn text(self) -> String {
        match self {
            ProbeError::Refused(s) | ProbeError::Other(s) => s,
        }
    }
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
        let tokenizer = tokenizer.map(TokenizerModel::load_tokenizer).transpose()?;
        let mut out = Vec::new();
        for s in sides {
            let key = match &s.key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| format!("the API key variable `{var}` of side `{}` is not set", s.label))?),
                None => None,
            };
            let ep = Endpoint::new(&s.label, &s.url, &s.model, s.api, key, s.ignore_eos)?;
            out.push(Side {
                spec: s,
                ep: Arc::new(ep),
                tokenizer: None,
                search: LengthSearch::default(),
                max_model_len: None,
                refused_target: None,
                fits: BTreeMap::new(),
                probes: 0,
            });
        }
        Ok(Bench { sides: out, builder: PromptBuilder::new(settings.seed), settings, tokenizer })
    }

    /// Build prompts from `text` instead of the shipped corpus (before [`Bench::calibrate`]).
    pub fn with_prompt_text(mut self, text: PromptText) -> Bench {
        self.builder = PromptBuilder::with_text(self.settings.seed, text);
        self
    }

    pub fn labels(&self) -> Vec<String> {
        self.sides.iter().map(|s| s.spec.label.clone()).collect()
    }

    fn body(&self, side: usize, prompt: &str, max_tokens: usize) -> Arc<Vec<u8>> {
        let s = &self.sides[side];
        let v = openai::request_body(s.spec.api, &s.spec.model, prompt, max_tokens, s.spec.ignore_eos);
        Arc::new(serde_json::to_vec(&v).expect("JSON body"))
    }

    /// Send one unrecorded request of `words` units of text with `max_tokens = 1`; return the
    /// server's prompt tokens.
    async fn probe(&mut self, side: usize, words: usize) -> Result<u64, ProbeError> {
        self.sides[side].probes += 1;
        let nonce = self.builder.nonce(u64::MAX - self.sides[side].probes, side as u64, 0);
        let body = self.body(side, &self.builder.prompt(&nonce, words), 1);
        let t0 = tokio::time::Instant::now();
        let log = client::send(self.sides[side].ep.clone(), body, 0, t0, t0, self.settings.limits).await;
        match (log.ok, log.prompt_tokens) {
            (true, Some(p)) => Ok(p),
            (true, None) => Err(ProbeError::Other(
                "the server's stream had no usage block: it must honour stream_options.include_usage, \
                 or give --tokenizer so prompts can be fitted locally"
                    .into(),
            )),
            (false, _) => {
                let last = log.faults.last();
                let text = last.map(|f| format!("{}: {}", f.kind.as_str(), f.detail)).unwrap_or_default();
                if last.is_some_and(|f| f.kind == FaultKind::Client) {
                    Err(ProbeError::Refused(text))
                } else {
                    Err(ProbeError::Other(text))
                }
            }
        }
    }

    /// Check that every side answers with usage, and measure what prompt lengths rest on:
    /// with a tokenizer, the template overhead (one request of about `max_target / 2`
    /// tokens); without, two short probes that start every target's search. Reads each
    /// side's context limit from `/v1/models` where the server gives it. An error here (no
    /// server, no usage block, a refused request field) stops the run; a target that cannot
    /// be reached later is only that case's failure ([`Bench::fit`]).
    pub async fn calibrate(&mut self, max_target: usize) -> Result<Vec<Calibration>, String> {
        let mut out = Vec::new();
        for i in 0..self.sides.len() {
            let label = self.sides[i].spec.label.clone();
            let shown = self.sides[i].ep.public_url();
            let err = |e: ProbeError| format!("calibrating the prompt length on `{label}` ({shown}): {}", e.text());
            self.sides[i].max_model_len = self.sides[i].ep.max_model_len().await;
            let limit = self.sides[i].max_model_len.map(|n| format!("; max_model_len {n}")).unwrap_or_default();
            let nonce = self.builder.nonce(u64::MAX, i as u64, 0);
            if let Some(tok) = self.tokenizer.clone() {
                // One request measures the template overhead over the local count.
                let words = (max_target / 2).clamp(16, 4096);
                let p = self.probe(i, words).await.map_err(err)?;
                let local = TokenizerModel::local_count(&tok, &self.builder.prompt(&nonce, words))? as i64;
                let overhead = p as i64 - local;
                self.sides[i].tokenizer = Some(TokenizerModel { tokenizer: Box::new(tok), overhead });
                let description = format!("tokenizer count + {overhead} template tokens{limit}; text: {}", self.builder.text().describe());
                out.push(Calibration { label, method: "tokenizer", points: vec![(words, p)], description });
            } else {
                for words in [32usize, 256] {
                    let p = self.probe(i, words).await.map_err(err)?;
                    self.sides[i].search.add(words, p);
                }
                let pts = self.sides[i].search.points().to_vec();
                let description = format!("searched per target from probes (server prompt tokens of words of text){limit}; text: {}", self.builder.text().describe());
                out.push(Calibration { label, method: "calibrated", points: pts, description });
            }
        }
        Ok(out)
    }

    /// Fit the prompts of a target length on every side (cached per target): with a
    /// tokenizer, locally; without, by probes ([`LengthSearch`]) until one lands within
    /// [`prompt::fit_tolerance`] or the probe budget is spent (the nearest probe is then
    /// used, and the case's prompt check says how far it is). A target beyond the server's
    /// limit (its `max_model_len`, or a probe it refused while every accepted one stayed
    /// below the target) is an `Err` with the server's message, for that case alone.
    pub async fn fit(&mut self, target: usize) -> Vec<Result<Fit, String>> {
        let mut out = Vec::new();
        for i in 0..self.sides.len() {
            if !self.sides[i].fits.contains_key(&target) {
                let f = self.fit_side(i, target).await;
                if let Err(why) = &f {
                    let side = &mut self.sides[i];
                    if side.refused_target.as_ref().is_none_or(|(t, _)| target < *t) {
                        side.refused_target = Some((target, why.clone()));
                    }
                }
                self.sides[i].fits.insert(target, f);
            }
            out.push(self.sides[i].fits[&target].clone());
        }
        out
    }

    async fn fit_side(&mut self, i: usize, target: usize) -> Result<Fit, String> {
        if let Some(limit) = self.sides[i].max_model_len.filter(|&n| target as u64 >= n) {
            return Err(format!(
                "a prompt of {target} tokens does not fit the server's context limit: /v1/models gives max_model_len {limit} for `{}`",
                self.sides[i].spec.model
            ));
        }
        if let Some((t, why)) = self.sides[i].refused_target.as_ref().filter(|(t, _)| target > *t) {
            return Err(format!("beyond the server's limit: the shorter target of {t} tokens could not be reached ({why})"));
        }
        if let Some(tm) = &self.sides[i].tokenizer {
            let nonce = self.builder.nonce(u64::MAX, i as u64, 0);
            let words = tm.words_for(&self.builder, &nonce, target)?;
            return Ok(Fit { words, probed_tokens: None, probes: 0 });
        }
        let mut probes = 0;
        while self.sides[i].search.hit(target).is_none() && probes < MAX_PROBES_PER_TARGET {
            let Some(w) = self.sides[i].search.next(target) else { break };
            probes += 1;
            match self.probe(i, w).await {
                Ok(p) => self.sides[i].search.add(w, p),
                Err(ProbeError::Refused(why)) => self.sides[i].search.refuse(w, why),
                Err(ProbeError::Other(why)) => return Err(format!("a probe of {w} words of text failed: {why}")),
            }
        }
        let search = &self.sides[i].search;
        let Some((words, tokens)) = search.nearest(target) else {
            return Err("no probe succeeded".into());
        };
        if let Some((_, why)) = search.refused() {
            let all_below = search.points().iter().all(|p| (p.1 as f64) < target as f64);
            if all_below && !endpoint::prompt_hits(tokens, target) {
                return Err(format!(
                    "a prompt of {target} tokens is beyond what the server takes: the longest it accepted had {} tokens, a longer one was refused ({why})",
                    search.points().iter().map(|p| p.1).max().unwrap_or(0)
                ));
            }
        }
        Ok(Fit { words, probed_tokens: Some(tokens), probes })
    }

    /// One line per side on how the prompts of `target` were fitted (after [`Bench::fit`]).
    pub fn fit_lines(&self, target: usize) -> Vec<String> {
        self.sides
            .iter()
            .filter_map(|s| {
                let f = s.fits.get(&target)?;
                Some(match f {
                    Ok(Fit { words, probed_tokens: Some(p), probes }) => {
                        format!("prompt {target} on {}: {words} words of text gave {p} tokens in a probe ({probes} new probe(s))", s.spec.label)
                    }
                    Ok(Fit { words, .. }) => format!("prompt {target} on {}: {words} words of text (tokenizer)", s.spec.label),
                    Err(why) => format!("prompt {target} on {}: cannot be fitted: {why}", s.spec.label),
                })
            })
            .collect()
    }

    /// Run one case on every side at once. `case_no` makes the nonces of this case unique.
    /// A side whose prompt cannot be fitted to the target sends nothing; its block says why
    /// ([`EndpointBlock::not_run`]).
    pub async fn run_case(&mut self, case_no: u64, case: &CaseSpec, progress: Progress) -> Result<Vec<EndpointBlock>, String> {
        if self.sides.iter().any(|s| s.tokenizer.is_none() && s.search.points().is_empty()) {
            return Err("calibrate before running cases".into());
        }
        let fits = self.fit(case.context).await;
        let st = &self.settings;
        let run: Vec<usize> = (0..self.sides.len()).filter(|&s| fits[s].is_ok()).collect();
        let mut bodies = Vec::new();
        let mut warm = Vec::new();
        for &s in &run {
            let words = fits[s].as_ref().expect("fitted").words;
            let mk = |i: u64| self.body(s, &self.builder.prompt(&self.builder.nonce(case_no, s as u64, i), words), case.max_tokens);
            bodies.push((0..st.requests as u64).map(mk).collect::<Vec<_>>());
            // Warm-up prompts use nonces outside the measured range.
            warm.push((0..st.warmup as u64).map(|i| mk(1 << 32 | i)).collect::<Vec<_>>());
        }
        // Warm-up, not recorded, within the case's time limit: sequential per side; the
        // sides at once, or one after the other when the load takes them in turn.
        let warm_deadline = tokio::time::Instant::now() + st.max_duration;
        let mut ws = Vec::new();
        for (k, w) in warm.into_iter().enumerate() {
            let (ep, limits) = (self.sides[run[k]].ep.clone(), st.limits);
            let warm_side = async move {
                for b in w {
                    let t0 = tokio::time::Instant::now();
                    if t0 >= warm_deadline {
                        break;
                    }
                    let _ = tokio::time::timeout_at(warm_deadline, client::send(ep.clone(), b, 0, t0, t0, limits)).await;
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
        let eps: Vec<Arc<Endpoint>> = run.iter().map(|&s| self.sides[s].ep.clone()).collect();
        let mut logs = if eps.is_empty() { vec![] } else { load::run_case(&eps, bodies, &spec, progress).await }.into_iter();
        let mut out = Vec::new();
        for (s, fit) in fits.into_iter().enumerate() {
            out.push(match fit {
                Ok(_) => self.block(s, case, logs.next().unwrap_or_default()),
                Err(why) => {
                    let mut b = self.block(s, case, vec![]);
                    b.not_run = Some(why);
                    b
                }
            });
        }
        Ok(out)
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
            prompt_fit: if side.tokenizer.is_some() { "tokenizer" } else { "calibrated" }.to_string(),
            max_tokens: case.max_tokens,
            prompt_text: self.builder.text().key_label(),
            slo: st.slo,
            planned_requests: st.requests,
            not_run: None,
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
