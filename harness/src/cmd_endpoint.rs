//! `ctxcost endpoint`: measure one OpenAI-compatible endpoint, or two side by side (A/B),
//! over prompt lengths; and `ctxcost serve-mock`, a local streaming server to try it on.
//!
//! The work is in `ctxcost_engines::http`; this module owns the command line, the run
//! (progress, the summary table, the report at the end). The flags are checked, and the cases
//! and records planned, in `endpoint_plan` (synchronous validation first, discovery after).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use ctxcost_core::endpoint::{self, EndpointBlock};
use ctxcost_core::record::{Environment, Record, Status};
use ctxcost_core::stats::{self, ratio_ci};
use ctxcost_core::units::format_tokens;
use ctxcost_core::PointKey;
use ctxcost_engines::http::mock::{MockConfig, MockFault, MockServer, UsageStyle};
use ctxcost_engines::http::prompt::PromptText;
use ctxcost_engines::http::{self, Bench, CaseSpec, SideSpec};

use crate::endpoint_plan::{self, key_of, record};
use crate::{envinfo, recordio};

const AFTER_HELP: &str = "\
Metrics (as vLLM's serving benchmark defines them), per request, from the client's clock:
  TTFT  actual send -> first chunk with generated text
  E2E   actual send -> end of the stream
  TPOT  (E2E - TTFT) / (N - 1), N = the server's usage.completion_tokens
  ITL   gaps between successive text chunks
Prefill cases send max_tokens = 1 and record TTFT; decode cases send --output-tokens and
record TPOT. Every prompt starts with a unique nonce (no prefix-cache hits); the server's
usage.prompt_tokens is the ground truth of its length, and a case with more than
--cache-threshold of its prompt tokens reported cached is flagged.

Examples:
  ctxcost endpoint --url http://gpu:8000/v1 --contexts 1k,8k,32k --phase prefill --slo ttft=2s
  ctxcost endpoint --url https://res.openai.azure.com/openai/deployments/d?api-version=2024-06-01 \\
                   --model d --key-env AZURE_KEY --timeout 120s --max-seconds 10m
  ctxcost endpoint --a http://h1:8000/v1 --a-label terminus --a-price v3.1-terminus \\
                   --b http://h2:8000/v1 --b-label v32exp --b-price v3.2-exp \\
                   --contexts 4k..64k --concurrency 4 --usd-per-gpu-hour 2 --gpus 8
  ctxcost endpoint --url https://api.deepseek.com/v1 --model deepseek-chat \\
                   --key-env DEEPSEEK_API_KEY --no-ignore-eos --requests 8
  ctxcost serve-mock --port 8001 --ttft-ms 80 --tpot-ms 12   # a local server to try it on";

/// Arguments of `ctxcost endpoint`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct EndpointArgs {
    /// Base URL of the endpoint (side A), ending in /v1, e.g. http://gpu-host:8000/v1; a query
    /// string (`?api-version=...`) is kept and sent; no credentials in it (use --key-env).
    #[arg(long = "a", visible_alias = "url", value_name = "URL")]
    pub a: String,
    /// Base URL of side B for an A/B run (both sides get the same prompts, request by request;
    /// see --ab-order).
    #[arg(long = "b", value_name = "URL")]
    pub b: Option<String>,
    /// Label of side A [default: its model name].
    #[arg(long, visible_alias = "label")]
    pub a_label: Option<String>,
    /// Label of side B [default: its model name].
    #[arg(long)]
    pub b_label: Option<String>,
    /// Model name sent to side A [default: the first id of its /v1/models].
    #[arg(long, visible_alias = "model")]
    pub a_model: Option<String>,
    /// Model name sent to side B [default: the first id of its /v1/models].
    #[arg(long)]
    pub b_model: Option<String>,
    /// Environment variable holding side A's API key (sent as a bearer token; never recorded).
    #[arg(long, visible_alias = "key-env", value_name = "VAR")]
    pub a_key_env: Option<String>,
    /// Environment variable holding side B's API key.
    #[arg(long, value_name = "VAR")]
    pub b_key_env: Option<String>,
    /// API list prices of side A: v3.1-terminus, v3.2-exp (DeepSeek's table) or HIT,MISS,OUT in USD per million tokens.
    #[arg(long, visible_alias = "price")]
    pub a_price: Option<String>,
    /// API list prices of side B (as --a-price).
    #[arg(long)]
    pub b_price: Option<String>,
    /// Which API: chat (/v1/chat/completions) or completions (/v1/completions).
    #[arg(long, default_value = "chat")]
    pub api: String,
    /// Prompt lengths in tokens: `1k,8k,32k` or `1k..64k`.
    #[arg(long, default_value = "1k,4k,16k", value_name = "LIST")]
    pub contexts: String,
    /// Phase: prefill (max_tokens 1, TTFT), decode (--output-tokens, TPOT) or both.
    #[arg(long, default_value = "both")]
    pub phase: String,
    /// Output tokens of decode cases.
    #[arg(long, default_value_t = 128)]
    pub output_tokens: usize,
    /// Closed loop: requests in flight per side, comma-separated for several loads [default 1].
    #[arg(long, value_name = "LIST", conflicts_with = "rate")]
    pub concurrency: Option<String>,
    /// Open loop: Poisson arrivals at this many requests per second per side, comma-separated.
    #[arg(long, value_name = "LIST")]
    pub rate: Option<String>,
    /// A/B runs: `together` sends request i to both sides at once (each side its own closed or
    /// open loop); `alternate` takes the sides in turn from one queue A0, B0, A1, B1, ... with
    /// --concurrency requests in flight in all (closed loop only; at 1 the sides never overlap:
    /// for deployments that share GPUs or a link).
    #[arg(long, default_value = "together", value_name = "ORDER")]
    pub ab_order: String,
    /// Requests per side per case.
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    /// Stop scheduling new requests of a case after this long, with its unit: 60s, 10m.
    #[arg(long, default_value = "300s", value_name = "DURATION")]
    pub max_seconds: String,
    /// Per-request timeout (whole stream, 429 waits included), with its unit: 300s, 2m.
    #[arg(long, default_value = "300s", value_name = "DURATION")]
    pub timeout: String,
    /// Retries of a request answered 429, each after its Retry-After (at most 30 s).
    #[arg(long, default_value_t = 2)]
    pub retries: usize,
    /// Unrecorded warm-up requests per side before each case.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// The served model's tokenizer.json: prompts are fitted to the exact token count
    /// locally (else calibration requests fit the length).
    #[arg(long, value_name = "FILE")]
    pub tokenizer: Option<PathBuf>,
    /// Text of the prompts, after each one's nonce, cut to the fitted length: `default` (the
    /// shipped public-domain corpus, two plays of Shakespeare), `synthetic` (seeded common
    /// words, the text before real text), or a FILE of plain text or of JSONL documents with
    /// a `text` field. Real text matters for servers with speculative or MTP decoding.
    #[arg(long, default_value = "default", value_name = "default|synthetic|FILE")]
    pub prompt_text: String,
    /// Service-level objectives for goodput, each with its unit, e.g. `ttft=2s,tpot=50ms,e2e=30s`.
    #[arg(long, value_name = "LIST")]
    pub slo: Option<String>,
    /// Price of one GPU-hour (USD) of the deployment: cost per token from measured throughput.
    #[arg(long)]
    pub usd_per_gpu_hour: Option<f64>,
    /// GPUs of the deployment (with --usd-per-gpu-hour) [default 1].
    #[arg(long)]
    pub gpus: Option<usize>,
    /// Flag a case when more than this share of its prompt tokens were served from cache.
    #[arg(long, default_value_t = 0.05)]
    pub cache_threshold: f64,
    /// Do not send `ignore_eos: true` (hosted APIs may reject it; outputs may then end early).
    #[arg(long)]
    pub no_ignore_eos: bool,
    /// Model geometry recorded with the cases, where it is known: deepseek-v3.2-exp,
    /// deepseek-v3.1-terminus, tiny, small [default: none; the cases name the shape
    /// `endpoint`, whose dimensions and precision mean "not applicable"].
    #[arg(long)]
    pub shape: Option<String>,
    /// Seed of the prompts' nonces (and synthetic text) and of arrival times.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub output: crate::output::OutputArgs,
}

/// Arguments of `ctxcost serve-mock`.
#[derive(Debug, Clone, clap::Args)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Time to first token (ms).
    #[arg(long, default_value_t = 50.0)]
    pub ttft_ms: f64,
    /// Extra time to first token per 1000 prompt tokens (ms), to mimic prefill cost.
    #[arg(long, default_value_t = 0.0)]
    pub ttft_ms_per_1k: f64,
    /// Time per output token (ms).
    #[arg(long, default_value_t = 10.0)]
    pub tpot_ms: f64,
    /// Usage block style: vllm, deepseek or plain (no cached-token count).
    #[arg(long, default_value = "vllm")]
    pub usage: String,
    /// Share of prompt tokens reported as cached.
    #[arg(long, default_value_t = 0.0)]
    pub cached_fraction: f64,
    /// Faults by request number: `N=KIND`, comma-separated; KIND is 500, 429[:s], malformed, cut, stall[:s].
    #[arg(long, value_name = "LIST")]
    pub fault: Option<String>,
    /// Send each stream in one write at its end, as a buffering proxy does (TPOT and ITL are
    /// then 0 at the client).
    #[arg(long)]
    pub buffered: bool,
    /// Tokens per word grow with the prompt: w words count w * (1 + G * w / 1000) tokens (no
    /// single line through two prompt lengths predicts the others, as with BPE).
    #[arg(long, default_value_t = 0.0, value_name = "G")]
    pub token_growth: f64,
    /// Refuse prompts beyond this many tokens with HTTP 400, and list it in /v1/models.
    #[arg(long, value_name = "TOKENS")]
    pub max_model_len: Option<u64>,
    /// Keep --max-model-len out of /v1/models (the client learns it from a 400).
    #[arg(long)]
    pub unlisted_limit: bool,
    /// Refuse requests that carry `ignore_eos` (HTTP 422, as a strict request schema does).
    #[arg(long)]
    pub reject_ignore_eos: bool,
}

/// The environment as recorded, without API keys: the recorded `CTXCOST_*` settings would
/// otherwise hold a key whose variable has that prefix.
fn without_keys(mut env: Environment, sides: &[SideSpec]) -> Environment {
    let vars: Vec<&str> = sides.iter().filter_map(|s| s.key_env.as_deref()).collect();
    let keys: Vec<String> = vars.iter().filter_map(|v| std::env::var(v).ok()).filter(|k| !k.is_empty()).collect();
    env.settings.retain(|name, value| !vars.contains(&name.as_str()) && !keys.iter().any(|k| value.contains(k.as_str())));
    env
}

pub fn run(a: EndpointArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: EndpointArgs) -> Result<ExitCode> {
    // Every flag first, with no network; then the output file (a resumed one is opened here,
    // so a file that cannot be resumed stops the run before any request; a new one is only
    // made after calibration, so a failed calibration leaves no file behind); then discovery.
    let validated = endpoint_plan::validate(&a)?;
    let prompt_text = PromptText::from_flag(&a.prompt_text).map_err(|e| anyhow!("--prompt-text {e}"))?;
    recordio::check_output(&validated.out, a.output.resume, a.output.force)?;
    let opened = if a.output.resume && validated.out.exists() { Some(recordio::open_output(&validated.out, true, false)?) } else { None };
    let plan = endpoint_plan::discover(validated).await?;
    let labels: Vec<String> = plan.sides.iter().map(|s| s.label.clone()).collect();
    for s in &plan.sides {
        eprintln!("side {}: {} model {} ({} API)", s.label, http::client::public_url(&s.url), s.model, s.api.as_str());
    }
    let done = opened.as_ref().map(|o| o.1.clone()).unwrap_or_default();
    let text_label = prompt_text.key_label();
    let todo: Vec<(usize, &CaseSpec)> = plan
        .cases
        .iter()
        .enumerate()
        .filter(|(_, c)| !plan.sides.iter().all(|s| done.contains(&key_of(&plan, c, &s.label, s.api, &text_label))))
        .collect();
    if todo.len() < plan.cases.len() {
        eprintln!("resuming: {} of {} cases already recorded", plan.cases.len() - todo.len(), plan.cases.len());
    }
    let mut bench = Bench::new(plan.sides.clone(), plan.settings.clone(), a.tokenizer.as_deref()).map_err(|e| anyhow!(e))?.with_prompt_text(prompt_text);
    if !todo.is_empty() {
        let max_ctx = todo.iter().map(|(_, c)| c.context).max().unwrap_or(1024);
        for c in bench.calibrate(max_ctx).await.map_err(|e| anyhow!(e))? {
            eprintln!("prompt length on {}: {} ({} request(s): {:?})", c.label, c.description, c.points.len(), c.points);
        }
    }
    // Off a terminal the progress bar is hidden: one line per case instead.
    let plain_progress = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut fitted = HashSet::new();
    let mut writer = match opened {
        Some((w, _)) => w,
        None => recordio::open_output(&plan.out, a.output.resume, a.output.force)?.0,
    };
    let machine = (envinfo::tool(), without_keys(envinfo::capture(), &plan.sides));
    let started = Instant::now();
    let mut failed_cases = 0;
    let per_case = plan.settings.requests * labels.len();
    let bar = indicatif::ProgressBar::new((todo.len() * per_case) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} requests  ETA {eta}  {msg}")
            .expect("template")
            .progress_chars("=> "),
    );
    for (n, (case_no, case)) in todo.iter().enumerate() {
        bar.set_message(format!("{} {} {} ({}/{})", case.phase, format_tokens(case.context), case.load.key(), n + 1, todo.len()));
        let progress = Arc::new(AtomicUsize::new(0));
        let base = bar.position();
        let ticker = {
            let (bar, progress) = (bar.clone(), progress.clone());
            tokio::spawn(async move {
                loop {
                    bar.set_position(base + progress.load(Ordering::Relaxed) as u64);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let started_at = envinfo::utc_now();
        if fitted.insert(case.context) {
            bench.fit(case.context).await;
            for l in bench.fit_lines(case.context) {
                bar.suspend(|| eprintln!("{l}"));
            }
        }
        let blocks = bench.run_case(*case_no as u64, case, progress).await.map_err(|e| anyhow!(e))?;
        ticker.abort();
        bar.set_position(base + per_case as u64);
        for b in blocks {
            let r = record(&plan, &machine, case, b, started_at.clone());
            if r.status != Status::Ok {
                failed_cases += 1;
            }
            if let Some(why) = &r.reason {
                bar.suspend(|| eprintln!("{}: {}", r.key, why));
            }
            if plain_progress {
                let e = r.endpoint.as_ref().expect("endpoint record");
                eprintln!(
                    "case {}/{}: {} {} {} on {}: {} requests, {} {:?} ({:.0} s so far)",
                    n + 1,
                    todo.len(),
                    case.phase,
                    e.prompt_cell(),
                    case.load.key(),
                    e.label,
                    e.requests_cell(),
                    endpoint::primary_name(case.phase),
                    r.stats.map(|s| s.median),
                    started.elapsed().as_secs_f64()
                );
            }
            writer.append(&r)?;
        }
    }
    bar.finish_and_clear();
    eprintln!("finished in {:.1} s; records in {}", started.elapsed().as_secs_f64(), plan.out.display());
    let records = recordio::read_records(&plan.out)?;
    println!("{}", render_summary(&records));
    if let Some(dir) = &plan.report_dir {
        crate::output::write_report(&plan.out, dir);
    }
    Ok(if failed_cases > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn med(s: &Option<stats::Summary>) -> f64 {
    s.map(|s| s.median).unwrap_or(f64::NAN)
}

fn f(x: f64, digits: usize) -> String {
    if x.is_finite() {
        format!("{x:.digits$}")
    } else {
        "-".into()
    }
}

/// The table printed at the end: per case and side, the target and measured prompt length,
/// the latency metrics, throughput, cache share and faults, sorted by phase, load, prompt
/// length and side; then the cases whose prompt length missed its target; in an A/B run,
/// B/A of the primary metric with its 95% CI (requests paired by prompt).
pub fn render_summary(records: &[Record]) -> String {
    let mut rows: Vec<(&Record, &EndpointBlock)> = records.iter().filter_map(|r| Some((r, r.endpoint.as_ref()?))).collect();
    rows.sort_by(|x, y| {
        (x.0.case.phase, x.1.load.key(), x.1.max_tokens, x.0.case.context, &x.1.side).cmp(&(y.0.case.phase, y.1.load.key(), y.1.max_tokens, y.0.case.context, &y.1.side))
    });
    let side_w = rows.iter().map(|(_, e)| e.label.chars().count()).max().unwrap_or(0).max(4);
    let req_w = rows.iter().map(|(_, e)| e.requests_cell().len()).max().unwrap_or(0).max(8);
    let mut out = format!(
        "{:<8} {:>7} {:>8} {:<6} {:<side_w$} {:>req_w$} {:>10} {:>9} {:>10} {:>9} {:>8}  {}\n",
        "phase", "prompt", "measured", "load", "side", "requests", "TTFT p50", "TPOT p50", "E2E p50", "out tok/s", "cached", "faults"
    );
    let mut pairs: BTreeMap<PointKey, Vec<&Record>> = BTreeMap::new();
    let mut missed = Vec::new();
    for &(r, e) in &rows {
        let m = &e.metrics;
        let faults: Vec<String> = m.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let measured = match m.prompt_check {
            Some(p) => format!("{}{}", p.measured_median, if p.flagged { "!" } else { "" }),
            None => "-".into(),
        };
        out.push_str(&format!(
            "{:<8} {:>7} {:>8} {:<6} {:<side_w$} {:>req_w$} {:>10} {:>9} {:>10} {:>9} {:>8}  {}\n",
            r.case.phase.as_str(),
            format_tokens(r.case.context),
            measured,
            e.load.key(),
            e.label,
            e.requests_cell(),
            f(med(&m.ttft_ms), 1),
            f(med(&m.tpot_ms), 2),
            f(med(&m.e2e_ms), 1),
            f(m.output_tokens_per_s, 1),
            e.cache_cell("!"),
            if let Some(why) = &e.not_run {
                openai_clip(why)
            } else if faults.is_empty() {
                "-".into()
            } else {
                faults.join(", ")
            }
        ));
        if let Some(p) = m.prompt_check.filter(|p| p.flagged) {
            missed.push(format!("  {} {} {} on {}: {}\n", r.case.phase.as_str(), format_tokens(r.case.context), e.load.key(), e.label, p.describe()));
        }
        pairs.entry(r.point_key()).or_default().push(r);
    }
    if !missed.is_empty() {
        out.push_str(&format!("\nprompt length missed (measured ! above; tolerance 1% or {} tokens, whichever is larger):\n", endpoint::PROMPT_TOLERANCE_TOKENS));
        for l in missed {
            out.push_str(&l);
        }
    }
    let ab: Vec<String> = pairs
        .values()
        .filter_map(|rs| {
            let a = rs.iter().find(|r| r.endpoint.as_ref().is_some_and(|e| e.side == "a"))?;
            let b = rs.iter().find(|r| r.endpoint.as_ref().is_some_and(|e| e.side == "b"))?;
            let (ea, eb) = (a.endpoint.as_ref()?, b.endpoint.as_ref()?);
            let phase = a.case.phase;
            let (x, y) = endpoint::paired(ea, eb, &|r| endpoint::primary(phase, r));
            let ci = ratio_ci(&y, &x)?;
            Some(format!(
                "{:<8} {:>7} {:<6} {} / {} {}: {:.3} [{:.3}, {:.3}] ({} paired requests)\n",
                a.case.phase.as_str(),
                format_tokens(a.case.context),
                ea.load.key(),
                eb.label,
                ea.label,
                endpoint::primary_name(phase),
                ci.ratio,
                ci.lo,
                ci.hi,
                x.len()
            ))
        })
        .collect();
    if !ab.is_empty() {
        out.push_str("\nB/A of the primary metric, median ratio with 95% CI:\n");
        for l in ab {
            out.push_str(&l);
        }
    }
    out
}

/// A long reason shortened for a table cell.
fn openai_clip(s: &str) -> String {
    ctxcost_engines::http::openai::clip(s, 120)
}

pub fn serve_mock(a: MockArgs) -> Result<ExitCode> {
    let usage = match a.usage.as_str() {
        "vllm" => UsageStyle::Vllm,
        "deepseek" => UsageStyle::DeepSeek,
        "plain" => UsageStyle::Plain,
        u => bail!("--usage `{u}`: choose vllm, deepseek or plain"),
    };
    let mut faults = BTreeMap::new();
    for part in crate::flags::split_list(a.fault.as_deref().unwrap_or("")) {
        let (n, kind) = part.split_once('=').ok_or_else(|| anyhow!("--fault `{part}`: write N=KIND, e.g. 3=500"))?;
        let n: usize = n.trim().parse().map_err(|_| anyhow!("--fault `{part}`: `{n}` is not a request number"))?;
        faults.insert(n, MockFault::parse(kind.trim()).map_err(|e| anyhow!("--fault: {e}"))?);
    }
    for (name, v) in [("--ttft-ms", a.ttft_ms), ("--tpot-ms", a.tpot_ms), ("--ttft-ms-per-1k", a.ttft_ms_per_1k), ("--token-growth", a.token_growth)] {
        if !(v >= 0.0 && v.is_finite()) {
            bail!("{name} must be >= 0");
        }
    }
    if !(0.0..=1.0).contains(&a.cached_fraction) {
        bail!("--cached-fraction must be between 0 and 1");
    }
    let cfg = MockConfig {
        ttft_ms: a.ttft_ms,
        ttft_ms_per_1k_prompt: a.ttft_ms_per_1k,
        tpot_ms: a.tpot_ms,
        usage,
        cached_fraction: a.cached_fraction,
        faults,
        buffered: a.buffered,
        token_growth_per_1k: a.token_growth,
        max_model_len: a.max_model_len,
        max_model_len_unlisted: a.unlisted_limit,
        reject_ignore_eos: a.reject_ignore_eos,
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let server = MockServer::start(&format!("{}:{}", a.host, a.port), cfg)
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))?;
        println!("serving an OpenAI-compatible mock at {} (model `mock`; Ctrl-C stops)", server.url());
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("{} requests served", server.received.load(Ordering::SeqCst));
        Ok::<_, anyhow::Error>(ExitCode::SUCCESS)
    })
}

