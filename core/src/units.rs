//! Token-count parsing and formatting: `4096`, `4k`, `128K`, `1m`, lists `1k,2k` and ranges
//! `1k..64k` (powers of two from the first to the last, both included).

use crate::CoreError;

/// Parse one size: a positive integer with an optional `k` (x1024) or `m` (x1024^2) suffix.
pub fn parse_size(text: &str) -> Result<usize, CoreError> {
    let t = text.trim();
    let bad = |why: &str| CoreError::BadSize { value: text.to_string(), why: why.to_string() };
    if t.is_empty() {
        return Err(bad("empty"));
    }
    let (digits, mult) = match t.chars().last().map(|c| c.to_ascii_lowercase()) {
        Some('k') => (&t[..t.len() - 1], 1024usize),
        Some('m') => (&t[..t.len() - 1], 1024 * 1024),
        Some(c) if c.is_ascii_digit() => (t, 1),
        Some(_) => return Err(bad("unknown unit suffix")),
        None => return Err(bad("empty")),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("not a whole number"));
    }
    let n: usize = digits.parse().map_err(|_| bad("number too large"))?;
    let v = n.checked_mul(mult).ok_or_else(|| bad("number too large"))?;
    if v == 0 {
        return Err(bad("must be at least 1"));
    }
    Ok(v)
}

/// Parse a context list: comma-separated sizes and/or `a..b` power-of-two ranges.
/// The result is sorted and deduplicated.
pub fn parse_contexts(text: &str) -> Result<Vec<usize>, CoreError> {
    let bad = |why: String| CoreError::BadContexts { value: text.to_string(), why };
    let mut out = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad("empty item".into()));
        }
        if let Some((a, b)) = part.split_once("..") {
            let lo = parse_size(a).map_err(|e| bad(size_why(&e)))?;
            let hi = parse_size(b).map_err(|e| bad(size_why(&e)))?;
            if lo > hi {
                return Err(bad(format!("range start {lo} is above its end {hi}")));
            }
            let mut v = lo;
            while v <= hi {
                out.push(v);
                v = v.checked_mul(2).ok_or_else(|| bad("range overflows".into()))?;
            }
            if *out.last().unwrap_or(&0) != hi {
                out.push(hi);
            }
        } else {
            out.push(parse_size(part).map_err(|e| bad(size_why(&e)))?);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn size_why(e: &CoreError) -> String {
    match e {
        CoreError::BadSize { value, why } => format!("`{value}`: {why}"),
        other => other.to_string(),
    }
}

/// Parse a duration with its unit: `250ms`, `2s`, `1.5s`, `2m` (minutes), `100us`. A bare
/// number is refused (is `2` two seconds or two milliseconds?), as are zero, negative and
/// non-finite values. Returns seconds.
pub fn parse_duration_secs(text: &str) -> Result<f64, CoreError> {
    let t = text.trim();
    let bad = |why: &str| CoreError::BadDuration { value: text.to_string(), why: why.to_string() };
    let split = t.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(|| bad("give a unit, e.g. `250ms`, `2s` or `5m`"))?;
    let (num, unit) = t.split_at(split);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad("unknown unit (use us, ms, s, m or h)")),
    };
    let num = num.trim();
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad("not a plain positive number before the unit"));
    }
    let v: f64 = num.parse().map_err(|_| bad("not a number"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(bad("must be a positive, finite duration"));
    }
    Ok(secs)
}

/// Format a token count compactly: `4096` -> `4K`, `1536` -> `1.5K`, `100` -> `100`.
pub fn format_tokens(n: usize) -> String {
    if n >= 1024 * 1024 && n % (1024 * 1024) == 0 {
        format!("{}M", n / (1024 * 1024))
    } else if n >= 1024 && n % 1024 == 0 {
        format!("{}K", n / 1024)
    } else if n >= 1024 && n % 512 == 0 {
        format!("{:.1}K", n as f64 / 1024.0)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("128K").unwrap(), 131072);
        assert_eq!(parse_size("1m").unwrap(), 1 << 20);
        for bad in ["0", "", "4x", "k", "-1", "1.5k", "0k"] {
            assert!(parse_size(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn durations_need_units_and_finite_positive_values() {
        assert_eq!(parse_duration_secs("2s").unwrap(), 2.0);
        assert_eq!(parse_duration_secs("250ms").unwrap(), 0.25);
        assert_eq!(parse_duration_secs("1.5m").unwrap(), 90.0);
        assert!((parse_duration_secs("100us").unwrap() - 1e-4).abs() < 1e-12);
        for bad in ["2", "", "inf", "infs", "NaNs", "-1s", "0s", "0ms", "1e999s", "2 parsecs", "s"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad} should fail");
        }
        let msg = parse_duration_secs("2").unwrap_err().to_string();
        assert!(msg.contains("2s") || msg.contains("250ms"), "{msg}");
    }

    #[test]
    fn contexts_lists_and_ranges() {
        assert_eq!(parse_contexts("1k,2k,4k").unwrap(), vec![1024, 2048, 4096]);
        assert_eq!(parse_contexts("1k..8k").unwrap(), vec![1024, 2048, 4096, 8192]);
        assert_eq!(parse_contexts("4k,1k..2k,4k").unwrap(), vec![1024, 2048, 4096]);
        assert_eq!(parse_contexts("3k..8k").unwrap(), vec![3072, 6144, 8192]);
        assert!(parse_contexts("8k..1k").is_err());
        assert!(parse_contexts("1k,,2k").is_err());
        assert!(parse_contexts("0").is_err());
        assert_eq!(format_tokens(131072), "128K");
        assert_eq!(format_tokens(1536), "1.5K");
    }
}
