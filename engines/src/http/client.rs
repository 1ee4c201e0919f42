//! One streamed request against one endpoint, with raw timestamps and every fault classified.

use std::sync::Arc;
use std::time::Duration;

use ctxcost_core::endpoint::{Fault, FaultKind, RequestLog};
use tokio::time::Instant;

use super::openai::{self, Api, StreamItem, Usage};
use super::sse::SseParser;

/// One side of a run: where to send and how.
#[derive(Debug)]
pub struct Endpoint {
    /// Short name used in engine ids and reports.
    pub label: String,
    /// Base URL as given (e.g. `http://host:8000/v1`).
    pub base_url: String,
    pub model: String,
    pub api: Api,
    /// The API key (read from the environment; never written anywhere).
    key: Option<String>,
    pub ignore_eos: bool,
    client: reqwest::Client,
}

/// Limits of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// From the first send to the end of the stream, retries included.
    pub timeout: Duration,
    /// 429 retries honouring `Retry-After`.
    pub retries: usize,
    /// Longest `Retry-After` honoured.
    pub max_retry_wait: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { timeout: Duration::from_secs(300), retries: 2, max_retry_wait: Duration::from_secs(30) }
    }
}

impl Endpoint {
    /// `key`: the API key's value, if any. Builds the HTTP client (rustls with ring).
    pub fn new(label: &str, base_url: &str, model: &str, api: Api, key: Option<String>, ignore_eos: bool) -> Result<Self, String> {
        let url = reqwest::Url::parse(base_url).map_err(|e| format!("bad URL `{}`: {e}", public_url(base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("bad URL `{}`: the scheme must be http or https", public_url(base_url)));
        }
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Endpoint {
            label: label.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            api,
            key: key.filter(|k| !k.is_empty()),
            ignore_eos,
            client,
        })
    }

    /// The request URL: the base (which should end in `/v1`) plus the API path.
    pub fn request_url(&self) -> String {
        format!("{}/{}", self.base_url, self.api.path())
    }

    /// The base URL without credentials or query string, safe to record.
    pub fn public_url(&self) -> String {
        public_url(&self.base_url)
    }

    /// Replace the key wherever it appears in a text.
    pub fn redact(&self, s: &str) -> String {
        match &self.key {
            Some(k) if k.len() >= 4 => s.replace(k.as_str(), "<redacted>"),
            _ => s.to_string(),
        }
    }
}

/// Install ring as rustls's process-wide provider (reqwest is built without one).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Parse a URL (re-exported so callers need no HTTP crate of their own).
pub fn parse_url(raw: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(raw).map_err(|e| e.to_string())
}

/// The first model id of a server's `/v1/models` (`base_url` ends in `/v1`).
pub async fn discover_model(base_url: &str, key: Option<String>) -> Result<String, String> {
    install_crypto_provider();
    let shown = public_url(base_url);
    let client = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().map_err(|e| e.to_string())?;
    let mut req = client.get(format!("{}/models", base_url.trim_end_matches('/')));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.map_err(|e| format!("cannot reach {shown}/models to find the model name ({})", error_chain(&e)))?;
    let text = resp.text().await.map_err(|e| format!("{shown}/models: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|_| format!("{shown}/models did not answer with JSON"))?;
    v["data"][0]["id"].as_str().map(str::to_string).ok_or_else(|| format!("{shown}/models lists no model"))
}

/// A URL without user info and query string.
pub fn public_url(raw: &str) -> String {
    match reqwest::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => "<unparsable URL>".into(),
    }
}

/// Result of one attempt.
enum Attempt {
    Ok { sent: Instant, chunks: Vec<Instant>, end: Instant, usage: Usage },
    Failed { sent: Instant, fault: FaultKind, status: Option<u16>, detail: String, retry_after: Option<Duration> },
}

/// Send one request (retrying 429s) and return its log. `t0` is the case's clock origin;
/// `intended` the scheduled send time.
pub async fn send(ep: Arc<Endpoint>, body: Arc<Vec<u8>>, index: usize, t0: Instant, intended: Instant, limits: RequestLimits) -> RequestLog {
    let ms = |t: Instant| t.saturating_duration_since(t0).as_secs_f64() * 1e3;
    let deadline = Instant::now() + limits.timeout;
    let mut log = RequestLog { index, intended_ms: ms(intended), ..Default::default() };
    let mut retries_left = limits.retries;
    loop {
        let attempt = match tokio::time::timeout_at(deadline, attempt(&ep, &body)).await {
            Ok(a) => a,
            Err(_) => Attempt::Failed {
                sent: deadline - limits.timeout,
                fault: FaultKind::Timeout,
                status: None,
                detail: format!("no complete response within {:.0} s", limits.timeout.as_secs_f64()),
                retry_after: None,
            },
        };
        match attempt {
            Attempt::Ok { sent, chunks, end, usage } => {
                log.sent_ms = ms(sent);
                log.chunks_ms = chunks.into_iter().map(ms).collect();
                log.end_ms = ms(end);
                log.prompt_tokens = usage.prompt_tokens;
                log.completion_tokens = usage.completion_tokens;
                log.cached_tokens = usage.cached_tokens;
                log.ok = true;
                return log;
            }
            Attempt::Failed { sent, fault, status, detail, retry_after } => {
                let now = Instant::now();
                log.sent_ms = ms(sent);
                log.end_ms = ms(now);
                log.faults.push(Fault { kind: fault, http_status: status, detail: ep.redact(&detail), at_ms: ms(now) });
                let wait = retry_after.unwrap_or(Duration::from_secs(1)).min(limits.max_retry_wait);
                if fault == FaultKind::RateLimited && retries_left > 0 && now + wait < deadline {
                    retries_left -= 1;
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return log;
            }
        }
    }
}

async fn attempt(ep: &Endpoint, body: &[u8]) -> Attempt {
    let mut req = ep
        .client
        .post(ep.request_url())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_vec());
    if let Some(k) = &ep.key {
        req = req.bearer_auth(k);
    }
    let sent = Instant::now();
    let failed = |fault, status, detail: String, retry_after| Attempt::Failed { sent, fault, status, detail, retry_after };
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_connect() {
                FaultKind::Connect
            } else if e.is_timeout() {
                FaultKind::Timeout
            } else {
                FaultKind::Transport
            };
            return failed(kind, None, error_chain(&e), None);
        }
    };
    let status = resp.status();
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64);
        let text = resp.text().await.unwrap_or_default();
        let kind = match status.as_u16() {
            429 => FaultKind::RateLimited,
            500..=599 => FaultKind::Server,
            _ => FaultKind::Client,
        };
        let detail = format!("HTTP {}: {}", status.as_u16(), openai::clip(text.trim(), 200));
        return failed(kind, Some(status.as_u16()), detail, retry_after);
    }
    let code = Some(status.as_u16());
    let mut parser = SseParser::new();
    let mut chunks = Vec::new();
    let mut usage = Usage::default();
    let mut finished = false;
    loop {
        let bytes = match resp.chunk().await {
            Ok(Some(b)) => b,
            Ok(None) => {
                // Body ended without [DONE]: complete only if a choice finished and nothing
                // is left half-parsed.
                if finished && !parser.pending() {
                    return Attempt::Ok { sent, chunks, end: Instant::now(), usage };
                }
                return failed(FaultKind::StreamCut, code, format!("stream ended before [DONE] after {} text chunks", chunks.len()), None);
            }
            Err(e) => {
                return failed(FaultKind::StreamCut, code, format!("stream broke after {} text chunks: {}", chunks.len(), error_chain(&e)), None)
            }
        };
        let at = Instant::now();
        let events = match parser.push(&bytes) {
            Ok(ev) => ev,
            Err(e) => return failed(FaultKind::MalformedSse, code, e.to_string(), None),
        };
        for ev in events {
            match openai::interpret(&ev.data, ep.api) {
                Ok(StreamItem::Done) => return Attempt::Ok { sent, chunks, end: at, usage },
                Ok(StreamItem::Chunk { text, finished: f, usage: u }) => {
                    if text {
                        chunks.push(at);
                    }
                    finished |= f;
                    if let Some(u) = u {
                        usage = u;
                    }
                }
                Ok(StreamItem::Error(m)) => return failed(FaultKind::StreamError, code, m, None),
                Err(m) => return failed(FaultKind::MalformedSse, code, m, None),
            }
        }
    }
}

/// An error and its sources on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    openai::clip(&s, 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_drops_credentials_and_query() {
        assert_eq!(public_url("https://user:pw@api.example.com/v1?key=sk-123"), "https://api.example.com/v1");
        assert_eq!(public_url("http://127.0.0.1:8000/v1/"), "http://127.0.0.1:8000/v1");
        assert_eq!(public_url("not a url"), "<unparsable URL>");
    }

    #[test]
    fn redaction_and_bad_urls() {
        let ep = Endpoint::new("a", "http://127.0.0.1:1/v1", "m", Api::Chat, Some("sk-secret-123".into()), true).unwrap();
        assert_eq!(ep.redact("auth: Bearer sk-secret-123!"), "auth: Bearer <redacted>!");
        assert_eq!(ep.request_url(), "http://127.0.0.1:1/v1/chat/completions");
        assert!(Endpoint::new("a", "ftp://x/v1", "m", Api::Chat, None, true).is_err());
        let e = Endpoint::new("a", "http://[::1", "m", Api::Chat, Some("sk-secret-123".into()), true).unwrap_err();
        assert!(!e.contains("sk-secret"));
    }
}
