//! The error type of ctxcost-core.

/// Errors raised while parsing or validating core vocabulary.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// A size such as `64k` could not be parsed.
    #[error("invalid size `{value}`: {why} (write a positive integer with an optional k/K or m/M suffix, e.g. `4096`, `4k`, `1m`)")]
    BadSize { value: String, why: String },
    /// A context list or range could not be parsed.
    #[error("invalid context list `{value}`: {why} (write `1k,2k,4k` or `1k..64k`)")]
    BadContexts { value: String, why: String },
    /// A duration such as `250ms` could not be parsed.
    #[error("invalid duration `{value}`: {why} (write a number with its unit, e.g. `250ms`, `2s`, `5m`)")]
    BadDuration { value: String, why: String },
    /// A named thing (shape, phase, precision) is unknown.
    #[error("unknown {kind} `{value}` (choose one of: {choices})")]
    Unknown { kind: &'static str, value: String, choices: String },
    /// A case parameter is out of range.
    #[error("invalid {field} = {value}: {why}")]
    Invalid { field: &'static str, value: String, why: String },
    /// A loaded tensor does not fit the case.
    #[error("input tensor `{name}`: {why}")]
    BadTensor { name: String, why: String },
}
