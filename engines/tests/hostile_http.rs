//! The endpoint client against a hostile HTTP server (loopback only; every response bounded
//! in bytes and time): streams delivered in one read, an endless line, echoes of every
//! credential form, HTML and plain JSON answers to a stream request, redirects to another
//! server and within the same one, a 429 with an HTTP-date `Retry-After`, and a server whose
//! prompt count is far from the target. Every text that could reach a file or the terminal
//! is searched for each secret.
#![cfg(feature = "http")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ctxcost_core::endpoint::{FaultKind, Load, RequestLog, Slo};
use ctxcost_core::Phase;
use ctxcost_engines::http::client::{discover_model, send, Endpoint, RequestLimits};
use ctxcost_engines::http::openai::{request_body, Api};
use ctxcost_engines::http::{Bench, CaseSpec, RunSettings, SideSpec};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the server does with each request.
#[derive(Debug, Clone)]
enum Behaviour {
    /// A well-formed stream, every event in one write (a buffering proxy).
    Buffered,
    /// `200 text/event-stream`, then `data: aaaa...` without a line end, up to 64 MiB.
    EndlessLine,
    /// `500` whose body echoes the request line (with its query), the Authorization header
    /// and a Basic credential.
    EchoError,
    /// A stream whose error event echoes the same.
    EchoInStream,
    /// `200 text/html` login page.
    Html,
    /// `200 application/json`: a whole non-streamed answer.
    Json,
    /// `200 text/plain` with an HTML page (no content-type hint).
    PlainHtml,
    /// `307` to this URL.
    RedirectTo(String),
    /// `/v1/...` -> `307` to `/v2/...` on the same server, which streams.
    SameServerRedirect,
    /// The first request `429` with `Retry-After` an HTTP-date 3 s ahead; then streams.
    RateLimitedUntilDate,
    /// Streams; reports 3x the prompt's words as prompt tokens when max_tokens > 1.
    TriplePromptOnDecode,
}

struct Hostile {
    url: String,
    port: u16,
    /// Request line and headers of every request received.
    seen: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const BASIC_SECRET: &str = "dXNlcjpodW50ZXIyLXBhc3N3b3Jk"; // base64("user:hunter2-password")

async fn hostile(b: Behaviour) -> Hostile {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, count) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
    let (s2, c2) = (seen.clone(), count.clone());
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (b, s, c) = (b.clone(), s2.clone(), c2.clone());
            tokio::spawn(async move {
                // Every connection ends within 20 s, whatever the client does.
                let _ = tokio::time::timeout(Duration::from_secs(20), serve(sock, b, s, c)).await;
            });
        }
    });
    Hostile { url: format!("http://127.0.0.1:{port}/v1"), port, seen, count, task }
}

/// Read one request (head at most 64 KiB, body at most 16 MiB): (head, body).
async fn read_request(sock: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0)
        .min(16 << 20);
    while buf.len() < head_end + len {
        let mut tmp = [0u8; 65536];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some((head, buf[head_end..head_end + len].to_vec()))
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
        .unwrap_or("")
}

/// A whole OpenAI-style stream: role, `max_tokens` text events, usage, `[DONE]`.
fn stream_text(req: &Value, prompt_scale: u64) -> String {
    let words = req["messages"][0]["content"].as_str().unwrap_or("").split_whitespace().count() as u64;
    let n = req["max_tokens"].as_u64().unwrap_or(4).max(1);
    let mut s = format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}));
    for t in 0..n {
        let finish = (t + 1 == n).then_some("length");
        s.push_str(&format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"content": format!(" w{t}")}, "finish_reason": finish}]})));
    }
    let usage = json!({"prompt_tokens": words * prompt_scale, "completion_tokens": n});
    s.push_str(&format!("data: {}\n\ndata: [DONE]\n\n", json!({"choices": [], "usage": usage})));
    s
}

async fn reply(sock: &mut TcpStream, status: &str, headers: &str, body: &str) {
    let msg = format!("HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = sock.write_all(msg.as_bytes()).await;
    let _ = sock.flush().await;
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let mon = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][m as usize - 1];
    format!("{wd}, {d:02} {mon} {y} {:02}:{:02}:{:02} GMT", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn serve(mut sock: TcpStream, b: Behaviour, seen: Arc<Mutex<Vec<String>>>, count: Arc<AtomicUsize>) {
    let Some((head, body)) = read_request(&mut sock).await else { return };
    let number = count.fetch_add(1, Ordering::SeqCst);
    seen.lock().unwrap().push(head.clone());
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request_line = head.lines().next().unwrap_or("").to_string();
    let auth = header(&head, "authorization").to_string();
    let sse = "content-type: text/event-stream\r\n";
    match b {
        Behaviour::Buffered => reply(&mut sock, "200 OK", sse, &stream_text(&req, 1)).await,
        Behaviour::TriplePromptOnDecode => {
            let scale = if req["max_tokens"].as_u64().unwrap_or(1) > 1 { 3 } else { 1 };
            reply(&mut sock, "200 OK", sse, &stream_text(&req, scale)).await
        }
        Behaviour::EndlessLine => {
            let _ = sock.write_all(format!("HTTP/1.1 200 OK\r\n{sse}connection: close\r\n\r\ndata: ").as_bytes()).await;
            let block = vec![b'a'; 64 * 1024];
            for _ in 0..1024 {
                if sock.write_all(&block).await.is_err() {
                    break;
                }
            }
        }
        Behaviour::EchoError => {
            let msg = format!("bad credentials: request `{request_line}` authorization `{auth}`, proxy saw `Authorization: Basic {BASIC_SECRET}`");
            reply(&mut sock, "500 Internal Server Error", "content-type: application/json\r\n", &json!({"error": {"message": msg}}).to_string()).await
        }
        Behaviour::EchoInStream => {
            let msg = format!("denied: {request_line} with {auth}; basic {BASIC_SECRET}");
            let text = format!("data: {}\n\n", json!({"error": {"message": msg}}));
            reply(&mut sock, "200 OK", sse, &text).await
        }
        Behaviour::Html => {
            reply(&mut sock, "200 OK", "content-type: text/html; charset=utf-8\r\n", "<!doctype html>\n<html><body><h1>Login</h1> to continue</body></html>").await
        }
        Behaviour::Json => {
            let body = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"content": "hello"}}], "usage": {"prompt_tokens": 5}});
            reply(&mut sock, "200 OK", "content-type: application/json\r\n", &body.to_string()).await
        }
        Behaviour::PlainHtml => reply(&mut sock, "200 OK", "content-type: text/plain\r\n", "<html><body>Gateway says hello</body></html>\n").await,
        Behaviour::RedirectTo(to) => reply(&mut sock, "307 Temporary Redirect", &format!("location: {to}\r\n"), "").await,
        Behaviour::SameServerRedirect => {
            let target = request_line.split_whitespace().nth(1).unwrap_or("/");
            if let Some(rest) = target.strip_prefix("/v1/") {
                reply(&mut sock, "307 Temporary Redirect", &format!("location: /v2/{rest}\r\n"), "").await
            } else {
                reply(&mut sock, "200 OK", sse, &stream_text(&req, 1)).await
            }
        }
        Behaviour::RateLimitedUntilDate => {
            if number == 0 {
                let at = http_date(SystemTime::now() + Duration::from_secs(3));
                reply(&mut sock, "429 Too Many Requests", &format!("retry-after: {at}\r\n"), r#"{"error":{"message":"slow down"}}"#).await
            } else {
                reply(&mut sock, "200 OK", sse, &stream_text(&req, 1)).await
            }
        }
    }
}

fn body(max_tokens: usize) -> Arc<Vec<u8>> {
    Arc::new(serde_json::to_vec(&request_body(Api::Chat, "m", "[1] a b c d", max_tokens, true)).unwrap())
}

fn limits() -> RequestLimits {
    RequestLimits { timeout: Duration::from_secs(15), retries: 2, max_retry_wait: Duration::from_secs(10) }
}

/// One request to `url` with `key`; its log.
async fn one(url: &str, key: Option<&str>, max_tokens: usize) -> RequestLog {
    let ep = Arc::new(Endpoint::new("h", url, "m", Api::Chat, key.map(str::to_string), true).unwrap());
    let t0 = tokio::time::Instant::now();
    send(ep, body(max_tokens), 0, t0, t0, limits()).await
}

fn settings(requests: usize) -> RunSettings {
    RunSettings {
        requests,
        max_duration: Duration::from_secs(60),
        limits: limits(),
        warmup: 0,
        slo: Slo { ttft_ms: Some(1000.0), tpot_ms: Some(50.0), e2e_ms: None },
        seed: 5,
        usd_per_gpu_hour: Some(2.0),
        gpus: None,
        cache_threshold: 0.05,
    }
}

fn side(url: &str) -> SideSpec {
    SideSpec { label: "h".into(), url: url.into(), model: "m".into(), api: Api::Chat, key_env: None, price: None, ignore_eos: true }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_streams_give_zero_tpot_and_a_block_that_reads_back() {
    let h = hostile(Behaviour::Buffered).await;
    let mut bench = Bench::new(vec![side(&h.url)], settings(4), None).unwrap();
    bench.calibrate(300).await.unwrap();
    let case = CaseSpec { phase: Phase::Decode, context: 300, max_tokens: 8, load: Load::Closed { concurrency: 1 } };
    let blk = bench.run_case(0, &case, Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
    assert_eq!(blk.metrics.ok, 4, "{:?}", blk.requests[0].faults);
    let (tpot, itl) = (blk.metrics.tpot_ms.unwrap(), blk.metrics.itl_ms.unwrap());
    assert_eq!((tpot.median, itl.median), (0.0, 0.0), "all text arrived in one read");
    assert!(tpot.rel_half_width.is_finite() && itl.rel_half_width.is_finite());
    let text = serde_json::to_string(&blk).unwrap();
    assert!(!text.contains("null"), "{text}");
    let back: ctxcost_core::endpoint::EndpointBlock = serde_json::from_str(&text).unwrap();
    assert_eq!(back, blk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_line_is_malformed_not_a_memory_leak() {
    let h = hostile(Behaviour::EndlessLine).await;
    let log = one(&h.url, None, 4).await;
    assert!(!log.ok);
    let f = &log.faults[0];
    assert_eq!(f.kind, FaultKind::MalformedSse, "{}", f.detail);
    assert!(f.detail.contains("longer than"), "{}", f.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_credentials_never_reach_a_text() {
    let (key, q) = ("sk-hostile-key-0a1b2c3d", "qs-hostile-secret-9f8e");
    let secrets = [key, q, BASIC_SECRET, "2031-01-01-preview"];
    let query = format!("?api_key={q}&api-version=2031-01-01-preview");
    let mut texts: Vec<String> = Vec::new();
    for b in [Behaviour::EchoError, Behaviour::EchoInStream] {
        let h = hostile(b).await;
        let log = one(&format!("{}{query}", h.url), Some(key), 4).await;
        assert!(!log.ok && !log.faults.is_empty());
        // The query string was sent, after the joined path; the key as a bearer token.
        let seen = h.seen.lock().unwrap()[0].clone();
        assert!(seen.starts_with(&format!("POST /v1/chat/completions{query} HTTP/1.1")), "{seen}");
        assert!(seen.contains(&format!("Bearer {key}")));
        texts.push(serde_json::to_string(&log).unwrap());
        texts.extend(log.faults.iter().map(|f| f.detail.clone()));
    }
    // Transport errors (reqwest names the URL, query included) and model discovery.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let gone = format!("http://127.0.0.1:{closed}/v1{query}");
    let log = one(&gone, Some(key), 4).await;
    assert_eq!(log.faults[0].kind, FaultKind::Connect);
    texts.push(serde_json::to_string(&log).unwrap());
    texts.push(discover_model(&gone, Some(key.into())).await.unwrap_err());
    let e = Endpoint::new("h", &gone, "m", Api::Chat, Some(key.into()), true).unwrap();
    texts.push(e.public_url());
    // Credentials in the URL are refused, without repeating them.
    let userinfo = Endpoint::new("h", &format!("http://user:hunter2-password@127.0.0.1:{closed}/v1"), "m", Api::Chat, None, true).unwrap_err();
    assert!(userinfo.contains("--key-env"), "{userinfo}");
    texts.push(userinfo);
    for t in &texts {
        for s in secrets.iter().chain(&["hunter2"]) {
            assert!(!t.contains(s), "`{s}` leaked into: {t}");
        }
    }
    assert!(texts.iter().any(|t| t.contains("<redacted>")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_plain_json_are_not_a_stream_and_not_a_cut() {
    for (b, want) in [(Behaviour::Html, "text/html"), (Behaviour::Json, "application/json"), (Behaviour::PlainHtml, "text/plain")] {
        let h = hostile(b.clone()).await;
        let log = one(&h.url, None, 4).await;
        let f = &log.faults[0];
        assert_eq!(f.kind, FaultKind::NotAStream, "{b:?}: {}", f.detail);
        assert!(f.detail.contains(want), "{b:?}: {}", f.detail);
        let start = match b {
            Behaviour::Html => "Login",
            Behaviour::Json => "chat.completion",
            _ => "Gateway says hello",
        };
        assert!(f.detail.contains(start), "{b:?}: the start of the body is shown: {}", f.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_server_is_not_followed() {
    let other = hostile(Behaviour::Buffered).await;
    let to = format!("http://127.0.0.1:{}/v1/chat/completions?sig=redirect-secret-77", other.port);
    let h = hostile(Behaviour::RedirectTo(to)).await;
    let log = one(&h.url, Some("sk-redirect-key-1234"), 4).await;
    assert!(!log.ok);
    let f = &log.faults[0];
    assert_eq!((f.kind, f.http_status), (FaultKind::Redirect, Some(307)), "{}", f.detail);
    assert!(f.detail.contains(&format!("127.0.0.1:{}", other.port)) && f.detail.contains("another server"), "{}", f.detail);
    assert!(!f.detail.contains("redirect-secret-77"), "{}", f.detail);
    assert_eq!(other.count.load(Ordering::SeqCst), 0, "the other server was never asked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_same_server_redirect_is_followed_and_recorded() {
    let h = hostile(Behaviour::SameServerRedirect).await;
    let log = one(&h.url, None, 4).await;
    assert!(log.ok, "{:?}", log.faults);
    let to = log.redirected_to.as_deref().unwrap_or_default();
    assert!(to.contains("/v2/chat/completions"), "{to}");
    assert_eq!(h.count.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_date_retry_after_is_honoured() {
    let h = hostile(Behaviour::RateLimitedUntilDate).await;
    let log = one(&h.url, None, 4).await;
    assert!(log.ok, "{:?}", log.faults);
    assert_eq!(log.faults[0].kind, FaultKind::RateLimited);
    // The date is 3 s ahead at one-second resolution: at least 2 s of waiting, where an
    // ignored header would have meant the 1 s default.
    assert!(log.sent_ms - log.intended_ms >= 1900.0, "retried after {} ms", log.sent_ms - log.intended_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_far_from_its_target_is_flagged() {
    let h = hostile(Behaviour::TriplePromptOnDecode).await;
    let mut bench = Bench::new(vec![side(&h.url)], settings(2), None).unwrap();
    bench.calibrate(400).await.unwrap();
    let prefill = CaseSpec { phase: Phase::Prefill, context: 400, max_tokens: 1, load: Load::Closed { concurrency: 1 } };
    let blk = bench.run_case(0, &prefill, Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
    assert!(!blk.metrics.prompt_check.unwrap().flagged, "{:?}", blk.metrics.prompt_check);
    let decode = CaseSpec { phase: Phase::Decode, context: 400, max_tokens: 4, load: Load::Closed { concurrency: 1 } };
    let blk = bench.run_case(1, &decode, Arc::new(AtomicUsize::new(0))).await.unwrap().remove(0);
    let p = blk.metrics.prompt_check.unwrap();
    assert!(p.flagged && (p.ratio - 3.0).abs() < 0.05, "{p:?}");
}
