//! The command line: clap definitions, and the one place where flags, a TOML sweep file and
//! preset defaults are merged (flags over file over preset) and validated, before any work.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use ctxcost_core::units::{parse_contexts, parse_duration_secs, parse_size};
use ctxcost_core::{Backend, Phase, Precision};
use ctxcost_engines::external::ExternalSpec;
use ctxcost_engines::kernel_choice;
use ctxcost_engines::registry::{available_engines, backend_of, cuda_available, engine_ids, method_of};
use ctxcost_workloads::{Sweep, PRESETS};

/// ctxcost measures what long context really costs: dense vs DeepSeek sparse attention
/// (DSA) over sweeps of context length, with verified engines, raw samples, confidence
/// intervals and crash-safe JSONL records.
#[derive(Debug, Parser)]
#[command(name = "ctxcost", version, about, long_about = None, after_help = "With no verb, `ctxcost` runs the default sweep (`run`).\nExamples:\n  ctxcost run                                  # cpu-quick here, h200 on a GPU machine\n  ctxcost run --preset cpu-quick --out r.jsonl\n  ctxcost run --engines dense-cpu,dsa-cpu --contexts 1k..16k --phase decode --batch 8\n  ctxcost engines\n  ctxcost report r.jsonl --out report/\n  ctxcost compare base.jsonl new.jsonl\n  ctxcost endpoint --a http://h1:8000/v1 --b http://h2:8000/v1 --contexts 4k..64k")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sweep: verify each engine against the f64 reference, then time it; append one
    /// JSONL record per case.
    Run(Box<RunArgs>),
    /// List the engines of this build and whether each can run on this machine.
    Engines,
    /// Write the cost report (HTML, Markdown, CSV, Parquet) from record files.
    #[cfg(feature = "report")]
    Report(crate::cmd_report::ReportArgs),
    /// Compare two record sets: a noise-aware regression gate (exit 1 on regression).
    #[cfg(feature = "report")]
    Compare(crate::cmd_compare::CompareArgs),
    /// Measure this GPU's ceilings (device copy bandwidth, cuBLAS bf16 GEMM rate).
    Ceilings,
    /// Measure an OpenAI-compatible endpoint (vLLM, SGLang, a hosted API), or two side by
    /// side (A/B): TTFT, TPOT, ITL, E2E, throughput, goodput and cost over prompt lengths.
    #[cfg(feature = "http")]
    Endpoint(Box<crate::cmd_endpoint::EndpointArgs>),
    /// Serve a local OpenAI-compatible streaming mock (set delays, inject faults) to try
    /// `endpoint` on.
    #[cfg(feature = "http")]
    ServeMock(crate::cmd_endpoint::MockArgs),
    /// Internal: measure one point in a child process (reads a job on stdin).
    #[command(name = "__point", hide = true)]
    Point,
}

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

/// Where a run's records and report go (the same flags for `run` and `endpoint`).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Output JSONL file [default: runs/<sweep name>-<UTC time>.jsonl; endpoint runs: runs/endpoint-<UTC time>.jsonl].
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Continue an existing output file: cases it already records are skipped.
    #[arg(long)]
    pub resume: bool,
    /// Overwrite an existing output file.
    #[arg(long, conflicts_with = "resume")]
    pub force: bool,
    /// Do not write the report at the end.
    #[arg(long)]
    pub no_report: bool,
    /// Report folder [default: the output file's name without .jsonl, plus `-report`].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,
}

impl OutputArgs {
    /// The output file (`--out`, else `runs/<name>-<UTC time>.jsonl`) and the report folder
    /// (none with `--no-report`; the report sits beside the records it is made from).
    pub fn paths(&self, name: &str) -> (PathBuf, Option<PathBuf>) {
        let out = self.out.clone().unwrap_or_else(|| default_out(name));
        let report_dir = (!self.no_report).then(|| self.report_dir.clone().unwrap_or_else(|| default_report_dir(&out)));
        (out, report_dir)
    }
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

fn default_out(name: &str) -> PathBuf {
    PathBuf::from("runs").join(format!("{}-{}.jsonl", name, crate::envinfo::utc_compact()))
}

/// `runs/x.jsonl` -> `runs/x-report`.
pub fn default_report_dir(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "ctxcost".into());
    out.with_file_name(format!("{stem}-report"))
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

/// `ctxcost engines`.
pub fn print_engines() {
    println!("{:<18} {:<6} {:<9} {:<11} description", "engine", "method", "backend", "status");
    for e in available_engines() {
        let status = if e.available.is_ok() { "available" } else { "unavailable" };
        println!("{:<18} {:<6} {:<9} {:<11} {}", e.id, e.method, e.backend, status, e.description);
        if let Err(why) = &e.available {
            println!("{:<18} {:<6} {:<9} {:<11} reason: {}", "", "", "", "", why);
        }
    }
    #[cfg(feature = "http")]
    println!("{:<18} {:<6} {:<9} {:<11} remote OpenAI-compatible servers (vLLM, SGLang, hosted APIs), one engine per side: `ctxcost endpoint`", "http-<label>", "-", "http", "available");
    println!("\nExternal engines (backend `external`) run as worker processes (peers/PROTOCOL.md); each says in its first");
    println!("records whether its library is installed. Plug in your own with `ctxcost run --external ID:METHOD=COMMAND`.");
    println!("\nKernel choices of our CUDA engines (`ctxcost run --variant AXIS=V1,V2` measures each value as a case of its own;");
    println!("the first value is the default where the device runs it):");
    for axis in kernel_choice::KERNEL_AXES {
        println!("  {:<11} {:<13} {:<42} {}", axis.engine, axis.name, axis.values.join(", "), axis.what);
    }
}

/// `ctxcost ceilings`.
pub fn ceilings() -> Result<ExitCode> {
    if let Err(why) = cuda_available() {
        bail!("ceilings need a usable NVIDIA GPU: {why}");
    }
    #[cfg(feature = "cuda")]
    {
        crate::runner::print_ceilings()?;
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(feature = "cuda"))]
    {
        bail!("this build has no CUDA support")
    }
}
