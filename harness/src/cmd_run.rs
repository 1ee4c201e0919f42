//! `ctxcost run`: expands the sweep, runs each point in a child process (so peak memory is
//! the point's own and a crash or OOM kill of one point does not end the sweep), appends
//! each record to the JSONL file the moment it arrives, shows progress, and ends with the
//! summary table and the report. Its arguments are merged here too, in one place (flags over
//! the TOML sweep file over the preset) and validated before any work.
//!
//! Over several GPUs (`--gpus`), one worker thread per GPU takes the next point and runs its
//! child pinned with `CUDA_VISIBLE_DEVICES`; every record comes back to the main thread,
//! the only writer of the file, so lines never interleave. `--shard K/N` keeps the points
//! whose index is K mod N; `--replicate N` measures each point on N different GPUs. Every
//! record carries its placement (sweep fingerprint and size, point, shard, GPU, replica) so
//! `ctxcost merge` can check and join shards.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use ctxcost_core::placement::{fingerprint, GpuSlot, Placement, Shard};
use ctxcost_core::record::{Record, Status};
use ctxcost_core::units::{format_tokens, parse_contexts, parse_size};
use ctxcost_core::{Backend, Phase, Precision};
use ctxcost_engines::external::ExternalSpec;
use ctxcost_engines::kernel_choice;
use ctxcost_engines::registry::{backend_of, cuda_available, engine_ids, method_of};
use ctxcost_workloads::{Sweep, PRESETS};

use crate::envinfo::ListedGpu;
use crate::flags::{duration_flag, no_repeats, split_list};
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
    /// `ID:METHOD=COMMAND`, e.g. `my-attn:dense=python3 my_kernel.py` (METHOD: dense, dsa or rest).
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
    /// Run points in parallel, one measuring process per GPU, pinned with CUDA_VISIBLE_DEVICES
    /// (indices as nvidia-smi numbers them, PCI bus order): `all` (every GPU nvidia-smi lists)
    /// or a list such as `0,1,3`. A point's cases always run together on one GPU. A list of
    /// GPUs this machine lacks is allowed when every engine runs on the CPU (to try the flag).
    #[arg(long, value_name = "all|LIST", help_heading = "Several GPUs and hosts")]
    pub gpus: Option<String>,
    /// Run shard K of N of the sweep's points (point i is in shard i mod N; K counts from 0):
    /// `--shard 2/8`. `--shard auto/8` takes K from SLURM_ARRAY_TASK_ID (less
    /// SLURM_ARRAY_TASK_MIN) or JOB_COMPLETION_INDEX. Join the shards' files with `ctxcost merge`.
    #[arg(long, value_name = "K/N", help_heading = "Several GPUs and hosts")]
    pub shard: Option<String>,
    /// Measure each point on N different GPUs of `--gpus`, to see GPU-to-GPU spread (the
    /// report's "Spread across GPUs") [default 1].
    #[arg(long, value_name = "N", help_heading = "Several GPUs and hosts")]
    pub replicate: Option<u32>,
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
    /// GPUs to run on in parallel (`--gpus`); empty: one process at a time, not pinned.
    pub gpus: Vec<GpuSlot>,
    /// This run's shard of the sweep (`--shard`).
    pub shard: Option<Shard>,
    /// GPUs that measure each point (`--replicate`, at least 1).
    pub replicas: u32,
    /// Fingerprint of the resolved sweep (shared by its shards).
    pub fingerprint: String,
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
        sweep.sampling.max_seconds = duration_flag("--max-seconds", s)?;
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
    let gpus = match &a.gpus {
        None => Vec::new(),
        Some(text) => {
            let cpu_only = sweep.engines.iter().all(|id| backend_of(id, &external) == Some(Backend::Cpu));
            parse_gpus(text, &envinfo::list_gpus(), cpu_only)?
        }
    };
    let shard = a.shard.as_deref().map(|t| parse_shard(t, &|v| std::env::var(v).ok())).transpose()?;
    let replicas = a.replicate.unwrap_or(1);
    if replicas == 0 {
        bail!("--replicate 0: each point needs at least one GPU (e.g. `--replicate 2 --gpus 0,1`)");
    }
    if replicas > 1 && (gpus.len() as u32) < replicas {
        bail!("--replicate {replicas} needs at least {replicas} GPUs in --gpus (each point runs once on each of {replicas} different GPUs), e.g. `--gpus all` or `--gpus 0,1`");
    }
    let verify = !a.no_verify;
    let fingerprint = sweep_fingerprint(&sweep, verify, &external);
    let (out, report_dir) = a.output.paths(&sweep.name);
    Ok(Plan { sweep, out, resume: a.output.resume, force: a.output.force, tensors: a.tensors.clone(), verify, report_dir, external, gpus, shard, replicas, fingerprint })
}

/// The fingerprint of a resolved sweep: every setting that decides its cases and how they are
/// measured (the sweep with its sampling, verification, external engines), not where they run
/// (`--gpus`, `--shard`, `--replicate`, `--out`).
pub fn sweep_fingerprint(sweep: &Sweep, verify: bool, external: &[ExternalSpec]) -> String {
    let text = serde_json::to_string(&(sweep, verify, external)).expect("a sweep serialises");
    fingerprint(text.as_bytes())
}

/// `--gpus all|0,1,3` against the GPUs nvidia-smi lists. An index it does not list is allowed
/// when every engine runs on the CPU (a fake device list: the children only get
/// CUDA_VISIBLE_DEVICES set).
pub fn parse_gpus(text: &str, listed: &[ListedGpu], cpu_only: bool) -> Result<Vec<GpuSlot>> {
    let slot = |index: u32| GpuSlot { index, uuid: listed.iter().find(|g| g.index == index).map(|g| g.uuid.clone()) };
    if text.trim().eq_ignore_ascii_case("all") {
        if listed.is_empty() {
            bail!("--gpus all: nvidia-smi lists no GPU on this machine; name the devices (`--gpus 0,1`) or leave --gpus out");
        }
        return Ok(listed.iter().map(|g| slot(g.index)).collect());
    }
    let list: Vec<u32> = split_list(text)
        .iter()
        .map(|x| x.parse::<u32>().map_err(|_| anyhow::anyhow!("--gpus: `{x}` is not a GPU index (use `all` or indices such as `0,1,3`)")))
        .collect::<Result<_>>()?;
    if list.is_empty() {
        bail!("--gpus: no GPU named (use `all` or indices such as `0,1,3`)");
    }
    no_repeats("--gpus", &list)?;
    if !cpu_only && !listed.is_empty() {
        if let Some(i) = list.iter().find(|i| !listed.iter().any(|g| g.index == **i)) {
            let have: Vec<String> = listed.iter().map(|g| g.index.to_string()).collect();
            bail!("--gpus: GPU {i} is not on this machine (nvidia-smi lists {}); choose from those or use `--gpus all`", have.join(", "));
        }
    }
    Ok(list.into_iter().map(slot).collect())
}

/// `--shard K/N` or `--shard auto/N` (K from the scheduler's array index: Slurm's
/// SLURM_ARRAY_TASK_ID less SLURM_ARRAY_TASK_MIN, or a Kubernetes indexed Job's
/// JOB_COMPLETION_INDEX). `var` reads the environment.
pub fn parse_shard(text: &str, var: &dyn Fn(&str) -> Option<String>) -> Result<Shard> {
    let Some((k, n)) = text.split_once('/') else {
        bail!("--shard {text}: use K/N with K counting from 0 (`--shard 0/4`), or `--shard auto/4` to read K from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX");
    };
    let count: usize = match n.trim().parse() {
        Ok(c) if c > 0 => c,
        _ => bail!("--shard {text}: N must be a whole number of shards, at least 1 (e.g. `--shard 0/4`)"),
    };
    let number = |name: &str, v: &str| v.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("--shard {text}: {name}={v:?} is not a whole number"));
    let (index, from) = if k.trim().eq_ignore_ascii_case("auto") {
        if let Some(id) = var("SLURM_ARRAY_TASK_ID") {
            let id = number("SLURM_ARRAY_TASK_ID", &id)?;
            let min = var("SLURM_ARRAY_TASK_MIN").map(|m| number("SLURM_ARRAY_TASK_MIN", &m)).transpose()?.unwrap_or(0);
            if id < min {
                bail!("--shard {text}: SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}");
            }
            (id - min, format!(" (SLURM_ARRAY_TASK_ID={id} less SLURM_ARRAY_TASK_MIN={min}; give the array {count} tasks, e.g. `--array=0-{}`)", count - 1))
        } else if let Some(i) = var("JOB_COMPLETION_INDEX") {
            (number("JOB_COMPLETION_INDEX", &i)?, format!(" (JOB_COMPLETION_INDEX={i}; set the Job's completions to {count})"))
        } else {
            bail!("--shard {text}: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; give K (`--shard 0/{count}`)");
        }
    } else {
        (k.trim().parse::<usize>().map_err(|_| anyhow::anyhow!("--shard {text}: K must be a whole number from 0, or `auto` (e.g. `--shard 0/{count}`)"))?, String::new())
    };
    if index >= count {
        bail!("--shard {text}: shard {index} is not below N={count}{from}; K counts from 0 to {}", count - 1);
    }
    Ok(Shard { index, count })
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

/// One measurement of a point: its pending cases, on one replica.
struct Item {
    point: usize,
    point_cases: usize,
    replica: u32,
    cases: Vec<ctxcost_core::Case>,
}

/// Hands out the pending items to the GPU workers: in sweep order, and never two replicas
/// of a point to the same GPU.
struct Queue {
    pending: Vec<Item>,
    ran_on: HashMap<usize, Vec<usize>>,
    started: usize,
}

impl Queue {
    /// The next item the worker of `slot` may take, with its ordinal (from 1).
    fn take(&mut self, slot: usize) -> Option<(usize, Item)> {
        let i = self.pending.iter().position(|it| !self.ran_on.get(&it.point).is_some_and(|s| s.contains(&slot)))?;
        let item = self.pending.remove(i);
        self.ran_on.entry(item.point).or_default().push(slot);
        self.started += 1;
        Some((self.started, item))
    }
}

/// What a worker tells the writer (the parent's main thread, the only writer of the file).
enum Event {
    Start { slot: usize, label: String },
    Record { slot: usize, ordinal: usize, label: String, record: Box<Record> },
    Note(String),
    Idle { slot: usize },
}

/// A measuring process that dies before it has read its job closes its stdin: the worker's
/// write must then fail (its point gets `failed` records), not raise SIGPIPE, which `main`
/// leaves at its default (ending the whole run). SIGPIPE goes to the thread that wrote, so
/// blocking it in the worker threads (and the threads they start) is enough.
fn ignore_sigpipe_in_this_thread() {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset before use;
    // pthread_sigmask only changes this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// `gpu1 ` where the run is pinned to GPUs, else nothing.
fn slot_name(gpu: Option<&GpuSlot>) -> String {
    gpu.map(|g| format!("gpu{}", g.index)).unwrap_or_default()
}

/// The environment records of `gpu` carry: the machine's, with that GPU's nvidia-smi facts
/// where it lists it (the run's ceilings and CUDA version kept).
fn env_for(base: &ctxcost_core::record::Environment, gpu: Option<&GpuSlot>) -> ctxcost_core::record::Environment {
    let mut env = base.clone();
    if let Some(g) = gpu.filter(|g| g.uuid.is_some()) {
        env.gpu.extend(envinfo::gpu_info(g.index));
    }
    env
}

/// Point the parent's own CUDA use (the same-run ceilings) at the first GPU of `--gpus`,
/// before anything touches CUDA.
fn pin_parent(args: &RunArgs) {
    let Some(text) = &args.gpus else { return };
    let first = if text.trim().eq_ignore_ascii_case("all") { envinfo::list_gpus().first().map(|g| g.index) } else { split_list(text).first().and_then(|x| x.parse::<u32>().ok()) };
    if let Some(i) = first {
        std::env::set_var("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        std::env::set_var("CUDA_VISIBLE_DEVICES", i.to_string());
    }
}

/// Run a sweep.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    pin_parent(&args);
    let plan = resolve(args)?;
    let (mut writer, done) = recordio::open_output_replicas(&plan.out, plan.resume, plan.force)?;
    let all_points = points(&plan.sweep, &plan.external);
    let sweep_points = all_points.len();
    let sweep_cases: usize = all_points.iter().map(|p| p.cases.len()).sum();
    let mut total = 0usize;
    let mut owned = 0usize;
    let mut items = Vec::new();
    for (point, p) in all_points.into_iter().enumerate() {
        if plan.shard.is_some_and(|s| !s.owns(point)) {
            continue;
        }
        owned += 1;
        for replica in 0..plan.replicas {
            total += p.cases.len();
            let cases: Vec<_> = p.cases.iter().filter(|c| !done.contains(&(c.key(), replica))).cloned().collect();
            if !cases.is_empty() {
                items.push(Item { point, point_cases: p.cases.len(), replica, cases });
            }
        }
    }
    let already = total - items.iter().map(|it| it.cases.len()).sum::<usize>();
    let n_items = items.len();
    let mut where_ = String::new();
    if let Some(s) = plan.shard {
        where_.push_str(&format!("; shard {s}: {owned} of {sweep_points} points"));
    }
    if !plan.gpus.is_empty() {
        let names: Vec<String> = plan.gpus.iter().map(|g| g.index.to_string()).collect();
        where_.push_str(&format!("; GPUs {} in parallel", names.join(",")));
        if plan.replicas > 1 {
            where_.push_str(&format!(", each point on {} of them", plan.replicas));
        }
    }
    eprintln!(
        "ctxcost {}: sweep `{}` ({} shape, fingerprint {}), {} cases in {} points{}{} -> {}",
        env!("CARGO_PKG_VERSION"),
        plan.sweep.name,
        plan.sweep.shape.name,
        plan.fingerprint,
        total,
        n_items,
        if already > 0 { format!(", {already} already recorded") } else { String::new() },
        where_,
        plan.out.display()
    );
    if !plan.gpus.is_empty() && plan.gpus.iter().all(|g| g.uuid.is_none()) {
        eprintln!("note: nvidia-smi lists none of these GPUs: each measuring process gets CUDA_VISIBLE_DEVICES all the same, and records name the index given");
    }
    if plan.shard.is_some() && owned == 0 {
        eprintln!("note: this shard holds no point (the sweep has {sweep_points}); nothing to run");
    }
    let mut env = envinfo::capture();
    same_run_ceilings(&plan, &mut env);
    let tool = envinfo::tool();
    let exe = std::env::current_exe().context("locating the ctxcost binary")?;
    let tty = std::io::stderr().is_terminal();
    let bar = if tty { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} cases  {elapsed_precise} elapsed, ETA {eta}  {msg}").expect("valid template"));
    bar.set_position(already as u64);
    let started = Instant::now();
    let slots: Vec<Option<GpuSlot>> = if plan.gpus.is_empty() { vec![None] } else { plan.gpus.iter().cloned().map(Some).collect() };
    let queue = Mutex::new(Queue { pending: items, ran_on: HashMap::new(), started: 0 });
    let placement = |it: &Item, gpu: Option<&GpuSlot>| Placement {
        sweep: plan.fingerprint.clone(),
        points: sweep_points,
        cases: sweep_cases,
        point: it.point,
        point_cases: it.point_cases,
        replicas: plan.replicas,
        replica: it.replica,
        shard: plan.shard,
        gpu: gpu.cloned(),
    };
    let mut failed = 0usize;
    let mut current: Vec<String> = vec![String::new(); slots.len()];
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = mpsc::channel::<Event>();
        for (slot, gpu) in slots.iter().enumerate() {
            let tx = tx.clone();
            let (queue, exe, tool, placement, plan) = (&queue, &exe, &tool, &placement, &plan);
            let env = env_for(&env, gpu.as_ref());
            scope.spawn(move || {
                ignore_sigpipe_in_this_thread();
                loop {
                    let next = queue.lock().expect("queue lock").take(slot);
                    let Some((ordinal, item)) = next else { break };
                    let c0 = &item.cases[0];
                    let label = format!("{} {} L={} B={} {}", c0.shape.name, c0.phase, format_tokens(c0.context), c0.batch, c0.precision);
                    // The writer is gone (it met an error): start nothing more.
                    if tx.send(Event::Start { slot, label: label.clone() }).is_err() {
                        break;
                    }
                    let mut env = env.clone();
                    env.placement = Some(placement(&item, gpu.as_ref()));
                    let job = Job { cases: item.cases.clone(), sampling: plan.sweep.sampling.clone(), verify: plan.verify, tensors: plan.tensors.as_ref().map(|p| p.to_string_lossy().to_string()), tool: tool.clone(), env, external: plan.external.clone() };
                    let send = |record: Record| {
                        let _ = tx.send(Event::Record { slot, ordinal, label: label.clone(), record: Box::new(record) });
                    };
                    let note = |text: String| {
                        let _ = tx.send(Event::Note(text));
                    };
                    measure_point(exe, &job, gpu.as_ref(), send, note);
                }
                let _ = tx.send(Event::Idle { slot });
            });
        }
        drop(tx);
        for ev in rx {
            match ev {
                Event::Start { slot, label } => {
                    current[slot] = label;
                    bar.set_message(progress_message(&slots, &current));
                }
                Event::Idle { slot } => {
                    current[slot] = "done".into();
                    bar.set_message(progress_message(&slots, &current));
                }
                Event::Note(text) => bar.suspend(|| eprint!("{text}")),
                Event::Record { slot, ordinal, label, record } => {
                    let r = *record;
                    if r.status == Status::Failed {
                        failed += 1;
                    }
                    if r.status != Status::Ok || !tty {
                        let what = match r.status {
                            Status::Ok => format!("{:.4} ms median", r.median_ms().unwrap_or(f64::NAN)),
                            _ => format!("{}: {}", format!("{:?}", r.status).to_lowercase(), r.reason.as_deref().unwrap_or("")),
                        };
                        let on = slot_name(slots[slot].as_ref());
                        let on = if on.is_empty() { on } else { format!(" {on}") };
                        bar.suspend(|| eprintln!("[{ordinal}/{n_items}{on}] {} {} {}", r.engine, label, what));
                    }
                    writer.append(&r)?;
                    bar.inc(1);
                }
            }
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    eprintln!("finished in {:.1} s; records in {}", started.elapsed().as_secs_f64(), plan.out.display());
    // The summary pairs the first replica of each case (a ratio never pairs two GPUs).
    let records: Vec<Record> = recordio::read_records(&plan.out)?.into_iter().filter(|r| recordio::replica_of(r) == 0).collect();
    println!("{}", summary::render(&records));
    if let Some(dir) = &plan.report_dir {
        write_report(&plan.out, dir);
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The bar's message: the point each GPU measures (`gpu0: decode L=1k ... | gpu1: ...`).
fn progress_message(slots: &[Option<GpuSlot>], current: &[String]) -> String {
    if slots.len() == 1 && slots[0].is_none() {
        return current[0].clone();
    }
    slots.iter().zip(current).map(|(g, c)| format!("{}: {}", slot_name(g.as_ref()), if c.is_empty() { "-" } else { c })).collect::<Vec<_>>().join(" | ")
}

/// Measure one point in a child process (pinned to `gpu` when given) and hand over each
/// record as its line arrives; cases the child did not record (it crashed or was killed)
/// get `failed` records naming the cause.
fn measure_point(exe: &std::path::Path, job: &Job, gpu: Option<&GpuSlot>, mut send: impl FnMut(Record), note: impl Fn(String)) {
    let mut cmd = Command::new(exe);
    cmd.arg("__point").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(g) = gpu {
        cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID").env("CUDA_VISIBLE_DEVICES", g.index.to_string());
    }
    let mut got: HashSet<String> = HashSet::new();
    let (why, stderr_text) = match cmd.spawn() {
        Err(e) => (format!("starting a measuring process: {e}"), String::new()),
        Ok(mut child) => {
            let mut stdin = child.stdin.take().expect("piped");
            let job_text = serde_json::to_string(job).expect("a job serialises");
            // A child that dies at once closes its stdin: its cases fail below.
            let _ = stdin.write_all(job_text.as_bytes());
            drop(stdin);
            let mut err_pipe = child.stderr.take().expect("piped");
            let err_thread = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err_pipe.read_to_string(&mut s);
                s
            });
            for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
                let Ok(line) = line else { break };
                match Record::from_line(&line) {
                    Ok(r) => {
                        got.insert(r.key.clone());
                        send(r);
                    }
                    Err(e) => note(format!("warning: measuring process wrote a line that is not a record ({e}): {line}\n")),
                }
            }
            let status = child.wait();
            let stderr_text = err_thread.join().unwrap_or_default();
            let why = match status {
                Err(e) => format!("waiting for the measuring process: {e}"),
                Ok(status) => match (status.code(), status.signal()) {
                    (_, Some(9)) => "measuring process was killed (signal 9; out of host memory?)".to_string(),
                    (_, Some(6)) => "measuring process aborted (SIGABRT)".to_string(),
                    (_, Some(11)) => "measuring process crashed (segmentation fault, SIGSEGV)".to_string(),
                    (_, Some(sig)) => format!("measuring process died on signal {sig}"),
                    (Some(code), _) => format!("measuring process exited with code {code}"),
                    _ => "measuring process ended abnormally".to_string(),
                },
            };
            (why, stderr_text)
        }
    };
    let missing: Vec<_> = job.cases.iter().filter(|c| !got.contains(&c.key())).collect();
    if missing.is_empty() {
        if !stderr_text.trim().is_empty() {
            note(stderr_text);
        }
        return;
    }
    let last = stderr_cause(&stderr_text);
    for c in missing {
        let mut r = failed_record(c, job, format!("{why}{}", if last.is_empty() { String::new() } else { format!(": {last}") }));
        r.finished_at = envinfo::utc_now();
        send(r);
    }
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
    use super::{parse_gpus, parse_shard, stderr_cause};
    use crate::envinfo::ListedGpu;
    use ctxcost_core::placement::Shard;

    #[test]
    fn shards_come_from_the_flag_or_the_schedulers_array_index() {
        let none = |_: &str| None;
        assert_eq!(parse_shard("2/4", &none).unwrap(), Shard { index: 2, count: 4 });
        let slurm = |v: &str| match v {
            "SLURM_ARRAY_TASK_ID" => Some("3".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
            _ => None,
        };
        assert_eq!(parse_shard("auto/3", &slurm).unwrap(), Shard { index: 2, count: 3 });
        let k8s = |v: &str| (v == "JOB_COMPLETION_INDEX").then(|| "0".to_string());
        assert_eq!(parse_shard("auto/2", &k8s).unwrap(), Shard { index: 0, count: 2 });
        for (text, needle) in [("4/4", "not below N=4"), ("1", "K/N"), ("0/0", "at least 1"), ("x/2", "whole number"), ("auto/2", "SLURM_ARRAY_TASK_ID")] {
            let e = parse_shard(text, &none).unwrap_err().to_string();
            assert!(e.contains("--shard") && e.contains(needle), "{text}: {e}");
        }
        let e = parse_shard("auto/2", &slurm).unwrap_err().to_string();
        assert!(e.contains("SLURM_ARRAY_TASK_ID=3") && e.contains("--array=0-1"), "{e}");
    }

    #[test]
    fn gpu_lists_are_checked_against_nvidia_smi_unless_every_engine_is_on_the_cpu() {
        let listed = [ListedGpu { index: 0, uuid: "GPU-a".into(), name: "H200".into() }, ListedGpu { index: 1, uuid: "GPU-b".into(), name: "H200".into() }];
        let all = parse_gpus("all", &listed, false).unwrap();
        assert_eq!(all.iter().map(|g| (g.index, g.uuid.clone().unwrap())).collect::<Vec<_>>(), [(0, "GPU-a".to_string()), (1, "GPU-b".to_string())]);
        assert!(parse_gpus("all", &[], true).unwrap_err().to_string().contains("lists no GPU"));
        assert!(parse_gpus("0,3", &listed, false).unwrap_err().to_string().contains("GPU 3 is not on this machine"));
        let fake = parse_gpus("0,3", &listed, true).unwrap();
        assert_eq!((fake[1].index, fake[1].uuid.is_none()), (3, true));
        assert_eq!(parse_gpus("2,5", &[], false).unwrap().len(), 2);
        assert!(parse_gpus("0,0", &[], true).unwrap_err().to_string().contains("listed twice"));
        assert!(parse_gpus("a", &[], true).unwrap_err().to_string().contains("not a GPU index"));
    }

    #[test]
    fn a_panic_is_named_by_its_message_not_the_backtrace_hint() {
        let text = "thread 'main' panicked at engines/src/x.rs:10:5:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        let c = stderr_cause(text);
        assert!(c.contains("index out of bounds") && c.contains("panicked at"), "{c}");
        assert_eq!(stderr_cause("memory allocation of 8 bytes failed\n"), "memory allocation of 8 bytes failed");
        assert_eq!(stderr_cause(""), "");
    }
}
