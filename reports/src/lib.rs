//! ctxcost-reports: what the records mean. Reads records only (never engines).
//!
//! - [`compare`]: regression comparison of two record sets (`ctxcost compare`).
//! - [`report`]: the `ctxcost report` entry points: build a report from record files and
//!   write it (HTML, Markdown, charts, `summary.csv`, `records.parquet`).
//! - [`load`]: JSONL record files into typed records and a polars frame.
//! - [`cost`]: the cost model (USD per million tokens; marginal and per request).
//! - [`analysis`]: series of the fastest verified engines (and of the engine pairs asked for),
//!   ratios with CIs, break-evens, the engine table, FP8 vs sparsity split, first-screen warnings.
//! - [`yardstick`]: ours vs library peers, verification, lockstep sampling, ceilings and the
//!   roofline bound of a ratio.
//! - [`verdict`]: the headline per phase and the verdict sentences.
//! - [`endpoint`]: remote endpoint cases: metrics per side, B/A with paired CIs, cache flags.
//! - [`reference`]: DeepSeek's Fig. 3 curves and API prices, shipped as data.
//! - [`inventory`]: what was read besides the measurements (machines, files, flagged records,
//!   bad lines, the spread across GPUs), for render and verdict.
//! - [`spread`]: the spread of a case's medians across GPUs (`run --replicate`).
//! - [`charts`]: plotters charts (SVG and PNG, shipped font).
//! - [`render`]: HTML and Markdown.

pub mod analysis;
pub mod charts;
pub mod compare;
pub mod cost;
pub mod endpoint;
pub mod error;
pub mod format;
pub mod inventory;
pub mod load;
pub mod model;
pub mod reference;
pub mod render;
pub mod report;
pub mod spread;
pub mod verdict;
pub mod yardstick;
