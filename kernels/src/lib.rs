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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_is_defined_in_its_source() {
        for &k in KernelId::ALL {
            let src = k.source();
            assert!(src.starts_with(COMMON));
            for e in k.entry_points() {
                assert!(src.contains(&format!("void {e}(")) || src.contains(&format!("    {e}(")), "{e} not in {}", k.file_name());
            }
        }
    }
}
