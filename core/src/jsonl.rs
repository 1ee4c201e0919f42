//! The one reader of JSONL record files, used by `--resume`, `report` and `compare`.
//!
//! One policy for every caller:
//! - blank lines are ignored;
//! - a last line **without** a final newline that is not a record is *torn* (a write cut by
//!   a kill): it is reported as such and left out (`--resume` cuts it from the file);
//! - a last line without a final newline that *is* a record is a record (the newline is
//!   written before anything is appended after it);
//! - any other line that is not a valid record ([`Record::from_line`]: not JSON, a newer or
//!   unknown schema, numbers out of range) is a problem at `file:line`. [`Mode::Strict`]
//!   stops at the first one and touches nothing; [`Mode::Lenient`] collects them and goes on
//!   (a report lists them under its data problems).

use std::path::Path;

use crate::record::Record;

/// What to do with a line that is not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stop with `file:line` at the first bad line (`--resume`, `compare`).
    Strict,
    /// Collect bad lines as problems and keep the rest (`report`).
    Lenient,
}

/// A line that is not a record.
#[derive(Debug, Clone, PartialEq)]
pub struct LineProblem {
    pub file: String,
    /// 1-based line number.
    pub line: usize,
    pub why: String,
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.why)
    }
}

/// The torn last line of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Torn {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset where it starts (the length of the file without it).
    pub offset: u64,
}

/// What a file holds.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// Each record with its 1-based line number.
    pub records: Vec<(usize, Record)>,
    /// Bad lines (lenient mode only; strict mode returns the first as the error).
    pub problems: Vec<LineProblem>,
    pub torn: Option<Torn>,
    /// Whether the file's last byte is not a newline while its last line is a record (an
    /// appender must write a newline first).
    pub needs_newline: bool,
}

/// Parse the text of one file (`file` names it in problems).
pub fn parse(file: &str, text: &str, mode: Mode) -> Result<Contents, LineProblem> {
    let mut out = Contents::default();
    let mut offset = 0u64;
    let mut rest = text;
    let mut n = 0usize;
    while !rest.is_empty() {
        n += 1;
        let (line, complete, len) = match rest.find('\n') {
            Some(i) => (&rest[..i], true, i + 1),
            None => (rest, false, rest.len()),
        };
        rest = &rest[len..];
        let start = offset;
        offset += len as u64;
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        match Record::from_line(trimmed) {
            Ok(r) => {
                out.needs_newline = !complete;
                out.records.push((n, r));
            }
            Err(_) if !complete => {
                out.torn = Some(Torn { line: n, offset: start });
            }
            Err(why) => {
                let p = LineProblem { file: file.to_string(), line: n, why };
                match mode {
                    Mode::Strict => return Err(p),
                    Mode::Lenient => out.problems.push(p),
                }
            }
        }
    }
    Ok(out)
}

/// Serialise a record as one line (newline included) that [`parse`] accepts. A record the
/// reader would refuse (a sample that is not a positive finite number, say) is written as a
/// `failed` record that says why, without its samples: a file never holds a line its own
/// tool cannot read back.
pub fn to_line(r: &Record) -> Result<String, String> {
    let line = serde_json::to_string(r).map_err(|e| format!("serialising a record: {e}"))?;
    let why = match Record::from_line(&line) {
        Ok(_) => return Ok(line + "\n"),
        Err(why) => why,
    };
    let mut f = r.clone();
    f.status = crate::record::Status::Failed;
    f.reason = Some(format!("the measurement could not be recorded faithfully ({why}){}", r.reason.as_deref().map(|x| format!("; earlier: {x}")).unwrap_or_default()));
    f.samples_ms.clear();
    f.components_ms.clear();
    f.stats = None;
    f.rates = Default::default();
    for x in [&mut f.work.flops, &mut f.work.bytes, &mut f.work.indexer_flops, &mut f.work.attention_flops] {
        if !x.is_finite() || *x < 0.0 {
            *x = 0.0;
        }
    }
    let line = serde_json::to_string(&f).map_err(|e| format!("serialising a record: {e}"))?;
    Record::from_line(&line).map_err(|e| format!("a record cannot be written: {e}"))?;
    Ok(line + "\n")
}

/// Errors of [`read`].
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{0} (the file was left as it is)")]
    Bad(LineProblem),
}

/// Read and parse one file.
pub fn read(path: &Path, mode: Mode) -> Result<Contents, ReadError> {
    let bytes = std::fs::read(path).map_err(|source| ReadError::Io { path: path.display().to_string(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    parse(&path.display().to_string(), &text, mode).map_err(ReadError::Bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One valid record of a kernel case: `context` 1024, `batch` 16, schema 3.
    pub(crate) fn rec_line() -> String {
        serde_json::to_string(&crate::record::tests::sample_record()).unwrap()
    }

    #[test]
    fn torn_last_line_is_cut_any_other_bad_line_stops_strict_reading() {
        let r = rec_line();
        let c = parse("f", &format!("{r}\n\n{r}\n{{\"schema_vers"), Mode::Strict).unwrap();
        assert_eq!(c.records.len(), 2);
        assert_eq!(c.torn, Some(Torn { line: 4, offset: (2 * r.len() + 3) as u64 }));
        // A complete (newline-terminated) bad last line is not torn: strict stops there.
        let e = parse("f", &format!("{r}\nmy notes\n"), Mode::Strict).unwrap_err();
        assert_eq!((e.line, e.file.as_str()), (2, "f"));
        let c = parse("f", &format!("{r}\nmy notes\n{r}\n"), Mode::Lenient).unwrap();
        assert_eq!((c.records.len(), c.problems.len(), c.problems[0].line), (2, 1, 2));
        // A record without its final newline is a record that needs one.
        let c = parse("f", &format!("{r}\n{r}"), Mode::Strict).unwrap();
        assert_eq!((c.records.len(), c.needs_newline, c.torn.is_none()), (2, true, true));
    }

    /// Property: whatever the samples (zeros, NaN, infinities, 1e300, a single one), the line
    /// the writer produces is one the reader accepts, and a valid record round-trips exactly.
    #[test]
    fn every_written_line_reads_back() {
        let special = [0.0, -0.0, f64::NAN, f64::INFINITY, -1.0, 1e300, 1e-300, f64::MIN_POSITIVE, 5e-324, 1.0];
        let mut state = 12345u64;
        for case in 0..2000 {
            let mut r = crate::record::tests::sample_record();
            state = crate::inputs::splitmix64(state);
            let n = (state % 6) as usize;
            r.samples_ms = (0..n)
                .map(|j| {
                    let h = crate::inputs::splitmix64(state ^ j as u64);
                    if h % 3 == 0 { special[(h >> 8) as usize % special.len()] } else { (h >> 11) as f64 / (1u64 << 40) as f64 }
                })
                .collect();
            r.stats = (n > 0).then(|| crate::stats::summarize(&r.samples_ms));
            if case % 7 == 0 {
                r.endpoint = None;
                r.work.flops = special[case % special.len()];
            }
            if n == 0 {
                r.status = crate::record::Status::Skipped;
            }
            let line = to_line(&r).expect("writable");
            let back = Record::from_line(line.trim_end()).unwrap_or_else(|e| panic!("written line refused: {e}\n{line}"));
            if back.status == r.status {
                assert_eq!(back.samples_ms.len(), r.samples_ms.len());
                assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&r).unwrap());
            } else {
                assert_eq!(back.status, crate::record::Status::Failed);
                assert!(back.reason.unwrap().contains("could not be recorded faithfully"));
            }
        }
    }

    #[test]
    fn out_of_range_records_are_refused_with_their_line() {
        let r = rec_line();
        for (from, to) in [
            ("\"schema_version\":3", "\"schema_version\":0"),
            ("\"schema_version\":3", "\"schema_version\":99"),
            ("\"context\":1024", "\"context\":0"),
            ("\"batch\":16", "\"batch\":0"),
        ] {
            assert!(r.contains(from), "fixture lacks {from}");
            let bad = r.replacen(from, to, 1);
            let e = parse("f", &format!("{r}\n{bad}\n"), Mode::Strict).unwrap_err();
            assert_eq!(e.line, 2, "{to}: {}", e.why);
        }
        let v: serde_json::Value = serde_json::from_str(&r).unwrap();
        for bad_sample in [serde_json::json!(-1.0), serde_json::json!(0.0), serde_json::json!("1.0"), serde_json::Value::Null] {
            let mut w = v.clone();
            w["samples_ms"][0] = bad_sample.clone();
            let line = serde_json::to_string(&w).unwrap();
            assert!(Record::from_line(&line).is_err(), "sample {bad_sample} accepted");
        }
    }
}
