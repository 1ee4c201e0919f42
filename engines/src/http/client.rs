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
    /// Base URL as given (e.g. `http://host:8000/v1`), its query string (Azure's
    /// `?api-version=`) kept and sent with every request.
    base: reqwest::Url,
    pub model: String,
    pub api: Api,
    /// The API key (read from the environment; never written anywhere).
    key: Option<String>,
    /// Texts that must never reach a file or the terminal: the key and every query value of
    /// the base URL (as written and decoded), longest first.
    secrets: Vec<String>,
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

/// Longest stored start of a body that is not the expected stream (error pages, non-stream
/// answers), and the most of such a body that is read.
const BODY_PREVIEW_CHARS: usize = 200;
const BODY_READ_LIMIT: usize = 64 * 1024;
/// Longest fault detail stored.
const DETAIL_CHARS: usize = 400;

/// Redirects followed on one request (same server only).
const MAX_REDIRECTS: usize = 5;

impl Endpoint {
    /// `key`: the API key's value, if any. Builds the HTTP client (rustls with ring).
    pub fn new(label: &str, base_url: &str, model: &str, api: Api, key: Option<String>, ignore_eos: bool) -> Result<Self, String> {
        let base = parse_base_url(base_url)?;
        let key = key.filter(|k| !k.is_empty());
        let secrets = secrets_of(&base, key.as_deref());
        let client = http_client(None)?;
        Ok(Endpoint { label: label.to_string(), base, model: model.to_string(), api, key, secrets, ignore_eos, client })
    }

    /// The request URL: the base (which should end in `/v1`) with the API path appended to
    /// its path, its query string kept.
    pub fn request_url(&self) -> String {
        join_path(&self.base, self.api.path()).to_string()
    }

    /// The base URL without credentials and with every query value redacted, safe to record.
    pub fn public_url(&self) -> String {
        public_of(&self.base)
    }

    /// Remove every secret from a text: the key, the base URL's query values, the credentials
    /// of any `Bearer`/`Basic` authorization and every query value of any URL in it.
    pub fn redact(&self, s: &str) -> String {
        redact_text(s, &self.secrets)
    }
}

/// Parse and check a base URL: http or https, no credentials in it (they would be sent as
/// Basic auth and echoed back by servers; the key goes in an environment variable).
pub fn parse_base_url(raw: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(raw.trim()).map_err(|e| format!("bad URL `{}`: {e}", public_url(raw)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("bad URL `{}`: the scheme must be http or https", public_url(raw)));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "bad URL `{}`: credentials in the URL (user:password@) are not accepted: put the key in an environment \
             variable and pass --key-env VAR (it is sent as a bearer token and never recorded)",
            public_url(raw)
        ));
    }
    Ok(url)
}

/// `base` with `path` appended to its path segments (an empty last segment, from a trailing
/// `/`, is dropped); the query string is kept and the fragment dropped.
pub fn join_path(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut u = base.clone();
    u.set_fragment(None);
    if let Ok(mut segments) = u.path_segments_mut() {
        segments.pop_if_empty();
        segments.extend(path.split('/').filter(|s| !s.is_empty()));
    }
    u
}

/// The key and every query value of `base`, as written and percent-decoded, longest first.
fn secrets_of(base: &reqwest::Url, key: Option<&str>) -> Vec<String> {
    let mut s: Vec<String> = key.map(str::to_string).into_iter().collect();
    if let Some(q) = base.query() {
        s.extend(q.split('&').filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_string())));
    }
    s.extend(base.query_pairs().map(|(_, v)| v.into_owned()));
    s.retain(|x| !x.is_empty());
    s.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    s.dedup();
    s
}

/// The HTTP client: rustls with ring; redirects followed only within the same server
/// (scheme, host and port), at most [`MAX_REDIRECTS`]; any other is returned as it came, for
/// the caller to report.
fn http_client(timeout: Option<Duration>) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let same = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
        if same && attempt.previous().len() <= MAX_REDIRECTS {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).pool_idle_timeout(Duration::from_secs(30)).redirect(policy);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Install ring as rustls's process-wide provider (reqwest is built without one).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One model of a server's `/v1/models`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: String,
    /// The model's context limit in tokens, where the server names it (vLLM and SGLang:
    /// `max_model_len`; others: `context_length`, `context_window`).
    pub max_model_len: Option<u64>,
}

/// The models of a server's `/v1/models` (`base_url` ends in `/v1`). A base URL whose
/// `/models` is not found and that does not end in `/v1` is told so ("did you mean ...
/// /v1?"), since that is the usual cause.
pub async fn list_models(base_url: &str, key: Option<String>) -> Result<Vec<ModelInfo>, String> {
    let base = parse_base_url(base_url)?;
    let secrets = secrets_of(&base, key.as_deref());
    let client = http_client(Some(Duration::from_secs(15)))?;
    models_of(&client, &base, key.as_deref(), &secrets).await
}

async fn models_of(client: &reqwest::Client, base: &reqwest::Url, key: Option<&str>, secrets: &[String]) -> Result<Vec<ModelInfo>, String> {
    let url = join_path(base, "models");
    let shown = public_of(&url);
    let mut req = client.get(url);
    if let Some(k) = key.filter(|k| !k.is_empty()) {
        req = req.bearer_auth(k);
    }
    let redact = |s: String| openai::clip(&redact_text(&s, secrets), DETAIL_CHARS);
    let mut resp = req.send().await.map_err(|e| redact(format!("cannot reach {shown} to find the model name ({})", error_chain(&e))))?;
    let status = resp.status();
    if status.is_redirection() {
        return Err(redact(format!("{shown} answered HTTP {}: {}", status.as_u16(), redirect_note(&resp))));
    }
    let body = read_prefix(&mut resp, 1 << 20).await;
    if status.as_u16() == 404 {
        let path = base.path().trim_end_matches('/');
        if !path.ends_with("/v1") {
            let with_v1 = public_of(&join_path(base, "v1"));
            return Err(redact(format!("no /v1/models here ({shown} answered HTTP 404): did you mean {with_v1}?")));
        }
        return Err(redact(format!("{shown} answered HTTP 404: the server lists no models here")));
    }
    if !status.is_success() {
        return Err(redact(format!("{shown} answered HTTP {}: {}", status.as_u16(), preview(&body))));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|_| format!("{shown} did not answer with JSON"))?;
    let list: Vec<ModelInfo> = v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| {
                    let id = m["id"].as_str()?.to_string();
                    let max_model_len = ["max_model_len", "context_length", "context_window"].iter().find_map(|k| m[*k].as_u64());
                    Some(ModelInfo { id, max_model_len })
                })
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        return Err(format!("{shown} lists no model"));
    }
    Ok(list)
}

/// The first model id of a server's `/v1/models` (`base_url` ends in `/v1`).
pub async fn discover_model(base_url: &str, key: Option<String>) -> Result<String, String> {
    Ok(list_models(base_url, key).await?.remove(0).id)
}

impl Endpoint {
    /// The context limit the server gives for this endpoint's model in `/v1/models`, if any
    /// (best effort: `None` on any failure).
    pub async fn max_model_len(&self) -> Option<u64> {
        let list = models_of(&self.client, &self.base, self.key.as_deref(), &self.secrets).await.ok()?;
        list.into_iter().find(|m| m.id == self.model).and_then(|m| m.max_model_len)
    }
}

/// A URL without user info, with every query value redacted (`<unparsable URL>` when it is
/// not one).
pub fn public_url(raw: &str) -> String {
    match reqwest::Url::parse(raw.trim()) {
        Ok(u) => public_of(&u),
        Err(_) => "<unparsable URL>".into(),
    }
}

/// [`public_url`] of a parsed URL.
pub fn public_of(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_fragment(None);
    let query: Vec<String> = url.query_pairs().map(|(k, _)| format!("{k}=<redacted>")).collect();
    u.set_query(None);
    let base = u.to_string().trim_end_matches('/').to_string();
    if query.is_empty() {
        base
    } else {
        format!("{base}?{}", query.join("&"))
    }
}

const REDACTED: &str = "<redacted>";

/// Remove secrets from a text: each of `secrets` (4 characters or more), the credentials after
/// `Bearer` or `Basic` (an echoed Authorization header), and the value of every `?name=` or
/// `&name=` (query strings of URLs in error texts).
pub fn redact_text(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_string();
    for k in secrets.iter().filter(|k| k.len() >= 4) {
        out = out.replace(k.as_str(), REDACTED);
    }
    redact_query_values(&redact_credentials(&out))
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~+/=%".contains(&b)
}

/// `Bearer xyz`, `Basic xyz` (any case) -> `Bearer <redacted>`.
fn redact_credentials(s: &str) -> String {
    let (b, lower) = (s.as_bytes(), s.to_ascii_lowercase().into_bytes());
    let (mut out, mut last, mut i) = (String::with_capacity(s.len()), 0, 0);
    while i < b.len() {
        let word = [&b"bearer"[..], b"basic"].into_iter().find(|w| lower[i..].starts_with(w) && (i == 0 || !b[i - 1].is_ascii_alphanumeric()));
        let Some(w) = word else {
            i += 1;
            continue;
        };
        let mut j = i + w.len();
        while j < b.len() && (b[j] == b' ' || b[j] == b'\t' || b[j] == b':') {
            j += 1;
        }
        let start = j;
        while j < b.len() && is_token_byte(b[j]) {
            j += 1;
        }
        if start > i + w.len() && j > start {
            out.push_str(&s[last..start]);
            out.push_str(REDACTED);
            last = j;
        }
        i = j.max(i + w.len());
    }
    out.push_str(&s[last..]);
    out
}

/// `?name=value` and `&name=value` -> `?name=<redacted>`.
fn redact_query_values(s: &str) -> String {
    let b = s.as_bytes();
    let (mut out, mut last, mut i) = (String::with_capacity(s.len()), 0, 0);
    while i < b.len() {
        if b[i] == b'?' || b[i] == b'&' {
            let mut j = i + 1;
            while j < b.len() && (b[j].is_ascii_alphanumeric() || b"-._~%[]".contains(&b[j])) {
                j += 1;
            }
            if j > i + 1 && j < b.len() && b[j] == b'=' {
                let start = j + 1;
                let mut k = start;
                while k < b.len() && !b[k].is_ascii_whitespace() && !b"&#\"'`<>(),;\\".contains(&b[k]) {
                    k += 1;
                }
                if k > start && &s[start..k] != REDACTED {
                    out.push_str(&s[last..start]);
                    out.push_str(REDACTED);
                    last = k;
                }
                i = k.max(start);
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

/// Parse a `Retry-After` value: delay-seconds, or an HTTP-date (RFC 9110: IMF-fixdate, and
/// the obsolete RFC 850 and asctime forms), as the time left from `now` (zero when past).
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(1e9)));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT` or
/// `Sun Nov  6 08:49:37 1994`) as a system time.
pub fn parse_http_date(s: &str) -> Option<std::time::SystemTime> {
    const MONTHS: [&str; 12] = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
    let t: Vec<&str> = s.split(|c: char| c == ',' || c.is_whitespace()).filter(|x| !x.is_empty()).collect();
    let month = |m: &str| MONTHS.iter().position(|x| x.eq_ignore_ascii_case(m)).map(|i| i as u32 + 1);
    let num = |x: &str| -> Option<i64> { (!x.is_empty() && x.len() <= 4 && x.bytes().all(|c| c.is_ascii_digit())).then(|| x.parse().ok()).flatten() };
    let (day, mon, year, hms) = match t.as_slice() {
        [_, d, m, y, hms, gmt] if gmt.eq_ignore_ascii_case("GMT") && y.len() == 4 => (num(d)?, month(m)?, num(y)?, *hms),
        [_, dmy, hms, gmt] if gmt.eq_ignore_ascii_case("GMT") => {
            let p: Vec<&str> = dmy.split('-').collect();
            let [d, m, y] = p.as_slice() else { return None };
            let y = num(y)?;
            // RFC 850's two-digit year: the closest century (RFC 9110 section 5.6.7).
            let y = if y < 100 { if y < 70 { 2000 + y } else { 1900 + y } } else { y };
            (num(d)?, month(m)?, y, *hms)
        }
        [_, m, d, hms, y] => (num(d)?, month(m)?, num(y)?, *hms),
        _ => return None,
    };
    let p: Vec<i64> = hms.split(':').map(num).collect::<Option<Vec<i64>>>()?;
    let [h, mi, se] = p.as_slice() else { return None };
    if !(1..=31).contains(&day) || *h > 23 || *mi > 59 || *se > 60 || !(1970..=9999).contains(&year) {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mon <= 2 { (year - 1, mon as i64 + 9) } else { (year, mon as i64 - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Read at most `limit` bytes of a body (a hostile or broken server cannot fill memory).
async fn read_prefix(resp: &mut reqwest::Response, limit: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < limit {
        match resp.chunk().await {
            Ok(Some(b)) => buf.extend_from_slice(&b[..b.len().min(limit - buf.len())]),
            _ => break,
        }
    }
    buf
}

/// A body as one line of text (shortened only after secrets are removed, by [`send`]).
fn preview(body: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(body).chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

/// What a redirect response points at and why it was not followed.
fn redirect_note(resp: &reqwest::Response) -> String {
    let location = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
    let target = resp.url().join(location).map(|u| public_of(&u)).unwrap_or_else(|_| "<no usable Location>".into());
    let same = resp.url().join(location).is_ok_and(|u| u.origin() == resp.url().origin());
    if same {
        format!("redirected to {target} more than {MAX_REDIRECTS} times; not followed further")
    } else {
        format!("redirect to another server, {target}: not followed (the server measured would not be the one asked for; give that URL if it is the one to measure)")
    }
}

/// Result of one attempt.
enum Attempt {
    /// `finished_at`: the first event with a finish reason.
    Ok { sent: Instant, chunks: Vec<Instant>, end: Instant, usage: Usage, redirected_to: Option<String>, finished_at: Option<Instant> },
    /// `chunks`: text chunks received before a stream failed (a cut stream keeps them).
    Failed { sent: Instant, fault: FaultKind, status: Option<u16>, detail: String, retry_after: Option<Duration>, chunks: Vec<Instant> },
}

impl Attempt {
    /// A failed attempt that had received `received` text chunks.
    fn with_chunks(self, received: Vec<Instant>) -> Attempt {
        match self {
            Attempt::Failed { sent, fault, status, detail, retry_after, .. } => Attempt::Failed { sent, fault, status, detail, retry_after, chunks: received },
            ok => ok,
        }
    }
}

/// A hint for a refused request that names `ignore_eos` (a server whose request schema
/// lacks it answers 400 or 422).
fn ignore_eos_hint(status: u16, body: &str, sent_ignore_eos: bool) -> Option<&'static str> {
    (sent_ignore_eos && matches!(status, 400 | 422) && body.contains("ignore_eos"))
        .then_some(" (the server refuses `ignore_eos`: run again with --no-ignore-eos; outputs may then end before max_tokens)")
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
                chunks: vec![],
            },
        };
        match attempt {
            Attempt::Ok { sent, mut chunks, end, usage, redirected_to, finished_at } => {
                // Tokens generated but no text streamed (a byte-level BPE token that is not yet
                // whole UTF-8 is held back by the server's detokenizer; common with
                // max_tokens = 1): the first finish marks when the output was generated.
                if chunks.is_empty() && usage.completion_tokens.is_some_and(|n| n >= 1) {
                    chunks.extend(finished_at);
                }
                log.sent_ms = ms(sent);
                log.chunks_ms = chunks.into_iter().map(ms).collect();
                log.end_ms = ms(end);
                log.prompt_tokens = usage.prompt_tokens;
                log.completion_tokens = usage.completion_tokens;
                log.cached_tokens = usage.cached_tokens;
                log.redirected_to = redirected_to.map(|u| ep.redact(&u));
                log.ok = true;
                return log;
            }
            Attempt::Failed { sent, fault, status, detail, retry_after, chunks } => {
                let now = Instant::now();
                log.sent_ms = ms(sent);
                log.end_ms = ms(now);
                // What a cut stream delivered is kept (the metrics use successful requests only).
                log.chunks_ms = chunks.into_iter().map(ms).collect();
                // Secrets out first, then shortened (a secret cut in two would not be found).
                let detail = openai::clip(&ep.redact(&detail), DETAIL_CHARS);
                log.faults.push(Fault { kind: fault, http_status: status, detail, at_ms: ms(now) });
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
    let url = join_path(&ep.base, ep.api.path());
    let mut req = ep
        .client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(body.to_vec());
    if let Some(k) = &ep.key {
        req = req.bearer_auth(k);
    }
    let sent = Instant::now();
    let failed = |fault, status, detail: String, retry_after| Attempt::Failed { sent, fault, status, detail, retry_after, chunks: vec![] };
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
    let code = Some(status.as_u16());
    if status.is_redirection() {
        return failed(FaultKind::Redirect, code, format!("HTTP {}: {}", status.as_u16(), redirect_note(&resp)), None);
    }
    if !status.is_success() {
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
        let text = read_prefix(&mut resp, BODY_READ_LIMIT).await;
        let kind = match status.as_u16() {
            429 => FaultKind::RateLimited,
            500..=599 => FaultKind::Server,
            _ => FaultKind::Client,
        };
        let shown = preview(&text);
        let hint = ignore_eos_hint(status.as_u16(), &shown, ep.ignore_eos).unwrap_or("");
        let detail = format!("HTTP {}: {shown}{hint}", status.as_u16());
        return failed(kind, code, detail, retry_after);
    }
    let redirected_to = (resp.url() != &url).then(|| public_of(resp.url()));
    let ctype = resp.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_ascii_lowercase();
    let shown_type = if ctype.is_empty() { "no content-type".to_string() } else { format!("content-type `{}`", openai::clip(&ctype, 60)) };
    // A page or a single JSON answer, not a stream: say what came instead.
    if !ctype.starts_with("text/event-stream") && (ctype.contains("html") || ctype.contains("json") || ctype.contains("xml")) {
        let head = read_prefix(&mut resp, BODY_READ_LIMIT).await;
        let hint = if ctype.contains("json") { "the server ignored stream: true?" } else { "a proxy, gateway or login page?" };
        return failed(
            FaultKind::NotAStream,
            code,
            format!("HTTP {} with {shown_type}, not an event stream ({hint}): {}", status.as_u16(), preview(&head)),
            None,
        );
    }
    let mut parser = SseParser::new();
    let mut chunks = Vec::new();
    let mut usage = Usage::default();
    let mut finished = false;
    let mut finished_at: Option<Instant> = None;
    let mut events_seen = 0usize;
    // The start of the body, to show what came when it turns out not to be a stream.
    let mut head: Vec<u8> = Vec::new();
    loop {
        let bytes = match resp.chunk().await {
            Ok(Some(b)) => b,
            Ok(None) => {
                // Body ended without [DONE]: complete only if a choice finished and nothing
                // is left half-parsed.
                if finished && !parser.pending() {
                    return Attempt::Ok { sent, chunks, end: Instant::now(), usage, redirected_to, finished_at };
                }
                if events_seen == 0 && head.iter().any(|b| !b.is_ascii_whitespace()) {
                    return failed(
                        FaultKind::NotAStream,
                        code,
                        format!("HTTP {} with {shown_type}: the body held no server-sent event: {}", status.as_u16(), preview(&head)),
                        None,
                    );
                }
                let detail = format!("stream ended before [DONE] after {} text chunks", chunks.len());
                return failed(FaultKind::StreamCut, code, detail, None).with_chunks(chunks);
            }
            Err(e) => {
                let detail = format!("stream broke after {} text chunks: {}", chunks.len(), error_chain(&e));
                return failed(FaultKind::StreamCut, code, detail, None).with_chunks(chunks);
            }
        };
        if head.len() < BODY_PREVIEW_CHARS * 4 {
            head.extend_from_slice(&bytes[..bytes.len().min(BODY_PREVIEW_CHARS * 4 - head.len())]);
        }
        let at = Instant::now();
        let events = match parser.push(&bytes) {
            Ok(ev) => ev,
            Err(e) => return failed(FaultKind::MalformedSse, code, e.to_string(), None).with_chunks(chunks),
        };
        for ev in events {
            events_seen += 1;
            match openai::interpret(&ev.data, ep.api) {
                Ok(StreamItem::Done) => return Attempt::Ok { sent, chunks, end: at, usage, redirected_to, finished_at },
                Ok(StreamItem::Chunk { text, finished: f, usage: u }) => {
                    if text {
                        chunks.push(at);
                    }
                    if f && finished_at.is_none() {
                        finished_at = Some(at);
                    }
                    finished |= f;
                    if let Some(u) = u {
                        usage = u;
                    }
                }
                Ok(StreamItem::Error(m)) => return failed(FaultKind::StreamError, code, m, None).with_chunks(chunks),
                Err(m) => return failed(FaultKind::MalformedSse, code, m, None).with_chunks(chunks),
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
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_url_drops_credentials_and_query_values() {
        assert_eq!(public_url("https://user:pw@api.example.com/v1?key=sk-123&api-version=2024-06-01"), "https://api.example.com/v1?key=<redacted>&api-version=<redacted>");
        assert_eq!(public_url("http://127.0.0.1:8000/v1/"), "http://127.0.0.1:8000/v1");
        assert_eq!(public_url("not a url"), "<unparsable URL>");
    }

    #[test]
    fn paths_are_joined_and_query_strings_kept() {
        let ep = |u: &str| Endpoint::new("a", u, "m", Api::Chat, None, true).unwrap().request_url();
        assert_eq!(ep("http://h:1/v1"), "http://h:1/v1/chat/completions");
        assert_eq!(ep("http://h:1/v1/"), "http://h:1/v1/chat/completions");
        assert_eq!(
            ep("https://x.openai.azure.com/openai/deployments/d?api-version=2024-06-01"),
            "https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-06-01"
        );
        assert_eq!(ep("http://h:1/v1#frag"), "http://h:1/v1/chat/completions");
    }

    #[test]
    fn redaction_and_bad_urls() {
        let ep = Endpoint::new("a", "http://127.0.0.1:1/v1?api_key=qs-secret-77", "m", Api::Chat, Some("sk-secret-123".into()), true).unwrap();
        assert_eq!(ep.redact("auth: Bearer sk-secret-123!"), "auth: Bearer <redacted>!");
        assert_eq!(ep.request_url(), "http://127.0.0.1:1/v1/chat/completions?api_key=qs-secret-77");
        assert!(!ep.public_url().contains("qs-secret"));
        for text in [
            "error sending request for url (http://127.0.0.1:1/v1/chat/completions?api_key=qs-secret-77)",
            "you sent key qs-secret-77 and sk-secret-123",
            "got authorization `Basic dXNlcjpwYXNzd29yZA==` and BEARER abc.def-ghi",
            "see https://other/x?token=zz9&sig=abc%2Fdef",
        ] {
            let r = ep.redact(text);
            for s in ["qs-secret-77", "sk-secret-123", "dXNlcjpwYXNzd29yZA", "abc.def-ghi", "zz9", "abc%2Fdef"] {
                assert!(!r.contains(s), "{s} left in {r}");
            }
        }
        assert!(Endpoint::new("a", "ftp://x/v1", "m", Api::Chat, None, true).is_err());
        let e = Endpoint::new("a", "http://[::1", "m", Api::Chat, Some("sk-secret-123".into()), true).unwrap_err();
        assert!(!e.contains("sk-secret"));
        let e = Endpoint::new("a", "http://user:hunter22@127.0.0.1:1/v1", "m", Api::Chat, None, true).unwrap_err();
        assert!(e.contains("--key-env") && !e.contains("hunter22"), "{e}");
    }

    #[test]
    fn retry_after_seconds_and_http_dates() {
        let now = at(784_111_777 - 10);
        for form in ["Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994"] {
            assert_eq!(parse_retry_after(form, now), Some(Duration::from_secs(10)), "{form}");
        }
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at(784_111_777 + 5)), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("2.5", now), Some(Duration::from_millis(2500)));
        assert_eq!(parse_retry_after("1e300", now), Some(Duration::from_secs(1_000_000_000)));
        for bad in ["-1", "NaN", "inf", "soon", "Sun, 36 Nov 1994 08:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", ""] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad}");
        }
    }

    fn at(s: u64) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(s)
    }
}
