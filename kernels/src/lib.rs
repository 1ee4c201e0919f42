//! ctxcost-kernels: the CUDA C sources of the GPU engines, embedded as text.
//!
//! Kernels are data: each `.cu` file is compiled by NVRTC at run time for the device's own
//! architecture, and cached by the engine by (kernel, options). [`KernelId`] names each
//! source and the entry points it defines. Every source is compiled with `common.cuh`
//! (the seeded generator, bf16/e4m3 rounding and PTX wrappers) in front of it:
//! [`KernelId::source`] returns the two texts joined, so NVRTC needs no include path and no
//! CUDA headers.

/// Shared helpers prepended to every source.
pub const COMMON: &str = include_str!("../common.cuh");

/// A CUDA source file and its entry points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KernelId {
    /// Device-side input generation (bf16 tensors, the FP8 latent cache) and the copy kernel
    /// used for the bandwidth ceiling.
    Generate,
    /// Fused causal flash attention, MLA in MHA mode (dense prefill).
    DensePrefill,
    /// Split-K flash decoding, MLA in MQA mode (dense decode), bf16 and FP8 caches (mma.sync), the
    /// bf16 wgmma variants (sm_90a; cp.async or TMA key tiles, pipelined or not), and the kernel that
    /// merges the splits.
    DenseDecode,
    /// DSA lightning indexer (bf16 and FP8 e4m3 tensor-core scores; on sm_90a FP8 wgmma with cp.async key
    /// tiles, or for decode with TMA key tiles on mbarriers) and its input generators.
    Indexer,
    /// DSA exact top-k per query row by radix select.
    Topk,
    /// DSA attention: MLA in MQA mode over each query's selected latents (bf16 and FP8 cache on
    /// mma.sync; the bf16 cache on wgmma (sm_90a) with rows gathered by bulk copies or cp.async, and
    /// variants of the bulk-copy kernel: early buffer release, value product split, S^T split too).
    SparseMla,
    /// The FP8 operands of the `rest` engines' block-scaled GEMMs: the FP8 weight checkpoint
    /// (e4m3 codes, 128 x 128 block scales) and the 1 x 128 activation quantiser.
    RestFp8,
}

impl KernelId {
    /// Every kernel source, in a stable order.
    pub const ALL: &'static [KernelId] = &[
        KernelId::Generate,
        KernelId::DensePrefill,
        KernelId::DenseDecode,
        KernelId::Indexer,
        KernelId::Topk,
        KernelId::SparseMla,
        KernelId::RestFp8,
    ];

    /// File name of the source (used as the NVRTC program name, so it appears in logs).
    pub fn file_name(self) -> &'static str {
        match self {
            KernelId::Generate => "generate.cu",
            KernelId::DensePrefill => "dense_prefill.cu",
            KernelId::DenseDecode => "dense_decode.cu",
            KernelId::Indexer => "indexer.cu",
            KernelId::Topk => "topk.cu",
            KernelId::SparseMla => "sparse_mla.cu",
            KernelId::RestFp8 => "rest_fp8.cu",
        }
    }

    /// The source text alone (without `common.cuh`).
    pub fn body(self) -> &'static str {
        match self {
            KernelId::Generate => include_str!("../generate.cu"),
            KernelId::DensePrefill => include_str!("../dense_prefill.cu"),
            KernelId::DenseDecode => include_str!("../dense_decode.cu"),
            KernelId::Indexer => include_str!("../indexer.cu"),
            KernelId::Topk => include_str!("../topk.cu"),
            KernelId::SparseMla => include_str!("../sparse_mla.cu"),
            KernelId::RestFp8 => include_str!("../rest_fp8.cu"),
        }
    }

    /// The text NVRTC compiles: `common.cuh` followed by the source.
    pub fn source(self) -> String {
        let mut s = String::with_capacity(COMMON.len() + self.body().len() + 64);
        s.push_str(COMMON);
        s.push_str("\n#line 1 \"");
        s.push_str(self.file_name());
        s.push_str("\"\n");
        s.push_str(self.body());
        s
    }

    /// `extern "C"` entry points the source defines.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            KernelId::Generate => &["gen_bf16", "gen_latent_fp8", "copy_u4"],
            KernelId::DensePrefill => &["dense_prefill_bf16"],
            KernelId::DenseDecode => &[
                "dense_decode_bf16",
                "dense_decode_fp8",
                "dense_decode_bf16_wgmma",
                "dense_decode_bf16_wgmma_tma",
                "dense_decode_bf16_wgmma_pipe",
                "dense_decode_combine",
            ],
            KernelId::Indexer => &[
                "indexer_fp8_q1",
                "indexer_fp8_q4",
                "indexer_bf16_q1",
                "indexer_bf16_q4",
                "indexer_fp8_wgmma_q1",
                "indexer_fp8_wgmma_q4",
                "indexer_fp8_tma3_q1",
                "indexer_fp8_tma4_q1",
                "gen_f32",
                "gen_e4m3_pow2",
            ],
            KernelId::Topk => &["topk_radix"],
            KernelId::SparseMla => &[
                "sparse_mla_bf16",
                "sparse_mla_fp8",
                "sparse_mla_bf16_wgmma",
                "sparse_mla_bf16_wgmma_cpa",
                "sparse_mla_bf16_wgmma_early",
                "sparse_mla_bf16_wgmma_split",
                "sparse_mla_bf16_wgmma_split2",
            ],
            KernelId::RestFp8 => &["gen_fp8_weight", "quant_fp8_groups"],
        }
    }

    /// The value of an object-like `#define NAME expr` of the source (or of `common.cuh`), with
    /// `expr` an integer expression of numbers, `+ - * /`, parentheses and other such defines.
    /// The engines size their launches with it, so a size the kernel lays out is written once,
    /// in the kernel source. `None` when the name is not defined that way.
    pub fn define(self, name: &str) -> Option<i64> {
        let defines = defines(COMMON).into_iter().chain(defines(self.body())).collect::<Vec<_>>();
        eval_define(&defines, name, 0)
    }

    /// Lowest compute capability the source builds for (bf16 mma.sync and cp.async: sm_80; the
    /// indexer's e4m3 mma.sync: sm_89).
    pub fn min_compute_capability(self) -> (i32, i32) {
        match self {
            KernelId::Indexer => (8, 9),
            _ => (8, 0),
        }
    }
}

/// Object-like `#define NAME VALUE` lines of a source (trailing `//` comments cut; defines with
/// parameters and continued lines are left out).
fn defines(src: &str) -> Vec<(&str, &str)> {
    src.lines()
        .filter_map(|line| line.trim_start().strip_prefix("#define "))
        .filter(|rest| !rest.trim_end().ends_with('\\'))
        .filter_map(|rest| {
            let rest = rest.trim_start();
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let (name, value) = rest.split_at(end);
            if name.is_empty() || value.starts_with('(') {
                return None;
            }
            let value = value.split("//").next().unwrap_or("").trim();
            Some((name, value))
        })
        .collect()
}

fn eval_define(defines: &[(&str, &str)], name: &str, depth: usize) -> Option<i64> {
    if depth > 32 {
        return None;
    }
    let (_, text) = defines.iter().rev().find(|(n, _)| *n == name)?;
    let mut p = ExprParser { defines, text: text.as_bytes(), pos: 0, depth };
    let v = p.sum()?;
    p.skip_space();
    (p.pos == p.text.len()).then_some(v)
}

/// Recursive-descent evaluation of a define's integer expression.
struct ExprParser<'a> {
    defines: &'a [(&'a str, &'a str)],
    text: &'a [u8],
    pos: usize,
    depth: usize,
}

impl ExprParser<'_> {
    fn skip_space(&mut self) {
        while self.pos < self.text.len() && self.text[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }
    fn peek(&mut self) -> Option<u8> {
        self.skip_space();
        self.text.get(self.pos).copied()
    }
    fn sum(&mut self) -> Option<i64> {
        let mut v = self.product()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let r = self.product()?;
            v = if op == b'+' { v.checked_add(r)? } else { v.checked_sub(r)? };
        }
        Some(v)
    }
    fn product(&mut self) -> Option<i64> {
        let mut v = self.atom()?;
        while let Some(op @ (b'*' | b'/')) = self.peek() {
            self.pos += 1;
            let r = self.atom()?;
            v = if op == b'*' { v.checked_mul(r)? } else { v.checked_div(r)? };
        }
        Some(v)
    }
    fn atom(&mut self) -> Option<i64> {
        match self.peek()? {
            b'(' => {
                self.pos += 1;
                let v = self.sum()?;
                if self.peek()? != b')' {
                    return None;
                }
                self.pos += 1;
                Some(v)
            }
            b'-' => {
                self.pos += 1;
                self.atom()?.checked_neg()
            }
            c if c.is_ascii_digit() => {
                let start = self.pos;
                while self.pos < self.text.len() && self.text[self.pos].is_ascii_digit() {
                    self.pos += 1;
                }
                std::str::from_utf8(&self.text[start..self.pos]).ok()?.parse().ok()
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = self.pos;
                while self.pos < self.text.len() && (self.text[self.pos].is_ascii_alphanumeric() || self.text[self.pos] == b'_') {
                    self.pos += 1;
                }
                let name = std::str::from_utf8(&self.text[start..self.pos]).ok()?;
                eval_define(self.defines, name, self.depth + 1)
            }
            _ => None,
        }
    }
}

/// Names of the `extern "C" __global__` functions a source defines (what NVRTC exports).
pub fn defined_entry_points(src: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(at) = rest.find("extern \"C\" __global__ void") {
        rest = &rest[at + "extern \"C\" __global__ void".len()..];
        let mut t = rest.trim_start();
        if let Some(after) = t.strip_prefix("__launch_bounds__") {
            // Skip the balanced parentheses of the launch bounds.
            let mut depth = 0usize;
            let mut end = after.len();
            for (i, c) in after.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            t = after[end..].trim_start();
        }
        let len = t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(t.len());
        if len > 0 {
            out.push(&t[..len]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of entry points and the sources agree both ways: every listed entry is defined
    /// in its source, and every `extern "C" __global__` function of a source is listed.
    #[test]
    fn entry_point_table_matches_the_sources() {
        for &k in KernelId::ALL {
            let mut defined: Vec<&str> = defined_entry_points(k.body());
            defined.sort_unstable();
            let mut listed: Vec<&str> = k.entry_points().to_vec();
            listed.sort_unstable();
            assert_eq!(listed, defined, "KernelId::{k:?}.entry_points() against the entries of {}", k.file_name());
        }
        assert!(defined_entry_points(COMMON).is_empty(), "common.cuh defines no entry points");
    }

    #[test]
    fn entry_point_scan_reads_launch_bounds_and_plain_entries() {
        let src = "extern \"C\" __global__ void __launch_bounds__(F(2, 3), 1)\n    first(int x) {}\nextern \"C\" __global__ void second(int) {}";
        assert_eq!(defined_entry_points(src), vec!["first", "second"]);
    }

    #[test]
    fn defines_evaluate_through_other_defines() {
        let d = defines("#define A 4   // four\n#define B (A * 3 + 2)\n#define F(x) x\n#define C (B - A) / 2\n#define SW -A");
        assert_eq!(eval_define(&d, "B", 0), Some(14));
        assert_eq!(eval_define(&d, "C", 0), Some(5));
        assert_eq!(eval_define(&d, "SW", 0), Some(-4));
        assert_eq!(eval_define(&d, "F", 0), None);
        assert_eq!(eval_define(&d, "nope", 0), None);
        assert_eq!(KernelId::Topk.define("TK_THREADS"), Some(1024));
    }
}
