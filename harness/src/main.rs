//! ctxcost: measure what long context really costs.
//!
//! The binary owns the command line, the runner (child process per point, interleaved
//! sampling, crash-safe JSONL records, `--resume`), environment capture, memory probes and
//! progress display. Verbs: `run`, `engines`, `report`, `compare`, `merge`, `ceilings`,
//! `endpoint`, `serve-mock`.

mod cli;
mod cmd_ceilings;
#[cfg(feature = "http")]
mod cmd_endpoint;
#[cfg(feature = "report")]
mod cmd_compare;
#[cfg(feature = "report")]
mod cmd_report;
mod cmd_engines;
mod cmd_merge;
#[cfg(feature = "http")]
mod endpoint_plan;
mod cmd_run;
mod envinfo;
mod flags;
mod memory;
mod point;
mod output;
mod recordio;
mod summary;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as other command-line tools do, instead of a
    // panic on the broken pipe.
    // SAFETY: setting a signal's disposition to its default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = cli::Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn dispatch(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    match cli.command.unwrap_or(cli::Command::Run(Box::default())) {
        cli::Command::Run(args) => cmd_run::run(*args),
        cli::Command::Engines => {
            cmd_engines::run();
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "report")]
        cli::Command::Report(args) => cmd_report::run(args),
        #[cfg(feature = "report")]
        cli::Command::Compare(args) => cmd_compare::run(args),
        cli::Command::Merge(args) => cmd_merge::run(args),
        cli::Command::Ceilings => cmd_ceilings::run(),
        #[cfg(feature = "http")]
        cli::Command::Endpoint(args) => cmd_endpoint::run(*args),
        #[cfg(feature = "http")]
        cli::Command::ServeMock(args) => cmd_endpoint::serve_mock(args),
        cli::Command::Point => point::child_main(),
    }
}
