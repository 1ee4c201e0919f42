//! HTML and Markdown from one document model: the report is assembled once as a list of
//! blocks (headings, paragraphs, lists, tables, figures) and written twice, so the two
//! outputs always say the same thing. The HTML is self-contained (charts as base64 PNG, no
//! scripts, no external resources); the Markdown links the PNGs written beside it.

use ctxcost_core::record::Status;
use ctxcost_core::Phase;

use crate::format::{fmt_contexts, fmt_ratio_ci, fmt_tokens};
use crate::analysis::{BreakEven, Crossing, Series};
use crate::charts::{Chart, ChartKind};
use crate::reference::FIG3_CITATION;
use crate::model::Report;
use crate::verdict::{self, HEADLINE_BASIS, QUESTION};
use crate::yardstick::{self, CeilingSource, SLOW_ENGINE_SHARE};

/// One piece of the document.
#[derive(Debug, Clone)]
enum Block {
    H2 { id: &'static str, text: String },
    H3(String),
    P(String),
    /// A paragraph shown in bold (the question).
    Strong(String),
    List { id: Option<&'static str>, items: Vec<String> },
    Table { id: Option<&'static str>, header: Vec<String>, rows: Vec<Vec<String>> },
    Figure(ChartKind),
}

/// `x` with `n` significant digits.
pub fn sig(x: f64, n: usize) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let mag = x.abs().log10().floor() as i32;
    let decimals = (n as i32 - 1 - mag).max(0) as usize;
    format!("{x:.decimals$}")
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.3}")).unwrap_or_else(|| "not in Fig. 3".into())
}

/// `0.45 of cudnn-sdpa`, or `1.00` for the fastest.
fn share(s: &(f64, String)) -> String {
    if s.0 >= 0.995 {
        format!("{:.2}", s.0)
    } else {
        format!("{:.2} of {}", s.0, s.1)
    }
}

fn be_text(b: &BreakEven) -> String {
    if b.estimate == Crossing::NoData {
        "not measured".into()
    } else {
        b.text()
    }
}

fn label(r: &Report, s: &Series) -> String {
    s.key.label(r.analysis.mixed_env)
}

/// Spread across GPUs (`run --replicate`): each case measured on several GPUs, the median of
/// each and how far apart they are. Absent when no case ran on more than one GPU.
fn gpu_spread_section(r: &Report) -> Vec<Block> {
    let spreads = &r.inventory.spreads;
    let mut b = Vec::new();
    if spreads.is_empty() {
        return b;
    }
    b.push(Block::H2 { id: "gpu-spread", text: "Spread across GPUs".into() });
    let within = spreads.iter().filter(|s| s.cis_overlap).count();
    b.push(Block::P(format!(
        "{} case(s) were measured on more than one GPU (`ctxcost run --replicate`). Spread = (largest median - smallest) / smallest; the largest is {:.1}% ({}). \
In {within} of them every GPU's 95% CI overlaps the others' (the GPUs agree within the noise). Verdicts and ratios use the first GPU of each point only, so a ratio never pairs two GPUs.",
        spreads.len(),
        100.0 * spreads[0].spread,
        spreads[0].key
    )));
    let mixed = r.analysis.mixed_env;
    b.push(Block::Table {
        id: Some("gpu-spread-table"),
        header: ["case", "median per GPU, ms [95% CI]", "spread", "CIs overlap"].map(String::from).to_vec(),
        rows: spreads
            .iter()
            .map(|s| {
                vec![
                    if mixed { format!("{} ({})", s.key, s.env) } else { s.key.clone() },
                    s.gpus.iter().map(|(g, m, lo, hi)| format!("{g}: {} [{}, {}]", sig(*m, 3), sig(*lo, 3), sig(*hi, 3))).collect::<Vec<_>>().join("; "),
                    format!("{:.1}%", 100.0 * s.spread),
                    if s.cis_overlap { "yes".into() } else { "no".into() },
                ]
            })
            .collect(),
    });
    b
}

/// Remote endpoints: A/B ratios, the chart, every case and side, cache flags, definitions.
fn endpoint_section(r: &Report) -> Vec<Block> {
    let e = &r.endpoints;
    let mut b = Vec::new();
    if e.is_empty() {
        return b;
    }
    b.push(Block::H2 { id: "endpoints", text: "Remote endpoints".into() });
    b.push(Block::P(
        "Measured from the client (ctxcost endpoint), per request: TTFT = actual send to the first chunk with generated text; E2E = actual send to the end of the stream; \
TPOT = (E2E - TTFT) / (N - 1) with N the server's usage.completion_tokens; ITL = gaps between text chunks (vLLM's definitions). Prefill cases send max_tokens = 1 and are compared on TTFT; \
decode cases on TPOT. Every prompt starts with a unique nonce; prompt lengths are the server's usage.prompt_tokens. \
Load: cN = closed loop, N requests in flight per side; rR = open loop, Poisson arrivals at R requests/s per side; altN = the two sides of an A/B run in turn from one queue, N requests in flight in all \
(throughput then counts only the time a side had a request in flight)."
            .into(),
    ));
    if !e.ab.is_empty() {
        b.push(Block::H3("B / A".into()));
        b.push(Block::P(
            "Ratio of medians with a paired bootstrap 95% CI (2000 resamples): request i of both sides carried the same prompt text and went out together (loads c, r) or one after the other (load alt); only requests both sides completed are paired. \
Cost ratios: API list price per request, and GPU cost per million tokens from measured throughput (prefill: prompt and output tokens; decode: output tokens), where prices were given."
                .into(),
        ));
        b.push(Block::Table {
            id: Some("endpoint-ab-table"),
            header: ["phase", "prompt", "load", "sides", "B/A primary [95% CI]", "B/A E2E [95% CI]", "pairs", "B/A API $/request", "B/A GPU $/M tokens"]
                .map(String::from)
                .to_vec(),
            rows: e.ab.iter().map(crate::endpoint::ab_cells).collect(),
        });
    }
    b.push(Block::Figure(ChartKind::Endpoint));
    b.push(Block::H3("Every case and side".into()));
    let ms = |s: &Option<ctxcost_core::stats::Summary>, d: usize| match s {
        None => "n/a".to_string(),
        Some(s) => format!("{:.d$} [{:.d$}, {:.d$}] p90 {:.d$}", s.median, s.ci_lo, s.ci_hi, s.p90),
    };
    let rows = e
        .rows
        .iter()
        .filter_map(|row| {
            let rec = &row.record;
            let x = rec.endpoint.as_ref()?;
            let m = &x.metrics;
            let faults: Vec<String> = m.faults.iter().map(|(k, n)| format!("{k} {n}")).collect();
            let usd = |v: Option<f64>| v.map(|u| sig(u, 3)).unwrap_or_else(|| "-".into());
            Some(vec![
                row.phase.to_string(),
                x.prompt_cell(),
                x.load.key(),
                format!("{} ({}, {})", x.label, x.side, x.model),
                x.requests_cell(),
                ms(&m.ttft_ms, 1),
                ms(&m.tpot_ms, 2),
                ms(&m.itl_ms, 2),
                ms(&m.e2e_ms, 1),
                format!("{:.1}", m.output_tokens_per_s),
                m.goodput_rps.map(|g| format!("{g:.2}/s ({:.0}%)", 100.0 * m.slo_attainment.unwrap_or(f64::NAN))).unwrap_or_else(|| "-".into()),
                x.cache_cell(" FLAGGED"),
                if faults.is_empty() { "-".into() } else { faults.join(", ") },
                usd(x.cost.api_usd_per_request),
                usd(crate::endpoint::gpu_usd_per_m(row.phase, x)),
            ])
        })
        .collect();
    b.push(Block::Table {
        id: Some("endpoint-table"),
        header: [
            "phase", "prompt (measured)", "load", "side", "ok/sent", "TTFT ms [95% CI]", "TPOT ms [95% CI]", "ITL ms", "E2E ms", "output tok/s", "goodput", "cached",
            "faults", "API $/request", "GPU $/M tokens",
        ]
        .map(String::from)
        .to_vec(),
        rows,
    });
    let warnings = crate::endpoint::cache_warnings(e);
    if !warnings.is_empty() {
        b.push(Block::List { id: Some("endpoint-cache-flags"), items: warnings });
    }
    b
}

/// A section of the report: the function that writes its blocks, and whether it is about
/// dense and DSA kernels (left out of a report of endpoint records only, where it would only
/// say "not measured").
struct Section {
    blocks: fn(&Report) -> Vec<Block>,
    kernel_only: bool,
}

/// The report's sections, in order: adding a section is its function and one line here.
const SECTIONS: &[Section] = &[
    Section { blocks: verdict_section, kernel_only: false },
    Section { blocks: endpoint_section, kernel_only: false },
    Section { blocks: charts_section, kernel_only: true },
    Section { blocks: ratios_section, kernel_only: true },
    Section { blocks: engines_section, kernel_only: true },
    Section { blocks: break_even_section, kernel_only: true },
    Section { blocks: costs_section, kernel_only: true },
    Section { blocks: fp8_split_section, kernel_only: true },
    Section { blocks: api_prices_section, kernel_only: true },
    Section { blocks: method_section, kernel_only: false },
    Section { blocks: assumptions_section, kernel_only: true },
    Section { blocks: data_section, kernel_only: false },
    Section { blocks: gpu_spread_section, kernel_only: false },
    Section { blocks: environment_section, kernel_only: false },
];

/// Whether the report is shaped for endpoints: endpoint records and no dense/DSA series.
fn endpoint_shaped(r: &Report) -> bool {
    r.analysis.series.is_empty() && !r.endpoints.is_empty()
}

fn document(r: &Report) -> (String, Vec<Block>) {
    let endpoint_shaped = endpoint_shaped(r);
    let title = if endpoint_shaped {
        "ctxcost report: remote endpoints over prompt length".to_string()
    } else {
        "ctxcost report: dense vs sparse (DSA) attention cost over context length".to_string()
    };
    let blocks = SECTIONS.iter().filter(|s| !(endpoint_shaped && s.kernel_only)).flat_map(|s| (s.blocks)(r)).collect();
    (title, blocks)
}

/// Verdict first: one headline per phase, the warnings, the verdict table, the long sentences, the caveats and the series table.
fn verdict_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "verdict", text: "Verdict".into() });
    // An endpoint-only record set: the endpoint verdict alone, no DSA question.
    let endpoint_only = r.endpoints.only;
    if !endpoint_only {
        b.push(Block::Strong(QUESTION.into()));
    }
    let mut heads: Vec<String> = [Phase::Prefill, Phase::Decode].into_iter().filter_map(|p| verdict::headline(a, p)).collect();
    if heads.is_empty() && r.endpoints.is_empty() {
        heads.push(format!("Not {}", verdict::NOT_MEASURED.trim_start_matches("not ")));
    }
    if endpoint_only {
        heads.extend(crate::endpoint::verdict_lines(&r.endpoints));
    } else {
        heads.extend(crate::endpoint::ab_sentences(&r.endpoints));
    }
    b.push(Block::List { id: Some("verdict-headline"), items: heads });
    if !a.warnings.is_empty() {
        b.push(Block::List { id: Some("verdict-warnings"), items: a.warnings.iter().map(|w| format!("Warning: {w}")).collect() });
    }
    if !a.series.is_empty() {
        b.push(Block::Table {
            id: Some("verdict-table"),
            header: [
                "series", "context", "DSA engine", "dense engine", "DSA/dense [95% CI]", "CI", "roofline bound", "DeepSeek Fig. 3", "claim",
            ]
            .map(String::from)
            .to_vec(),
            rows: a
                .series
                .iter()
                .flat_map(|s| {
                    s.points.iter().map(move |p| {
                        let (dsa, dense) = p.engines();
                        vec![
                            format!("{} {}", s.key.phase, label(r, s)),
                            fmt_tokens(p.context as f64),
                            dsa.to_string(),
                            dense.to_string(),
                            fmt_ratio_ci(&p.attn_ratio, 3),
                            if p.lockstep { "paired".into() } else { "unpaired: not sampled in lockstep".into() },
                            format!("{:.3}", p.roofline.ratio),
                            opt(p.fig3_ratio),
                            p.verdict.wording(),
                        ]
                    })
                })
                .collect(),
        });
    }
    let pair_rows: Vec<Vec<String>> = a
        .pairs
        .iter()
        .flat_map(|s| {
            s.points.iter().map(move |p| {
                vec![
                    format!("{} {}", s.key.phase, label(r, s)),
                    s.pairing.label(),
                    fmt_tokens(p.context as f64),
                    fmt_ratio_ci(&p.attn_ratio, 3),
                    if p.lockstep { "paired".into() } else { "unpaired: not sampled in lockstep".into() },
                    format!("{:.3}", p.roofline.ratio),
                    share(&p.dsa_share),
                    share(&p.dense_share),
                    p.verdict.wording(),
                ]
            })
        })
        .collect();
    if !pair_rows.is_empty() {
        b.push(Block::P(format!(
            "Engine pairs asked for ({}): the same ratio on a fixed pair of engines, with each engine's speed as a share of the fastest engine of its method at that point.",
            if a.yardstick.pairs.is_empty() { "ours vs ours by default; `--pair DSA:DENSE` names others".to_string() } else { a.yardstick.pairs().iter().map(|p| p.label()).collect::<Vec<_>>().join(", ") }
        )));
        b.push(Block::Table {
            id: Some("pair-table"),
            header: ["series", "pair", "context", "DSA/dense [95% CI]", "CI", "roofline bound", "DSA share of fastest DSA", "dense share of fastest dense", "claim"]
                .map(String::from)
                .to_vec(),
            rows: pair_rows,
        });
    }
    if !endpoint_only {
        b.push(Block::P(format!(
            "Basis: {HEADLINE_BASIS}. \"Holds\" means the median ratio is at most 0.5; where the 95% CI straddles 0.5 the report says so. \
    The verdict compares, at every point, the fastest verified DSA engine with the fastest verified dense engine of the same machine. \
    Roofline bound: the ratio if every component of both sides ran at the ceilings (see Method); the gap between it and the measured ratio is the kernels', not the method's."
        )));
    }
    let mut items: Vec<String> = a.series.iter().map(|s| verdict::series_sentence(a, s, &r.fig3)).collect();
    items.extend(a.pairs.iter().filter(|s| !verdict::same_as_verdict(a, s)).map(|s| verdict::series_sentence(a, s, &r.fig3)));
    if !items.is_empty() {
        b.push(Block::List { id: Some("verdict-lines"), items });
    }
    let cav = verdict::caveats(a, &r.inventory);
    if !cav.is_empty() {
        b.push(Block::List { id: None, items: cav });
    }
    // A report of endpoint records only has no series to list.
    if endpoint_shaped(r) {
        return b;
    }
    b.push(Block::Table {
        id: Some("series-table"),
        header: vec![
            "series".into(),
            "measured contexts".into(),
            "ratio <= 0.5 from [95% CI]".into(),
            "break-even (1.0) [95% CI]".into(),
            "ratio at largest context".into(),
            "DeepSeek Fig. 3 there".into(),
        ],
        rows: a
            .series
            .iter()
            .map(|s| {
                let last = s.points.last();
                vec![
                    format!("{} {}", s.key.phase, label(r, s)),
                    if s.points.is_empty() {
                        "not measured".into()
                    } else {
                        fmt_contexts(&s.contexts())
                    },
                    be_text(&s.break_evens.attn_half),
                    be_text(&s.break_evens.attn_one),
                    last.map(|p| format!("{}: {}", fmt_tokens(p.context as f64), fmt_ratio_ci(&p.attn_ratio, 3))).unwrap_or_else(|| "not measured".into()),
                    last.map(|p| opt(p.fig3_ratio)).unwrap_or_default(),
                ]
            })
            .collect(),
    });
    b
}

/// The charts, the key one first.
fn charts_section(_: &Report) -> Vec<Block> {
    let mut b = Vec::new();
    b.push(Block::H2 { id: "charts", text: "Charts".into() });
    for k in ChartKind::ALL {
        b.push(Block::Figure(k));
    }
    b
}

/// Every ratio at every measured context.
fn ratios_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "ratios", text: "Sparse/dense ratio at every measured context".into() });
    b.push(Block::P(
        "Ratios are sparse/dense costs with 95% CIs. Marginal: the cost of a token at that position. Per request: the average over positions 0..L. \
Attention-only: measured. Whole model: attention x layers plus the rest of the model (see Assumptions). Fig. 3: DeepSeek's ratio at the same position (marginal, and averaged over 0..L)."
            .into(),
    ));
    b.push(Block::Table {
        id: Some("ratio-table"),
        header: [
            "series", "context", "dense ms", "DSA ms", "attention ratio [95% CI]", "claim", "band", "whole-model ratio", "per-request attention ratio",
            "per-request whole-model ratio", "Fig. 3 marginal", "Fig. 3 per request",
        ]
        .map(String::from)
        .to_vec(),
        rows: a
            .series
            .iter()
            .flat_map(|s| {
                s.points.iter().map(move |p| {
                    vec![
                        format!("{} {}", s.key.phase, label(r, s)),
                        fmt_tokens(p.context as f64),
                        format!("{} (n={})", sig(p.dense.median_ms, 4), p.dense.n_samples),
                        format!("{} (n={})", sig(p.dsa.median_ms, 4), p.dsa.n_samples),
                        fmt_ratio_ci(&p.attn_ratio, 3),
                        p.verdict.wording(),
                        p.verdict.band.as_str().into(),
                        fmt_ratio_ci(&p.model_ratio, 3),
                        fmt_ratio_ci(&p.attn_request_ratio, 3),
                        fmt_ratio_ci(&p.model_request_ratio, 3),
                        opt(p.fig3_ratio),
                        opt(p.fig3_request_ratio),
                    ]
                })
            })
            .collect(),
    });
    b
}

/// Every usable engine at every point.
fn engines_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "engines", text: "Every engine at every point".into() });
    b.push(Block::P(format!(
        "Each usable engine (measured, verification not failed) at each point of the same machine: median with its sample count, achieved rates (the record's analytic FLOPs and bytes over the median), \
and its speed as a share of the fastest engine of the same method there (1.00 = the fastest; below {SLOW_ENGINE_SHARE} it is flagged on the first screen when a ratio rests on it). \
`verdict` marks the engine the verdict uses (the fastest verified one). Ours: {}; every other engine is a library peer.",
        yardstick::OUR_ENGINES.map(|e| format!("`{e}`")).join(", ")
    )));
    b.push(Block::Table {
        id: Some("engine-table"),
        header: ["series", "context", "method", "engine", "origin", "verified", "median ms", "TFLOP/s", "TB/s", "share of fastest of its method", "verdict"]
            .map(String::from)
            .to_vec(),
        rows: a
            .engines
            .iter()
            .map(|e| {
                vec![
                    format!("{} {}", e.key.phase, e.key.label(a.mixed_env)),
                    fmt_tokens(e.context as f64),
                    e.method.to_string(),
                    e.engine.clone(),
                    e.origin.as_str().into(),
                    e.verified.as_str().into(),
                    format!("{} (n={})", sig(e.median_ms, 4), e.n_samples),
                    sig(e.tflops, 3),
                    sig(e.tbps, 3),
                    if e.share < SLOW_ENGINE_SHARE { format!("{:.2} (slow; fastest: {})", e.share, e.fastest) } else { format!("{:.2}", e.share) },
                    if e.picked { "verdict".into() } else { String::new() },
                ]
            })
            .collect(),
    });
    b
}

/// Break-even contexts of every series.
fn break_even_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "break-even", text: "Break-even contexts".into() });
    b.push(Block::P(
        "Where the ratio crosses the threshold for good (interpolated in log-context between measured points); the bracket is where the CI bounds cross. \
`<= X`: already below at the smallest measured context; `> X`: not reached by the largest."
            .into(),
    ));
    let mut be_rows = Vec::new();
    for s in &a.series {
        let e = &s.break_evens;
        for (t, am, mm, ar, mr) in [
            (1.0, &e.attn_one, &e.model_one, &e.attn_request_one, &e.model_request_one),
            (0.5, &e.attn_half, &e.model_half, &e.attn_request_half, &e.model_request_half),
        ] {
            be_rows.push(vec![
                format!("{} {}", s.key.phase, label(r, s)),
                format!("{t}"),
                be_text(am),
                be_text(mm),
                be_text(ar),
                be_text(mr),
                verdict::fig3_crossing(&r.fig3, s.key.phase, t).text(),
            ]);
        }
    }
    b.push(Block::Table {
        id: Some("break-even-table"),
        header: ["series", "ratio", "attention, marginal", "whole model, marginal", "attention, per request", "whole model, per request", "DeepSeek Fig. 3 (marginal)"]
            .map(String::from)
            .to_vec(),
        rows: be_rows,
    });
    b
}

/// Cost per million tokens, beside DeepSeek's Fig. 3.
fn costs_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "costs", text: "Cost per million tokens".into() });
    b.push(Block::P(format!(
        "USD per million tokens at ${}/GPU-hour. Attention-only = layers x one layer's attention; whole model adds the rest of the model (see Assumptions). Fig. 3: DeepSeek's whole-model marginal cost at the same position (H800 cluster, $2/GPU-hour); the differences between the two are listed in Assumptions.",
        a.settings.usd_per_gpu_hour
    )));
    b.push(Block::Table {
        id: Some("cost-table"),
        header: [
            "series", "context", "dense attention", "DSA attention", "dense whole model", "DSA whole model", "Fig. 3 V3.1", "Fig. 3 V3.2-Exp",
            "dense per request (attention)", "DSA per request (attention)", "dense per request (whole model)", "DSA per request (whole model)",
        ]
        .map(String::from)
        .to_vec(),
        rows: a
            .series
            .iter()
            .flat_map(|s| {
                s.points.iter().map(move |p| {
                    let fig3 = r.fig3.at(s.key.phase, p.context as f64);
                    vec![
                        format!("{} {}", s.key.phase, label(r, s)),
                        fmt_tokens(p.context as f64),
                        sig(p.dense.attn_marginal, 4),
                        sig(p.dsa.attn_marginal, 4),
                        sig(p.dense.model_marginal, 4),
                        sig(p.dsa.model_marginal, 4),
                        opt(fig3.map(|f| f.0)),
                        opt(fig3.map(|f| f.1)),
                        sig(p.dense.attn_request, 4),
                        sig(p.dsa.attn_request, 4),
                        sig(p.dense.model_request, 4),
                        sig(p.dsa.model_request, 4),
                    ]
                })
            })
            .collect(),
    });
    b
}

/// The saving split into FP8 and sparsity.
fn fp8_split_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "fp8-split", text: "Saving from FP8 vs saving from sparsity".into() });
    if a.splits.is_empty() {
        b.push(Block::P(
            "Not measured: splitting the saving needs dense-bf16, dense-fp8 and dsa-fp8 records of the same point. Each series above compares like with like (same precision on both sides)."
                .into(),
        ));
    } else {
        b.push(Block::P(
            "Attention-only marginal cost (USD per million tokens), each cell from the fastest verified engine there (named). Total saving = 1 - dsa-fp8 / dense-bf16 = from FP8 (1 - dense-fp8 / dense-bf16) + from sparsity ((dense-fp8 - dsa-fp8) / dense-bf16). \
A cell where FP8 is slower than bf16 for the same method is flagged: FP8 reads half the bytes, so that is a kernel defect, not a property of FP8."
                .into(),
        ));
        b.push(Block::Table {
            id: Some("fp8-table"),
            header: ["phase", "shape", "context", "dense bf16", "dense fp8", "DSA fp8", "DSA bf16", "total saving", "from FP8", "from sparsity", "flag"]
                .map(String::from)
                .to_vec(),
            rows: a
                .splits
                .iter()
                .map(|x| {
                    vec![
                        x.phase.to_string(),
                        x.shape.clone(),
                        fmt_tokens(x.context as f64),
                        format!("{} ({})", sig(x.dense_bf16_usd, 4), x.dense_bf16_engine),
                        format!("{} ({})", sig(x.dense_fp8_usd, 4), x.dense_fp8_engine),
                        format!("{} ({})", sig(x.dsa_fp8_usd, 4), x.dsa_fp8_engine),
                        match (x.dsa_bf16_usd, &x.dsa_bf16_engine) {
                            (Some(v), Some(e)) => format!("{} ({e})", sig(v, 4)),
                            _ => "not measured".into(),
                        },
                        format!("{:.1}%", 100.0 * x.total_saving),
                        format!("{:.1}%", 100.0 * x.from_fp8),
                        format!("{:.1}%", 100.0 * x.from_sparsity),
                        if x.fp8_slower.is_empty() { "-".into() } else { x.fp8_slower.join("; ") },
                    ]
                })
                .collect(),
        });
    }
    b
}

/// DeepSeek's API prices, for comparison.
fn api_prices_section(r: &Report) -> Vec<Block> {
    let mut b = Vec::new();
    b.push(Block::H2 { id: "api-prices", text: "DeepSeek API prices (for comparison)".into() });
    b.push(Block::P(format!(
        "USD per million tokens before and after the V3.2-Exp launch (table: {}). The cut is the same at every context length: a pricing decision, not a measurement of cost.",
        r.prices_from
    )));
    b.push(Block::Table {
        id: Some("api-price-table"),
        header: ["item", "before", "after", "after / before", "effective", "models", "source"].map(String::from).to_vec(),
        rows: r
            .prices
            .iter()
            .map(|p| {
                vec![
                    p.item.clone(),
                    format!("{}", p.before),
                    format!("{}", p.after),
                    format!("{:.2}", p.ratio()),
                    p.effective_date.clone(),
                    format!("{} -> {}", p.model_before, p.model_after),
                    p.source.clone(),
                ]
            })
            .collect(),
    });
    b
}

/// What was measured and how.
fn method_section(r: &Report) -> Vec<Block> {
    let endpoint_only = r.endpoints.only;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "method", text: "Method".into() });
    b.push(Block::List {
        id: None,
        items: if endpoint_only { crate::endpoint::method_items() } else { vec![
            "Every case measures one layer's attention. Prefill at L: a chunk of q query tokens at positions [L-q, L) attending causally to L keys (the marginal cost near position L). Decode at L: B sequences, each one new token over an L-token cache.".into(),
            "Median of the raw samples of each case (recomputed from `samples_ms`). seconds_per_token = median case seconds / query tokens (B x q: per chunk token in prefill, per sequence token of the batch in decode).".into(),
            "usd_per_million_tokens = seconds_per_token x usd_per_gpu_hour / 3600 x 1e6; attention-only = layers x one layer; whole model = layers x one layer + the rest of the model per token.".into(),
            "Per request of L tokens = the average of the marginal cost over positions 0..L: power-law (straight in log-log) interpolation between measured contexts, the first measured value below the smallest one. Whole-prompt prefill cases (q = L) are per-request costs already.".into(),
            "Which engines: the verdict uses, at every point, the fastest verified engine of each method on the same machine (verified = output checked against the f64 reference and passed; an unverified record is used only where no verified one of its method exists, and the first screen says so; a record that failed verification never is). Engine pairs (`--pair`, ours vs ours by default) are shown beside it.".into(),
            "Lockstep: two records were sampled in lockstep when they come from the same record file and machine, hold the same number of samples, and their [started_at, finished_at] windows overlap (the runner interleaves the engines of one point A B A B in one process). Only then is sample i of one paired with sample i of the other.".into(),
            "Ratio CIs: attention-only marginal ratios use a bootstrap of the ratio of medians (2000 resamples): paired (ctxcost-core `ratio_ci`) where the two records were sampled in lockstep, else unpaired (each sample set resampled on its own, fixed seed). Whole-model and per-request ratios use one joint bootstrap over all points of a series (2000 resamples, fixed seed; paired per point where sampled in lockstep).".into(),
            "Roofline bound: for each point, the DSA/dense ratio if every component ran at the ceilings. Each component takes max(FLOPs / GEMM rate, bytes / copy bandwidth), with the FLOPs and bytes of the analytic model (DSA.md section 3): dense attention (MHA mode in prefill, MQA mode in decode); DSA's indexer (its keys over all L keys, its queries), top-k (no FLOPs or bytes in the model: a fused top-k keeps the scores on chip) and sparse MQA attention over the selected keys. FP8 matrix work (the indexer at fp8) counts at twice the bf16 GEMM rate; attention computes in bf16 at every precision. It is what the method gives when both sides run at the hardware's limits: a measured ratio above it is DSA's kernels' gap, one below it means the dense side runs far from its ceilings (flagged on the first screen on GPU machines).".into(),
            "Break-even: the context from which the ratio stays at or below the threshold, interpolated linearly in the ratio against log-context between the last measured point above and the next; its bracket is where the CI bounds cross.".into(),
            format!("DeepSeek's numbers: {FIG3_CITATION}. Positions in K are read as multiples of 1024 tokens; values between the 1K samples are interpolated linearly."),
        ] },
    });
    b
}

/// The cost model's assumptions and the ceilings used.
fn assumptions_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    b.push(Block::H2 { id: "assumptions", text: "Assumptions".into() });
    let mut assumptions = vec![
        format!("Price: ${} per GPU-hour (`--usd-per-gpu-hour`; DeepSeek's Fig. 3 uses $2).", a.settings.usd_per_gpu_hour),
        "The measured machine is priced at the GPU-hour price whatever it is (a CPU run is priced as if it were the GPU).".into(),
    ];
    let mut others: Vec<String> = a.series.iter().map(|s| format!("Rest of the model for {} {}: {}.", s.key.phase, label(r, s), s.other.describe())).collect();
    others.dedup();
    assumptions.extend(others);
    assumptions.push(format!(
        "When no `rest` record (engines `rest-*`, or a legacy `gemm-*` record) exists for a series, the rest of the model is analytic: 2 x active parameters / {} TFLOP/s (`--other-tflops`), an assumed achieved rate.",
        a.settings.other_tflops
    ));
    if a.series.iter().any(|s| matches!(s.other.source, crate::cost::OtherSource::Rest(_))) {
        assumptions.extend(crate::cost::REST_DIFFERENCES.iter().map(|x| x.to_string()));
    }
    for (env, (c, source)) in &a.ceilings {
        let from = match source {
            CeilingSource::Records => "stored in this machine's records (same run)".to_string(),
            CeilingSource::Inputs if *c == yardstick::Ceilings::default() => {
                "not in the records: the defaults, an H200's `ctxcost ceilings` of bench/NOTES.md (2026-11-29), not measured with these records".to_string()
            }
            CeilingSource::Inputs => "not in the records: given as report inputs".to_string(),
        };
        let on = if a.mixed_env { format!(" for {env}") } else { String::new() };
        assumptions.push(format!(
            "Roofline ceilings{on}: copy {} TB/s, bf16 GEMM {} TFLOP/s (FP8 matrix work at twice that), {from}.",
            c.copy_tbps, c.gemm_tflops
        ));
    }
    b.push(Block::List { id: None, items: assumptions });
    b
}

/// Not measured and data problems.
fn data_section(r: &Report) -> Vec<Block> {
    let a = &r.analysis;
    let mut b = Vec::new();
    // Not measured / data quality.
    b.push(Block::H2 { id: "data", text: "Not measured and data problems".into() });
    let mut dq = Vec::new();
    for s in &a.series {
        for u in &s.unpaired {
            dq.push(format!("{} {} at {}: not measured ({})", s.key.phase, label(r, s), fmt_tokens(u.context as f64), u.why));
        }
    }
    let inv = &r.inventory;
    for f in &inv.flagged {
        if f.status != Status::Ok && !a.series.iter().any(|s| s.unpaired.iter().any(|u| u.why.contains(&f.engine))) {
            dq.push(format!("{}: {:?} ({})", f.key, f.status, f.reason.clone().unwrap_or_default()).to_lowercase());
        }
        if f.verification_failed {
            dq.push(format!("{}: output verification FAILED; its timing is reported but should not be trusted", f.key));
        }
    }
    if inv.superseded > 0 {
        dq.push(format!("{} record(s) superseded by a later record of the same case on the same machine (the later one is used).", inv.superseded));
    }
    for p in inv.problems.iter().take(20) {
        dq.push(format!("bad line {}:{}: {}", p.file, p.line, p.why));
    }
    if inv.problems.len() > 20 {
        dq.push(format!("... and {} more bad lines", inv.problems.len() - 20));
    }
    dq.extend(crate::endpoint::data_problems(&r.endpoints));
    if dq.is_empty() {
        dq.push("None: every record read was measured, paired and verified where verification ran.".into());
    }
    b.push(Block::List { id: Some("data-problems"), items: dq });
    b
}

/// The machines and the record files.
fn environment_section(r: &Report) -> Vec<Block> {
    let mut b = Vec::new();
    b.push(Block::H2 { id: "environment", text: "Environment".into() });
    let mut env_rows = Vec::new();
    for m in &r.inventory.machines {
        let (label, e, tools, timers) = (&m.label, &m.env, &m.tools, &m.timers);
        let gpu = if e.gpu.is_empty() { "none".to_string() } else { e.gpu.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("; ") };
        env_rows.push(vec![
            label.clone(),
            e.os.clone(),
            format!("{} x{}", e.cpu, e.cpu_cores),
            format!("{:.1} GiB", e.host_memory_bytes as f64 / 1024f64.powi(3)),
            gpu,
            tools.join(", "),
            timers.join(", "),
            m.records.to_string(),
        ]);
    }
    b.push(Block::Table {
        id: Some("environment-table"),
        header: ["machine", "os", "cpu", "memory", "gpu", "tool", "timer", "records"].map(String::from).to_vec(),
        rows: env_rows,
    });
    b.push(Block::H3("Record files".into()));
    b.push(Block::List { id: None, items: r.inventory.files.iter().map(|(f, n)| format!("{f}: {n} record(s)")).collect() });
    b
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

const CSS: &str = "body{font-family:'DejaVu Sans',Verdana,sans-serif;max-width:1240px;margin:1.5em auto;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}\
#verdict{background:#f5f9ff;border:1px solid #b8cfee;border-radius:6px;padding:.6em 1.2em}\
#verdict h2{margin-top:.3em;border:none}\
#verdict-headline{font-size:1.08em;font-weight:bold}#verdict-warnings li{color:#8a3b00}\
table{border-collapse:collapse;font-size:.85em;margin:.6em 0;display:block;overflow-x:auto}\
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}th{background:#eee}\
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}\
code{background:#f2f2f2;padding:0 .2em}";

fn inline_code_html(s: &str) -> String {
    // `code` spans -> <code>; everything else escaped.
    let mut out = String::new();
    for (i, part) in s.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<code>{}</code>", esc(part)));
        } else {
            out.push_str(&esc(part));
        }
    }
    out
}

/// The self-contained HTML report.
pub fn html(r: &Report, charts: &[Chart]) -> String {
    let (title, blocks) = document(r);
    let mut h = String::new();
    h.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{}</title><style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    ));
    let mut in_verdict = false;
    for b in &blocks {
        match b {
            Block::H2 { id, text } => {
                if in_verdict {
                    h.push_str("</section>\n");
                    in_verdict = false;
                }
                if *id == "verdict" {
                    h.push_str("<section id=\"verdict\">\n");
                    in_verdict = true;
                    h.push_str(&format!("<h2>{}</h2>\n", esc(text)));
                } else {
                    h.push_str(&format!("<h2 id=\"{id}\">{}</h2>\n", esc(text)));
                }
            }
            Block::H3(t) => h.push_str(&format!("<h3>{}</h3>\n", esc(t))),
            Block::P(t) => h.push_str(&format!("<p>{}</p>\n", inline_code_html(t))),
            Block::Strong(t) => h.push_str(&format!("<p class=\"question\"><strong>{}</strong></p>\n", esc(t))),
            Block::List { id, items } => {
                match id {
                    Some(id) => h.push_str(&format!("<ul id=\"{id}\">\n")),
                    None => h.push_str("<ul>\n"),
                }
                for i in items {
                    h.push_str(&format!("<li>{}</li>\n", inline_code_html(i)));
                }
                h.push_str("</ul>\n");
            }
            Block::Table { id, header, rows } => {
                match id {
                    Some(id) => h.push_str(&format!("<table id=\"{id}\">")),
                    None => h.push_str("<table>"),
                }
                h.push_str("<thead><tr>");
                for c in header {
                    h.push_str(&format!("<th>{}</th>", esc(c)));
                }
                h.push_str("</tr></thead><tbody>\n");
                if rows.is_empty() {
                    h.push_str(&format!("<tr><td colspan=\"{}\">not measured</td></tr>\n", header.len()));
                }
                for row in rows {
                    h.push_str("<tr>");
                    for c in row {
                        h.push_str(&format!("<td>{}</td>", inline_code_html(c)));
                    }
                    h.push_str("</tr>\n");
                }
                h.push_str("</tbody></table>\n");
            }
            Block::Figure(kind) => {
                if let Some(c) = charts.iter().find(|c| c.kind == *kind) {
                    let (w, hh) = crate::charts::CHART_SIZE;
                    h.push_str(&format!(
                        "<figure id=\"{}\"><img alt=\"{}\" width=\"{w}\" height=\"{hh}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>\n",
                        kind.id(),
                        esc(kind.title()),
                        base64(&c.png),
                        esc(&caption(*kind))
                    ));
                }
            }
        }
    }
    if in_verdict {
        h.push_str("</section>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn caption(kind: ChartKind) -> String {
    match kind {
        ChartKind::Ratio => format!("{}. Solid: attention-only marginal ratio with its 95% CI band; dashed colour: per request over 0..L; grey dashed: DeepSeek's Fig. 3 ratio. Thick bars on the 1.0 and 0.5 lines: break-even CIs; triangles: estimates.", ChartKind::Ratio.title()),
        ChartKind::Cost => format!("{}. Ours: whole-model cost (attention x layers + rest of the model, see Assumptions). {FIG3_CITATION}.", ChartKind::Cost.title()),
        k => k.title().to_string(),
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// The Markdown report; chart PNGs are linked by file name (written beside it).
pub fn markdown(r: &Report, charts: &[Chart]) -> String {
    let (title, blocks) = document(r);
    let mut m = format!("# {title}\n\n");
    for b in &blocks {
        match b {
            Block::H2 { text, .. } => m.push_str(&format!("## {text}\n\n")),
            Block::H3(t) => m.push_str(&format!("### {t}\n\n")),
            Block::P(t) => m.push_str(&format!("{t}\n\n")),
            Block::Strong(t) => m.push_str(&format!("**{t}**\n\n")),
            Block::List { items, .. } => {
                for i in items {
                    m.push_str(&format!("- {i}\n"));
                }
                m.push('\n');
            }
            Block::Table { header, rows, .. } => {
                m.push_str(&format!("| {} |\n", header.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")));
                m.push_str(&format!("|{}\n", "---|".repeat(header.len())));
                if rows.is_empty() {
                    m.push_str(&format!("| not measured |{}\n", " |".repeat(header.len() - 1)));
                }
                for row in rows {
                    m.push_str(&format!("| {} |\n", row.iter().map(|c| md_cell(c)).collect::<Vec<_>>().join(" | ")));
                }
                m.push('\n');
            }
            Block::Figure(kind) => {
                if charts.iter().any(|c| c.kind == *kind) {
                    m.push_str(&format!("![{}]({}.png)\n\n*{}* ([SVG]({}.svg))\n\n", kind.title(), kind.id(), caption(*kind), kind.id()));
                }
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn significant_digits() {
        assert_eq!(sig(16.944444, 4), "16.94");
        assert_eq!(sig(0.0012345, 3), "0.00123");
        assert_eq!(sig(1234.4, 3), "1234");
    }
}
