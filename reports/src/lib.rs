//! ctxcost-reports: what the records mean. Reads records only (never engines).
//!
//! - [`compare`]: regression comparison of two record sets (`ctxcost compare`).
//! - [`report`]: the `ctxcost report` entry points: build a report from record files and
//!   write it (HTML, Markdown, charts, `summary.csv`, `records.parquet`).
//! - [`load`]: JSONL record files into typed records and a polars frame.
//! - [`cost`]: the cost model (USD per million tokens; marginal and per request).
//! - [`analysis`]: dense/DSA pairing, ratios with CIs, break-evens, FP8 vs sparsity split.
//! - [`verdict`]: the verdict sentences.
//! - [`endpoint`]: remote endpoint cases: metrics per side, B/A with paired CIs, cache flags.
//! - [`reference`]: DeepSeek's Fig. 3 curves and API prices, shipped as data.
//! - [`charts`]: plotters charts (SVG and PNG, shipped font).
//! - [`render`]: HTML and Markdown.

pub mod analysis;
pub mod charts;
pub mod compare;
pub mod cost;
pub mod endpoint;
pub mod load;
pub mod reference;
pub mod render;
pub mod report;
pub mod verdict;
