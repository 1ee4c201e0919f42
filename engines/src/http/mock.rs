//! A small OpenAI-compatible streaming server for tests and dry runs (`ctxcost serve-mock`):
//! configurable time to first token and per-token delay, vLLM- or DeepSeek-style usage
//! blocks, and faults injected by request number.
//!
//! Token accounting: a prompt's tokens are its whitespace-separated words, plus a fixed chat
//! template overhead on `/v1/chat/completions`; with `token_growth_per_1k` the tokens per word
//! grow with the prompt's length (as a BPE tokenizer's ratio differs between texts), so no
//! single line through two prompt lengths predicts the others. It always generates exactly
//! `max_tokens` tokens, one word per token. Like vLLM it can refuse a prompt beyond its
//! context limit (HTTP 400, the limit in `/v1/models` as `max_model_len`) and, like servers
//! with strict request schemas, `ignore_eos` (HTTP 422). It serves only paths under `/v1/`. HTTP/1.1 with keep-alive; streams use chunked encoding, each
//! event its own write (or the whole stream in one write with `buffered`, as a buffering
//! proxy delivers it). A query string on the path (`?api-version=`) is accepted.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Usage block style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageStyle {
    /// `usage.prompt_tokens_details.cached_tokens`.
    Vllm,
    /// `usage.prompt_cache_hit_tokens` / `prompt_cache_miss_tokens`.
    DeepSeek,
    /// Prompt and completion tokens only: no cached-token count at all.
    Plain,
}

/// A fault injected into one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MockFault {
    /// HTTP 500 with a body that echoes the request's Authorization header and its request
    /// line with the query string (so tests can check that keys and query secrets never
    /// reach records).
    Server,
    /// HTTP 429 with `Retry-After: seconds`.
    RateLimited { retry_after_s: f64 },
    /// A stream whose second event is not JSON.
    MalformedSse,
    /// Close the connection after half of the tokens.
    CutMidway,
    /// Accept, then send nothing for this long.
    Stall { seconds: f64 },
}

impl MockFault {
    /// `500`, `429` or `429:2` (Retry-After seconds), `malformed`, `cut`, `stall` or `stall:30`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (k, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a.parse::<f64>().map_err(|_| format!("bad fault argument in `{s}`"))?)),
            None => (s, None),
        };
        Ok(match k {
            "500" | "5xx" | "server" => MockFault::Server,
            "429" => MockFault::RateLimited { retry_after_s: arg.unwrap_or(1.0) },
            "malformed" => MockFault::MalformedSse,
            "cut" => MockFault::CutMidway,
            "stall" => MockFault::Stall { seconds: arg.unwrap_or(3600.0) },
            _ => return Err(format!("unknown fault `{s}` (choose: 500, 429[:s], malformed, cut, stall[:s])")),
        })
    }
}

/// Server behaviour.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Delay before the first token (ms), plus `ttft_ms_per_1k_prompt` per 1000 prompt tokens.
    pub ttft_ms: f64,
    pub ttft_ms_per_1k_prompt: f64,
    /// Delay between tokens (ms).
    pub tpot_ms: f64,
    pub usage: UsageStyle,
    /// Chat template tokens added to a chat prompt's word count.
    pub chat_overhead: u64,
    /// Share of prompt tokens reported as cached.
    pub cached_fraction: f64,
    /// Faults by request number (0-based, in order of arrival).
    pub faults: BTreeMap<usize, MockFault>,
    /// Send each stream in one write after the generation delays (a buffering proxy): every
    /// text chunk arrives at once, so TPOT and ITL are 0 at the client.
    pub buffered: bool,
    /// Growth of the tokens per word with the prompt's length: a prompt of `w` words counts
    /// `w * (1 + token_growth_per_1k * w / 1000)` tokens (rounded); 0 counts words.
    pub token_growth_per_1k: f64,
    /// Refuse prompts of more tokens than this with HTTP 400 (vLLM's message), and list it
    /// as `max_model_len` in `/v1/models` unless `max_model_len_unlisted`.
    pub max_model_len: Option<u64>,
    pub max_model_len_unlisted: bool,
    /// Refuse a request carrying `ignore_eos` with HTTP 422 naming the field (a strict
    /// request schema, as `transformers serve` has).
    pub reject_ignore_eos: bool,
    /// Stream every token with empty text (the finish reason and usage still come), as a
    /// server whose detokenizer holds back partial byte-level tokens does at max_tokens 1.
    pub empty_text: bool,
}

impl MockConfig {
    /// Prompt tokens of a prompt of `words` words (before the chat template's overhead).
    pub fn tokens_of_words(&self, words: u64) -> u64 {
        let w = words as f64;
        (w * (1.0 + self.token_growth_per_1k * w / 1000.0)).round() as u64
    }
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            ttft_ms: 20.0,
            ttft_ms_per_1k_prompt: 0.0,
            tpot_ms: 5.0,
            usage: UsageStyle::Vllm,
            chat_overhead: 6,
            cached_fraction: 0.0,
            faults: BTreeMap::new(),
            buffered: false,
            token_growth_per_1k: 0.0,
            max_model_len: None,
            max_model_len_unlisted: false,
            reject_ignore_eos: false,
            empty_text: false,
        }
    }
}

/// A running mock server.
pub struct MockServer {
    pub addr: SocketAddr,
    /// Requests received so far.
    pub received: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl MockServer {
    /// Bind `addr` (use port 0 for any free port) and serve until dropped.
    pub async fn start(addr: &str, config: MockConfig) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(AtomicUsize::new(0));
        let (cfg, count) = (Arc::new(config), received.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                // Each token is its own small write: without NODELAY, Nagle's algorithm and
                // delayed ACKs would hold them back by tens of milliseconds.
                let _ = sock.set_nodelay(true);
                let (cfg, count) = (cfg.clone(), count.clone());
                tokio::spawn(async move {
                    let _ = serve_connection(sock, cfg, count).await;
                });
            }
        });
        Ok(MockServer { addr, received, task })
    }

    /// Base URL, ending in `/v1`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(mut sock: TcpStream, cfg: Arc<MockConfig>, count: Arc<AtomicUsize>) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read the head.
        let head_end = loop {
            if let Some(p) = find(&buf, b"\r\n\r\n") {
                break p + 4;
            }
            let mut tmp = [0u8; 8192];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_string();
        let mut headers = BTreeMap::new();
        for l in lines {
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        while buf.len() < head_end + len {
            let mut tmp = [0u8; 65536];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        let body: Vec<u8> = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        let number = count.fetch_add(1, Ordering::SeqCst);
        let keep = respond(&mut sock, &cfg, number, &request_line, &headers, &body).await?;
        if !keep {
            return Ok(());
        }
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

async fn plain(sock: &mut TcpStream, status: &str, extra: &str, body: &str) -> std::io::Result<bool> {
    let msg = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    sock.write_all(msg.as_bytes()).await?;
    Ok(true)
}

async fn chunk(sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
    sock.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await?;
    sock.flush().await
}

/// Serve one request; `Ok(false)` closes the connection.
async fn respond(
    sock: &mut TcpStream,
    cfg: &MockConfig,
    number: usize,
    request_line: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
) -> std::io::Result<bool> {
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    if !path.starts_with("/v1/") {
        return plain(sock, "404 Not Found", "", r#"{"detail":"Not Found"}"#).await;
    }
    if request_line.starts_with("GET ") && path.ends_with("/models") {
        let mut model = json!({"id": "mock", "object": "model"});
        if let Some(n) = cfg.max_model_len.filter(|_| !cfg.max_model_len_unlisted) {
            model["max_model_len"] = json!(n);
        }
        return plain(sock, "200 OK", "", &json!({"object": "list", "data": [model]}).to_string()).await;
    }
    let chat = path.ends_with("/chat/completions");
    if !request_line.starts_with("POST ") || !(chat || path.ends_with("/completions")) {
        return plain(sock, "404 Not Found", "", r#"{"error":{"message":"not found"}}"#).await;
    }
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return plain(sock, "400 Bad Request", "", &json!({"error": {"message": e.to_string()}}).to_string()).await,
    };
    let fault = cfg.faults.get(&number).copied();
    match fault {
        Some(MockFault::Server) => {
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            let msg = json!({"error": {"message": format!("internal error (request `{request_line}` had authorization `{auth}`)")}});
            return plain(sock, "500 Internal Server Error", "", &msg.to_string()).await;
        }
        Some(MockFault::RateLimited { retry_after_s }) => {
            return plain(sock, "429 Too Many Requests", &format!("retry-after: {retry_after_s}\r\n"), r#"{"error":{"message":"rate limited"}}"#)
                .await;
        }
        Some(MockFault::Stall { seconds }) => {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            return Ok(false);
        }
        _ => {}
    }
    if cfg.reject_ignore_eos && req.get("ignore_eos").is_some() {
        let msg = json!({"detail": [{"type": "extra_forbidden", "loc": ["body", "ignore_eos"], "msg": "Extra inputs are not permitted", "input": true}]});
        return plain(sock, "422 Unprocessable Entity", "", &msg.to_string()).await;
    }
    let prompt_words = if chat {
        cfg.tokens_of_words(req["messages"].as_array().map(|m| m.iter().map(|x| words(&x["content"])).sum::<u64>()).unwrap_or(0)) + cfg.chat_overhead
    } else {
        cfg.tokens_of_words(words(&req["prompt"]))
    };
    let max_tokens = req["max_tokens"].as_u64().unwrap_or(16).max(1);
    if let Some(limit) = cfg.max_model_len.filter(|&l| prompt_words + max_tokens > l) {
        let msg = format!(
            "This model's maximum context length is {limit} tokens. However, you requested {} tokens ({prompt_words} in the messages, \
             {max_tokens} in the completion). Please reduce the length of the messages or completion.",
            prompt_words + max_tokens
        );
        return plain(sock, "400 Bad Request", "", &json!({"object": "error", "message": msg, "type": "BadRequestError", "code": 400}).to_string()).await;
    }
    let cached = (prompt_words as f64 * cfg.cached_fraction).round() as u64;
    let usage = match cfg.usage {
        UsageStyle::Vllm => json!({"prompt_tokens": prompt_words, "completion_tokens": max_tokens,
            "total_tokens": prompt_words + max_tokens, "prompt_tokens_details": {"cached_tokens": cached}}),
        UsageStyle::Plain => json!({"prompt_tokens": prompt_words, "completion_tokens": max_tokens, "total_tokens": prompt_words + max_tokens}),
        UsageStyle::DeepSeek => json!({"prompt_tokens": prompt_words, "completion_tokens": max_tokens,
            "total_tokens": prompt_words + max_tokens, "prompt_cache_hit_tokens": cached, "prompt_cache_miss_tokens": prompt_words - cached}),
    };
    let with_usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n").await?;
    // Buffered: events are gathered and sent in one chunk at the end.
    let mut out = Events { held: cfg.buffered.then(String::new) };
    let event = |text: &str, finish: Option<&str>| {
        let choice = if chat {
            json!({"index": 0, "delta": {"content": text}, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish})
        };
        format!("data: {}\n\n", json!({"id": "mock", "object": "chunk", "model": req["model"], "choices": [choice]}))
    };
    if chat {
        // vLLM first sends the role with empty content.
        out.send(sock, &format!("data: {}\n\n", json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}))).await?;
    }
    let ttft = cfg.ttft_ms + cfg.ttft_ms_per_1k_prompt * prompt_words as f64 / 1000.0;
    let start = tokio::time::Instant::now();
    for t in 0..max_tokens {
        let due = start + Duration::from_secs_f64((ttft + cfg.tpot_ms * t as f64) / 1000.0);
        tokio::time::sleep_until(due).await;
        if fault == Some(MockFault::CutMidway) && t >= max_tokens / 2 {
            // What was held, then half a chunk, then close.
            out.release(sock).await?;
            sock.write_all(b"20\r\ndata: {\"choices\":[{\"delta\"").await?;
            return Ok(false);
        }
        if fault == Some(MockFault::MalformedSse) && t == 1.min(max_tokens - 1) {
            out.send(sock, "data: {\"choices\": [oops\n\n").await?;
            continue;
        }
        let finish = (t + 1 == max_tokens).then_some("length");
        out.send(sock, &event(&if cfg.empty_text { String::new() } else { format!(" w{t}") }, finish)).await?;
    }
    if with_usage {
        out.send(sock, &format!("data: {}\n\n", json!({"id": "mock", "choices": [], "usage": usage}))).await?;
    }
    out.send(sock, "data: [DONE]\n\n").await?;
    out.release(sock).await?;
    sock.write_all(b"0\r\n\r\n").await?;
    sock.flush().await?;
    Ok(true)
}

/// The events of one stream: written one by one, or held and written at once.
struct Events {
    held: Option<String>,
}

impl Events {
    async fn send(&mut self, sock: &mut TcpStream, data: &str) -> std::io::Result<()> {
        match &mut self.held {
            Some(h) => {
                h.push_str(data);
                Ok(())
            }
            None => chunk(sock, data).await,
        }
    }

    async fn release(&mut self, sock: &mut TcpStream) -> std::io::Result<()> {
        match self.held.take() {
            Some(h) if !h.is_empty() => {
                let r = chunk(sock, &h).await;
                self.held = Some(String::new());
                r
            }
            _ => Ok(()),
        }
    }
}

fn words(v: &Value) -> u64 {
    v.as_str().map(|s| s.split_whitespace().count() as u64).unwrap_or(0)
}
