//! `ctxcost run`: expands the sweep, runs each point in a child process (so peak memory is
//! the point's own and a crash or OOM kill of one point does not end the sweep), appends
//! each record to the JSONL file the moment it arrives, shows progress, and ends with the
//! summary table and the report. Its arguments are merged here too, in one place (flags over
//! the TOML sweep file over the preset) and validated before any work.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use ctxcost_core::record::{Record, Status};
use ctxcost_core::units::{format_tokens, parse_contexts, parse_duration_secs, parse_size};
use ctxcost_core::{Backend, Phase, Precision};
use ctxcost_engines::external::ExternalSpec;
use ctxcost_engines::kernel_choice;
use ctxcost_engines::registry::{backend_of, cuda_available, engine_ids, method_of};
use ctxcost_workloads::{Sweep, PRESETS};

use crate::point::Job;
use crate::output::{write_report, OutputArgs};
use crate::{envinfo, recordio, summary};

/// Arguments of `ctxcost run`. Flags override the sweep file, which overrides the preset.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Preset sweep: cpu-quick, cpu-full or h200 [default: h200 where a GPU is usable, else cpu-quick].
    #[arg(long)]
    pub preset: Option<String>,
    /// TOML sweep file (same fields as a preset; `base = "<preset>"` names the defaults).
    #[arg(long, value_name = "FILE")]
    pub sweep: Option<PathBuf>,
    /// Engines, comma-separated (see `ctxcost engines`): ours (dense-cuda, dsa-cuda, ...),
    /// library peers (cudnn-sdpa, torch-eager-dense, ...) and any `--external` id.
    #[arg(long, value_name = "LIST")]
    pub engines: Option<String>,
    /// Plug in an engine that runs in another process and speaks peers/PROTOCOL.md:
    /// `ID:METHOD=COMMAND`, e.g. `my-attn:dense=python3 my_kernel.py` (METHOD: dense or dsa).
    /// Repeatable; add the id to `--engines` (it is added when `--engines` is not given).
    #[arg(long, value_name = "ID:METHOD=COMMAND")]
    pub external: Vec<String>,
    /// Model shape: deepseek-v3.2-exp, deepseek-v3.1-terminus, tiny, small.
    #[arg(long)]
    pub shape: Option<String>,
    /// Context lengths: `1k,2k,4k` or `1k..64k` (powers of two between).
    #[arg(long, value_name = "LIST")]
    pub contexts: Option<String>,
    /// Phase: prefill, decode or both.
    #[arg(long)]
    pub phase: Option<String>,
    /// Sequences per case (both phases), comma-separated.
    #[arg(long, value_name = "LIST")]
    pub batch: Option<String>,
    /// Prefill chunk: query tokens per prefill case (capped at the context).
    #[arg(long, value_name = "TOKENS")]
    pub chunk: Option<String>,
    /// Precisions, comma-separated: f32, bf16, fp8.
    #[arg(long, value_name = "LIST")]
    pub precision: Option<String>,
    /// DSA top-k (keys kept per query).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Expert-parallel degree of the `rest` engines' MoE: this GPU holds routed_experts / N
    /// experts and gets their share of N GPUs' tokens (recorded in the case's shape) [default 1].
    #[arg(long, value_name = "N")]
    pub ep: Option<usize>,
    /// Seed of the generated inputs.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Inputs from a safetensors file of captured activations instead of seeded ones.
    #[arg(long, value_name = "FILE")]
    pub tensors: Option<PathBuf>,
    /// Stop sampling when the median's 95% CI half-width is under this fraction [default 0.02].
    #[arg(long, value_name = "FRACTION")]
    pub target_ci: Option<f64>,
    /// Most samples per case.
    #[arg(long)]
    pub max_samples: Option<usize>,
    /// Most time of sampling per point, with its unit: `20s`, `1.5m`, `500ms`.
    #[arg(long, value_name = "DURATION")]
    pub max_seconds: Option<String>,
    /// Untimed warm-up runs per case.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Skip verification against the reference (not recommended: results are unchecked).
    #[arg(long)]
    pub no_verify: bool,
    /// Kernel choice of our CUDA engines, `AXIS=VALUE[,VALUE...]`: each value is a case of its own,
    /// measured interleaved in the same point (`--variant sparse=split,bulk`). Repeatable (one axis a
    /// flag; several multiply). Axes: dsa-cuda sparse, indexer, indexer_load; dense-cuda decode,
    /// prefill_tile, fp8_cvt (`ctxcost engines` lists their values).
    #[arg(long, value_name = "AXIS=VALUES")]
    pub variant: Vec<String>,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sweep: Sweep,
    pub out: PathBuf,
    pub resume: bool,
    pub force: bool,
    pub tensors: Option<PathBuf>,
    pub verify: bool,
    pub report_dir: Option<PathBuf>,
    /// Engines plugged in with `--external`.
    pub external: Vec<ExternalSpec>,
}

fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

/// Refuse a list that names an item twice (it would measure the same case twice).
fn no_repeats<T: PartialEq + std::fmt::Debug>(flag: &str, list: &[T]) -> Result<()> {
    for (i, x) in list.iter().enumerate() {
        if list[..i].contains(x) {
            bail!("{flag}: {x:?} is listed twice; name each value once");
        }
    }
    Ok(())
}

/// Merge flags, file and preset into a validated plan; every error names the flag and the fix.
pub fn resolve(a: RunArgs) -> Result<Plan> {
    let mut sweep = match (&a.sweep, &a.preset) {
        (Some(_), Some(_)) => bail!("--sweep and --preset both given: use one (a sweep file names its preset with `base = \"...\"`)"),
        (Some(path), None) => Sweep::from_toml_file(&path.to_string_lossy())?,
        (None, Some(p)) => Sweep::preset(p).map_err(|_| anyhow::anyhow!("--preset: unknown preset `{p}` (choose one of: {})", PRESETS.join(", ")))?,
        (None, None) => Sweep::preset(if cuda_available().is_ok() { "h200" } else { "cpu-quick" })?,
    };
    let mut external = Vec::new();
    for text in &a.external {
        let spec = ExternalSpec::parse(text).map_err(|e| anyhow::anyhow!("--external {e}"))?;
        if ctxcost_engines::registry::entry(&spec.id).is_some() {
            bail!("--external: `{}` is the id of a built-in engine; give yours another id", spec.id);
        }
        if external.iter().any(|s: &ExternalSpec| s.id == spec.id) {
            bail!("--external: `{}` is given twice", spec.id);
        }
        external.push(spec);
    }
    if let Some(e) = &a.engines {
        let list = split_list(e);
        no_repeats("--engines", &list)?;
        for id in &list {
            if method_of(id, &external).is_none() {
                bail!("--engines: unknown engine `{id}` (choose from: {}; `ctxcost engines` lists them; plug in your own with `--external ID:METHOD=COMMAND`)", engine_ids().join(", "));
            }
        }
        sweep.engines = list;
    } else {
        for s in &external {
            sweep.engines.push(s.id.clone());
        }
    }
    for id in &sweep.engines {
        if method_of(id, &external).is_none() {
            bail!("sweep engine `{id}` is unknown (choose from: {})", engine_ids().join(", "));
        }
    }
    no_repeats("engines", &sweep.engines)?;
    if let Some(s) = &a.shape {
        sweep.shape = ctxcost_core::ModelShape::by_name(s).context("--shape")?;
    }
    if let Some(k) = a.top_k {
        if k == 0 {
            bail!("--top-k 0: DSA keeps the top-k keys per query; use a positive k such as 2048");
        }
        sweep.shape.top_k = k;
    }
    if let Some(n) = a.ep {
        if n == 0 || sweep.shape.routed_experts % n != 0 {
            bail!("--ep {n}: the expert-parallel degree must divide the {} routed experts of `{}` (e.g. `--ep 1` or `--ep 8`)", sweep.shape.routed_experts, sweep.shape.name);
        }
        sweep.shape.ep = n;
    }
    if let Some(c) = &a.contexts {
        sweep.contexts = parse_contexts(c).context("--contexts")?;
    }
    if let Some(p) = &a.phase {
        sweep.phases = match p.trim().to_ascii_lowercase().as_str() {
            "both" | "all" => vec![Phase::Prefill, Phase::Decode],
            other => vec![Phase::parse(other).map_err(|_| anyhow::anyhow!("--phase: unknown phase `{p}` (choose prefill, decode or both)"))?],
        };
    }
    if let Some(b) = &a.batch {
        let list: Vec<usize> = split_list(b)
            .iter()
            .map(|x| x.parse::<usize>().map_err(|_| anyhow::anyhow!("--batch: `{x}` is not a whole number (e.g. `--batch 1,8,64`)")))
            .collect::<Result<_>>()?;
        if list.contains(&0) {
            bail!("--batch 0: a case needs at least one sequence (e.g. `--batch 1`)");
        }
        no_repeats("--batch", &list)?;
        sweep.prefill_batch = list.clone();
        sweep.decode_batch = list;
    }
    if let Some(c) = &a.chunk {
        sweep.prefill_chunk = parse_size(c).context("--chunk")?;
    }
    if let Some(p) = &a.precision {
        sweep.precisions = split_list(p).iter().map(|x| Precision::parse(x)).collect::<Result<_, _>>().context("--precision")?;
        no_repeats("--precision", &sweep.precisions)?;
    }
    if let Some(s) = a.seed {
        sweep.seed = s;
    }
    if let Some(t) = a.target_ci {
        if !t.is_finite() {
            bail!("--target-ci {t}: use a fraction such as 0.02");
        }
        sweep.sampling.target_rel_ci = t;
    }
    if let Some(n) = a.max_samples {
        sweep.sampling.max_samples = n;
        sweep.sampling.min_samples = sweep.sampling.min_samples.min(n);
    }
    if let Some(s) = &a.max_seconds {
        sweep.sampling.max_seconds = parse_duration_secs(s).context("--max-seconds")?;
    }
    if let Some(w) = a.warmup {
        sweep.sampling.warmup = w;
    }
    let mut flag_axes = Vec::new();
    for text in &a.variant {
        let Some((axis, values)) = text.split_once('=') else {
            bail!("--variant {text}: use AXIS=VALUE[,VALUE...], e.g. `--variant sparse=split,bulk` (kernel choices: {})", kernel_choice::describe_axes());
        };
        let axis = axis.trim().to_string();
        if flag_axes.contains(&axis) {
            bail!("--variant: `{axis}` is given twice; list its values in one flag (`--variant {axis}=A,B`)");
        }
        sweep.variants.insert(axis.clone(), split_list(values));
        flag_axes.push(axis);
    }
    for (axis, values) in &sweep.variants {
        let source = if flag_axes.contains(axis) { "--variant" } else { "sweep file [variants]" };
        kernel_choice::check_variant(&sweep.engines, axis, values).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
    }
    sweep.validate()?;
    if let Some(t) = &a.tensors {
        // Parse now so a bad file fails before any work; the child re-reads it.
        ctxcost_workloads::tensors::load(&t.to_string_lossy())?;
    }
    check_memory(&sweep, &external)?;
    let (out, report_dir) = a.output.paths(&sweep.name);
    Ok(Plan { sweep, out, resume: a.output.resume, force: a.output.force, tensors: a.tensors.clone(), verify: !a.no_verify, report_dir, external })
}

/// Host bytes a CPU case needs (inputs as f32, the score matrix, outputs), estimated from
/// the shapes before anything is allocated.
pub fn cpu_case_host_bytes(case: &ctxcost_core::Case) -> f64 {
    use ctxcost_core::InputTensor as T;
    let s = &case.shape;
    let tensors: &[T] = if case.is_sparse() {
        &[T::MqaQ, T::Latent, T::IndexQ, T::IndexK, T::IndexW]
    } else if case.phase == Phase::Prefill {
        &[T::MhaQ, T::MhaK, T::MhaV]
    } else {
        &[T::MqaQ, T::Latent]
    };
    let inputs: usize = tensors.iter().map(|t| t.len(case)).sum();
    let heads = if case.is_sparse() { s.index_heads.max(s.heads) } else { s.heads };
    // Scores of one sequence at a time, kept twice (scores and probabilities).
    let scores = 2 * heads * case.query_len * case.context;
    let outs = case.query_tokens() * s.heads * s.mqa_v_dim().max(s.mha_v_dim());
    // Inputs are held rounded (f32) by the engine and once more by the verifier's cache.
    4.0 * (2 * inputs + scores + outs) as f64
}

/// The sweep's points, each case carrying its engine's method from the engine table.
pub fn points(sweep: &Sweep, external: &[ExternalSpec]) -> Vec<ctxcost_workloads::Point> {
    sweep.points(&|id| method_of(id, external).unwrap_or_else(|| ctxcost_core::Method::legacy_from_id(id)), &kernel_choice::applies)
}

fn check_memory(sweep: &Sweep, external: &[ExternalSpec]) -> Result<()> {
    let avail = crate::memory::mem_available_bytes().unwrap_or(u64::MAX) as f64;
    for p in points(sweep, external) {
        for c in p.cases.iter().filter(|c| backend_of(&c.engine, external) == Some(Backend::Cpu)) {
            let need = cpu_case_host_bytes(c);
            if need > 0.8 * avail {
                bail!(
                    "case {} needs about {:.1} GiB of host memory, more than this machine has available ({:.1} GiB): lower --contexts, --batch or --chunk, or use a smaller --shape",
                    c.key(),
                    need / (1u64 << 30) as f64,
                    avail / (1u64 << 30) as f64
                );
            }
        }
    }
    Ok(())
}

/// Run a sweep.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let plan = resolve(args)?;
    let (mut writer, done) = recordio::open_output(&plan.out, plan.resume, plan.force)?;
    let points = points(&plan.sweep, &plan.external);
    let total: usize = points.iter().map(|p| p.cases.len()).sum();
    let pending: Vec<_> = points
        .into_iter()
        .map(|p| p.cases.into_iter().filter(|c| !done.contains(&c.key())).collect::<Vec<_>>())
        .filter(|cs| !cs.is_empty())
        .collect();
    let already = total - pending.iter().map(Vec::len).sum::<usize>();
    eprintln!(
        "ctxcost {}: sweep `{}` ({} shape), {} cases in {} points{} -> {}",
        env!("CARGO_PKG_VERSION"),
        plan.sweep.name,
        plan.sweep.shape.name,
        total,
        pending.len(),
        if already > 0 { format!(", {already} already recorded") } else { String::new() },
        plan.out.display()
    );
    let mut env = envinfo::capture();
    same_run_ceilings(&plan, &mut env);
    let tool = envinfo::tool();
    let exe = std::env::current_exe().context("locating the ctxcost binary")?;
    let tty = std::io::stderr().is_terminal();
    let bar = if tty { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} cases  {elapsed_precise} elapsed, ETA {eta}  {msg}").expect("valid template"));
    bar.set_position(already as u64);
    let started = Instant::now();
    let mut this_run: HashSet<String> = HashSet::new();
    let mut failed = 0usize;
    let n_points = pending.len();
    for (pi, cases) in pending.into_iter().enumerate() {
        let c0 = &cases[0];
        let label = format!("{} {} L={} B={} {}", c0.shape.name, c0.phase, format_tokens(c0.context), c0.batch, c0.precision);
        bar.set_message(label.clone());
        let job = Job { cases: cases.clone(), sampling: plan.sweep.sampling.clone(), verify: plan.verify, tensors: plan.tensors.as_ref().map(|p| p.to_string_lossy().to_string()), tool: tool.clone(), env: env.clone(), external: plan.external.clone() };
        let mut child = Command::new(&exe)
            .arg("__point")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting a measuring process")?;
        {
            let mut stdin = child.stdin.take().expect("piped");
            stdin.write_all(serde_json::to_string(&job)?.as_bytes())?;
        }
        let mut err_pipe = child.stderr.take().expect("piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let mut got: HashSet<String> = HashSet::new();
        for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
            let line = line?;
            match Record::from_line(&line) {
                Ok(r) => {
                    if r.status == Status::Failed {
                        failed += 1;
                    }
                    if r.status != Status::Ok || !tty {
                        let what = match r.status {
                            Status::Ok => format!("{:.4} ms median", r.median_ms().unwrap_or(f64::NAN)),
                            _ => format!("{:?}: {}", r.status, r.reason.as_deref().unwrap_or("")).to_lowercase(),
                        };
                        bar.suspend(|| eprintln!("[{}/{}] {} {} {}", pi + 1, n_points, r.engine, label, what));
                    }
                    writer.append(&r)?;
                    got.insert(r.key.clone());
                    this_run.insert(r.key);
                    bar.inc(1);
                }
                Err(e) => bar.suspend(|| eprintln!("warning: measuring process wrote a line that is not a record ({e}): {line}")),
            }
        }
        let status = child.wait()?;
        let stderr_text = err_thread.join().unwrap_or_default();
        let missing: Vec<_> = cases.iter().filter(|c| !got.contains(&c.key())).collect();
        if !missing.is_empty() {
            let why = match (status.code(), status.signal()) {
                (_, Some(9)) => "measuring process was killed (signal 9; out of host memory?)".to_string(),
                (_, Some(6)) => "measuring process aborted (SIGABRT)".to_string(),
                (_, Some(11)) => "measuring process crashed (segmentation fault, SIGSEGV)".to_string(),
                (_, Some(sig)) => format!("measuring process died on signal {sig}"),
                (Some(code), _) => format!("measuring process exited with code {code}"),
                _ => "measuring process ended abnormally".to_string(),
            };
            let last = stderr_cause(&stderr_text);
            for c in missing {
                let mut r = failed_record(c, &job, format!("{why}{}", if last.is_empty() { String::new() } else { format!(": {last}") }));
                r.finished_at = envinfo::utc_now();
                writer.append(&r)?;
                this_run.insert(r.key);
                failed += 1;
                bar.inc(1);
            }
        } else if !stderr_text.trim().is_empty() {
            bar.suspend(|| eprint!("{stderr_text}"));
        }
    }
    bar.finish_and_clear();
    eprintln!("finished in {:.1} s; records in {}", started.elapsed().as_secs_f64(), plan.out.display());
    let records = recordio::read_records(&plan.out)?;
    println!("{}", summary::render(&records));
    if let Some(dir) = &plan.report_dir {
        write_report(&plan.out, dir);
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// When the sweep runs on a GPU, measure the copy bandwidth and the bf16 GEMM rate once
/// before it and keep them in every record's `env.gpu` (`copy_tbps`, `gemm_bf16_tflops`):
/// the report's roofline bound then uses this run's ceilings, not assumed ones.
fn same_run_ceilings(plan: &Plan, env: &mut ctxcost_core::record::Environment) {
    use ctxcost_core::Backend;
    let gpu = plan.sweep.engines.iter().any(|id| matches!(ctxcost_engines::backend_of(id, &plan.external), Some(Backend::Cuda | Backend::External)));
    if !gpu || ctxcost_engines::registry::cuda_available().is_err() {
        return;
    }
    #[cfg(not(feature = "cuda"))]
    let _ = env;
    #[cfg(feature = "cuda")]
    {
        use ctxcost_engines::cuda::ceilings;
        match ceilings::copy_tbps() {
            Ok(v) => {
                env.gpu.insert("copy_tbps".into(), format!("{v:.3}"));
            }
            Err(e) => eprintln!("note: copy bandwidth not measured ({e}); the report assumes one"),
        }
        match ceilings::gemm_tflops() {
            Ok(v) => {
                env.gpu.insert("gemm_bf16_tflops".into(), format!("{v:.1}"));
            }
            Err(e) => eprintln!("note: GEMM rate not measured ({e}); the report assumes one"),
        }
        eprintln!(
            "same-run ceilings: copy {} TB/s, bf16 GEMM {} TFLOP/s",
            env.gpu.get("copy_tbps").map(String::as_str).unwrap_or("-"),
            env.gpu.get("gemm_bf16_tflops").map(String::as_str).unwrap_or("-")
        );
    }
}

/// The cause a dying child left on stderr: a panic's message (not Rust's backtrace hint), an
/// abort's reason, else its last line.
pub fn stderr_cause(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        let msg = lines.get(i + 1).filter(|l| !l.starts_with("note:")).copied().unwrap_or("");
        return format!("{}{}{}", lines[i], if msg.is_empty() { "" } else { " " }, msg);
    }
    lines
        .iter()
        .rev()
        .find(|l| !l.starts_with("note: run with `RUST_BACKTRACE") && !l.starts_with("stack backtrace") && !l.starts_with("note: Some details are omitted"))
        .map(|l| l.to_string())
        .unwrap_or_default()
}

fn failed_record(c: &ctxcost_core::Case, job: &Job, reason: String) -> Record {
    let mut r = crate::point::base_record(c, job, &c.engine, "none");
    r.status = Status::Failed;
    r.reason = Some(reason);
    r
}

#[cfg(test)]
mod tests {
    use super::stderr_cause;

    #[test]
    fn a_panic_is_named_by_its_message_not_the_backtrace_hint() {
        let text = "thread 'main' panicked at engines/src/x.rs:10:5:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        let c = stderr_cause(text);
        assert!(c.contains("index out of bounds") && c.contains("panicked at"), "{c}");
        assert_eq!(stderr_cause("memory allocation of 8 bytes failed\n"), "memory allocation of 8 bytes failed");
        assert_eq!(stderr_cause(""), "");
    }
}
