//! The endpoint client against local OpenAI-style streaming servers: measured TTFT/TPOT
//! against injected delays, every fault kind recorded while the run goes on, exact prompt
//! lengths (calibrated and with a tokenizer), cache flagging, A/B pairing, and that API keys
//! never reach what is recorded.
#![cfg(feature = "http")]

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use ctxcost_core::endpoint::{FaultKind, Load, Slo};
use ctxcost_core::Phase;
use ctxcost_engines::http::client::{Endpoint, RequestLimits};
use ctxcost_engines::http::load::{run_case, LoadSpec};
use ctxcost_engines::http::mock::{MockConfig, MockFault, MockServer, UsageStyle};
use ctxcost_engines::http::openai::{request_body, Api};
use ctxcost_engines::http::{Bench, CaseSpec, RunSettings, SideSpec};

fn body(prompt: &str, max_tokens: usize) -> Arc<Vec<u8>> {
    Arc::new(serde_json::to_vec(&request_body(Api::Chat, "mock", prompt, max_tokens, true)).unwrap())
}

fn settings(requests: usize) -> RunSettings {
    RunSettings {
        requests,
        max_duration: Duration::from_secs(60),
        limits: RequestLimits { timeout: Duration::from_secs(10), retries: 2, max_retry_wait: Duration::from_secs(5) },
        warmup: 0,
        slo: Slo::default(),
        seed: 3,
        usd_per_gpu_hour: None,
        gpus: None,
        cache_threshold: 0.05,
    }
}

fn side(label: &str, url: &str) -> SideSpec {
    SideSpec { label: label.into(), url: url.into(), model: "mock".into(), api: Api::Chat, key_env: None, price: None, ignore_eos: true }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_ttft_and_tpot_match_injected_delays() {
    let (ttft, tpot) = (80.0, 12.0);
    let server = MockServer::start("127.0.0.1:0", MockConfig { ttft_ms: ttft, tpot_ms: tpot, ..Default::default() }).await.unwrap();
    let ep = Arc::new(Endpoint::new("m", &server.url(), "mock", Api::Chat, None, true).unwrap());
    let bodies = vec![(0..8).map(|i| body(&format!("[{i}] a b c"), 20)).collect()];
    let spec = LoadSpec {
        load: Load::Closed { concurrency: 2 },
        requests: 8,
        max_duration: Duration::from_secs(60),
        limits: RequestLimits::default(),
        seed: 1,
    };
    let logs = run_case(&[ep], bodies, &spec, Arc::new(AtomicUsize::new(0))).await;
    let m = ctxcost_core::endpoint::metrics(&logs[0], &Slo::default(), &spec.load);
    assert_eq!((m.ok, m.failed), (8, 0));
    assert_eq!(m.output_tokens_total, 8 * 20);
    // Tolerance: the client sees the server's delays plus loopback and scheduling latency,
    // which only adds: TTFT within [-1 ms, +25 ms], TPOT within 15%.
    let t = m.ttft_ms.unwrap().median;
    assert!(t >= ttft - 1.0 && t <= ttft + 25.0, "TTFT median {t} ms vs injected {ttft}");
    let p = m.tpot_ms.unwrap().median;
    assert!((p - tpot).abs() <= 0.15 * tpot, "TPOT median {p} ms vs injected {tpot}");
    // ITL: 19 gaps per request, centred on the per-token delay.
    assert_eq!(m.itl_ms.unwrap().n, 8 * 19);
    assert!((m.itl_ms.unwrap().median - tpot).abs() <= 0.25 * tpot, "ITL median {}", m.itl_ms.unwrap().median);
    // Closed loop with 2 in flight: never more than 2 requests overlap.
    let mut ev: Vec<(f64, i32)> = logs[0].iter().flat_map(|r| [(r.sent_ms, 1), (r.end_ms, -1)]).collect();
    ev.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let peak = ev.iter().scan(0, |n, e| {
        *n += e.1;
        Some(*n)
    });
    assert!(peak.max().unwrap() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_recorded_and_the_run_completes() {
    let mut faults = BTreeMap::new();
    faults.insert(1, MockFault::Server);
    faults.insert(2, MockFault::RateLimited { retry_after_s: 0.2 }); // retried: arrival 3 succeeds
    faults.insert(4, MockFault::MalformedSse);
    faults.insert(5, MockFault::CutMidway);
    faults.insert(6, MockFault::Stall { seconds: 30.0 });
    faults.insert(7, MockFault::RateLimited { retry_after_s: 0.1 }); // and 8, 9: retries run out
    faults.insert(8, MockFault::RateLimited { retry_after_s: 0.1 });
    faults.insert(9, MockFault::RateLimited { retry_after_s: 0.1 });
    let cfg = MockConfig { ttft_ms: 5.0, tpot_ms: 1.0, faults, ..Default::default() };
    let server = MockServer::start("127.0.0.1:0", cfg).await.unwrap();
    let ep = Arc::new(Endpoint::new("m", &server.url(), "mock", Api::Chat, None, true).unwrap());
    let bodies = vec![(0..9).map(|i| body(&format!("[{i}] x y"), 6)).collect()];
    let spec = LoadSpec {
        load: Load::Closed { concurrency: 1 },
        requests: 9,
        max_duration: Duration::from_secs(60),
        limits: RequestLimits { timeout: Duration::from_millis(1500), retries: 2, max_retry_wait: Duration::from_secs(2) },
        seed: 1,
    };
    let logs = run_case(&[ep], bodies, &spec, Arc::new(AtomicUsize::new(0))).await;
    let r = &logs[0];
    assert_eq!(r.len(), 9, "the run went on past every fault");
    let kinds = |i: usize| r[i].faults.iter().map(|f| f.kind).collect::<Vec<_>>();
    // Request index -> arrival numbers: 0->0, 1->1, 2->2,3 (429 then ok), 3->4, 4->5, 5->6,
    // 6->7,8,9 (three 429s, two retries), 7->10, 8->11.
    assert!(r[0].ok && r[0].faults.is_empty());
    assert_eq!(kinds(1), vec![FaultKind::Server]);
    assert_eq!(r[1].faults[0].http_status, Some(500));
    assert!(r[2].ok, "a 429 honoured with Retry-After then succeeds");
    assert_eq!(kinds(2), vec![FaultKind::RateLimited]);
    assert!(r[2].sent_ms - r[2].intended_ms >= 190.0, "the retry waited for Retry-After");
    assert_eq!(kinds(3), vec![FaultKind::MalformedSse]);
    assert_eq!(kinds(4), vec![FaultKind::StreamCut]);
    assert_eq!(kinds(5), vec![FaultKind::Timeout]);
    assert_eq!(kinds(6), vec![FaultKind::RateLimited; 3]);
    assert!(!r[6].ok);
    assert!(r[7].ok && r[8].ok);
    let m = ctxcost_core::endpoint::metrics(r, &Slo::default(), &spec.load);
    assert_eq!((m.ok, m.failed), (4, 5));
    let count = |k: &str| m.faults.get(k).copied().unwrap_or(0);
    assert_eq!(
        (count("server"), count("rate-limited"), count("malformed-sse"), count("stream-cut"), count("timeout")),
        (1, 4, 1, 1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_recorded() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ep = Arc::new(Endpoint::new("gone", &format!("http://127.0.0.1:{port}/v1"), "m", Api::Chat, None, true).unwrap());
    let spec = LoadSpec {
        load: Load::Open { rate_rps: 50.0 },
        requests: 3,
        max_duration: Duration::from_secs(10),
        limits: RequestLimits::default(),
        seed: 2,
    };
    let logs = run_case(&[ep], vec![(0..3).map(|_| body("p", 2)).collect()], &spec, Arc::new(AtomicUsize::new(0))).await;
    assert_eq!(logs[0].len(), 3);
    assert!(logs[0].iter().all(|r| !r.ok && r.faults.len() == 1 && r.faults[0].kind == FaultKind::Connect));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_run_fits_prompt_lengths_and_pairs_requests() {
    let a = MockServer::start("127.0.0.1:0", MockConfig { ttft_ms: 30.0, tpot_ms: 4.0, ..Default::default() }).await.unwrap();
    let b = MockServer::start("127.0.0.1:0", MockConfig { ttft_ms: 90.0, tpot_ms: 4.0, usage: UsageStyle::DeepSeek, ..Default::default() })
        .await
        .unwrap();
    let mut bench = Bench::new(vec![side("fast", &a.url()), side("slow", &b.url())], settings(6), None).unwrap();
    let cal = bench.calibrate(3000).await.unwrap();
    assert_eq!(cal.len(), 2);
    assert!(cal.iter().all(|c| c.method == "calibrated"));
    for ctx in [500usize, 3000] {
        let case = CaseSpec { phase: Phase::Prefill, context: ctx, max_tokens: 1, load: Load::Closed { concurrency: 2 } };
        let blocks = bench.run_case(ctx as u64, &case, Arc::new(AtomicUsize::new(0))).await.unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[0].side.as_str(), blocks[1].side.as_str()), ("a", "b"));
        for blk in &blocks {
            assert_eq!(blk.metrics.ok, 6);
            // The mock counts words exactly, so calibration hits the target exactly.
            assert!(blk.requests.iter().all(|r| r.prompt_tokens == Some(ctx as u64)), "{:?}", blk.requests[0].prompt_tokens);
            assert_eq!(blk.prompt_fit, "calibrated");
            assert!(!blk.cache.flagged);
        }
        let ratio = blocks[1].metrics.ttft_ms.unwrap().median / blocks[0].metrics.ttft_ms.unwrap().median;
        assert!(ratio > 1.8 && ratio < 3.2, "B/A TTFT {ratio} for injected 90/30");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizer_fit_and_cache_flag() {
    let dir = std::env::temp_dir().join(format!("ctxcost-tok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tok = dir.join("tokenizer.json");
    // A word-level tokenizer: one token per whitespace-separated word, as the mock counts.
    std::fs::write(
        &tok,
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"WhitespaceSplit"},"post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"[UNK]":0,"time":1,"year":2},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    let server = MockServer::start("127.0.0.1:0", MockConfig { cached_fraction: 0.5, usage: UsageStyle::DeepSeek, ..Default::default() })
        .await
        .unwrap();
    let mut bench = Bench::new(vec![side("s", &server.url())], settings(3), Some(&tok)).unwrap();
    let cal = bench.calibrate(1000).await.unwrap();
    assert_eq!((cal[0].method, cal[0].points.len()), ("tokenizer", 1));
    let case = CaseSpec { phase: Phase::Decode, context: 777, max_tokens: 5, load: Load::Closed { concurrency: 1 } };
    let blk = bench.run_case(0, &case, Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
    assert!(blk.requests.iter().all(|r| r.prompt_tokens == Some(777) && r.completion_tokens == Some(5)));
    assert_eq!(blk.prompt_fit, "tokenizer");
    // DeepSeek-style prompt_cache_hit_tokens: half the prompt reported cached -> flagged.
    assert!(blk.requests.iter().all(|r| r.cached_tokens == Some(389) || r.cached_tokens == Some(388)));
    assert!(blk.cache.flagged && (blk.cache.fraction - 0.5).abs() < 0.01);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_never_reach_the_record() {
    let secret = "sk-ctxcost-test-5e3c7a91";
    std::env::set_var("CTXCOST_TEST_KEY", secret);
    // Calibration takes the first arrivals (at most 5 against this exact mock); later
    // requests meet 500s that echo the Authorization header back.
    let faults: BTreeMap<usize, MockFault> = (6..40).filter(|n| n % 2 == 0).map(|n| (n, MockFault::Server)).collect();
    let server = MockServer::start("127.0.0.1:0", MockConfig { faults, ..Default::default() }).await.unwrap();
    let mut s = side("keyed", &server.url());
    s.key_env = Some("CTXCOST_TEST_KEY".into());
    let mut bench = Bench::new(vec![s], settings(10), None).unwrap();
    bench.calibrate(400).await.unwrap();
    let case = CaseSpec { phase: Phase::Prefill, context: 400, max_tokens: 1, load: Load::Closed { concurrency: 1 } };
    let blk = bench.run_case(0, &case, Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
    let server_faults: Vec<_> = blk.requests.iter().flat_map(|r| &r.faults).filter(|f| f.kind == FaultKind::Server).collect();
    assert!(!server_faults.is_empty(), "the test needs a 500 that echoed the header");
    assert!(server_faults.iter().all(|f| f.detail.contains("Bearer <redacted>")), "{:?}", server_faults[0].detail);
    let json = serde_json::to_string(&blk).unwrap();
    assert!(!json.contains(secret));
    // An unset key variable is an error naming the variable, before any request.
    let mut missing = side("x", &server.url());
    missing.key_env = Some("CTXCOST_TEST_KEY_UNSET_VARIABLE".into());
    let err = Bench::new(vec![missing], settings(1), None).err().unwrap();
    assert!(err.contains("CTXCOST_TEST_KEY_UNSET_VARIABLE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_on_schedule_however_slow_the_server() {
    // 300 ms to first token, arrivals every ~50 ms: a closed loop of one would send a request
    // every ~300 ms; the open loop must keep to its Poisson schedule.
    let server = MockServer::start("127.0.0.1:0", MockConfig { ttft_ms: 300.0, tpot_ms: 1.0, ..Default::default() }).await.unwrap();
    let ep = Arc::new(Endpoint::new("m", &server.url(), "mock", Api::Chat, None, true).unwrap());
    let spec = LoadSpec {
        load: Load::Open { rate_rps: 20.0 },
        requests: 10,
        max_duration: Duration::from_secs(30),
        limits: RequestLimits::default(),
        seed: 9,
    };
    let logs = run_case(&[ep], vec![(0..10).map(|i| body(&format!("[{i}] q"), 2)).collect()], &spec, Arc::new(AtomicUsize::new(0))).await;
    let r = &logs[0];
    assert!(r.iter().all(|x| x.ok));
    let schedule = ctxcost_engines::http::load::poisson_schedule(10, 20.0, 9);
    for (x, at) in r.iter().zip(&schedule) {
        assert!((x.intended_ms - at * 1e3).abs() < 1.0, "intended {} vs schedule {}", x.intended_ms, at * 1e3);
        assert!(x.send_lag_ms() < 30.0, "request {} sent {} ms late", x.index, x.send_lag_ms());
    }
    // Requests overlap: a request went out before the previous one had answered.
    assert!(r.windows(2).filter(|w| w[1].sent_ms < w[0].end_ms).count() >= 5);
    let m = ctxcost_core::endpoint::metrics(r, &Slo::default(), &spec.load);
    assert!(m.ttft_ms.unwrap().median >= 299.0);
}

/// Request logs of both sides as (side, log), in order of actual send.
fn by_send_time(logs: &[Vec<ctxcost_core::endpoint::RequestLog>]) -> Vec<(usize, ctxcost_core::endpoint::RequestLog)> {
    let mut all: Vec<_> = logs.iter().enumerate().flat_map(|(s, v)| v.iter().map(move |r| (s, r.clone()))).collect();
    all.sort_by(|x, y| x.1.sent_ms.total_cmp(&y.1.sent_ms));
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_order_takes_the_sides_in_turn_and_together_overlaps_them() {
    let cfg = MockConfig { ttft_ms: 30.0, tpot_ms: 4.0, ..Default::default() };
    let a = MockServer::start("127.0.0.1:0", cfg.clone()).await.unwrap();
    let b = MockServer::start("127.0.0.1:0", cfg).await.unwrap();
    let eps: Vec<Arc<Endpoint>> = [&a, &b]
        .iter()
        .map(|s| Arc::new(Endpoint::new("m", &s.url(), "mock", Api::Chat, None, true).unwrap()))
        .collect();
    let n = 5;
    let bodies = || (0..2).map(|s| (0..n).map(|i| body(&format!("[{s}-{i}] a b c"), 4)).collect()).collect();
    let spec = |load| LoadSpec { load, requests: n, max_duration: Duration::from_secs(60), limits: RequestLimits::default(), seed: 1 };

    // Alternate at concurrency 1: A0, B0, A1, B1, ...; each request sent only after the one
    // before it (either side) ended.
    let logs = run_case(&eps, bodies(), &spec(Load::Alternate { concurrency: 1 }), Arc::new(AtomicUsize::new(0))).await;
    assert!(logs.iter().all(|v| v.len() == n && v.iter().all(|r| r.ok)));
    let order = by_send_time(&logs);
    let seq: Vec<(usize, usize)> = order.iter().map(|(s, r)| (*s, r.index)).collect();
    let want: Vec<(usize, usize)> = (0..n).flat_map(|i| [(0, i), (1, i)]).collect();
    assert_eq!(seq, want);
    for w in order.windows(2) {
        assert!(w[1].1.sent_ms >= w[0].1.end_ms, "overlap: {:?} then {:?}", (w[0].0, w[0].1.index), (w[1].0, w[1].1.index));
    }

    // Together at concurrency 1 per side: request i of A and of B are in flight at once.
    let logs = run_case(&eps, bodies(), &spec(Load::Closed { concurrency: 1 }), Arc::new(AtomicUsize::new(0))).await;
    for i in 0..n {
        let (ra, rb) = (&logs[0][i], &logs[1][i]);
        assert!(ra.sent_ms < rb.end_ms && rb.sent_ms < ra.end_ms, "request {i}: A {:?} B {:?}", (ra.sent_ms, ra.end_ms), (rb.sent_ms, rb.end_ms));
    }
}
