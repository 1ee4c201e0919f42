//! The plan of `ctxcost endpoint`, in two steps (ripgrep's low and high arguments): [`validate`]
//! checks every flag at once, synchronously, with no network (a bad flag stops the run before
//! any request, naming the flag); [`discover`] then asks the servers for the model names not
//! given and checks the labels that follow from them. The plan also says what each case
//! records: [`case_of`], [`key_of`] and [`record`], built with the one record builder
//! ([`Record::new`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use ctxcost_core::endpoint::{self, ApiPricing, EndpointBlock, Load, Slo};
use ctxcost_core::record::{Environment, Record, Status, Tool};
use ctxcost_core::units::parse_contexts;
use ctxcost_core::{Case, ModelShape, Phase, Precision};
use ctxcost_engines::http::openai::Api;
use ctxcost_engines::http::{self, CaseSpec, RequestLimits, RunSettings, SideSpec};

use crate::cmd_endpoint::EndpointArgs;
use crate::envinfo;
use crate::flags::{duration_flag, split_list};

/// One side as the flags give it, before discovery.
pub struct SideFlags {
    /// `a` or `b`: the flags are `--a-*` or `--b-*`.
    pub side: &'static str,
    pub url: String,
    pub label: Option<String>,
    pub model: Option<String>,
    pub key_env: Option<String>,
    pub price: Option<ApiPricing>,
}

/// Every flag checked, nothing asked of a server yet.
pub struct Validated {
    pub sides: Vec<SideFlags>,
    pub api: Api,
    pub ignore_eos: bool,
    pub settings: RunSettings,
    pub cases: Vec<CaseSpec>,
    pub shape: ModelShape,
    pub out: PathBuf,
    pub report_dir: Option<PathBuf>,
}

/// What a run does: the sides with their model names, the cases and the settings.
pub struct Plan {
    pub sides: Vec<SideSpec>,
    pub settings: RunSettings,
    pub cases: Vec<CaseSpec>,
    pub shape: ModelShape,
    pub out: PathBuf,
    pub report_dir: Option<PathBuf>,
}

/// Check every flag, synchronously and with no network: numbers, durations, loads, SLOs,
/// prices, URLs, key variables, the tokenizer file; expand the cases.
pub fn validate(a: &EndpointArgs) -> Result<Validated> {
    let api = Api::parse(&a.api).map_err(|e| anyhow!("--api: {e}"))?;
    let contexts = parse_contexts(&a.contexts).map_err(|e| anyhow!("--contexts: {e}"))?;
    let phases = match a.phase.trim().to_ascii_lowercase().as_str() {
        "both" => vec![Phase::Prefill, Phase::Decode],
        p => vec![Phase::parse(p).map_err(|e| anyhow!("--phase: {e} (or both)"))?],
    };
    if a.output_tokens < 2 && phases.contains(&Phase::Decode) {
        bail!("--output-tokens {} : decode cases need at least 2 output tokens for TPOT", a.output_tokens);
    }
    if a.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let max_seconds = duration_flag("--max-seconds", &a.max_seconds)?;
    let timeout = duration_flag("--timeout", &a.timeout)?;
    if !(0.0..=1.0).contains(&a.cache_threshold) {
        bail!("--cache-threshold must be between 0 and 1");
    }
    if let Some(p) = a.usd_per_gpu_hour {
        if !(p > 0.0 && p.is_finite()) {
            bail!("--usd-per-gpu-hour must be positive");
        }
    }
    if a.gpus == Some(0) {
        bail!("--gpus must be at least 1");
    }
    if a.b.is_none() && (a.b_label.is_some() || a.b_model.is_some() || a.b_key_env.is_some() || a.b_price.is_some()) {
        bail!("--b-label/--b-model/--b-key-env/--b-price need --b URL");
    }
    if let Some(t) = &a.tokenizer {
        if !t.is_file() {
            bail!("--tokenizer {}: no such file", t.display());
        }
    }
    let loads = parse_loads(a)?;
    let slo = a.slo.as_deref().map(parse_slo).transpose()?.unwrap_or_default();
    let shape = match &a.shape {
        Some(name) => ModelShape::by_name(name).map_err(|e| anyhow!("--shape: {e}"))?,
        None => endpoint::endpoint_shape(),
    };
    let price = |p: &Option<String>, flag: &str| -> Result<_> {
        p.as_deref().map(ctxcost_core::prices::pricing_for).transpose().map_err(|e| anyhow!("{flag}: {e}"))
    };
    let prices = [price(&a.a_price, "--a-price")?, price(&a.b_price, "--b-price")?];
    let [a_price, b_price] = prices;
    let mut sides = vec![SideFlags { side: "a", url: a.a.clone(), label: a.a_label.clone(), model: a.a_model.clone(), key_env: a.a_key_env.clone(), price: a_price }];
    if let Some(b) = &a.b {
        sides.push(SideFlags { side: "b", url: b.clone(), label: a.b_label.clone(), model: a.b_model.clone(), key_env: a.b_key_env.clone(), price: b_price });
    }
    for s in &sides {
        let side = s.side;
        http::client::parse_base_url(&s.url).map_err(|e| anyhow!("--{side}: {e}"))?;
        if let Some(var) = &s.key_env {
            if std::env::var(var).is_err() {
                bail!("--{side}-key-env {var}: the variable is not set");
            }
        }
    }
    let (out, report_dir) = a.output.paths("endpoint");
    let mut cases = Vec::new();
    for &phase in &phases {
        for load in &loads {
            for &context in &contexts {
                let max_tokens = if phase == Phase::Prefill { 1 } else { a.output_tokens };
                cases.push(CaseSpec { phase, context, max_tokens, load: load.clone() });
            }
        }
    }
    let settings = RunSettings {
        requests: a.requests,
        max_duration: Duration::from_secs_f64(max_seconds),
        limits: RequestLimits { timeout: Duration::from_secs_f64(timeout), retries: a.retries, max_retry_wait: Duration::from_secs(30) },
        warmup: a.warmup,
        slo,
        seed: a.seed,
        usd_per_gpu_hour: a.usd_per_gpu_hour,
        gpus: a.gpus,
        cache_threshold: a.cache_threshold,
    };
    Ok(Validated { sides, api, ignore_eos: !a.no_ignore_eos, settings, cases, shape, out, report_dir })
}

/// Ask the servers for the model names not given (the first id of `/v1/models`), then label
/// the sides (a label defaults to the model name) and check the labels.
pub async fn discover(v: Validated) -> Result<Plan> {
    let mut sides = Vec::new();
    for SideFlags { side, url, label, model, key_env, price } in v.sides {
        let model = match model {
            Some(m) => m,
            None => {
                let key = key_env.as_deref().and_then(|v| std::env::var(v).ok());
                http::client::discover_model(&url, key).await.map_err(|e| anyhow!("--{side}: {e}; give --{side}-model"))?
            }
        };
        let label = clean_label(label.as_deref().unwrap_or(&model));
        if label.is_empty() {
            bail!("--{side}-label: give a label with letters or digits");
        }
        sides.push(SideSpec { label, url, model, api: v.api, key_env, price, ignore_eos: v.ignore_eos });
    }
    if sides.len() == 2 && sides[0].label == sides[1].label {
        bail!("both sides are labelled `{}`: give distinct --a-label and --b-label", sides[0].label);
    }
    Ok(Plan { sides, settings: v.settings, cases: v.cases, shape: v.shape, out: v.out, report_dir: v.report_dir })
}

/// `ttft=2s,tpot=50ms,e2e=30s` (each with its unit).
pub fn parse_slo(s: &str) -> Result<Slo> {
    let mut slo = Slo::default();
    for part in split_list(s) {
        let (k, v) = part.split_once('=').ok_or_else(|| anyhow!("--slo `{part}`: write NAME=DURATION, e.g. ttft=2s,tpot=50ms"))?;
        let ms = duration_flag(&format!("--slo {}", k.trim()), v)? * 1e3;
        match k.trim() {
            "ttft" => slo.ttft_ms = Some(ms),
            "tpot" => slo.tpot_ms = Some(ms),
            "e2e" => slo.e2e_ms = Some(ms),
            other => bail!("--slo: unknown objective `{other}` (choose ttft, tpot, e2e)"),
        }
    }
    Ok(slo)
}

fn parse_loads(a: &EndpointArgs) -> Result<Vec<Load>> {
    let list = |s: &str, what: &str| -> Result<Vec<f64>> {
        split_list(s)
            .into_iter()
            .map(|x| {
                let v: f64 = x.parse().map_err(|_| anyhow!("--{what} `{x}` is not a number"))?;
                if !(v > 0.0 && v.is_finite()) {
                    bail!("--{what} `{x}` must be positive");
                }
                Ok(v)
            })
            .collect()
    };
    let loads: Vec<Load> = match (&a.rate, &a.concurrency) {
        (Some(r), _) => list(r, "rate")?.into_iter().map(|rate_rps| Load::Open { rate_rps }).collect(),
        (None, Some(c)) => list(c, "concurrency")?
            .into_iter()
            .map(|c| {
                if c.fract() != 0.0 {
                    bail!("--concurrency {c} must be a whole number");
                }
                Ok(Load::Closed { concurrency: c as usize })
            })
            .collect::<Result<_>>()?,
        (None, None) => vec![Load::Closed { concurrency: 1 }],
    };
    if loads.is_empty() {
        bail!("give at least one load (--concurrency or --rate)");
    }
    match a.ab_order.as_str() {
        "together" => Ok(loads),
        "alternate" => {
            if a.b.is_none() {
                bail!("--ab-order alternate takes the two sides of an A/B run in turn: give --b as well");
            }
            if a.rate.is_some() {
                bail!("--ab-order alternate is a closed loop: use --concurrency, not --rate");
            }
            Ok(loads
                .into_iter()
                .map(|l| match l {
                    Load::Closed { concurrency } => Load::Alternate { concurrency },
                    other => other,
                })
                .collect())
        }
        other => bail!("--ab-order `{other}`: use together or alternate"),
    }
}

/// A label usable in an engine id.
fn clean_label(s: &str) -> String {
    let c: String = s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c.to_ascii_lowercase() } else { '-' }).collect();
    c.trim_matches('-').to_string()
}

/// The case of one side (`label`) of an endpoint case.
pub fn case_of(plan: &Plan, case: &CaseSpec, label: &str) -> Case {
    let batch = match case.load {
        Load::Closed { concurrency } | Load::Alternate { concurrency } => concurrency,
        Load::Open { .. } => 1,
    };
    Case {
        engine: format!("http-{label}"),
        method: ctxcost_core::Method::Dense,
        shape: plan.shape.clone(),
        phase: case.phase,
        context: case.context,
        batch,
        query_len: 1,
        precision: Precision::Bf16,
        seed: plan.settings.seed,
        kernel: Default::default(),
    }
}

/// The record key of one side of an endpoint case.
pub fn key_of(plan: &Plan, case: &CaseSpec, label: &str, api: Api, prompt_text: &str) -> String {
    format!("{}{}", case_of(plan, case, label).key(), endpoint::key_suffix(api.as_str(), case.max_tokens, &case.load, prompt_text))
}

/// The record of one side of one case; `machine` is the tool and environment captured once
/// per run.
pub fn record(plan: &Plan, machine: &(Tool, Environment), case: &CaseSpec, block: EndpointBlock, started_at: String) -> Record {
    let c = case_of(plan, case, &block.label);
    let samples = http::primary_samples(case.phase, &block.requests);
    let m = &block.metrics;
    let mut notes = Vec::new();
    let status = if let Some(why) = &block.not_run {
        notes.push(format!("not run: the prompt length could not be fitted: {why}"));
        Status::Failed
    } else if samples.is_empty() {
        notes.push(endpoint::why_no_primary(case.phase, &block.requests, &m.faults));
        Status::Failed
    } else {
        Status::Ok
    };
    notes.extend(flags(&block));
    let reason = (!notes.is_empty()).then(|| notes.join("; "));
    let stop_rule = if m.requests < plan.settings.requests { "max-time" } else { "requests" };
    let mut r = Record::new(&c, machine.0.clone(), machine.1.clone(), &c.engine, "client-monotonic", started_at).with_endpoint(block);
    r.status = status;
    r.reason = reason;
    r.stats = endpoint::summary(&samples);
    r.samples_ms = samples;
    r.warmup_runs = plan.settings.warmup;
    r.stop_rule = Some(stop_rule.into());
    r.finished_at = envinfo::utc_now();
    r
}

/// What a case's record must warn of beyond its numbers: a prompt far from its target, a
/// prompt served from cache, redirects followed, a stream delivered in one read.
fn flags(block: &EndpointBlock) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(p) = block.metrics.prompt_check.filter(|p| p.flagged) {
        notes.push(p.describe());
    }
    if block.cache.flagged {
        notes.push(format!("{:.1}% of prompt tokens were served from the server's cache", block.cache.fraction * 100.0));
    }
    let redirected: Vec<&str> = block.requests.iter().filter_map(|r| r.redirected_to.as_deref()).collect();
    if let Some(to) = redirected.first() {
        notes.push(format!("{} of {} requests were redirected within the server, to {to}", redirected.len(), block.requests.len()));
    }
    let multi: Vec<_> = block.requests.iter().filter(|r| r.ok && r.chunks_ms.len() >= 2).collect();
    if !multi.is_empty() && multi.iter().all(|r| r.chunks_ms.first() == r.chunks_ms.last()) {
        notes.push(
            "every request's text arrived in one read (a buffering proxy?): TPOT and ITL are 0 and measure the delivery, not the server"
                .into(),
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::endpoint::{Fault, FaultKind, RequestLog};
    use ctxcost_core::inputs::splitmix64;

    fn test_plan() -> Plan {
        Plan {
            sides: vec![],
            settings: RunSettings {
                requests: 4,
                max_duration: Duration::from_secs(60),
                limits: RequestLimits::default(),
                warmup: 0,
                slo: Slo { ttft_ms: Some(100.0), tpot_ms: Some(5.0), e2e_ms: None },
                seed: 0,
                usd_per_gpu_hour: Some(2.0),
                gpus: None,
                cache_threshold: 0.05,
            },
            cases: vec![],
            shape: ModelShape::by_name("tiny").unwrap(),
            out: PathBuf::from("unused.jsonl"),
            report_dir: None,
        }
    }

    /// Request logs drawn from `seed`: none to five requests, failed or ok, with no text,
    /// one chunk, chunks all in one read (a buffering proxy) or spread out, zero latencies,
    /// one or many output tokens, with or without usage.
    fn generated_requests(seed: u64) -> Vec<RequestLog> {
        let mut k = 0u64;
        let mut next = |n: u64| {
            k += 1;
            splitmix64(seed.wrapping_mul(0x9E37_79B9) ^ k) % n
        };
        let count = next(6) as usize;
        (0..count)
            .map(|i| {
                let sent = [0.0, 5.0, 1e-3][next(3) as usize];
                let first = sent + [0.0, 0.5, 80.0][next(3) as usize];
                let chunks: Vec<f64> = match next(4) {
                    0 => vec![],
                    1 => vec![first],
                    2 => vec![first; 1 + next(6) as usize],
                    _ => (0..1 + next(6)).map(|j| first + j as f64 * 3.0).collect(),
                };
                let end = chunks.last().copied().unwrap_or(first);
                let ok = next(5) != 0;
                let completion = [None, Some(1), Some(chunks.len() as u64), Some(0)][next(4) as usize];
                RequestLog {
                    index: i,
                    intended_ms: sent,
                    sent_ms: sent,
                    chunks_ms: if ok { chunks } else { vec![] },
                    end_ms: end,
                    prompt_tokens: [None, Some(0), Some(1024), Some(3000)][next(4) as usize],
                    completion_tokens: completion,
                    cached_tokens: [None, Some(0), Some(512)][next(3) as usize],
                    faults: if ok {
                        vec![]
                    } else {
                        vec![Fault { kind: FaultKind::ALL[next(FaultKind::ALL.len() as u64) as usize], http_status: None, detail: "x".into(), at_ms: end }]
                    },
                    ok,
                    redirected_to: None,
                }
            })
            .collect()
    }

    fn block_of(requests: Vec<RequestLog>, case: &CaseSpec, plan: &Plan) -> EndpointBlock {
        let st = &plan.settings;
        let mut metrics = endpoint::metrics(&requests, &st.slo, &case.load);
        metrics.prompt_check = endpoint::prompt_check(&requests, case.context);
        let cache = endpoint::cache_check(&requests, st.cache_threshold);
        let price = ctxcost_core::prices::pricing_for("v3.2-exp").ok();
        let cost = endpoint::cost(&requests, &metrics, price, st.usd_per_gpu_hour, st.gpus);
        EndpointBlock {
            side: "a".into(),
            label: "gen".into(),
            url: "http://127.0.0.1:1/v1?api-version=<redacted>".into(),
            model: "m".into(),
            api: "chat".into(),
            load: case.load.clone(),
            target_prompt_tokens: case.context,
            prompt_fit: "calibrated".into(),
            max_tokens: case.max_tokens,
            prompt_text: String::new(),
            slo: st.slo,
            planned_requests: st.requests,
            not_run: None,
            requests,
            metrics,
            cache,
            cost,
        }
    }

    /// Every generated endpoint record, zero and single samples included, reads back with the
    /// one record reader as it was written: no statistic is written as `null`.
    #[test]
    fn generated_endpoint_records_round_trip() {
        let plan = test_plan();
        let machine = (Tool::default(), Environment::default());
        let mut zero_medians = 0;
        for seed in 0..400u64 {
            let phase = if seed % 2 == 0 { Phase::Decode } else { Phase::Prefill };
            let load = if seed % 3 == 0 { Load::Open { rate_rps: 2.5 } } else { Load::Closed { concurrency: 1 } };
            let case = CaseSpec { phase, context: 1024, max_tokens: if phase == Phase::Prefill { 1 } else { 8 }, load };
            let block = block_of(generated_requests(seed), &case, &plan);
            zero_medians += block.metrics.tpot_ms.is_some_and(|s| s.median == 0.0) as usize;
            let text = serde_json::to_string(&block).unwrap();
            assert!(!text.contains("null"), "seed {seed}: {text}");
            let rec = record(&plan, &machine, &case, block.clone(), "t".into());
            let line = serde_json::to_string(&rec).unwrap();
            let back = Record::from_line(&line).unwrap_or_else(|e| panic!("seed {seed}: {e}\n{line}"));
            assert_eq!(back.endpoint.as_ref(), Some(&block), "seed {seed}");
            assert_eq!(back.stats, rec.stats, "seed {seed}");
            assert!(rec.reason.as_deref().is_none_or(|r| !r.contains("()")), "seed {seed}: {:?}", rec.reason);
        }
        assert!(zero_medians > 5, "the generator must reach TPOT medians of 0 ({zero_medians})");
    }

    #[test]
    fn record_reasons_name_their_causes() {
        let plan = test_plan();
        let machine = (Tool::default(), Environment::default());
        let case = CaseSpec { phase: Phase::Decode, context: 1024, max_tokens: 8, load: Load::Closed { concurrency: 1 } };
        let one = |i: usize, prompt: u64| RequestLog {
            index: i,
            chunks_ms: vec![10.0],
            end_ms: 11.0,
            prompt_tokens: Some(prompt),
            completion_tokens: Some(1),
            ok: true,
            ..Default::default()
        };
        // completion_tokens = 1 on every request: TPOT undefined, said so.
        let r = record(&plan, &machine, &case, block_of(vec![one(0, 1024), one(1, 1024)], &case, &plan), "t".into());
        assert_eq!(r.status, Status::Failed);
        let why = r.reason.unwrap();
        assert!(why.contains("one output token") && why.contains("TPOT is undefined"), "{why}");
        // A server-reported prompt 3x the target: flagged in the record and its reason.
        let buffered = |i: usize| RequestLog { chunks_ms: vec![10.0; 8], completion_tokens: Some(8), ..one(i, 3072) };
        let r = record(&plan, &machine, &case, block_of(vec![buffered(0), buffered(1)], &case, &plan), "t".into());
        assert_eq!(r.status, Status::Ok);
        assert!(r.endpoint.as_ref().unwrap().metrics.prompt_check.unwrap().flagged);
        let why = r.reason.unwrap();
        assert!(why.contains("3072 prompt tokens against a target of 1024"), "{why}");
        assert!(why.contains("one read"), "{why}");
    }

    #[test]
    fn durations_need_units() {
        assert_eq!(parse_slo("ttft=2s,tpot=50ms").unwrap(), Slo { ttft_ms: Some(2000.0), tpot_ms: Some(50.0), e2e_ms: None });
        for bad in ["ttft=2", "tpot=50", "ttft=infs", "ttft=NaNms", "ttft=0s", "ttft=-1s", "ttft=fast"] {
            let e = format!("{:#}", parse_slo(bad).unwrap_err());
            assert!(e.contains("--slo") && e.contains("2s"), "{bad}: {e}");
        }
    }
}
