//! ctxcost-reports: what the records mean. Reads records only (never engines).
//!
//! - [`compare`]: regression comparison of two record sets (`ctxcost compare`).
//! - [`report`]: cost model, claim verdict, charts and the HTML/Markdown report (`ctxcost report`).

pub mod compare;
pub mod report;
