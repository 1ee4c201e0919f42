//! Engines in another process: a worker program spoken to over JSON lines on its stdin and
//! stdout (protocol v1, documented in `peers/PROTOCOL.md`).
//!
//! A worker is started on first use and kept for the case. Every request waits for one
//! response line under a time limit; a worker that exits, hangs, writes a line that is not a
//! JSON response, or answers `ok: false` turns into an [`EngineError`] that names the request
//! and carries the tail of the worker's stderr, so the runner records the case as `failed`
//! (or `skipped` for `unsupported` / `unavailable` / `oom`) and the sweep goes on. The worker
//! is killed when the engine is dropped.
//!
//! Verification asks the worker for the sampled rows only ([`Output::sampled`]), so a
//! 128K-token case never ships its whole output through a pipe.
//!
//! `rest` cases (the rest of a layer's GEMMs): `supports` and `prepare` also carry the GEMM
//! plan of [`ctxcost_core::rest::plan`] (`gemms`, in run order), so a worker never re-derives
//! shapes or routing; `run` must answer every component of the plan (`mla_proj`, ...) with `ms`
//! their sum; `output` asks, per GEMM, for the rows and columns [`crate::rest::picked`] chooses,
//! and the answer becomes [`Output::values`] in the order [`crate::rest::gather`] writes them,
//! so [`crate::check::verify`] checks it against the same f64 reference as `rest-cpu`'s.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use ctxcost_core::rest::{plan, Component, Gemm};
use ctxcost_core::{Case, Inputs, Method};

use crate::{Engine, EngineError, Output, SampledOutput, Support, Timing};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// How to start one external engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalSpec {
    /// Engine id used in records.
    pub id: String,
    /// What it computes; the worker's `hello` must agree.
    pub method: Method,
    /// Program and arguments.
    pub command: Vec<String>,
}

impl ExternalSpec {
    /// Parse `ID:METHOD=COMMAND ARGS...` (the `--external` flag), e.g.
    /// `my-attn:dense=python3 my_kernel.py`.
    pub fn parse(text: &str) -> Result<ExternalSpec, String> {
        let form = "write ID:METHOD=COMMAND, e.g. `my-attn:dense=python3 peers/examples/my_kernel.py`";
        let (head, cmd) = text.split_once('=').ok_or_else(|| format!("`{text}`: {form}"))?;
        let (id, method) = head.split_once(':').ok_or_else(|| format!("`{text}`: no method; {form}"))?;
        let id = id.trim();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(format!("`{id}`: an engine id is letters, digits, `-`, `_` and `.`"));
        }
        let method = Method::parse(method).map_err(|e| e.to_string())?;
        let command: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        if command.is_empty() {
            return Err(format!("`{text}`: empty command; {form}"));
        }
        Ok(ExternalSpec { id: id.to_string(), method, command })
    }

    /// A library peer of `peers/`: `python3 -m ctxcost_peers ADAPTER`.
    pub fn peer(id: &str, method: Method) -> ExternalSpec {
        ExternalSpec { id: id.to_string(), method, command: vec![python(), "-m".into(), "ctxcost_peers".into(), id.to_string()] }
    }
}

/// The Python interpreter for library peers: `CTXCOST_PYTHON`, else `python3`.
pub fn python() -> String {
    std::env::var("CTXCOST_PYTHON").ok().filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "python3".into())
}

/// Where the `ctxcost_peers` package lives: `CTXCOST_PEERS_DIR`, else `./peers`, else the
/// source tree this binary was built from. `None` when none exists (then it must be
/// installed: `pip install ./peers`).
pub fn peers_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("CTXCOST_PEERS_DIR") {
        return Some(PathBuf::from(d));
    }
    let here = PathBuf::from("peers");
    if here.join("ctxcost_peers").is_dir() {
        return std::fs::canonicalize(&here).ok().or(Some(here));
    }
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../peers"));
    built.join("ctxcost_peers").is_dir().then_some(built)
}

/// Time limits per request, from `CTXCOST_EXTERNAL_TIMEOUT_S` (one number for all) or the
/// defaults: start-up and hello 120 s (importing a GPU library takes seconds), prepare
/// 600 s, a run 120 s, output 600 s, anything else 60 s.
fn limit(op: &str) -> Duration {
    if let Some(s) = std::env::var("CTXCOST_EXTERNAL_TIMEOUT_S").ok().and_then(|v| v.parse::<f64>().ok()).filter(|s| s.is_finite() && *s > 0.0) {
        return Duration::from_secs_f64(s);
    }
    Duration::from_secs(match op {
        "hello" => 120,
        "prepare" | "output" => 600,
        "run" => 120,
        _ => 60,
    })
}

/// What a worker said in `hello`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hello {
    pub id: String,
    pub method: String,
    pub device: String,
    pub library: String,
    pub timer: String,
}

const STDERR_TAIL_LINES: usize = 20;
/// Longest response line accepted (values of sampled rows are a few MB).
const MAX_LINE: usize = 256 << 20;

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<std::io::Result<String>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Worker {
    fn start(spec: &ExternalSpec) -> Result<Worker, String> {
        let mut cmd = Command::new(&spec.command[0]);
        cmd.args(&spec.command[1..]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        if let Some(dir) = peers_dir() {
            let mut path = dir.into_os_string();
            if let Some(old) = std::env::var_os("PYTHONPATH").filter(|p| !p.is_empty()) {
                path.push(":");
                path.push(old);
            }
            cmd.env("PYTHONPATH", path);
        }
        cmd.env("PYTHONUNBUFFERED", "1");
        let mut child = cmd.spawn().map_err(|e| format!("starting `{}`: {e}", spec.command.join(" ")))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                match r.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf) {
                    Ok(0) => break,
                    Ok(_) if buf.len() > MAX_LINE => {
                        let _ = tx.send(Err(std::io::Error::other(format!("a response line over {} MiB", MAX_LINE >> 20))));
                        break;
                    }
                    Ok(_) => {
                        if tx.send(Ok(String::from_utf8_lossy(&buf).into_owned())).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut t = tail.lock().expect("stderr tail");
                if t.len() == STDERR_TAIL_LINES {
                    t.pop_front();
                }
                t.push_back(line.chars().take(400).collect());
            }
        });
        Ok(Worker { child, stdin, lines, stderr })
    }

    fn stderr_tail(&self) -> String {
        // Give the stderr reader a moment to catch the last words of a dying worker.
        std::thread::sleep(Duration::from_millis(50));
        let t = self.stderr.lock().expect("stderr tail");
        if t.is_empty() {
            String::new()
        } else {
            format!("; worker stderr: {}", t.iter().cloned().collect::<Vec<_>>().join(" | "))
        }
    }

    /// Send one request and wait for its response.
    fn request(&mut self, op: &str, msg: &Value) -> Result<Value, EngineError> {
        let mut line = serde_json::to_string(msg).expect("a request serialises");
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).and_then(|_| self.stdin.flush()) {
            let exit = self.exit_text();
            return Err(fail(format!("sending `{op}`: {e}{exit}{}", self.stderr_tail())));
        }
        let wait = limit(op);
        match self.lines.recv_timeout(wait) {
            Ok(Ok(text)) => {
                let v: Value = serde_json::from_str(text.trim_end()).map_err(|e| {
                    let shown: String = text.trim_end().chars().take(200).collect();
                    fail(format!("the worker answered `{op}` with a line that is not JSON ({e}): `{shown}`{}", self.stderr_tail()))
                })?;
                if !v.is_object() || v.get("ok").and_then(Value::as_bool).is_none() {
                    let shown: String = text.trim_end().chars().take(200).collect();
                    return Err(fail(format!("the worker answered `{op}` without an `ok` field: `{shown}`")));
                }
                if v["ok"].as_bool() == Some(true) {
                    return Ok(v);
                }
                let why = v.get("error").and_then(Value::as_str).unwrap_or("no reason given").to_string();
                Err(match v.get("kind").and_then(Value::as_str).unwrap_or("error") {
                    "unsupported" | "unavailable" => EngineError::Unsupported(why),
                    "oom" => EngineError::OutOfMemory(why),
                    _ => fail(format!("`{op}`: {why}{}", self.stderr_tail())),
                })
            }
            Ok(Err(e)) => Err(fail(format!("reading the answer to `{op}`: {e}{}", self.stderr_tail()))),
            Err(RecvTimeoutError::Timeout) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(fail(format!("the worker did not answer `{op}` within {:.0} s and was killed{}", wait.as_secs_f64(), self.stderr_tail())))
            }
            Err(RecvTimeoutError::Disconnected) => {
                let exit = self.exit_text();
                Err(fail(format!("the worker exited during `{op}`{exit}{}", self.stderr_tail())))
            }
        }
    }

    fn exit_text(&mut self) -> String {
        for _ in 0..20 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return match st.code() {
                    Some(c) => format!(" (exit code {c})"),
                    None => " (killed by a signal)".into(),
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        String::new()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stdin.write_all(b"{\"op\":\"bye\"}\n");
        let _ = self.stdin.flush();
        for _ in 0..20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn fail(text: String) -> EngineError {
    EngineError::Backend { context: "external engine".into(), source: text.into() }
}

/// An engine that runs in another process.
pub struct External {
    spec: ExternalSpec,
    worker: Mutex<Option<Worker>>,
    hello: Mutex<Option<Result<Hello, String>>>,
    case: Option<Case>,
    /// The GEMM plan sent with a prepared `rest` case (empty otherwise).
    gemms: Vec<Gemm>,
    timer: &'static str,
}

impl External {
    pub fn new(spec: ExternalSpec) -> External {
        External { spec, worker: Mutex::new(None), hello: Mutex::new(None), case: None, gemms: Vec::new(), timer: "external" }
    }

    /// Start the worker (once) and check its `hello`; `Err` says why it cannot run.
    pub fn hello(&self) -> Result<Hello, String> {
        let mut h = self.hello.lock().expect("hello");
        if let Some(r) = h.as_ref() {
            return r.clone();
        }
        let r = self.start_and_greet();
        *h = Some(r.clone());
        r
    }

    fn start_and_greet(&self) -> Result<Hello, String> {
        let mut w = Worker::start(&self.spec)?;
        let v = w.request("hello", &json!({"op": "hello", "protocol": PROTOCOL_VERSION})).map_err(|e| match e {
            EngineError::Unsupported(why) => why,
            other => other.to_string(),
        })?;
        let proto = v.get("protocol").and_then(Value::as_u64).unwrap_or(0);
        if proto != PROTOCOL_VERSION {
            return Err(format!("the worker speaks protocol {proto}, this build speaks {PROTOCOL_VERSION}"));
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let hello = Hello { id: s("id"), method: s("method"), device: s("device"), library: s("library"), timer: s("timer") };
        if hello.method != self.spec.method.as_str() {
            return Err(format!("the worker computes `{}`, but engine `{}` is registered as `{}`", hello.method, self.spec.id, self.spec.method));
        }
        *self.worker.lock().expect("worker") = Some(w);
        Ok(hello)
    }

    fn call(&self, op: &str, msg: Value) -> Result<Value, EngineError> {
        self.hello().map_err(EngineError::Unsupported)?;
        let mut guard = self.worker.lock().expect("worker");
        let w = guard.as_mut().ok_or_else(|| fail(format!("`{op}`: the worker is gone (it failed an earlier request)")))?;
        let r = w.request(op, &msg);
        if let Err(EngineError::Backend { .. }) = &r {
            // A worker that failed a request at the transport level is not trusted again.
            if w.child.try_wait().map(|s| s.is_some()).unwrap_or(true) {
                *guard = None;
            }
        }
        r
    }

    fn case(&self) -> Result<&Case, EngineError> {
        self.case.as_ref().ok_or_else(|| EngineError::State("run before prepare".into()))
    }
}

impl Engine for External {
    fn id(&self) -> &str {
        &self.spec.id
    }

    fn timer(&self) -> &'static str {
        self.timer
    }

    fn supports(&self, case: &Case) -> Support {
        if let Err(why) = self.hello() {
            return Support::No(why);
        }
        let mut msg = json!({"op": "supports", "case": case});
        if case.is_rest() {
            if let Some(why) = ctxcost_core::rest::unsupported(case) {
                return Support::No(why);
            }
            msg["gemms"] = plan_json(&plan(case));
        }
        match self.call("supports", msg) {
            Ok(v) if v.get("supported").and_then(Value::as_bool) == Some(true) => Support::Yes,
            Ok(v) => Support::No(v.get("reason").and_then(Value::as_str).unwrap_or("the worker does not support this case").to_string()),
            Err(e) => Support::No(e.to_string()),
        }
    }

    fn prepare(&mut self, case: &Case, inputs: &Inputs) -> Result<(), EngineError> {
        if inputs.loaded.is_some() {
            return Err(EngineError::Unsupported("external engines build their inputs from the seeded generator; `--tensors` is not passed to them".into()));
        }
        let hello = self.hello().map_err(EngineError::Unsupported)?;
        self.timer = match hello.timer.as_str() {
            "cuda-events" => "cuda-events (external)",
            "monotonic-clock" => "monotonic-clock (external)",
            _ => "external",
        };
        let mut c = case.clone();
        c.seed = inputs.seed;
        self.case = None;
        let mut msg = json!({"op": "prepare", "case": c});
        let gemms = if c.is_rest() {
            if let Some(why) = ctxcost_core::rest::unsupported(&c) {
                return Err(EngineError::Unsupported(why));
            }
            let gemms = plan(&c);
            msg["gemms"] = plan_json(&gemms);
            gemms
        } else {
            Vec::new()
        };
        self.call("prepare", msg)?;
        self.case = Some(c);
        self.gemms = gemms;
        Ok(())
    }

    fn run(&mut self) -> Result<Timing, EngineError> {
        let rest = self.case()?.is_rest();
        let v = self.call("run", json!({"op": "run"}))?;
        let ms = v.get("ms").and_then(Value::as_f64).ok_or_else(|| fail("`run`: the answer has no number `ms`".into()))?;
        if !ms.is_finite() || ms <= 0.0 {
            return Err(fail(format!("`run`: the worker reported {ms} ms (must be positive and finite)")));
        }
        let mut components = Vec::new();
        if let Some(obj) = v.get("components").and_then(Value::as_object) {
            for (name, val) in obj {
                let t = val.as_f64().filter(|t| t.is_finite() && *t >= 0.0).ok_or_else(|| fail(format!("`run`: component `{name}` is not a non-negative number")))?;
                let known = if rest { rest_component(name) } else { Some(component_name(name)) };
                let known = known.ok_or_else(|| fail(format!("`run`: `{name}` is not a component of a rest case ({})", rest_names())))?;
                components.push((known, t));
            }
        }
        if rest {
            check_rest_components(&self.gemms, ms, &components)?;
        }
        Ok(Timing { total_ms: ms, components })
    }

    fn output(&mut self) -> Result<Output, EngineError> {
        let case = self.case()?.clone();
        if case.is_rest() {
            return self.rest_output(&case);
        }
        let (queries, heads) = self.verify_rows(&case).pick(&case);
        let v = self.call("output", json!({"op": "output", "queries": queries, "heads": heads}))?;
        let s = &case.shape;
        let v_dim = if !case.is_sparse() && case.phase == ctxcost_core::Phase::Prefill { s.mha_v_dim() } else { s.mqa_v_dim() };
        let want = heads.len() * v_dim;
        let rows = v.get("values").and_then(Value::as_array).ok_or_else(|| fail("`output`: no `values` array".into()))?;
        if rows.len() != queries.len() {
            return Err(fail(format!("`output`: {} value rows for {} requested queries", rows.len(), queries.len())));
        }
        let mut values = Vec::with_capacity(rows.len());
        for (r, row) in rows.iter().enumerate() {
            let row = row.as_array().ok_or_else(|| fail(format!("`output`: value row {r} is not an array")))?;
            if row.len() != want {
                return Err(fail(format!("`output`: value row {r} has {} numbers, expected {} heads x {v_dim}", row.len(), heads.len())));
            }
            // `null` stands for a non-finite value (JSON has no NaN); verification then fails
            // and says so.
            values.push(row.iter().map(|x| x.as_f64().map(|f| f as f32).unwrap_or(f32::NAN)).collect::<Vec<f32>>());
        }
        let indices = match v.get("indices") {
            Some(Value::Array(rows)) => {
                let k = case.effective_top_k();
                let mut out = Vec::with_capacity(rows.len());
                for (r, row) in rows.iter().enumerate() {
                    let row = row.as_array().ok_or_else(|| fail(format!("`output`: index row {r} is not an array")))?;
                    if row.len() != k {
                        return Err(fail(format!("`output`: index row {r} has {} entries, expected k = {k}", row.len())));
                    }
                    out.push(row.iter().map(|x| x.as_i64().and_then(|i| i32::try_from(i).ok()).unwrap_or(i32::MIN)).collect::<Vec<i32>>());
                }
                if out.len() != queries.len() {
                    return Err(fail(format!("`output`: {} index rows for {} requested queries", out.len(), queries.len())));
                }
                Some(out)
            }
            _ => None,
        };
        Ok(Output { values: vec![], indices: None, sampled: Some(SampledOutput { queries, heads, values, indices }) })
    }

    fn release(&mut self) {
        self.gemms.clear();
        if self.case.take().is_some() {
            let _ = self.call("release", json!({"op": "release"}));
        }
    }
}

impl External {
    /// `output` of a `rest` case: per GEMM the picked rows and columns, answered per GEMM as
    /// one flat array in (batch, row, column) order, concatenated in plan order.
    fn rest_output(&mut self, case: &Case) -> Result<Output, EngineError> {
        let rows = self.verify_rows(case);
        let picks: Vec<(Vec<usize>, Vec<usize>)> = self.gemms.iter().map(|g| crate::rest::picked(g, &rows)).collect();
        let asked: Vec<Value> = picks.iter().map(|(r, c)| json!({"rows": r, "cols": c})).collect();
        let v = self.call("output", json!({"op": "output", "gemms": asked}))?;
        let per_gemm = v.get("values").and_then(Value::as_array).ok_or_else(|| fail("`output`: no `values` array".into()))?;
        if per_gemm.len() != self.gemms.len() {
            return Err(fail(format!("`output`: {} value arrays for the {} GEMMs of the plan", per_gemm.len(), self.gemms.len())));
        }
        let mut values = Vec::new();
        for (i, ((g, (r, c)), got)) in self.gemms.iter().zip(&picks).zip(per_gemm).enumerate() {
            let got = got.as_array().ok_or_else(|| fail(format!("`output`: the values of GEMM {i} ({}) are not an array", gemm_label(g))))?;
            let want = g.batch * r.len() * c.len();
            if got.len() != want {
                return Err(fail(format!(
                    "`output`: GEMM {i} ({}) has {} values, expected {} x {} rows x {} columns = {want}",
                    gemm_label(g),
                    got.len(),
                    g.batch,
                    r.len(),
                    c.len()
                )));
            }
            // `null` stands for a non-finite value (JSON has no NaN); verification then fails
            // and says so.
            values.extend(got.iter().map(|x| x.as_f64().map(|f| f as f32).unwrap_or(f32::NAN)));
        }
        Ok(Output { values, indices: None, sampled: None })
    }
}

/// A GEMM of the plan as the protocol sends it (`gemms` of `supports` and `prepare`).
pub fn gemm_json(g: &Gemm) -> Value {
    json!({
        "name": g.name,
        "component": g.component.name(),
        "expert": g.expert,
        "batch": g.batch,
        "m": g.m,
        "k": g.k,
        "n": g.n,
        "weight_stream": g.weight_stream,
        "input_stream": g.input_stream,
        "weight_scale_stream": ctxcost_core::rest::weight_scale_stream(g),
        "fp8": g.fp8,
    })
}

fn plan_json(gemms: &[Gemm]) -> Value {
    Value::Array(gemms.iter().map(gemm_json).collect())
}

/// A GEMM in an error message: `expert_gate_up (expert 3)`.
fn gemm_label(g: &Gemm) -> String {
    match g.expert {
        Some(e) => format!("`{}`, expert {e}", g.name),
        None => format!("`{}`", g.name),
    }
}

/// The component of a rest case named `name`, as [`Timing`] names it.
fn rest_component(name: &str) -> Option<&'static str> {
    Component::ALL.iter().map(|c| c.name()).find(|n| *n == name)
}

fn rest_names() -> String {
    Component::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

/// A rest worker's `run` must time every component its plan has, and `ms` is their sum (the
/// whole-model cost is built from the components: one left out would vanish from it).
fn check_rest_components(gemms: &[Gemm], ms: f64, components: &[(&'static str, f64)]) -> Result<(), EngineError> {
    let planned: Vec<&'static str> = crate::rest::spans(gemms).iter().map(|s| s.0.name()).collect();
    let missing: Vec<&str> = planned.iter().copied().filter(|p| !components.iter().any(|c| c.0 == *p)).collect();
    if !missing.is_empty() {
        return Err(fail(format!("`run`: the answer lacks component(s) {} of the plan (a rest worker times each of {})", missing.join(", "), planned.join(", "))));
    }
    let sum: f64 = components.iter().map(|c| c.1).sum();
    if (sum - ms).abs() > 1e-3 * ms.max(sum) + 1e-9 {
        return Err(fail(format!("`run`: `ms` is {ms} but its components sum to {sum} (a rest worker's `ms` is the sum of its components)")));
    }
    Ok(())
}

/// Component names are `&'static str` in [`Timing`]; the protocol's names are mapped to the
/// ones native engines use, anything else to `other`.
fn component_name(name: &str) -> &'static str {
    match name {
        "indexer" => "indexer",
        "topk" => "topk",
        "attention" => "attention",
        "dequant" => "dequant",
        _ => "other",
    }
}

/// The operands of one GEMM of a rest case as a worker builds them (its `gemm_operands`
/// request), as f32 bit patterns: used to prove that a worker's operands, FP8 codes and
/// scales are bit-identical to ours.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GemmOperands {
    /// Per input row: the `k` values before any FP8 quantisation (rounded to the case's precision).
    pub input: Vec<Vec<u32>>,
    /// Per weight row: the `n` values (rounded), or for an FP8 GEMM the e4m3 codes.
    pub weight: Vec<Vec<u32>>,
    /// FP8 GEMMs: the 128 x 128 block scales `[ceil(k/128)][ceil(n/128)]`.
    pub weight_scales: Option<Vec<Vec<u32>>>,
    /// FP8 GEMMs: per input row, the scale of each 1 x 128 group.
    pub input_scales: Option<Vec<Vec<u32>>>,
    /// FP8 GEMMs: per input row, the e4m3 codes of its quantised values.
    pub input_codes: Option<Vec<Vec<u32>>>,
}

/// Ask a worker for the operands of `gemm` at input rows `input_rows` and weight rows
/// `weight_rows` (`(b, row)` pairs).
pub fn worker_gemm_operands(spec: &ExternalSpec, case: &Case, gemm: &Gemm, input_rows: &[(usize, usize)], weight_rows: &[(usize, usize)]) -> Result<GemmOperands, String> {
    let e = External::new(spec.clone());
    e.hello()?;
    let msg = json!({"op": "gemm_operands", "case": case, "gemm": gemm_json(gemm), "input_rows": input_rows, "weight_rows": weight_rows});
    let v = e.call("gemm_operands", msg).map_err(|e| e.to_string())?;
    let grab = |k: &str| -> Result<Option<Vec<Vec<u32>>>, String> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(rows)) => rows
                .iter()
                .map(|r| {
                    let r = r.as_array().ok_or(format!("`{k}` row is not an array"))?;
                    Ok(r.iter().map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()).unwrap_or(u32::MAX)).collect())
                })
                .collect::<Result<Vec<_>, String>>()
                .map(Some),
            Some(_) => Err(format!("`{k}` is not an array")),
        }
    };
    Ok(GemmOperands {
        input: grab("input_bits")?.ok_or("no `input_bits`")?,
        weight: grab("weight_bits")?.ok_or("no `weight_bits`")?,
        weight_scales: grab("weight_scale_bits")?,
        input_scales: grab("input_scale_bits")?,
        input_codes: grab("input_code_bits")?,
    })
}

/// The generator values a worker builds for `tensor` at `rows` (its `inputs` request), as
/// f32 and bf16 bit patterns: used to prove that a worker's inputs are bit-identical to
/// ours.
pub fn worker_inputs(spec: &ExternalSpec, case: &Case, tensor: &str, rows: &[(usize, usize)]) -> Result<(Vec<Vec<u32>>, Vec<Vec<u16>>), String> {
    let e = External::new(spec.clone());
    e.hello()?;
    let v = e.call("inputs", json!({"op": "inputs", "case": case, "tensor": tensor, "rows": rows})).map_err(|e| e.to_string())?;
    let grab = |k: &str| -> Result<Vec<Vec<u64>>, String> {
        v.get(k)
            .and_then(Value::as_array)
            .ok_or(format!("no `{k}`"))?
            .iter()
            .map(|r| r.as_array().ok_or(format!("`{k}` row is not an array")).map(|r| r.iter().map(|x| x.as_u64().unwrap_or(u64::MAX)).collect()))
            .collect()
    };
    let f = grab("f32_bits")?.into_iter().map(|r| r.into_iter().map(|x| x as u32).collect()).collect();
    let b = grab("bf16_bits")?.into_iter().map(|r| r.into_iter().map(|x| x as u16).collect()).collect();
    Ok((f, b))
}

/// Start the worker and return its `hello`, or why it cannot run (`ctxcost engines`).
pub fn probe(spec: &ExternalSpec) -> Result<Hello, String> {
    External::new(spec.clone()).hello()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_refuses_bad_forms() {
        let s = ExternalSpec::parse("my-attn:dense=python3 peers/examples/my_kernel.py").unwrap();
        assert_eq!(s.id, "my-attn");
        assert_eq!(s.method, Method::Dense);
        assert_eq!(s.command, vec!["python3", "peers/examples/my_kernel.py"]);
        assert_eq!(ExternalSpec::parse("x:dsa=./w").unwrap().method, Method::Dsa);
        for bad in ["my-attn=python3 x.py", "my-attn:sparsish=x", "my attn:dense=x", ":dense=x", "a:dense=", "a:dense"] {
            assert!(ExternalSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rest_plans_and_timings_are_checked() {
        let case = Case {
            engine: "w".into(),
            method: Method::Rest,
            shape: ctxcost_core::ModelShape::tiny(),
            phase: ctxcost_core::Phase::Decode,
            context: 1024,
            batch: 4,
            query_len: 1,
            precision: ctxcost_core::Precision::Fp8,
            seed: 1,
            kernel: Default::default(),
        };
        let gemms = plan(&case);
        let sent = plan_json(&gemms);
        let first = &sent[0];
        assert_eq!((first["name"].as_str(), first["component"].as_str(), first["fp8"].as_bool()), (Some("q_down"), Some("mla_proj"), Some(true)));
        assert_eq!(first["weight_scale_stream"].as_u64(), Some(gemms[0].weight_stream | (1 << 32)));
        assert!(sent.as_array().unwrap().iter().any(|g| g["expert"].is_u64()) && first["expert"].is_null());
        // Every planned component, summing to `ms`.
        let all: Vec<(&'static str, f64)> = Component::ALL.iter().map(|c| (c.name(), 0.5)).collect();
        assert!(check_rest_components(&gemms, 3.0, &all).is_ok());
        let why = check_rest_components(&gemms, 3.0, &all[1..]).unwrap_err().to_string();
        assert!(why.contains("lacks component(s) mla_proj"), "{why}");
        let why = check_rest_components(&gemms, 4.0, &all).unwrap_err().to_string();
        assert!(why.contains("sum to 3"), "{why}");
        assert_eq!((rest_component("moe"), rest_component("attention")), (Some("moe"), None));
        assert!(gemm_label(gemms.iter().find(|g| g.expert.is_some()).unwrap()).contains("expert"));
    }

    #[test]
    fn a_missing_program_is_a_reason_not_a_panic() {
        let spec = ExternalSpec { id: "nope".into(), method: Method::Dense, command: vec!["/nonexistent/worker-xyz".into()] };
        let e = External::new(spec);
        let why = e.hello().unwrap_err();
        assert!(why.contains("starting `/nonexistent/worker-xyz`"), "{why}");
        let case = Case {
            engine: "nope".into(),
            method: Method::Dense,
            shape: ctxcost_core::ModelShape::tiny(),
            phase: ctxcost_core::Phase::Decode,
            context: 64,
            batch: 1,
            query_len: 1,
            precision: ctxcost_core::Precision::F32,
            seed: 1,
            kernel: Default::default(),
        };
        assert!(matches!(e.supports(&case), Support::No(_)));
    }
}
