//! `ctxcost run`: expands the sweep, runs each point in a child process (so peak memory is
//! the point's own and a crash or OOM kill of one point does not end the sweep), appends
//! each record to the JSONL file the moment it arrives, shows progress, and ends with the
//! summary table and the report.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use ctxcost_core::record::{Record, Status};
use ctxcost_core::units::format_tokens;

use crate::cli::{resolve, RunArgs};
use crate::point::Job;
use crate::{envinfo, recordio, summary};

/// Run a sweep.
pub fn run(args: RunArgs) -> Result<ExitCode> {
    let plan = resolve(args)?;
    let (mut writer, done) = recordio::open_output(&plan.out, plan.resume, plan.force)?;
    let points = crate::cli::points(&plan.sweep, &plan.external);
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
fn same_run_ceilings(plan: &crate::cli::Plan, env: &mut ctxcost_core::record::Environment) {
    use ctxcost_core::Backend;
    let gpu = plan.sweep.engines.iter().any(|id| matches!(ctxcost_engines::backend_of(id, &plan.external), Some(Backend::Cuda | Backend::External)));
    if !gpu || ctxcost_engines::registry::cuda_available().is_err() {
        return;
    }
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

#[cfg(feature = "report")]
pub(crate) fn write_report(records: &std::path::Path, dir: &std::path::Path) {
    match crate::cmd_report::write_default_report(&[records.to_path_buf()], dir) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            println!("report: {}", dir.join("index.html").display());
        }
        Err(e) => eprintln!("warning: the report could not be written: {e:#}"),
    }
}

#[cfg(not(feature = "report"))]
pub(crate) fn write_report(records: &std::path::Path, _dir: &std::path::Path) {
    eprintln!("this build has no report feature: run `ctxcost report {}` where it does", records.display());
}

/// Print the GPU ceilings (device copy, cuBLAS GEMM), one `name value unit` line each, so
/// scripts can read them.
#[cfg(feature = "cuda")]
pub fn print_ceilings() -> Result<()> {
    use ctxcost_engines::cuda::ceilings;
    let env = envinfo::capture();
    println!("gpu {}", env.gpu.get("name").map(String::as_str).unwrap_or("unknown"));
    match ceilings::copy_tbps() {
        Ok(v) => println!("copy_tbps {v:.3} TB/s (device-to-device copy, bytes read + written)"),
        Err(e) => println!("copy_tbps unavailable: {e}"),
    }
    match ceilings::gemm_tflops() {
        Ok(v) => println!("gemm_bf16_tflops {v:.1} TFLOP/s (cuBLAS 8192^3, random inputs)"),
        Err(e) => println!("gemm_bf16_tflops unavailable: {e}"),
    }
    Ok(())
}
