//! Crash-safe JSONL record files: each record is one line written with a single write and
//! flushed to disk as soon as its case finishes, so a crash or kill loses nothing finished.
//! On `--resume` a torn last line (a write cut by a kill) is cut away and the keys of the
//! complete records are returned so their cases are skipped.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use ctxcost_core::record::Record;

/// Appends records to a file.
pub struct RecordWriter {
    file: File,
}

impl RecordWriter {
    /// Append one record as one line, flushed and synced.
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let mut line = serde_json::to_string(r).context("serialising a record")?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).context("writing a record")?;
        self.file.flush()?;
        self.file.sync_data().ok();
        Ok(())
    }
}

/// Refuse an output path that cannot be used as asked (a folder; an existing file without
/// `resume` or `force`), before any work or file is made.
pub fn check_output(path: &Path, resume: bool, force: bool) -> Result<()> {
    if path.is_dir() {
        bail!("--out {} is a folder: give a file name such as {}/run.jsonl", path.display(), path.display());
    }
    if path.exists() && !resume && !force {
        bail!("--out {} already exists: pass --resume to continue it, --force to overwrite it, or choose another --out", path.display());
    }
    Ok(())
}

/// Open the output for a run. Without `resume` an existing file is refused (or truncated
/// with `force`); with `resume` the keys of its complete records are returned.
pub fn open_output(path: &Path, resume: bool, force: bool) -> Result<(RecordWriter, HashSet<String>)> {
    check_output(path, resume, force)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}: cannot create folder {} (choose a writable path)", path.display(), dir.display()))?;
    }
    let exists = path.exists();
    let mut done = HashSet::new();
    if exists && resume {
        let keep = scan_complete(path, &mut done)?;
        let f = OpenOptions::new().write(true).open(path).with_context(|| format!("--out {}: cannot open for writing", path.display()))?;
        f.set_len(keep).with_context(|| format!("--out {}: cannot cut a torn last line", path.display()))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("--out {}: cannot open for writing (choose a writable path)", path.display()))?;
    if force && !resume {
        file.set_len(0)?;
    }
    file.seek(SeekFrom::End(0))?;
    Ok((RecordWriter { file }, done))
}

/// Read complete records' keys; return the byte length of the valid prefix. A bad line
/// that is not the last is an error (the file is not ours or was edited).
fn scan_complete(path: &Path, keys: &mut HashSet<String>) -> Result<u64> {
    let f = File::open(path).with_context(|| format!("--resume: cannot read {}", path.display()))?;
    let mut reader = BufReader::new(f);
    let mut offset = 0u64;
    let mut line = String::new();
    let mut n = 0;
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 {
            return Ok(offset);
        }
        n += 1;
        let complete = line.ends_with('\n');
        match Record::from_line(line.trim_end()) {
            Ok(r) if complete => {
                keys.insert(r.key);
                offset += read as u64;
            }
            Ok(_) | Err(_) => {
                let mut rest = String::new();
                let more = reader.read_line(&mut rest)?;
                if more == 0 && line.trim().is_empty() {
                    return Ok(offset + read as u64);
                }
                if more == 0 {
                    eprintln!("note: {} line {n} is incomplete (an interrupted write); it is dropped and its case runs again", path.display());
                    return Ok(offset);
                }
                bail!("--resume: {} line {n} is not a ctxcost record; fix or move the file", path.display());
            }
        }
    }
}

/// Read every record of a file (for summaries); bad lines are reported and skipped.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let f = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match Record::from_line(&line) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!("warning: {} line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}
