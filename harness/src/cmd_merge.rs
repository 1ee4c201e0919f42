//! `ctxcost merge`: join the record files of a sweep's shards (`run --shard K/N`, from a
//! Slurm array, a Kubernetes indexed Job or by hand) into one file that `ctxcost report`
//! reads as a single run.
//!
//! Every record of `ctxcost run` carries its placement (`env.placement`): the sweep's
//! fingerprint, its point and case counts, the shard count, the replica count, the record's
//! point. From these alone merge checks that the files are shards of one sweep, measured on
//! one device model (never two models in one case), and finds duplicate cases (the same case
//! and replica twice) and missing ones (points of an absent shard, cases a shard lacks).
//! Bad input is an error (exit 2) and nothing is written; missing cases are one too, unless
//! `--allow-missing` writes what there is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Args;

use ctxcost_core::jsonl::{self, Mode};
use ctxcost_core::placement::{Placement, Shard};
use ctxcost_core::record::Record;
use ctxcost_core::units::format_tokens;

use crate::recordio;

/// Arguments of `ctxcost merge`.
#[derive(Debug, Clone, Args)]
pub struct MergeArgs {
    /// Record files of the shards (JSONL), in any order: one per shard.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The merged record file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Overwrite `--out` if it exists.
    #[arg(long)]
    pub force: bool,
    /// Write the merged file even when cases are missing (they are listed); without it a
    /// missing case is an error.
    #[arg(long)]
    pub allow_missing: bool,
}

/// A record and where it was read.
struct Found {
    record: Record,
    placement: Placement,
    file: String,
    line: usize,
}

impl Found {
    fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

/// What identifies a sweep and its split; every record of a merge must agree on it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SweepId {
    sweep: String,
    points: usize,
    cases: usize,
    replicas: u32,
    shards: usize,
}

impl SweepId {
    fn of(p: &Placement) -> Self {
        SweepId { sweep: p.sweep.clone(), points: p.points, cases: p.cases, replicas: p.replicas, shards: p.shard.map_or(1, |s| s.count) }
    }
}

/// The shard a record belongs to (an unsharded run is shard 0 of 1).
fn shard_of(p: &Placement) -> Shard {
    p.shard.unwrap_or(Shard { index: 0, count: 1 })
}

/// Merge the shards.
pub fn run(a: MergeArgs) -> Result<ExitCode> {
    recordio::check_output(&a.out, false, a.force)?;
    let out_real = a.out.canonicalize().ok();
    let mut found = Vec::new();
    let mut notes = Vec::new();
    let mut tools = BTreeSet::new();
    let mut read = Vec::new();
    for path in &a.files {
        let real = path.canonicalize().unwrap_or_else(|_| path.clone());
        if out_real.as_ref() == Some(&real) {
            bail!("--out {} is also an input: write the merged file elsewhere", a.out.display());
        }
        if read.contains(&real) {
            bail!("{} is given twice: name each shard's file once", path.display());
        }
        read.push(real);
        let name = path.display().to_string();
        let c = jsonl::read(path, Mode::Strict).map_err(|e| anyhow::anyhow!("{e}; merge reads record files of `ctxcost run`"))?;
        if let Some(t) = &c.torn {
            notes.push(format!("note: {name} line {} is incomplete (an interrupted write); left out, so its case counts as missing", t.line));
        }
        if c.records.is_empty() {
            notes.push(format!("note: {name} holds no record (a shard with no point, or one that has not run)"));
        }
        for (line, record) in c.records {
            let Some(placement) = record.env.placement.clone() else {
                bail!("{name}:{line}: the record has no placement (sweep fingerprint): it was written by a ctxcost before `merge` existed or by `ctxcost endpoint`; merge joins the shards of one `ctxcost run` sweep");
            };
            tools.insert(format!("{} {} ({})", record.tool.name, record.tool.version, record.tool.git_sha));
            found.push(Found { record, placement, file: name.clone(), line });
        }
    }
    if found.is_empty() {
        bail!("no record in {}: nothing to merge", a.files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
    }
    check_one_sweep(&found)?;
    check_one_device_model(&found)?;
    check_no_duplicates(&found)?;
    let id = SweepId::of(&found[0].placement);
    let missing = missing_cases(&found, &id);
    for n in &notes {
        eprintln!("{n}");
    }
    if tools.len() > 1 {
        eprintln!("note: the shards were written by different builds: {}", tools.into_iter().collect::<Vec<_>>().join("; "));
    }
    if !missing.lines.is_empty() {
        let text = format!("{} of {} cases missing:\n  {}", missing.cases, id.cases * id.replicas as usize, missing.lines.join("\n  "));
        if !a.allow_missing {
            bail!("{text}\nrun the missing shards (`--resume` completes a shard's file), or pass --allow-missing to write what there is");
        }
        eprintln!("warning: {text}");
    }
    found.sort_by_key(|f| (f.placement.point, f.placement.replica));
    let (mut writer, _) = recordio::open_output(&a.out, false, a.force)?;
    for f in &found {
        writer.append(&f.record)?;
    }
    let shards: BTreeSet<usize> = found.iter().map(|f| shard_of(&f.placement).index).collect();
    eprintln!(
        "merged {} records of {} shards (of {}) of sweep {} ({} points, {} cases{}), measured on {} -> {}",
        found.len(),
        shards.len(),
        id.shards,
        id.sweep,
        id.points,
        id.cases,
        if id.replicas > 1 { format!(", each on {} GPUs", id.replicas) } else { String::new() },
        found[0].record.env.device_model(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Every record must come from the same sweep, split the same way.
fn check_one_sweep(found: &[Found]) -> Result<()> {
    let first = &found[0];
    let want = SweepId::of(&first.placement);
    for f in found {
        let got = SweepId::of(&f.placement);
        if got.sweep != want.sweep || got.points != want.points || got.cases != want.cases {
            bail!(
                "{} and {} come from different sweeps (fingerprint {} with {} points, {} with {} points): shards must be run with the same sweep file, flags and sampling; merge each sweep's shards apart",
                first.at(),
                f.at(),
                want.sweep,
                want.points,
                got.sweep,
                got.points
            );
        }
        if got.shards != want.shards {
            bail!("{} is one of {} shards, {} one of {}: every shard of a sweep must use the same N in --shard K/N", first.at(), want.shards, f.at(), got.shards);
        }
        if got.replicas != want.replicas {
            bail!("{} was measured with --replicate {}, {} with --replicate {}: use one replica count for every shard", first.at(), want.replicas, f.at(), got.replicas);
        }
        let s = shard_of(&f.placement);
        if f.placement.point >= want.points || !s.owns(f.placement.point) {
            bail!("{}: point {} does not belong to shard {s} of a {}-point sweep: the file was edited or is not a ctxcost record file", f.at(), f.placement.point, want.points);
        }
    }
    Ok(())
}

/// One device model for the whole merge, and never two in one case.
fn check_one_device_model(found: &[Found]) -> Result<()> {
    let mut by_key: BTreeMap<&str, BTreeMap<String, &Found>> = BTreeMap::new();
    for f in found {
        by_key.entry(f.record.key.as_str()).or_default().entry(f.record.env.device_model()).or_insert(f);
    }
    if let Some((key, models)) = by_key.iter().find(|(_, m)| m.len() > 1) {
        let seen: Vec<String> = models.iter().map(|(m, f)| format!("{m} at {}", f.at())).collect();
        bail!("case {key} was measured on more than one device model ({}): a case's numbers must come from one GPU model; merge each model's shards apart", seen.join(", "));
    }
    let mut models: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for f in found {
        models.entry(f.record.env.device_model()).or_default().insert(f.file.as_str());
    }
    if models.len() > 1 {
        let seen: Vec<String> = models.iter().map(|(m, files)| format!("{m} in {}", files.iter().copied().collect::<Vec<_>>().join(", "))).collect();
        bail!("the shards ran on different device models ({}): a merged run must come from one GPU model; merge each model's shards apart", seen.join("; "));
    }
    Ok(())
}

/// The same case (and replica) twice is an error that names both places.
fn check_no_duplicates(found: &[Found]) -> Result<()> {
    let mut seen: BTreeMap<(&str, u32), Vec<&Found>> = BTreeMap::new();
    for f in found {
        seen.entry((f.record.key.as_str(), f.placement.replica)).or_default().push(f);
    }
    let dups: Vec<String> = seen
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|((key, replica), v)| {
            let r = if found[0].placement.replicas > 1 { format!(" (replica {replica})") } else { String::new() };
            format!("{key}{r} at {}", v.iter().map(|f| f.at()).collect::<Vec<_>>().join(" and "))
        })
        .collect();
    if dups.is_empty() {
        return Ok(());
    }
    let shown = dups.iter().take(10).cloned().collect::<Vec<_>>().join("\n  ");
    let more = if dups.len() > 10 { format!("\n  ... and {} more", dups.len() - 10) } else { String::new() };
    bail!("{} case(s) recorded more than once (give each shard's file once; a shard run again belongs in the same file with --resume):\n  {shown}{more}", dups.len())
}

/// Missing cases, in words.
struct Missing {
    cases: usize,
    lines: Vec<String>,
}

fn missing_cases(found: &[Found], id: &SweepId) -> Missing {
    // (point, replica) -> (expected cases, distinct keys found, a label).
    let mut points: BTreeMap<(usize, u32), (usize, BTreeSet<&str>, String)> = BTreeMap::new();
    for f in found {
        let c = &f.record.case;
        let label = format!("{} L={} B={} {}", c.phase, format_tokens(c.context), c.batch, c.precision);
        points.entry((f.placement.point, f.placement.replica)).or_insert_with(|| (f.placement.point_cases, BTreeSet::new(), label)).1.insert(f.record.key.as_str());
    }
    let have: usize = points.values().map(|(_, keys, _)| keys.len()).sum();
    let cases = (id.cases * id.replicas as usize).saturating_sub(have);
    let mut lines = Vec::new();
    for index in 0..id.shards {
        let shard = Shard { index, count: id.shards };
        let absent: Vec<String> = (0..id.points)
            .filter(|&p| shard.owns(p))
            .flat_map(|p| (0..id.replicas).map(move |r| (p, r)))
            .filter(|k| !points.contains_key(k))
            .map(|(p, r)| if id.replicas > 1 { format!("{p} (replica {r})") } else { p.to_string() })
            .collect();
        let owned = (0..id.points).filter(|&p| shard.owns(p)).count() * id.replicas as usize;
        if absent.is_empty() {
            continue;
        }
        let whole = if absent.len() == owned { " (no record of this shard: was its file given?)" } else { "" };
        lines.push(format!("shard {shard}: no record of point(s) {}{whole}", absent.join(", ")));
    }
    for ((p, r), (want, keys, label)) in &points {
        if keys.len() < *want {
            let rep = if id.replicas > 1 { format!(", replica {r}") } else { String::new() };
            lines.push(format!("point {p} ({label}{rep}): {} of {want} cases", keys.len()));
        }
    }
    Missing { cases, lines }
}
