//! `ctxcost compare BASELINE CURRENT`: the noise-aware regression gate.
//!
//! Reads two record sets, hands them to [`ctxcost_reports::compare`] and prints a terminal
//! table; optionally writes Markdown (for a CI job summary) and JSON. Each side is a JSONL
//! file, a folder (every `*.jsonl` in it) or a pattern with `*` / `?` in its file name
//! (`'runs/nightly-*.jsonl'`, quoted so the shell leaves it alone); several files on one side
//! are pooled. Exit status: 0 no regression, 1 a case regressed (or broke, or with
//! `--fail-on-missing` went missing), 2 bad input (returned as an error to `main`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use ctxcost_core::record::Record;
use ctxcost_reports::compare::{compare, CompareOptions, DEFAULT_THRESHOLD};

/// Arguments of `ctxcost compare`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Exit status: 0 no regression, 1 regression (a case whose whole 95% CI of current/baseline \
lies above 1 + threshold, or a case that was ok and now fails), 2 bad input.\n\
Examples:\n  ctxcost compare ci/baselines/cpu-quick.jsonl runs/now.jsonl\n  \
ctxcost compare 'runs/base-*.jsonl' runs/now/ --threshold 0.10 --markdown summary.md --json compare.json")]
pub struct CompareArgs {
    /// Baseline records: a JSONL file, a folder of them, or a quoted pattern such as 'runs/base-*.jsonl'.
    pub baseline: PathBuf,
    /// Current records: a JSONL file, a folder of them, or a quoted pattern.
    pub current: PathBuf,
    /// Noise threshold: a case regresses only when its whole 95% CI lies above 1 + THRESHOLD
    /// (improves: wholly below 1 - THRESHOLD). Measure your machine's noise to choose it
    /// (ci/noise-study.sh).
    #[arg(long, value_name = "FRACTION", default_value_t = DEFAULT_THRESHOLD)]
    pub threshold: f64,
    /// Also write the comparison as Markdown (e.g. for a CI job summary).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Also write the comparison as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Never compare records measured on different machines (list them as one-sided instead).
    #[arg(long)]
    pub strict_machine: bool,
    /// Fail (exit 1) when a baseline case is missing from the current records.
    #[arg(long)]
    pub fail_on_missing: bool,
    /// Print only the one-line outcome instead of the table.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: CompareArgs) -> Result<ExitCode> {
    if !(args.threshold.is_finite() && args.threshold >= 0.0) {
        bail!("--threshold {}: use a non-negative fraction, e.g. `--threshold 0.05` for 5%", args.threshold);
    }
    let (baseline, base_files) = read_side("baseline", &args.baseline)?;
    let (current, cur_files) = read_side("current", &args.current)?;
    let opts = CompareOptions { threshold: args.threshold, strict_machine: args.strict_machine };
    let cmp = compare(&baseline, &current, &opts);

    if let Some(path) = &args.markdown {
        fs::write(path, cmp.to_markdown()).with_context(|| format!("--markdown: cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        fs::write(path, cmp.to_json() + "\n").with_context(|| format!("--json: cannot write {}", path.display()))?;
    }
    if args.quiet {
        for w in &cmp.warnings {
            eprintln!("warning: {w}");
        }
        println!("{}", cmp.headline());
    } else {
        println!("baseline: {} record(s) from {}", baseline.len(), describe(&base_files));
        println!("current:  {} record(s) from {}", current.len(), describe(&cur_files));
        print!("{}", cmp.to_terminal());
    }

    if cmp.counts.compared == 0 {
        bail!(
            "no case was measured in both record sets (baseline {} keys, current {} keys); check that both come from the same sweep",
            distinct_keys(&baseline),
            distinct_keys(&current)
        );
    }
    let missing = args.fail_on_missing && cmp.missing_from_current().next().is_some();
    if missing {
        eprintln!("--fail-on-missing: {} baseline case(s) are missing from the current records", cmp.missing_from_current().count());
    }
    Ok(if cmp.has_regression() || missing { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn distinct_keys(records: &[Record]) -> usize {
    records.iter().map(|r| r.key.as_str()).collect::<std::collections::BTreeSet<_>>().len()
}

fn describe(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        many => format!("{} files", many.len()),
    }
}

/// Read every record of one side (file, folder or pattern). Any unreadable file or line is
/// an error: a gate must not pass on half-read input.
fn read_side(side: &str, spec: &Path) -> Result<(Vec<Record>, Vec<PathBuf>)> {
    let files = expand(spec).with_context(|| format!("{side} records `{}`", spec.display()))?;
    let mut records = Vec::new();
    for f in &files {
        records.extend(read_jsonl(f).with_context(|| format!("{side} records"))?);
    }
    if records.is_empty() {
        bail!("{side} records `{}` hold no record", spec.display());
    }
    Ok((records, files))
}

/// The files a side names: the file itself, every `*.jsonl` of a folder, or the files whose
/// names match a pattern with `*` and `?` (in the last path component only).
fn expand(spec: &Path) -> Result<Vec<PathBuf>> {
    let name = spec.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if name.contains(['*', '?']) {
        let dir = match spec.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut out = list_dir(&dir, |n| wildcard_match(&name, n))?;
        out.sort();
        if out.is_empty() {
            bail!("no file matches");
        }
        return Ok(out);
    }
    let meta = fs::metadata(spec).with_context(|| format!("cannot read {}", spec.display()))?;
    if meta.is_dir() {
        let mut out = list_dir(spec, |n| n.ends_with(".jsonl"))?;
        out.sort();
        if out.is_empty() {
            bail!("folder {} holds no .jsonl file", spec.display());
        }
        return Ok(out);
    }
    Ok(vec![spec.to_path_buf()])
}

fn list_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep(&name) && entry.file_type()?.is_file() {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Shell-style matching of `*` (any run) and `?` (one character).
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The one reader, strict: a torn last line is left out (as `report` and `--resume` do),
/// any other bad line stops with `file:line`.
fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let c = ctxcost_core::jsonl::read(path, ctxcost_core::jsonl::Mode::Strict)?;
    if let Some(t) = &c.torn {
        eprintln!("note: {} line {} is incomplete (an interrupted write) and is left out", path.display(), t.line);
    }
    Ok(c.records.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    use super::wildcard_match;

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.jsonl", "a.jsonl"));
        assert!(wildcard_match("base-*.jsonl", "base-2024.jsonl"));
        assert!(!wildcard_match("base-*.jsonl", "cur-2024.jsonl"));
        assert!(wildcard_match("r?.jsonl", "r1.jsonl"));
        assert!(!wildcard_match("r?.jsonl", "r12.jsonl"));
        assert!(wildcard_match("*a*b*", "xxaybzz"));
        assert!(!wildcard_match("*.jsonl", "a.json"));
    }
}
