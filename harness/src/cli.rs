//! The command line: the verbs and where each lives. Every verb is one file with its own
//! arguments and `run` (`cmd_run`, `cmd_engines`, `cmd_report`, `cmd_compare`,
//! `cmd_ceilings`, `cmd_endpoint`, `cmd_merge`); output paths and the report after a run are in `output`.

use clap::{Parser, Subcommand};

/// ctxcost measures what long context really costs: dense vs DeepSeek sparse attention
/// (DSA) over sweeps of context length, with verified engines, raw samples, confidence
/// intervals and crash-safe JSONL records.
#[derive(Debug, Parser)]
#[command(name = "ctxcost", version, about, long_about = None, after_help = "With no verb, `ctxcost` runs the default sweep (`run`).\nExamples:\n  ctxcost run                                  # cpu-quick here, h200 on a GPU machine\n  ctxcost run --preset cpu-quick --out r.jsonl\n  ctxcost run --engines dense-cpu,dsa-cpu --contexts 1k..16k --phase decode --batch 8\n  ctxcost engines\n  ctxcost report r.jsonl --out report/\n  ctxcost compare base.jsonl new.jsonl\n  ctxcost run --gpus all --shard auto/4 --out shard.jsonl   # in a Slurm array or indexed Job\n  ctxcost merge shard-*.jsonl --out all.jsonl\n  ctxcost endpoint --a http://h1:8000/v1 --b http://h2:8000/v1 --contexts 4k..64k")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a sweep: verify each engine against the f64 reference, then time it; append one
    /// JSONL record per case.
    Run(Box<crate::cmd_run::RunArgs>),
    /// List the engines of this build and whether each can run on this machine.
    Engines,
    /// Write the cost report (HTML, Markdown, CSV, Parquet) from record files.
    #[cfg(feature = "report")]
    Report(crate::cmd_report::ReportArgs),
    /// Compare two record sets: a noise-aware regression gate (exit 1 on regression).
    #[cfg(feature = "report")]
    Compare(crate::cmd_compare::CompareArgs),
    /// Join the record files of a sweep's shards (`run --shard K/N`) into one: checks they are
    /// shards of one sweep on one GPU model, reports missing and duplicate cases.
    Merge(crate::cmd_merge::MergeArgs),
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
