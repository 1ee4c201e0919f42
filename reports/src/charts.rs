//! The report's charts, drawn with plotters into SVG and PNG from the same drawing code:
//! latency vs context, cost per million tokens vs position with DeepSeek's Fig. 3 curves,
//! the sparse/dense cost ratio with its CI band and break-evens, DSA's time split and memory.
//!
//! Every range handed to plotters is finite, positive where the axis is logarithmic, and
//! bounded ([`VALUE_LIMIT`]): points that are not (NaN, infinite, zero on a log axis, beyond
//! 1e300) are left out of the drawing, so no input can make a chart loop or spin.
//!
//! Text is drawn with DejaVu Sans shipped in `reports/assets/` (registered with plotters'
//! ab_glyph font table), so charts need no system fonts and look the same everywhere.

use std::error::Error;
use std::path::Path;
use std::sync::Once;

use ctxcost_core::Phase;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::register_font;

use crate::format::fmt_tokens;
use crate::analysis::{Analysis, BreakEven, Crossing, Series};
use crate::endpoint::{EndpointAnalysis, EndpointRow};
use crate::reference::Fig3;
use crate::error::ReportError;

/// DejaVu Sans (Bitstream Vera license, `reports/assets/DejaVuSans-LICENSE.txt`).
pub const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// Size of every chart in pixels.
pub const CHART_SIZE: (u32, u32) = (1200, 560);

/// The charts of a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartKind {
    Latency,
    Cost,
    Ratio,
    DsaSplit,
    Memory,
    /// Remote endpoints: TTFT and TPOT vs prompt length per side (drawn only when the
    /// records hold endpoint cases).
    Endpoint,
}

impl ChartKind {
    pub const ALL: [ChartKind; 5] = [ChartKind::Ratio, ChartKind::Cost, ChartKind::Latency, ChartKind::DsaSplit, ChartKind::Memory];
    /// Every chart a report may draw (the kernel charts and the endpoint chart).
    pub const EVERY: [ChartKind; 6] =
        [ChartKind::Ratio, ChartKind::Cost, ChartKind::Latency, ChartKind::DsaSplit, ChartKind::Memory, ChartKind::Endpoint];

    /// File stem and HTML id.
    pub fn id(self) -> &'static str {
        match self {
            ChartKind::Latency => "chart-latency",
            ChartKind::Cost => "chart-cost",
            ChartKind::Ratio => "chart-ratio",
            ChartKind::DsaSplit => "chart-dsa-split",
            ChartKind::Memory => "chart-memory",
            ChartKind::Endpoint => "chart-endpoint",
        }
    }

    /// Figure title.
    pub fn title(self) -> &'static str {
        match self {
            ChartKind::Latency => "Latency of one layer's attention vs context (log-log)",
            ChartKind::Cost => "Whole-model marginal cost per million tokens vs position, with DeepSeek's Fig. 3",
            ChartKind::Ratio => "Sparse/dense cost ratio vs context (attention-only; 95% CI band; break-evens; roofline bound dotted)",
            ChartKind::DsaSplit => "DSA time split: indexer / top-k / attention vs context",
            ChartKind::Memory => "KV bytes per token (modelled) and measured peak memory vs context",
            ChartKind::Endpoint => "Remote endpoints: TTFT (prefill cases) and TPOT (decode cases) vs prompt length",
        }
    }
}

/// A rendered chart: the SVG text and the PNG bytes (also written to disk).
#[derive(Debug, Clone)]
pub struct Chart {
    pub kind: ChartKind,
    pub svg: String,
    pub png: Vec<u8>,
}

static FONT_ONCE: Once = Once::new();

/// Register the shipped font with plotters (once per process).
pub fn register_fonts() {
    FONT_ONCE.call_once(|| {
        // The bytes are the shipped TTF; a failure here is a build defect.
        let ok = register_font(FAMILY, FontStyle::Normal, FONT).is_ok();
        debug_assert!(ok, "the shipped DejaVu Sans must parse");
        let _ = register_font(FAMILY, FontStyle::Bold, FONT);
    });
}

type DrawResult = Result<(), Box<dyn Error>>;

/// Draw every chart into `dir` as `<id>.svg` and `<id>.png` and return them.
pub fn render_all(a: &Analysis, e: &EndpointAnalysis, fig3: &Fig3, dir: &Path) -> Result<Vec<Chart>, ReportError> {
    register_fonts();
    let mut out = Vec::new();
    let has_endpoints = !e.is_empty();
    // An endpoint-only record set gets only the endpoint chart (the others would be empty).
    let kernel_charts = !(a.series.is_empty() && has_endpoints);
    let kinds = ChartKind::ALL.into_iter().filter(|_| kernel_charts).chain(has_endpoints.then_some(ChartKind::Endpoint));
    for kind in kinds {
        let chart_err = |e: Box<dyn Error>| ReportError::Chart { chart: kind.id().into(), why: e.to_string() };
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
            draw(kind, a, e, fig3, &root).map_err(chart_err)?;
            root.present().map_err(|e| chart_err(Box::new(e)))?;
        }
        let svg_path = dir.join(format!("{}.svg", kind.id()));
        std::fs::write(&svg_path, &svg).map_err(|source| ReportError::Write { path: svg_path.display().to_string(), source })?;
        let png_path = dir.join(format!("{}.png", kind.id()));
        {
            let root = BitMapBackend::new(&png_path, CHART_SIZE).into_drawing_area();
            draw(kind, a, e, fig3, &root).map_err(chart_err)?;
            root.present().map_err(|e| chart_err(Box::new(e)))?;
        }
        let png = std::fs::read(&png_path).map_err(|source| ReportError::Write { path: png_path.display().to_string(), source })?;
        out.push(Chart { kind, svg, png });
    }
    Ok(out)
}

fn draw<DB: DrawingBackend>(kind: ChartKind, a: &Analysis, e: &EndpointAnalysis, fig3: &Fig3, root: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let titled = root.titled(kind.title(), (FAMILY, 20))?;
    match kind {
        ChartKind::Memory => {
            let panels = titled.split_evenly((1, 2));
            draw_kv_per_token(a, &panels[0])?;
            draw_peak_memory(a, &panels[1])?;
        }
        _ => {
            let panels = titled.split_evenly((1, 2));
            for (phase, area) in [Phase::Prefill, Phase::Decode].into_iter().zip(panels.iter()) {
                match kind {
                    ChartKind::Latency => draw_latency(a, phase, area)?,
                    ChartKind::Cost => draw_cost(a, fig3, phase, area)?,
                    ChartKind::Ratio => draw_ratio(a, fig3, phase, area)?,
                    ChartKind::DsaSplit => draw_split(a, phase, area)?,
                    ChartKind::Endpoint => draw_endpoint(e, phase, area)?,
                    ChartKind::Memory => unreachable!(),
                }
            }
        }
    }
    Ok(())
}

const DENSE_COLORS: [RGBColor; 4] = [RGBColor(31, 119, 180), RGBColor(23, 190, 207), RGBColor(148, 103, 189), RGBColor(44, 160, 44)];
const DSA_COLORS: [RGBColor; 4] = [RGBColor(255, 127, 14), RGBColor(214, 39, 40), RGBColor(140, 86, 75), RGBColor(227, 119, 194)];
const FIG3_DENSE: RGBColor = RGBColor(90, 90, 90);
const FIG3_SPARSE: RGBColor = RGBColor(160, 160, 160);
const HALF_LINE: RGBColor = RGBColor(0, 140, 60);
const ONE_LINE: RGBColor = RGBColor(200, 30, 30);

/// How a legend entry is drawn.
#[derive(Debug, Clone, Copy)]
enum Swatch {
    Line(RGBColor, u32),
    Dashed(RGBColor, u32),
    Block(RGBColor),
    Dotted(RGBColor),
    Triangle,
}

type Legend = Vec<(String, Swatch)>;
/// A labelled, coloured line; points are (x, y) or (x, median, CI low, CI high).
type Line<P> = (String, RGBColor, Vec<P>);
/// A labelled, coloured line that may be dashed.
type StyledLine = (String, RGBColor, bool, Vec<(f64, f64)>);

/// Approximate width of a legend character at 12 px (DejaVu Sans).
const LEGEND_CHAR_PX: f64 = 6.8;

/// Legend columns that fit the longest label in a panel `width` pixels wide (1 or 2).
fn legend_columns(width: u32, legend: &Legend) -> usize {
    let longest = legend.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0) as f64;
    if 2.0 * (longest * LEGEND_CHAR_PX + 44.0) <= width as f64 - 20.0 {
        2
    } else {
        1
    }
}

/// Split a panel into the plot (top) and a legend strip (bottom) sized for its entries, so
/// the legend never hides data.
fn with_legend_strip<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, legend: &Legend) -> (DrawingArea<DB, Shift>, DrawingArea<DB, Shift>) {
    let (w, h) = area.dim_in_pixel();
    let rows = legend.len().div_ceil(legend_columns(w, legend)) as u32;
    let strip = (rows * 18 + 26).min(h / 2);
    area.split_vertically(h - strip)
}

fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, legend: &Legend) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (w, _) = area.dim_in_pixel();
    let cols = legend_columns(w, legend);
    let col_w = (w as i32 - 20) / cols as i32;
    for (i, (label, swatch)) in legend.iter().enumerate() {
        let x = 14 + (i % cols) as i32 * col_w;
        let y = 6 + (i / cols) as i32 * 18 + 8;
        match *swatch {
            Swatch::Line(c, wd) => area.draw(&PathElement::new(vec![(x, y), (x + 26, y)], c.stroke_width(wd)))?,
            Swatch::Dashed(c, wd) => {
                for k in 0..3 {
                    area.draw(&PathElement::new(vec![(x + k * 10, y), (x + k * 10 + 6, y)], c.stroke_width(wd)))?;
                }
            }
            Swatch::Block(c) => area.draw(&Rectangle::new([(x + 4, y - 6), (x + 20, y + 6)], c.filled()))?,
            Swatch::Dotted(c) => {
                for k in 0..5 {
                    area.draw(&PathElement::new(vec![(x + k * 6, y), (x + k * 6 + 2, y)], c.stroke_width(2)))?;
                }
            }
            Swatch::Triangle => area.draw(&TriangleMarker::new((x + 13, y), 7, BLACK.filled()))?,
        }
        let max_chars = ((col_w as f64 - 44.0) / LEGEND_CHAR_PX).max(10.0) as usize;
        let text: String = if label.chars().count() > max_chars {
            label.chars().take(max_chars - 1).chain(std::iter::once('~')).collect()
        } else {
            label.clone()
        };
        area.draw(&Text::new(text, (x + 34, y - 7), (FAMILY, 12)))?;
    }
    Ok(())
}

fn series_of(a: &Analysis, phase: Phase) -> Vec<&Series> {
    a.series.iter().filter(|s| s.key.phase == phase).collect()
}

fn short_label(a: &Analysis, s: &Series) -> String {
    let k = &s.key;
    let mut l = format!("{} B={}", k.precision, k.batch);
    if a.series.iter().any(|o| o.key.phase == k.phase && o.key.shape != k.shape) {
        l = format!("{} {l}", k.shape);
    }
    if a.series.iter().any(|o| o.key.phase == k.phase && o.key.query_len != k.query_len) {
        l = format!("{l} q={}", k.query_len.map(|q| q.to_string()).unwrap_or_else(|| "L".into()));
    }
    if a.mixed_env {
        l = format!("{l} @ {}", k.env);
    }
    l
}

fn no_data<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, caption: &str, msg: &str) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    area.draw(&Rectangle::new([(10, 30), (w as i32 - 10, h as i32 - 10)], BLACK.mix(0.3)))?;
    area.draw(&Text::new(caption.to_string(), (20, 8), (FAMILY, 16)))?;
    area.draw(&Text::new(msg.to_string(), (30, h as i32 / 2), (FAMILY, 15)))?;
    Ok(())
}

/// Largest magnitude a chart draws; beyond it (or below its inverse on a log axis) a value is
/// left out, so padding a range can never overflow.
pub const VALUE_LIMIT: f64 = 1e300;

/// Whether `v` can be drawn on a linear axis.
fn drawable(v: f64) -> bool {
    v.is_finite() && v.abs() <= VALUE_LIMIT
}

/// Whether `v` can be drawn on a log axis.
fn drawable_log(v: f64) -> bool {
    drawable(v) && v >= 1.0 / VALUE_LIMIT
}

/// Bounds of positive values padded by a factor for a log axis; `None` when no value is
/// drawable. The bounds are finite, positive and apart.
fn log_bounds(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for v in vals.filter(|v| drawable_log(*v)) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi <= 0.0 || !lo.is_finite() {
        return None;
    }
    if hi / lo < 3.0 {
        // sqrt(hi) * sqrt(lo), not sqrt(hi * lo): the product overflows beyond 1e154.
        let mid = hi.sqrt() * lo.sqrt();
        Some((mid / 2.5, mid * 2.5))
    } else {
        Some((lo / 1.3, hi * 1.3))
    }
}

/// Tick values 1, 2, 5 x 10^k inside [lo, hi] (thinned to 1 x 10^k when there are many, then
/// to at most 12). Empty when the range is not finite and positive.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && hi >= lo) {
        return Vec::new();
    }
    // Exponents over a bounded integer range: no loop condition on a float that may overflow.
    let e0 = (lo.log10().floor() as i32 - 1).clamp(-330, 330);
    let e1 = (hi.log10().ceil() as i32 + 1).clamp(-330, 330);
    let mut v = Vec::new();
    for e in e0..=e1 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * 10f64.powi(e);
            if t.is_finite() && t >= lo && t <= hi {
                v.push(t);
            }
        }
    }
    if v.len() > 10 {
        v.retain(|t| (t.log10() - t.log10().round()).abs() < 1e-9);
    }
    if v.len() > 12 {
        let step = v.len().div_ceil(12);
        v = v.into_iter().step_by(step).collect();
    }
    v
}

/// Context ticks: powers of two inside [lo, hi] (every other one when there are many), plus
/// the measured contexts when fewer than three powers fit.
fn context_ticks(lo: f64, hi: f64, measured: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = (0..40).map(|e| 2f64.powi(e)).filter(|t| *t >= lo && *t <= hi).collect();
    if v.len() > 9 {
        v = v.into_iter().enumerate().filter(|(i, _)| i % 2 == 0).map(|(_, t)| t).collect();
    }
    if v.len() < 3 {
        v.extend(measured.iter().copied().filter(|t| *t >= lo && *t <= hi));
        v.sort_by(|a, b| a.total_cmp(b));
        v.dedup();
    }
    v
}

fn fmt_si(v: f64) -> String {
    let a = v.abs();
    let s = if a >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    };
    s
}

fn trim(v: f64) -> String {
    let s = if v.abs() >= 1.0 { format!("{v:.2}") } else { format!("{v:.4}") };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn fmt_bytes(v: f64) -> String {
    let a = v.abs();
    if a >= 1024f64.powi(3) {
        format!("{} GiB", trim(v / 1024f64.powi(3)))
    } else if a >= 1024f64.powi(2) {
        format!("{} MiB", trim(v / 1024f64.powi(2)))
    } else if a >= 1024.0 {
        format!("{} KiB", trim(v / 1024.0))
    } else {
        format!("{v:.0} B")
    }
}

/// The context axis: finite, positive, apart (contexts that are not drawable are left out).
fn context_range(xs: impl Iterator<Item = f64>, extend_to: Option<f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0f64);
    for x in xs.chain(extend_to).filter(|x| drawable_log(*x)) {
        lo = lo.min(x);
        hi = hi.max(x);
    }
    if !lo.is_finite() {
        return (512.0, 256.0 * 1024.0);
    }
    if hi / lo < 2.0 {
        return (lo / 1.6, hi * 1.6);
    }
    (lo / 1.25, hi * 1.25)
}

fn draw_latency<DB: DrawingBackend>(a: &Analysis, phase: Phase, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let caption = format!("{phase}: median ms per case, bars: 95% CI");
    let ser = series_of(a, phase);
    // (label, colour, points (ctx, median, lo, hi))
    let mut lines: Vec<Line<(f64, f64, f64, f64)>> = Vec::new();
    for (i, s) in ser.iter().enumerate() {
        for (sparse, recs) in [(false, &s.dense_records), (true, &s.dsa_records)] {
            let pts: Vec<(f64, f64, f64, f64)> = recs
                .iter()
                .map(|(&ctx, m)| (ctx as f64, m.median_ms, m.median_ci_ms.0, m.median_ci_ms.1))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let (color, engine) = if sparse { (DSA_COLORS[i % 4], &s.dsa_engine) } else { (DENSE_COLORS[i % 4], &s.dense_engine) };
            lines.push((format!("{engine} {}", short_label(a, s)), color, pts));
        }
    }
    draw_log_lines(area, &caption, &lines, "context (tokens)", "ms per case (one layer)")
}

/// Log-log lines of (x, median, CI low, CI high) with CI bars and a legend strip.
fn draw_log_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    lines: &[Line<(f64, f64, f64, f64)>],
    x_desc: &str,
    y_desc: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let lines: Vec<Line<(f64, f64, f64, f64)>> = lines
        .iter()
        .map(|(l, c, pts)| (l.clone(), *c, pts.iter().copied().filter(|p| drawable_log(p.0) && drawable_log(p.1)).collect::<Vec<_>>()))
        .filter(|l| !l.2.is_empty())
        .collect();
    let Some((ylo, yhi)) = log_bounds(lines.iter().flat_map(|l| l.2.iter().flat_map(|p| [p.1, p.2, p.3]))) else {
        return no_data(area, caption, "not measured: no records for this phase");
    };
    let measured: Vec<f64> = lines.iter().flat_map(|l| l.2.iter().map(|p| p.0)).collect();
    let (xlo, xhi) = context_range(measured.iter().copied(), None);
    let legend: Legend = lines.iter().map(|(l, c, _)| (l.clone(), Swatch::Line(*c, 2))).collect();
    let (plot, strip) = with_legend_strip(area, &legend);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FAMILY, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (xlo..xhi).log_scale().base(2.0).with_key_points(context_ticks(xlo, xhi, &measured)),
            (ylo..yhi).log_scale().with_key_points(log_ticks(ylo, yhi)),
        )?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_label_formatter(&|x| fmt_tokens(*x))
        .y_label_formatter(&|y| fmt_si(*y))
        .label_style((FAMILY, 13))
        .draw()?;
    for (_, color, pts) in &lines {
        let c = *color;
        chart.draw_series(LineSeries::new(pts.iter().map(|p| (p.0, p.1)), c.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))?;
        chart.draw_series(
            pts.iter()
                .filter(|p| drawable_log(p.2) && drawable_log(p.3) && p.3 > p.2)
                .map(|p| PathElement::new(vec![(p.0, p.2), (p.0, p.3)], c.stroke_width(2))),
        )?;
    }
    draw_legend(&strip, &legend)
}

/// Endpoint cases of a phase: the primary metric's median per request (95% CI bars) vs
/// prompt length, one line per side, load and output length.
fn draw_endpoint<DB: DrawingBackend>(ea: &EndpointAnalysis, phase: Phase, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let metric = ctxcost_core::endpoint::primary_name(phase);
    let caption = format!("{phase}: {metric} median ms per request, bars: 95% CI");
    let mut by_line: std::collections::BTreeMap<String, Vec<(f64, f64, f64, f64)>> = std::collections::BTreeMap::new();
    // In reading order, as the records were written.
    let mut rows: Vec<&EndpointRow> = ea.rows.iter().filter(|r| r.phase == phase).collect();
    rows.sort_by_key(|r| r.index);
    for r in rows {
        let e = r.block();
        let Some(s) = (if phase == Phase::Prefill { &e.metrics.ttft_ms } else { &e.metrics.tpot_ms }) else { continue };
        let name = format!("{} ({}) load {}{}", e.label, e.side, e.load.key(), if phase == Phase::Decode { format!(", {} out", e.max_tokens) } else { String::new() });
        // At the prompt length the server measured (the target where it reported none).
        by_line.entry(name).or_default().push((crate::endpoint::measured_context(&r.record) as f64, s.median, s.ci_lo, s.ci_hi));
    }
    let lines: Vec<Line<(f64, f64, f64, f64)>> = by_line
        .into_iter()
        .enumerate()
        .map(|(i, (name, mut pts))| {
            pts.sort_by(|x, y| x.0.total_cmp(&y.0));
            let color = if name.contains("(b)") { DSA_COLORS[i % 4] } else { DENSE_COLORS[i % 4] };
            (name, color, pts)
        })
        .collect();
    draw_log_lines(area, &caption, &lines, "measured prompt length (tokens)", &format!("{metric} ms"))
}

fn draw_cost<DB: DrawingBackend>(a: &Analysis, fig3: &Fig3, phase: Phase, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let caption = format!("{phase}: USD per million tokens at position (log-log)");
    let ser = series_of(a, phase);
    let (f_dense, f_sparse) = fig3.curves(phase);
    let f_dense: Vec<(f64, f64)> = f_dense.into_iter().filter(|p| p.0 > 0.0).collect();
    let f_sparse: Vec<(f64, f64)> = f_sparse.into_iter().filter(|p| p.0 > 0.0).collect();
    let ours = ser.iter().flat_map(|s| s.points.iter().flat_map(|p| [p.dense.model_marginal, p.dsa.model_marginal]));
    let figs = f_dense.iter().chain(f_sparse.iter()).map(|p| p.1);
    let Some((ylo, yhi)) = log_bounds(ours.chain(figs)) else {
        return no_data(area, &caption, "no data");
    };
    let measured: Vec<f64> = ser.iter().flat_map(|s| s.points.iter().map(|p| p.context as f64)).collect();
    let (xlo, xhi) = context_range(measured.iter().copied().chain([1024.0]), Some(fig3.max_position()));
    let mut legend: Legend = vec![
        ("DeepSeek Fig. 3: V3.1-Terminus (dense, H800)".into(), Swatch::Line(FIG3_DENSE, 2)),
        ("DeepSeek Fig. 3: V3.2-Exp (DSA, H800)".into(), Swatch::Dashed(FIG3_SPARSE, 2)),
    ];
    let mut lines = Vec::new();
    for (i, s) in ser.iter().enumerate() {
        for (sparse, color) in [(false, DENSE_COLORS[i % 4]), (true, DSA_COLORS[i % 4])] {
            let pts: Vec<(f64, f64)> = s
                .points
                .iter()
                .map(|p| (p.context as f64, if sparse { p.dsa.model_marginal } else { p.dense.model_marginal }))
                .filter(|p| drawable_log(p.0) && drawable_log(p.1))
                .collect();
            if pts.is_empty() {
                continue;
            }
            let engine = if sparse { &s.dsa_engine } else { &s.dense_engine };
            legend.push((format!("{engine} {} (whole model)", short_label(a, s)), Swatch::Line(color, 2)));
            lines.push((color, pts));
        }
    }
    let (plot, strip) = with_legend_strip(area, &legend);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FAMILY, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (xlo..xhi).log_scale().base(2.0).with_key_points(context_ticks(xlo, xhi, &measured)),
            (ylo..yhi).log_scale().with_key_points(log_ticks(ylo, yhi)),
        )?;
    chart
        .configure_mesh()
        .x_desc("token position (tokens)")
        .y_desc("USD per million tokens")
        .x_label_formatter(&|x| fmt_tokens(*x))
        .y_label_formatter(&|y| fmt_si(*y))
        .label_style((FAMILY, 13))
        .draw()?;
    chart.draw_series(LineSeries::new(f_dense, FIG3_DENSE.stroke_width(2)))?;
    chart.draw_series(DashedLineSeries::new(f_sparse, 8, 5, FIG3_SPARSE.stroke_width(2)))?;
    for (color, pts) in lines {
        chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    draw_legend(&strip, &legend)
}

fn draw_ratio<DB: DrawingBackend>(a: &Analysis, fig3: &Fig3, phase: Phase, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let caption = format!("{phase}: sparse / dense cost (attention-only)");
    let ser: Vec<&Series> =
        series_of(a, phase).into_iter().filter(|s| s.points.iter().any(|p| drawable_log(p.context as f64) && drawable(p.attn_ratio.ratio))).collect();
    if ser.is_empty() {
        return no_data(area, &caption, "not measured: no paired dense/DSA points for this phase");
    }
    let ymax = ser
        .iter()
        .flat_map(|s| s.points.iter().flat_map(|p| [p.attn_ratio.hi, p.attn_ratio.ratio, p.attn_request_ratio.ratio, p.roofline.ratio]))
        .filter(|v| v.is_finite())
        .fold(1.45f64, f64::max)
        .min(6.0)
        * 1.08;
    // Points that can be drawn: a drawable context, a finite ratio (clamped to the axis).
    let at = |p: &crate::analysis::Point, v: f64| -> Option<(f64, f64)> {
        let x = p.context as f64;
        (drawable_log(x) && v.is_finite()).then(|| (x, v.clamp(0.0, ymax)))
    };
    let measured: Vec<f64> = ser.iter().flat_map(|s| s.points.iter().map(|p| p.context as f64)).collect();
    let (xlo, xhi) = context_range(measured.iter().copied().chain([1024.0]), Some(fig3.max_position()));
    let mut legend: Legend = vec![
        ("1.0: break-even with dense".into(), Swatch::Line(ONE_LINE, 2)),
        ("0.5: half the dense cost (the claim)".into(), Swatch::Line(HALF_LINE, 2)),
        ("DeepSeek Fig. 3 ratio (H800, marginal)".into(), Swatch::Dashed(FIG3_DENSE, 2)),
        ("break-even estimate; bar: its 95% CI".into(), Swatch::Triangle),
    ];
    for (i, s) in ser.iter().enumerate() {
        let c = DSA_COLORS[i % 4];
        legend.push((format!("{}: marginal, band = 95% CI", short_label(a, s)), Swatch::Line(c, 3)));
        legend.push((format!("{}: per request over 0..L", short_label(a, s)), Swatch::Dashed(c, 2)));
        legend.push((format!("{}: roofline bound (every component at the ceilings)", short_label(a, s)), Swatch::Dotted(c)));
    }
    let (plot, strip) = with_legend_strip(area, &legend);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FAMILY, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xlo..xhi).log_scale().base(2.0).with_key_points(context_ticks(xlo, xhi, &measured)), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc("context (tokens)")
        .y_desc("sparse / dense cost")
        .x_label_formatter(&|x| fmt_tokens(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .label_style((FAMILY, 13))
        .draw()?;
    chart.draw_series(LineSeries::new([(xlo, 1.0), (xhi, 1.0)], ONE_LINE.stroke_width(2)))?;
    chart.draw_series(LineSeries::new([(xlo, 0.5), (xhi, 0.5)], HALF_LINE.stroke_width(2)))?;
    let fig: Vec<(f64, f64)> = fig3
        .rows
        .iter()
        .filter(|r| r.position > 0.0)
        .filter_map(|r| fig3.ratio_at(phase, r.position).map(|v| (r.position, v)))
        .filter(|p| drawable_log(p.0) && drawable(p.1))
        .collect();
    chart.draw_series(DashedLineSeries::new(fig, 8, 5, FIG3_DENSE.stroke_width(2)))?;
    for (i, s) in ser.iter().enumerate() {
        let color = DSA_COLORS[i % 4];
        let band: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter_map(|p| at(p, p.attn_ratio.hi))
            .chain(s.points.iter().rev().filter_map(|p| at(p, p.attn_ratio.lo)))
            .collect();
        if band.len() >= 4 {
            chart.draw_series(std::iter::once(Polygon::new(band, color.mix(0.22))))?;
        } else if let Some((lo, hi)) = s.points.first().and_then(|p| Some((at(p, p.attn_ratio.lo)?, at(p, p.attn_ratio.hi)?))) {
            // One point: its CI as a whisker.
            chart.draw_series(std::iter::once(PathElement::new(vec![lo, hi], color.mix(0.5).stroke_width(4))))?;
        }
        let pts: Vec<(f64, f64)> = s.points.iter().filter_map(|p| at(p, p.attn_ratio.ratio)).collect();
        chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(3)))?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        let req: Vec<(f64, f64)> = s.points.iter().filter_map(|p| at(p, p.attn_request_ratio.ratio)).collect();
        chart.draw_series(DashedLineSeries::new(req, 5, 4, color.mix(0.8).stroke_width(2)))?;
        let roof: Vec<(f64, f64)> = s.points.iter().filter_map(|p| at(p, p.roofline.ratio)).collect();
        chart.draw_series(DashedLineSeries::new(roof.clone(), 2, 4, color.stroke_width(2)))?;
        chart.draw_series(roof.iter().map(|p| Cross::new(*p, 4, color.stroke_width(2))))?;
        let last = s.max_context().map(|c| c as f64).filter(|c| drawable_log(*c)).unwrap_or(xhi);
        for be in [s.break_evens.attn_one, s.break_evens.attn_half] {
            mark_break_even(&mut chart, &be, color, (xlo, last))?;
        }
    }
    draw_legend(&strip, &legend)
}

fn mark_break_even<'a, DB: DrawingBackend + 'a, X: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
    be: &BreakEven,
    color: RGBColor,
    (xlo, last): (f64, f64),
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let t = be.threshold;
    let bound = |c: &Crossing| match *c {
        Crossing::At(x) => Some(x),
        Crossing::BelowRange { first } => Some((first as f64).max(xlo)),
        Crossing::AboveRange { last: l } => Some(l as f64),
        Crossing::NoData => None,
    }
    .filter(|x| drawable_log(*x));
    if let (Some(lo), Some(hi)) = (bound(&be.lo), bound(&be.hi)) {
        let hi = hi.min(last);
        if hi > lo {
            chart.draw_series(std::iter::once(PathElement::new(vec![(lo, t), (hi, t)], color.mix(0.7).stroke_width(7))))?;
        }
    }
    if let Some(x) = be.estimate.tokens().filter(|x| drawable_log(*x)) {
        let open = if matches!(be.hi, Crossing::AboveRange { .. }) { ", CI open" } else { "" };
        let label = format!("{t} at {}{open}", fmt_tokens(x));
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, t)) + TriangleMarker::new((0, 0), 8, BLACK.filled()) + Text::new(label, (8, -22), (FAMILY, 13)),
        ))?;
    }
    Ok(())
}

fn draw_split<DB: DrawingBackend>(a: &Analysis, phase: Phase, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let ser = series_of(a, phase);
    let Some(s) = ser.iter().find(|s| s.dsa_records.values().any(|m| !m.components_ms.is_empty())) else {
        return no_data(area, &format!("{phase}: share of DSA case time"), "not measured: no DSA component timings for this phase");
    };
    let caption = format!("{phase}: share of {} case time ({})", s.dsa_engine, short_label(a, s));
    // (ctx, indexer, topk, attention) as fractions of the case median.
    let rows: Vec<(f64, [f64; 3])> = s
        .dsa_records
        .iter()
        .filter_map(|(&ctx, r)| {
            let total = r.median_ms;
            let comp = |n: &str| r.components_ms.get(n).copied().filter(|m| m.is_finite()).unwrap_or(0.0);
            if r.components_ms.is_empty() || !drawable_log(total) || !drawable_log(ctx as f64) {
                return None;
            }
            let parts = [comp("indexer"), comp("topk"), comp("attention")];
            let sum: f64 = parts.iter().sum();
            let denom = total.max(sum);
            let shares = parts.map(|p| p / denom);
            shares.iter().all(|v| v.is_finite() && *v >= 0.0).then_some((ctx as f64, shares))
        })
        .collect();
    let measured: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let (xlo, xhi) = context_range(measured.iter().copied(), None);
    let names = ["indexer", "top-k", "attention", "other (not attributed to a component)"];
    let colors = [RGBColor(214, 39, 40), RGBColor(255, 187, 120), RGBColor(31, 119, 180), RGBColor(200, 200, 200)];
    let legend: Legend = names.iter().zip(colors).map(|(n, c)| (n.to_string(), Swatch::Block(c))).collect();
    let (plot, strip) = with_legend_strip(area, &legend);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FAMILY, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((xlo..xhi).log_scale().base(2.0).with_key_points(context_ticks(xlo, xhi, &measured)), 0f64..100f64)?;
    chart
        .configure_mesh()
        .x_desc("context (tokens)")
        .y_desc("% of case time")
        .x_label_formatter(&|x| fmt_tokens(*x))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FAMILY, 13))
        .draw()?;
    let mut lower: Vec<f64> = vec![0.0; rows.len()];
    for (k, c) in colors.iter().enumerate() {
        let upper: Vec<f64> = rows.iter().zip(&lower).map(|(r, lo)| if k < 3 { lo + 100.0 * r.1[k] } else { 100.0 }).collect();
        if rows.len() >= 2 {
            let poly: Vec<(f64, f64)> = rows
                .iter()
                .zip(&upper)
                .map(|(r, u)| (r.0, *u))
                .chain(rows.iter().zip(&lower).rev().map(|(r, l)| (r.0, *l)))
                .collect();
            chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.85))))?;
        } else if let Some(r) = rows.first() {
            chart.draw_series(std::iter::once(Rectangle::new([(r.0 / 1.15, lower[0]), (r.0 * 1.15, upper[0])], c.filled())))?;
        }
        lower = upper;
    }
    draw_legend(&strip, &legend)
}

fn draw_kv_per_token<DB: DrawingBackend>(a: &Analysis, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let caption = "modelled KV cache bytes per token per layer";
    // One line per (engine, precision, shape): kv_bytes_model / (batch * context).
    // (is DSA, points) by line label.
    let mut lines: std::collections::BTreeMap<String, (bool, Vec<(f64, f64)>)> = std::collections::BTreeMap::new();
    for s in &a.series {
        for recs in [&s.dense_records, &s.dsa_records] {
            for (&ctx, m) in recs {
                let c = &m.case;
                let kv = m.memory.kv_bytes_model / (c.batch * c.context) as f64;
                if drawable(kv) && kv > 0.0 && drawable_log(ctx as f64) {
                    let e = lines.entry(format!("{} {} ({})", c.engine, c.precision, c.shape.name)).or_insert((c.is_sparse(), Vec::new()));
                    if !e.1.iter().any(|p| p.0 == ctx as f64) {
                        e.1.push((ctx as f64, kv));
                    }
                }
            }
        }
    }
    for v in lines.values_mut() {
        v.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let ymax = lines.values().flat_map(|v| &v.1).map(|p| p.1).fold(0f64, f64::max);
    if ymax <= 0.0 {
        return no_data(area, caption, "not measured: no kv_bytes_model in the records");
    }
    let measured: Vec<f64> = lines.values().flat_map(|v| &v.1).map(|p| p.0).collect();
    let (xlo, xhi) = context_range(measured.iter().copied(), None);
    let colored: Vec<Line<(f64, f64)>> = lines
        .into_iter()
        .enumerate()
        .map(|(k, (label, (sparse, pts)))| {
            let c = if sparse { DSA_COLORS[k % 4] } else { DENSE_COLORS[k % 4] };
            (format!("{label}: {}", fmt_bytes(pts[0].1)), c, pts)
        })
        .collect();
    let legend: Legend = colored.iter().map(|(l, c, _)| (l.clone(), Swatch::Line(*c, 2))).collect();
    let (plot, strip) = with_legend_strip(area, &legend);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FAMILY, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((xlo..xhi).log_scale().base(2.0).with_key_points(context_ticks(xlo, xhi, &measured)), 0f64..ymax * 1.2)?;
    chart
        .configure_mesh()
        .x_desc("context (tokens)")
        .y_desc("bytes per token per layer")
        .x_label_formatter(&|x| fmt_tokens(*x))
        .y_label_formatter(&|y| fmt_bytes(*y))
        .label_style((FAMILY, 13))
        .draw()?;
    for (_, c, pts) in &colored {
        chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
    }
    draw_legend(&strip, &legend)
}

fn draw_peak_memory<DB: DrawingBackend>(a: &Analysis, area: &DrawingArea<DB, Shift>) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let caption = "measured peak memory (solid) vs modelled KV (dashed), log-log";
    // (label, colour, dashed, points)
    let mut lines: Vec<StyledLine> = Vec::new();
    for (k, s) in a.series.iter().enumerate() {
        for (sparse, recs) in [(false, &s.dense_records), (true, &s.dsa_records)] {
            let c = if sparse { DSA_COLORS[k % 4] } else { DENSE_COLORS[k % 4] };
            let engine = if sparse { &s.dsa_engine } else { &s.dense_engine };
            let mut measured = Vec::new();
            let mut modelled = Vec::new();
            let mut device = false;
            for (&ctx, rec) in recs {
                let m = &rec.memory;
                if let Some(d) = m.peak_device_bytes {
                    device = true;
                    measured.push((ctx as f64, d as f64));
                } else if let Some(h) = m.peak_host_bytes {
                    measured.push((ctx as f64, h as f64));
                }
                modelled.push((ctx as f64, m.kv_bytes_model));
            }
            let name = format!("{engine} {} {}", s.key.phase, short_label(a, s));
            if measured.iter().any(|p| p.1 > 0.0) {
                lines.push((format!("{name}: peak {}", if device { "device" } else { "host" }), c, false, measured));
            }
            if modelled.iter().any(|p| p.1 > 0.0) {
                lines.push((format!("{name}: KV model"), c, true, modelled));
            }
        }
    }
    let Some((ylo, yhi)) = log_bounds(lines.iter().flat_map(|l| l.3.iter().map(|p| p.1))) else {
        return no_data(area, caption, "not measured: no memory figures in the records");
    };
    let measured_x: Vec<f64> = lines.iter().flat_map(|l| l.3.iter().map(|p| p.0)).collect();
    let (xlo, xhi) = context_range(measured_x.iter().copied(), None);
    let mut legend: Legend =
        lines.iter().map(|(l, c, dashed, _)| (l.clone(), if *dashed { Swatch::Dashed(*c, 1) } else { Swatch::Line(*c, 2) })).collect();
    if !lines.iter().any(|l| !l.2) {
        legend.push(("(no measured peak memory in the records)".into(), Swatch::Line(WHITE, 1)));
    }
    let (plot, strip) = with_legend_strip(area, &legend);
    let ticks: Vec<f64> = (0..50).map(|e| 2f64.powi(e)).filter(|t| *t >= ylo && *t <= yhi).collect();
    let ticks: Vec<f64> = if ticks.len() > 8 { ticks.into_iter().filter(|t| (t.log2().round() as i64) % 3 == 0).collect() } else { ticks };
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, (FAMILY, 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(
            (xlo..xhi).log_scale().base(2.0).with_key_points(context_ticks(xlo, xhi, &measured_x)),
            (ylo..yhi).log_scale().with_key_points(ticks),
        )?;
    chart
        .configure_mesh()
        .x_desc("context (tokens)")
        .y_desc("bytes")
        .x_label_formatter(&|x| fmt_tokens(*x))
        .y_label_formatter(&|y| fmt_bytes(*y))
        .label_style((FAMILY, 13))
        .draw()?;
    for (_, c, dashed, pts) in lines {
        let pts: Vec<(f64, f64)> = pts.into_iter().filter(|p| drawable_log(p.0) && drawable_log(p.1)).collect();
        if dashed {
            chart.draw_series(DashedLineSeries::new(pts, 6, 4, c.stroke_width(1)))?;
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?;
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))?;
        }
    }
    draw_legend(&strip, &legend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_end_on_any_range() {
        // hi * 10 overflows here; the old loop never ended.
        let t = log_ticks(1e300, 1.3e308);
        assert!(!t.is_empty() && t.len() <= 12, "{t:?}");
        let t = log_ticks(1e-300, 1e300);
        assert!(t.len() <= 12 && t.iter().all(|v| v.is_finite()), "{t:?}");
        assert!(log_ticks(f64::NAN, 1.0).is_empty());
        assert!(log_ticks(0.0, 1.0).is_empty());
        assert!(log_ticks(1.0, f64::INFINITY).is_empty());
        assert_eq!(log_ticks(1.0, 10.0), vec![1.0, 2.0, 5.0, 10.0]);
    }

    #[test]
    fn bounds_are_finite_positive_and_apart() {
        assert_eq!(log_bounds([f64::NAN, f64::INFINITY, 0.0, -1.0].into_iter()), None);
        let (lo, hi) = log_bounds([1e-320, 1e200, f64::MAX].into_iter()).unwrap();
        assert!(lo > 0.0 && hi.is_finite() && hi > lo, "{lo} {hi}");
        let (lo, hi) = context_range([0.0, f64::NAN, 1.0].into_iter(), None);
        assert!(lo > 0.0 && hi > lo && hi.is_finite(), "{lo} {hi}");
    }
}
