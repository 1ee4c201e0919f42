//! Pieces of flag parsing that the verbs share (`run` and `endpoint`): comma-separated
//! lists, refusing a value listed twice, and durations with their unit. Each error names the
//! flag; every verb parses its flags with these, so a list or a duration reads the same in
//! every verb.

use anyhow::{anyhow, bail, Result};

use ctxcost_core::units::parse_duration_secs;

/// The items of a comma-separated list, trimmed, empty items left out.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(',').map(|x| x.trim().to_string()).filter(|x| !x.is_empty()).collect()
}

/// Refuse a list that names an item twice (it would measure the same case twice).
pub fn no_repeats<T: PartialEq + std::fmt::Debug>(flag: &str, list: &[T]) -> Result<()> {
    for (i, x) in list.iter().enumerate() {
        if list[..i].contains(x) {
            bail!("{flag}: {x:?} is listed twice; name each value once");
        }
    }
    Ok(())
}

/// A duration flag's value in seconds: a unit is required (`2s`, `50ms`, `5m`); a bare
/// number, zero, negative and non-finite values are refused with the form to write.
pub fn duration_flag(flag: &str, v: &str) -> Result<f64> {
    parse_duration_secs(v).map_err(|e| anyhow!("{flag}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_durations_and_repeats() {
        assert_eq!(split_list(" a, ,b ,"), ["a", "b"]);
        assert!(no_repeats("--batch", &[1, 2, 1]).unwrap_err().to_string().contains("--batch: 1 is listed twice"));
        for bad in ["300", "inf", "0s", "-5s", "NaN"] {
            assert!(duration_flag("--timeout", bad).unwrap_err().to_string().starts_with("--timeout: "), "{bad}");
        }
        assert_eq!(duration_flag("--max-seconds", "2m").unwrap(), 120.0);
    }
}
