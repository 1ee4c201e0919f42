//! The OpenAI streaming protocol as vLLM, SGLang and DeepSeek's API speak it: request bodies
//! for `/v1/chat/completions` and `/v1/completions`, and the meaning of each streamed event.

use serde_json::{json, Value};

/// Which endpoint of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions` (the server applies the model's chat template).
    Chat,
    /// `/v1/completions` (the prompt is sent as is).
    Completions,
}

impl Api {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "chat" | "chat/completions" => Ok(Api::Chat),
            "completions" | "completion" => Ok(Api::Completions),
            _ => Err(format!("unknown API `{s}` (choose one of: chat, completions)")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Completions => "completions",
        }
    }
    /// The path under the server's `/v1` base.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "chat/completions",
            Api::Completions => "completions",
        }
    }
}

/// The JSON body of one streamed request. `ignore_eos` (a vLLM/SGLang extension) makes the
/// server generate exactly `max_tokens`; hosted APIs may not accept it.
pub fn request_body(api: Api, model: &str, prompt: &str, max_tokens: usize, ignore_eos: bool) -> Value {
    let mut body = match api {
        Api::Chat => json!({ "model": model, "messages": [{ "role": "user", "content": prompt }] }),
        Api::Completions => json!({ "model": model, "prompt": prompt }),
    };
    let o = body.as_object_mut().expect("object");
    o.insert("max_tokens".into(), json!(max_tokens));
    o.insert("temperature".into(), json!(0));
    o.insert("stream".into(), json!(true));
    o.insert("stream_options".into(), json!({ "include_usage": true }));
    if ignore_eos {
        o.insert("ignore_eos".into(), json!(true));
    }
    body
}

/// The server's token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// vLLM/OpenAI `prompt_tokens_details.cached_tokens` or DeepSeek `prompt_cache_hit_tokens`.
    pub cached_tokens: Option<u64>,
}

impl Usage {
    pub fn from_json(u: &Value) -> Usage {
        let n = |v: Option<&Value>| v.and_then(Value::as_u64);
        let cached = n(u.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens"))).or(n(u.get("prompt_cache_hit_tokens")));
        Usage { prompt_tokens: n(u.get("prompt_tokens")), completion_tokens: n(u.get("completion_tokens")), cached_tokens: cached }
    }
}

/// What one `data:` event means.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// `data: [DONE]`.
    Done,
    /// A chunk: whether it carried generated text, whether a choice finished, and usage
    /// when present (the last chunk with `include_usage`).
    Chunk { text: bool, finished: bool, usage: Option<Usage> },
    /// An error object sent inside the stream.
    Error(String),
}

/// Interpret one event's data. `Err` is a malformed event. Texts are whole (the caller
/// removes secrets, then shortens them: a secret cut in two would no longer be found).
pub fn interpret(data: &str, api: Api) -> Result<StreamItem, String> {
    let d = data.trim();
    if d == "[DONE]" {
        return Ok(StreamItem::Done);
    }
    let v: Value = serde_json::from_str(d).map_err(|e| format!("event data is not JSON ({e}): {d}"))?;
    if let Some(e) = v.get("error") {
        let msg = e.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| e.to_string());
        return Ok(StreamItem::Error(msg));
    }
    let usage = v.get("usage").filter(|u| u.is_object()).map(Usage::from_json);
    let choices = match v.get("choices") {
        Some(Value::Array(c)) => c,
        Some(_) => return Err("`choices` is not an array".into()),
        None if usage.is_some() => return Ok(StreamItem::Chunk { text: false, finished: false, usage }),
        None => return Err(format!("event has neither `choices` nor `usage`: {d}")),
    };
    let non_empty = |x: Option<&Value>| x.and_then(Value::as_str).is_some_and(|s| !s.is_empty());
    let mut text = false;
    let mut finished = false;
    for c in choices {
        text |= match api {
            Api::Chat => {
                let delta = c.get("delta");
                let field = |k: &str| delta.and_then(|d| d.get(k));
                non_empty(field("content")) || non_empty(field("reasoning_content")) || non_empty(field("reasoning"))
            }
            Api::Completions => non_empty(c.get("text")),
        };
        finished |= c.get("finish_reason").is_some_and(|f| !f.is_null());
    }
    Ok(StreamItem::Chunk { text, finished, usage })
}

/// At most `n` characters of `s`.
pub fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_ask_for_a_stream_with_usage() {
        let b = request_body(Api::Chat, "m", "hi", 7, true);
        assert_eq!(b["messages"][0]["content"], "hi");
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["ignore_eos"], true);
        let c = request_body(Api::Completions, "m", "hi", 1, false);
        assert_eq!(c["prompt"], "hi");
        assert!(c.get("ignore_eos").is_none());
    }

    #[test]
    fn vllm_and_deepseek_usage_blocks() {
        let v = r#"{"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":16}}}"#;
        let d = r#"{"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":5,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":36}}"#;
        let get = |s| match interpret(s, Api::Chat).unwrap() {
            StreamItem::Chunk { usage: Some(u), text: false, .. } => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(get(v), Usage { prompt_tokens: Some(100), completion_tokens: Some(5), cached_tokens: Some(16) });
        assert_eq!(get(d).cached_tokens, Some(64));
    }

    #[test]
    fn text_finish_done_error_and_malformed() {
        let role_only = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(interpret(role_only, Api::Chat).unwrap(), StreamItem::Chunk { text: false, finished: false, usage: None });
        let tok = r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#;
        assert_eq!(interpret(tok, Api::Chat).unwrap(), StreamItem::Chunk { text: true, finished: false, usage: None });
        let reasoning = r#"{"choices":[{"delta":{"reasoning_content":"hm"}}]}"#;
        assert!(matches!(interpret(reasoning, Api::Chat).unwrap(), StreamItem::Chunk { text: true, .. }));
        let comp = r#"{"choices":[{"text":"x","finish_reason":"length"}]}"#;
        assert_eq!(interpret(comp, Api::Completions).unwrap(), StreamItem::Chunk { text: true, finished: true, usage: None });
        assert_eq!(interpret(" [DONE] ", Api::Chat).unwrap(), StreamItem::Done);
        assert_eq!(interpret(r#"{"error":{"message":"overloaded"}}"#, Api::Chat).unwrap(), StreamItem::Error("overloaded".into()));
        assert!(interpret("{\"choices\":[{\"delta\":", Api::Chat).is_err());
        assert!(interpret(r#"{"id":"x"}"#, Api::Chat).is_err());
        assert!(interpret(r#"{"choices":3}"#, Api::Chat).is_err());
    }

    #[test]
    fn api_names() {
        assert_eq!(Api::parse("Chat").unwrap(), Api::Chat);
        assert_eq!(Api::parse("completions").unwrap().path(), "completions");
        assert!(Api::parse("embeddings").is_err());
    }
}
