//! Prompt lengths and refusals against servers that do not make them easy: tokens per word
//! that grow with the prompt (no single line fits), a context limit (listed or learned from
//! a 400), a strict request schema that refuses `ignore_eos`, a base URL without `/v1`, and a
//! stream cut midway (its chunks kept); real prompt text (the shipped corpus, a JSONL file
//! shorter than the prompts) fitted as closely as the synthetic filler.
#![cfg(feature = "http")]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use ctxcost_core::endpoint::{prompt_tolerance_tokens, FaultKind, Load, Slo};
use ctxcost_core::Phase;
use ctxcost_engines::http::client::{list_models, send, Endpoint, RequestLimits};
use ctxcost_engines::http::mock::{MockConfig, MockFault, MockServer};
use ctxcost_engines::http::openai::{request_body, Api};
use ctxcost_engines::http::prompt::PromptText;
use ctxcost_engines::http::{Bench, CaseSpec, RunSettings, SideSpec};

fn settings(requests: usize) -> RunSettings {
    RunSettings {
        requests,
        max_duration: Duration::from_secs(60),
        limits: RequestLimits { timeout: Duration::from_secs(10), retries: 0, max_retry_wait: Duration::from_secs(1) },
        warmup: 0,
        slo: Slo::default(),
        seed: 5,
        usd_per_gpu_hour: None,
        gpus: None,
        cache_threshold: 0.05,
    }
}

fn side(url: &str) -> SideSpec {
    SideSpec { label: "s".into(), url: url.into(), model: "mock".into(), api: Api::Chat, key_env: None, price: None, ignore_eos: true }
}

fn prefill(context: usize) -> CaseSpec {
    CaseSpec { phase: Phase::Prefill, context, max_tokens: 1, load: Load::Closed { concurrency: 1 } }
}

/// Growing tokens per word: 5% more per 1000 words.
fn growing() -> MockConfig {
    MockConfig { ttft_ms: 1.0, tpot_ms: 1.0, token_growth_per_1k: 0.05, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_target_is_hit_where_one_line_misses() {
    let cfg = growing();
    // The old fit, one line near the largest target (4000) used for every smaller one: it
    // misses the smallest by far more than 5% on this server.
    let tokens = |w: u64| cfg.tokens_of_words(w + 6) + cfg.chat_overhead;
    let (w1, w2) = (2900u64, 3000u64);
    let slope = (tokens(w2) - tokens(w1)) as f64 / (w2 - w1) as f64;
    let at = |t: f64| tokens((w2 as f64 + (t - tokens(w2) as f64) / slope).round() as u64) as f64;
    assert!(at(500.0) / 500.0 > 1.05, "the mock must defeat one line: {}", at(500.0));

    let server = MockServer::start("127.0.0.1:0", cfg.clone()).await.unwrap();
    let mut bench = Bench::new(vec![side(&server.url())], settings(3), None).unwrap();
    bench.calibrate(4000).await.unwrap();
    for (n, target) in [500usize, 1000, 2000, 4000].into_iter().enumerate() {
        let blk = bench.run_case(n as u64, &prefill(target), Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
        let check = blk.metrics.prompt_check.unwrap();
        assert!(!check.flagged, "{target}: {check:?}");
        for r in &blk.requests {
            let p = r.prompt_tokens.unwrap() as f64;
            assert!((p - target as f64).abs() <= prompt_tolerance_tokens(target), "{target}: {p}");
        }
        assert_eq!(blk.planned_requests, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_text_hits_every_target() {
    // A JSONL corpus of 3 short documents (~1300 words): the 4000-token prompts wrap round it.
    let dir = std::env::temp_dir().join(format!("ctxcost-realtext-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("docs.jsonl");
    let doc = |n: usize, w: &str| serde_json::json!({ "text": format!("{w}\n").repeat(n).trim_end() }).to_string();
    std::fs::write(&file, [doc(100, "Four score and seven years ago,"), doc(40, "we cannot dedicate -- we cannot consecrate"), doc(1, "the end")].join("\n")).unwrap();
    let texts = [PromptText::default(), PromptText::from_flag(file.to_str().unwrap()).unwrap(), PromptText::Synthetic];
    let cfg = growing();
    for text in texts {
        let shown = text.describe();
        let server = MockServer::start("127.0.0.1:0", cfg.clone()).await.unwrap();
        let mut bench = Bench::new(vec![side(&server.url())], settings(2), None).unwrap().with_prompt_text(text);
        let cal = bench.calibrate(4000).await.unwrap();
        assert!(cal[0].description.contains(&shown), "{}", cal[0].description);
        for (n, target) in [300usize, 1000, 2500, 4000].into_iter().enumerate() {
            let blk = bench.run_case(n as u64, &prefill(target), Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
            let check = blk.metrics.prompt_check.unwrap();
            assert!(!check.flagged, "{shown} {target}: {check:?}");
            let fit = &bench.fit_lines(target)[0];
            assert!(fit.contains("words of text"), "{fit}");
        }
        assert!(server.received.load(std::sync::atomic::Ordering::SeqCst) <= 2 + 4 * 6 + 4 * 2, "{shown}: too many probes");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_beyond_the_limit_fails_alone() {
    for listed in [true, false] {
        let cfg = MockConfig { max_model_len: Some(3000), max_model_len_unlisted: !listed, ..growing() };
        let server = MockServer::start("127.0.0.1:0", cfg).await.unwrap();
        let mut bench = Bench::new(vec![side(&server.url())], settings(2), None).unwrap();
        bench.calibrate(6000).await.unwrap();
        let ok = bench.run_case(0, &prefill(1000), Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
        assert!(ok.not_run.is_none() && ok.metrics.ok == 2, "listed {listed}: {:?}", ok.not_run);
        let far = bench.run_case(1, &prefill(6000), Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
        let why = far.not_run.clone().unwrap_or_else(|| panic!("listed {listed}: the 6K case ran: {:?}", far.metrics.prompt_check));
        let want = if listed { "max_model_len 3000" } else { "maximum context length is 3000" };
        assert!(why.contains(want), "listed {listed}: {why}");
        assert!(far.requests.is_empty());
        // Past the refusal, a shorter target still runs; a longer one fails without probes.
        let again = bench.run_case(2, &prefill(2000), Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
        assert!(again.not_run.is_none() && !again.metrics.prompt_check.unwrap().flagged);
        let received = server.received.load(std::sync::atomic::Ordering::SeqCst);
        let farther = bench.run_case(3, &prefill(9000), Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
        assert!(farther.not_run.is_some());
        assert_eq!(server.received.load(std::sync::atomic::Ordering::SeqCst), received, "no probe for a target past a refused one");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ignore_eos_points_to_the_flag() {
    let server = MockServer::start("127.0.0.1:0", MockConfig { reject_ignore_eos: true, ..Default::default() }).await.unwrap();
    let mut bench = Bench::new(vec![side(&server.url())], settings(1), None).unwrap();
    let e = bench.calibrate(1000).await.unwrap_err();
    assert!(e.contains("--no-ignore-eos") && e.contains("422"), "{e}");
    // Without it the same server answers.
    let mut s = side(&server.url());
    s.ignore_eos = false;
    let mut bench = Bench::new(vec![s], settings(1), None).unwrap();
    bench.calibrate(1000).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_without_v1_is_told_so() {
    let server = MockServer::start("127.0.0.1:0", MockConfig { max_model_len: Some(4096), ..Default::default() }).await.unwrap();
    let bare = format!("http://{}", server.addr);
    let e = list_models(&bare, None).await.unwrap_err();
    assert!(e.contains("no /v1/models here") && e.contains(&format!("did you mean {bare}/v1?")), "{e}");
    assert!(!e.contains("lists no model"), "{e}");
    let models = list_models(&server.url(), None).await.unwrap();
    assert_eq!((models[0].id.as_str(), models[0].max_model_len), ("mock", Some(4096)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_keeps_its_chunks() {
    let faults = BTreeMap::from([(0, MockFault::CutMidway)]);
    let server = MockServer::start("127.0.0.1:0", MockConfig { ttft_ms: 5.0, tpot_ms: 2.0, faults, ..Default::default() }).await.unwrap();
    let ep = Arc::new(Endpoint::new("m", &server.url(), "mock", Api::Chat, None, true).unwrap());
    let body = Arc::new(serde_json::to_vec(&request_body(Api::Chat, "mock", "[1] a b", 10, true)).unwrap());
    let t0 = tokio::time::Instant::now();
    let log = send(ep, body, 0, t0, t0, RequestLimits::default()).await;
    assert!(!log.ok);
    assert_eq!(log.faults[0].kind, FaultKind::StreamCut);
    assert_eq!(log.chunks_ms.len(), 5, "the five text chunks before the cut: {:?}", log.chunks_ms);
    assert!(log.chunks_ms.windows(2).all(|w| w[1] >= w[0]) && log.chunks_ms[0] > log.sent_ms);
    // A failed request still gives no latency.
    assert_eq!(log.ttft_ms(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_text_still_gives_a_ttft() {
    // transformers serve at max_tokens 1 with a byte-level BPE: one token generated, no text.
    let server = MockServer::start("127.0.0.1:0", MockConfig { ttft_ms: 30.0, empty_text: true, ..Default::default() }).await.unwrap();
    let ep = Arc::new(Endpoint::new("m", &server.url(), "mock", Api::Chat, None, true).unwrap());
    let body = Arc::new(serde_json::to_vec(&request_body(Api::Chat, "mock", "[1] a b", 1, true)).unwrap());
    let t0 = tokio::time::Instant::now();
    let log = send(ep, body, 0, t0, t0, RequestLimits::default()).await;
    assert!(log.ok && log.completion_tokens == Some(1));
    let ttft = log.ttft_ms().expect("the finish event stands for the token");
    assert!((29.0..500.0).contains(&ttft), "{ttft}");
}
