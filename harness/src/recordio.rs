//! Crash-safe JSONL record files: each record is one line written with a single write and
//! flushed to disk as soon as its case finishes, so a crash or kill loses nothing finished.
//!
//! The output file is held under an advisory lock (`fcntl` write lock on the whole file) for
//! as long as a run writes it: a second run on the same `--out` (`--resume` or `--force`)
//! gets an error naming the process that holds it, and nothing is written twice or
//! interleaved.
//!
//! Reading goes through the one reader, [`ctxcost_core::jsonl`]: on `--resume` a torn last
//! line (no final newline: a write cut by a kill) is cut away; any other line that is not a
//! record stops the run with `file:line` and the file is left untouched.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};

use ctxcost_core::jsonl::{self, Mode};
use ctxcost_core::record::Record;

/// Appends records to a file it holds locked.
pub struct RecordWriter {
    file: File,
}

impl RecordWriter {
    /// Append one record as one line, flushed and synced. The line is one the reader accepts
    /// ([`jsonl::to_line`]).
    pub fn append(&mut self, r: &Record) -> Result<()> {
        let line = jsonl::to_line(r).map_err(anyhow::Error::msg)?;
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

/// Open the output for a run and lock it. Without `resume` an existing file is refused (or
/// emptied with `force`); with `resume` the keys of its complete records are returned.
pub fn open_output(path: &Path, resume: bool, force: bool) -> Result<(RecordWriter, HashSet<String>)> {
    let (w, done) = open_output_replicas(path, resume, force)?;
    Ok((w, done.into_iter().map(|(k, _)| k).collect()))
}

/// [`open_output`], with each key of a resumed file paired with its replica
/// ([`replica_of`]: `--replicate` measures a case once per replica).
pub fn open_output_replicas(path: &Path, resume: bool, force: bool) -> Result<(RecordWriter, HashSet<(String, u32)>)> {
    check_output(path, resume, force)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("--out {}: cannot create folder {} (choose a writable path)", path.display(), dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("--out {}: cannot open for writing (choose a writable path)", path.display()))?;
    lock(&file, path)?;
    let mut done = HashSet::new();
    if resume {
        let c = jsonl::read(path, Mode::Strict).map_err(|e| anyhow::anyhow!("--resume: {e}; fix or move the file, or choose another --out"))?;
        if let Some(t) = &c.torn {
            eprintln!("note: {} line {} is incomplete (an interrupted write); it is dropped and its case runs again", path.display(), t.line);
            file.set_len(t.offset).with_context(|| format!("--out {}: cannot cut a torn last line", path.display()))?;
        }
        file.seek(SeekFrom::End(0))?;
        if c.needs_newline && c.torn.is_none() {
            file.write_all(b"\n")?;
        }
        done = c.records.into_iter().map(|(_, r)| (replica_of(&r), r)).map(|(n, r)| (r.key, n)).collect();
    } else if force {
        file.set_len(0)?;
    }
    file.seek(SeekFrom::End(0))?;
    Ok((RecordWriter { file }, done))
}

/// Which replica of its case a record is (`--replicate`; 0 for records without placement).
pub fn replica_of(r: &Record) -> u32 {
    r.env.placement.as_ref().map_or(0, |p| p.replica)
}

/// Take the advisory write lock on the whole file, or say who holds it.
fn lock(file: &File, path: &Path) -> Result<()> {
    // SAFETY: `flock` is a plain C struct; zeroed is a valid value for every field.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as _;
    fl.l_whence = libc::SEEK_SET as _;
    // SAFETY: fcntl on an open descriptor with a pointer to a live flock struct.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &fl) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::EACCES) | Some(libc::EAGAIN)) {
        // A file system without locks: go on, as before locks existed.
        eprintln!("warning: --out {}: cannot lock the file ({err}); make sure no other run writes it", path.display());
        return Ok(());
    }
    // SAFETY: as above; F_GETLK fills `fl` with the conflicting lock's holder.
    let mut probe: libc::flock = unsafe { std::mem::zeroed() };
    probe.l_type = libc::F_WRLCK as _;
    probe.l_whence = libc::SEEK_SET as _;
    let holder = if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut probe) } == 0 && probe.l_type != libc::F_UNLCK as libc::c_short {
        let pid = probe.l_pid;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim().to_string()).unwrap_or_default();
        if cmd.is_empty() {
            format!("process {pid}")
        } else {
            format!("process {pid} (`{}`)", cmd.chars().take(160).collect::<String>())
        }
    } else {
        "another process".into()
    };
    bail!("--out {} is being written by {holder}: wait for it to finish or choose another --out", path.display())
}

/// Read every record of a file (for summaries). Bad lines other than a torn last line stop
/// with `file:line`.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    let c = jsonl::read(path, Mode::Strict)?;
    Ok(c.records.into_iter().map(|(_, r)| r).collect())
}
