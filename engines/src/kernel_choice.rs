//! Kernel choices: the variants of our CUDA kernels, chosen per case (DESIGN.md section 3, "Kernel
//! choices are case axes").
//!
//! Each engine with variants has axes here ([`KERNEL_AXES`]: `dsa-cuda` `sparse`, `indexer`,
//! `indexer_load`; `dense-cuda` `decode`, `prefill_tile`, `fp8_cvt`). A case carries its choices in
//! [`Case::kernel`](ctxcost_core::Case) (`--variant sparse=split,bulk` or a sweep's `[variants]`
//! table makes one case per value, measured interleaved in the same point); an empty choice is the
//! engine's default for the device. The plan is checked against this table before any work
//! ([`check_variant`]); the engines read the case's choice through the resolvers below, which say
//! why a choice cannot run a case on a device (a skip with its reason).
//!
//! This module is plain data (no CUDA calls), so a build without the `cuda` feature validates the
//! same plans. It is also the one place that names each variant's entry point, NVRTC options and
//! shared memory; the sizes come from the kernel sources' own `#define`s
//! ([`KernelId::define`]), so they are written once. Adding a variant: its body and entry in the
//! `.cu`, the entry in `KernelId::entry_points` (a test checks it against the source), and one line
//! in its enum here (name and entry).

use ctxcost_core::{Case, Phase, Precision};
use ctxcost_kernels::KernelId;

/// An integer `#define` of a kernel source (a shared-memory size, a block size).
fn source_size(k: KernelId, name: &str) -> u32 {
    k.define(name)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or_else(|| panic!("{name} is not an integer #define of {}", k.file_name()))
}

/// An enum of kernel variants with the names a choice spells them by; the first is the default
/// where the device runs it.
macro_rules! variants {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vm])* $v),+
        }

        impl $name {
            /// Every name a choice may give, the default first.
            pub const NAMES: &'static [&'static str] = &[$($s),+];

            /// The name of the variant in a choice (`sparse=NAME`).
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$v => $s),+
                }
            }

            /// The variant a choice names.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $($s => Some($name::$v),)+
                    _ => None,
                }
            }
        }
    };
}

// ---------------------------------------------------------------- the axes

/// One kernel choice of an engine.
#[derive(Debug, Clone, Copy)]
pub struct KernelAxis {
    pub engine: &'static str,
    /// The axis name (`sparse` in `--variant sparse=bulk`).
    pub name: &'static str,
    /// The values it takes, the default first.
    pub values: &'static [&'static str],
    pub what: &'static str,
    /// Whether the choice changes anything for a case; a sweep multiplies only those cases by it.
    pub applies: fn(&Case) -> bool,
}

fn dsa_bf16_cache(c: &Case) -> bool {
    c.precision == Precision::Bf16
}

fn dsa_fp8_indexer(c: &Case) -> bool {
    c.precision == Precision::Fp8
}

fn dsa_fp8_decode_indexer(c: &Case) -> bool {
    c.precision == Precision::Fp8 && indexer_queries_per_cta(c.query_len) == 1
}

fn dense_bf16_decode(c: &Case) -> bool {
    c.phase == Phase::Decode && c.precision == Precision::Bf16
}

fn dense_fp8_decode(c: &Case) -> bool {
    c.phase == Phase::Decode && c.precision == Precision::Fp8
}

fn dense_prefill(c: &Case) -> bool {
    c.phase == Phase::Prefill
}

/// Every kernel choice of every engine.
pub const KERNEL_AXES: &[KernelAxis] = &[
    KernelAxis {
        engine: "dsa-cuda",
        name: "sparse",
        values: SparseKernel::NAMES,
        what: "sparse attention over a bf16 latent cache (sm_90a wgmma variants, or mma.sync)",
        applies: dsa_bf16_cache,
    },
    KernelAxis {
        engine: "dsa-cuda",
        name: "indexer",
        values: IndexerMath::NAMES,
        what: "FP8 indexer on wgmma (sm_90a) or mma.sync",
        applies: dsa_fp8_indexer,
    },
    KernelAxis {
        engine: "dsa-cuda",
        name: "indexer_load",
        values: IndexerLoad::NAMES,
        what: "key-tile load of the FP8 wgmma indexer in decode (TMA 3 or 4 stages, or cp.async)",
        applies: dsa_fp8_decode_indexer,
    },
    KernelAxis {
        engine: "dense-cuda",
        name: "decode",
        values: DecodeKernel::NAMES,
        what: "dense decode over a bf16 cache (sm_90a wgmma with TMA tiles, its pipelined form, or mma.sync)",
        applies: dense_bf16_decode,
    },
    KernelAxis {
        engine: "dense-cuda",
        name: "prefill_tile",
        values: PrefillTile::NAMES,
        what: "dense prefill tile, WARPSxKEYS[xCTAS per SM]",
        applies: dense_prefill,
    },
    KernelAxis {
        engine: "dense-cuda",
        name: "fp8_cvt",
        values: Fp8Convert::NAMES,
        what: "e4m3 decode of the FP8 cache in dense decode (hardware cvt on sm_89+, or integer ops)",
        applies: dense_fp8_decode,
    },
];

/// The kernel choices of an engine (none for engines without variants).
pub fn axes_of(engine: &str) -> impl Iterator<Item = &'static KernelAxis> + '_ {
    KERNEL_AXES.iter().filter(move |a| a.engine == engine)
}

/// The axis `name` of an engine.
pub fn axis(engine: &str, name: &str) -> Option<&'static KernelAxis> {
    axes_of(engine).find(|a| a.name == name)
}

/// Whether a case of its engine is multiplied by the axis `name` (the engine has it and it changes
/// something for the case).
pub fn applies(case: &Case, name: &str) -> bool {
    axis(&case.engine, name).is_some_and(|a| (a.applies)(case))
}

/// Every axis as `engine: axis (values)`, for messages.
pub fn describe_axes() -> String {
    KERNEL_AXES.iter().map(|a| format!("{} {}={}", a.engine, a.name, a.values.join("|"))).collect::<Vec<_>>().join("; ")
}

/// Check one axis of a plan (`--variant AXIS=V1,V2` or a sweep's `[variants]`) against the engines
/// it runs: some engine has the axis, every value is one of its choices, none is given twice. The
/// error names the choices.
pub fn check_variant(engines: &[String], name: &str, values: &[String]) -> Result<(), String> {
    let found: Vec<&KernelAxis> = engines.iter().filter_map(|e| axis(e, name)).collect();
    if found.is_empty() {
        return Err(format!("no engine of this run has the kernel choice `{name}` (kernel choices: {})", describe_axes()));
    }
    if values.is_empty() {
        return Err(format!("`{name}` needs at least one value (choose from: {})", found[0].values.join(", ")));
    }
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            return Err(format!("`{name}={v}` is listed twice; name each value once"));
        }
        for a in &found {
            if !a.values.contains(&v.as_str()) {
                return Err(format!("unknown {} kernel `{name}={v}` for {} (choose from: {})", a.name, a.engine, a.values.join(", ")));
            }
        }
    }
    Ok(())
}

/// Check a case's choices against its engine's axes (the engines call this first; a plan made by
/// the CLI passes it already).
pub fn check_case(case: &Case) -> Result<(), String> {
    for (name, value) in case.kernel.iter() {
        let Some(a) = axis(&case.engine, name) else {
            return Err(format!("{} has no kernel choice `{name}`", case.engine));
        };
        if !a.values.contains(&value) {
            return Err(format!("unknown {name} kernel `{value}` for {} (choose from: {})", case.engine, a.values.join(", ")));
        }
    }
    Ok(())
}

fn sm90(cc: (i32, i32)) -> bool {
    cc == (9, 0)
}

fn needs_sm90(choice: String, cc: (i32, i32)) -> String {
    format!("{choice} needs compute capability 9.0 (sm_90a); this device is {}.{}", cc.0, cc.1)
}

// ---------------------------------------------------------------- dsa-cuda: sparse attention

variants! {
    /// The sparse attention kernel of a case.
    SparseKernel {
        /// `sparse_mla_bf16_wgmma_split`: bulk-copy gathers, tile buffers released after the last
        /// ldmatrix of a tile, the value product split over the value dims between the warpgroups
        /// (each loads half of V^T; wgmma N = 64). The default on a 9.0 device with a bf16 cache.
        WgmmaSplit = "split",
        /// `sparse_mla_bf16_wgmma_split2`: as `WgmmaSplit`, S^T split over the 576 dims as well (each
        /// warpgroup loads half of the K tile; the partial sums cross through shared memory).
        WgmmaSplit2 = "split2",
        /// `sparse_mla_bf16_wgmma_early`: as `WgmmaBulk`, a tile buffer released once each warp has
        /// issued the wgmma on its last ldmatrix fragments of the tile.
        WgmmaEarly = "early",
        /// `sparse_mla_bf16_wgmma`: wgmma (sm_90a), one bulk copy per gathered row.
        WgmmaBulk = "bulk",
        /// `sparse_mla_bf16_wgmma_cpa`: wgmma (sm_90a), gathers by cp.async.
        WgmmaCpAsync = "cpa",
        /// `sparse_mla_bf16` / `sparse_mla_fp8`: mma.sync, cp.async gathers (any sm_80+ device; the
        /// only kernel for the FP8 cache).
        Mma = "mma",
    }
}

impl SparseKernel {
    pub fn entry(self, fp8: bool) -> &'static str {
        match (self, fp8) {
            (_, true) => "sparse_mla_fp8",
            (SparseKernel::Mma, false) => "sparse_mla_bf16",
            (SparseKernel::WgmmaBulk, false) => "sparse_mla_bf16_wgmma",
            (SparseKernel::WgmmaCpAsync, false) => "sparse_mla_bf16_wgmma_cpa",
            (SparseKernel::WgmmaEarly, false) => "sparse_mla_bf16_wgmma_early",
            (SparseKernel::WgmmaSplit, false) => "sparse_mla_bf16_wgmma_split",
            (SparseKernel::WgmmaSplit2, false) => "sparse_mla_bf16_wgmma_split2",
        }
    }

    /// Dynamic shared memory of the entry (`SM_SMEM_BF16`, `SM_SMEM_FP8`, `SW_SMEM` in sparse_mla.cu).
    pub fn smem(self, fp8: bool) -> u32 {
        let name = match (self, fp8) {
            (_, true) => "SM_SMEM_FP8",
            (SparseKernel::Mma, false) => "SM_SMEM_BF16",
            _ => "SW_SMEM",
        };
        source_size(KernelId::SparseMla, name)
    }

    /// NVRTC options of the module that holds the entry.
    pub fn options(self) -> Vec<&'static str> {
        if self == SparseKernel::Mma {
            Vec::new()
        } else {
            vec!["--gpu-architecture=sm_90a"]
        }
    }
}

/// The sparse attention kernel of a case on a device of compute capability `cc`: the case's
/// `sparse` choice, else wgmma with the split value product for a bf16 cache on 9.0 (265 TFLOP/s at
/// decode B=64 on the H200 against 244 for `bulk`: bench/NOTES.md) and mma.sync elsewhere and for the
/// FP8 cache. `Err` says why the chosen kernel cannot run the case here.
pub fn sparse_kernel(case: &Case, cc: (i32, i32)) -> Result<SparseKernel, String> {
    let fp8 = case.precision == Precision::Fp8;
    let Some(v) = case.kernel.get("sparse") else {
        return Ok(if fp8 || !sm90(cc) { SparseKernel::Mma } else { SparseKernel::WgmmaSplit });
    };
    let k = SparseKernel::from_name(v).ok_or_else(|| format!("unknown sparse kernel `{v}` (choose from: {})", SparseKernel::NAMES.join(", ")))?;
    if k != SparseKernel::Mma && fp8 {
        return Err(format!("sparse={v} runs on a bf16 latent cache; the FP8 cache has only the mma.sync kernel"));
    }
    if k != SparseKernel::Mma && !sm90(cc) {
        return Err(needs_sm90(format!("sparse={v}"), cc));
    }
    Ok(k)
}

// ---------------------------------------------------------------- dsa-cuda: indexer

/// Keys per indexer tile (`IX_TK` in indexer.cu: 8 warps x 32 keys).
pub fn indexer_tile_keys() -> usize {
    source_size(KernelId::Indexer, "IX_TK") as usize
}

/// Threads of a top-k CTA (one CTA per query row; `TK_THREADS` in topk.cu).
pub fn topk_threads() -> u32 {
    source_size(KernelId::Topk, "TK_THREADS")
}

/// Shared-memory bytes of `topk_radix` (`TK_SMEM_WORDS` 32-bit words in topk.cu).
pub fn topk_smem() -> u32 {
    4 * source_size(KernelId::Topk, "TK_SMEM_WORDS")
}

/// Queries per indexer CTA: one for decode (each sequence has its own keys), four for a prefill
/// chunk (a key tile read once serves four queries).
pub fn indexer_queries_per_cta(query_len: usize) -> usize {
    if query_len == 1 {
        1
    } else {
        4
    }
}

/// Shared-memory bytes of an indexer launch with `qg` queries per CTA (`IxSmem` in indexer.cu, a
/// C++ constexpr the source cannot export as a define): queries, head weights, the key-tile
/// pipeline and (FP8) the key scales.
pub fn indexer_smem(fp8: bool, qg: usize) -> u32 {
    let rb = if fp8 { 128 } else { 256 };
    let stages = if fp8 { 3 } else { 2 };
    let tile = indexer_tile_keys();
    let scales = if fp8 { stages * tile * 4 } else { 0 };
    (qg * 64 * rb + qg * 64 * 4 + stages * tile * rb + scales) as u32
}

variants! {
    /// Whether the FP8 indexer runs on wgmma (native FP8 tensor cores; indexer.cu compiled for
    /// sm_90a) or mma.sync (on sm_90 its e4m3 path is lowered to f16 tensor-core ops, so FP8 runs at
    /// the bf16 rate there).
    IndexerMath {
        Wgmma = "wgmma",
        Mma = "mma",
    }
}

/// Whether a case's FP8 indexer runs on wgmma on a device: by default on compute capability 9.0;
/// `indexer=mma` asks for the mma.sync kernels. The bf16 indexer is always mma.sync.
pub fn use_wgmma_indexer(case: &Case, cc: (i32, i32)) -> Result<bool, String> {
    if case.precision != Precision::Fp8 {
        return match case.kernel.get("indexer") {
            None | Some("mma") => Ok(false),
            Some(v) => Err(format!("indexer={v} applies to the FP8 indexer; the bf16 one runs on mma.sync")),
        };
    }
    match case.kernel.get("indexer").map(|v| IndexerMath::from_name(v).ok_or(v)) {
        None => Ok(sm90(cc)),
        Some(Ok(IndexerMath::Mma)) => Ok(false),
        Some(Ok(IndexerMath::Wgmma)) if sm90(cc) => Ok(true),
        Some(Ok(IndexerMath::Wgmma)) => Err(needs_sm90("indexer=wgmma".into(), cc)),
        Some(Err(v)) => Err(format!("unknown indexer kernel `{v}` (choose from: {})", IndexerMath::NAMES.join(", "))),
    }
}

variants! {
    /// How the FP8 wgmma indexer brings its key tiles into shared memory (decode, one query per CTA;
    /// prefill always uses the cp.async kernel).
    IndexerLoad {
        /// `indexer_fp8_tma3_q1`: one TMA tensor copy per tile and one bulk copy of its scales, issued
        /// by one thread, full/empty mbarriers, 3 stages (two CTAs per multiprocessor). The default.
        Tma3 = "tma",
        /// `indexer_fp8_tma4_q1`: as `Tma3` with 4 stages (one CTA per multiprocessor).
        Tma4 = "tma4",
        /// `indexer_fp8_wgmma_q{1,4}`: cp.async by every thread, 3 stages.
        CpAsync = "cpasync",
    }
}

impl IndexerLoad {
    /// Stages of the TMA pipelines (`STAGES` of `indexer_tma_body`); `None` for cp.async.
    pub fn tma_stages(self) -> Option<usize> {
        match self {
            IndexerLoad::CpAsync => None,
            IndexerLoad::Tma3 => Some(3),
            IndexerLoad::Tma4 => Some(4),
        }
    }

    /// Shared-memory bytes of a one-query TMA launch (`IxTmaSmem<1, STAGES>::TOTAL` in indexer.cu, a
    /// C++ constexpr): key tiles, scales, the query, head weights, 2 x STAGES mbarriers and 1024 bytes
    /// to align the base.
    pub fn tma_smem(stages: usize) -> u32 {
        let tile = indexer_tile_keys();
        (stages * tile * 128 + stages * tile * 4 + 64 * 128 + 64 * 4 + 2 * stages * 8 + 1024) as u32
    }

    /// The indexer entry point of a launch.
    pub fn indexer_entry(self, fp8: bool, qg: usize, wgmma: bool) -> &'static str {
        match (fp8, qg, wgmma) {
            (true, 1, true) => match self {
                IndexerLoad::CpAsync => "indexer_fp8_wgmma_q1",
                IndexerLoad::Tma3 => "indexer_fp8_tma3_q1",
                IndexerLoad::Tma4 => "indexer_fp8_tma4_q1",
            },
            (true, _, true) => "indexer_fp8_wgmma_q4",
            (true, 1, false) => "indexer_fp8_q1",
            (true, _, false) => "indexer_fp8_q4",
            (false, 1, _) => "indexer_bf16_q1",
            (false, _, _) => "indexer_bf16_q4",
        }
    }
}

/// The key-tile load of a case's indexer: for the FP8 wgmma indexer of a decode (one query per CTA)
/// the case's `indexer_load` choice, else TMA with 3 stages (3.94 TB/s at B=64, 128K on the H200,
/// against 2.15 for cp.async); prefill chunks and the mma.sync path use cp.async.
pub fn indexer_load(case: &Case, wgmma: bool, qg: usize) -> Result<IndexerLoad, String> {
    let chosen = match case.kernel.get("indexer_load") {
        None => None,
        Some(v) => Some(IndexerLoad::from_name(v).ok_or_else(|| format!("unknown indexer_load `{v}` (choose from: {})", IndexerLoad::NAMES.join(", ")))?),
    };
    if !wgmma || qg != 1 {
        return match chosen {
            None | Some(IndexerLoad::CpAsync) => Ok(IndexerLoad::CpAsync),
            Some(l) => Err(format!("indexer_load={} applies to the FP8 wgmma indexer of a decode (one query a CTA); this case runs the cp.async one", l.name())),
        };
    }
    Ok(chosen.unwrap_or(IndexerLoad::Tma3))
}

/// Shared-memory bytes of the indexer launch a case runs.
pub fn indexer_launch_smem(fp8: bool, qg: usize, load: IndexerLoad) -> u32 {
    match load.tma_stages() {
        Some(stages) => IndexerLoad::tma_smem(stages),
        None => indexer_smem(fp8, qg),
    }
}

// ---------------------------------------------------------------- dense-cuda

variants! {
    /// Which dense decode kernel a launch uses.
    DecodeKernel {
        /// `dense_decode_bf16_wgmma_tma`: wgmma with TMA key tiles (sm_90a, bf16 cache). The default
        /// there (2.09-2.17 TB/s at B=64, 16K-128K on an H200, against 1.03 for mma.sync).
        WgmmaTma = "tma",
        /// `dense_decode_bf16_wgmma_pipe`: as `WgmmaTma`, with P V of one tile and Q K^T of the next
        /// issued back to back (1.95-2.04 TB/s).
        WgmmaPipe = "pipe",
        /// `dense_decode_bf16` / `dense_decode_fp8`: mma.sync, cp.async (sm_80+; the only kernel for
        /// the FP8 cache).
        Mma = "mma",
    }
}

impl DecodeKernel {
    /// Dynamic shared memory of the kernel for this cache precision (`DW_SMEM_TMA`, `DC_SMEM_BF16`,
    /// `DC_SMEM_FP8` in dense_decode.cu).
    pub fn smem(self, fp8: bool) -> u32 {
        let name = match (self, fp8) {
            (DecodeKernel::WgmmaTma | DecodeKernel::WgmmaPipe, _) => "DW_SMEM_TMA",
            (DecodeKernel::Mma, true) => "DC_SMEM_FP8",
            (DecodeKernel::Mma, false) => "DC_SMEM_BF16",
        };
        source_size(KernelId::DenseDecode, name)
    }

    /// Whether the kernel is a wgmma one (sm_90a, bf16 cache, takes the cache's tensor map).
    pub fn wgmma(self) -> bool {
        self != DecodeKernel::Mma
    }

    /// The kernel's entry point for this cache precision.
    pub fn entry(self, fp8: bool) -> &'static str {
        match (self, fp8) {
            (DecodeKernel::WgmmaTma, _) => "dense_decode_bf16_wgmma_tma",
            (DecodeKernel::WgmmaPipe, _) => "dense_decode_bf16_wgmma_pipe",
            (DecodeKernel::Mma, true) => "dense_decode_fp8",
            (DecodeKernel::Mma, false) => "dense_decode_bf16",
        }
    }
}

/// The decode kernel of a case on a device: the case's `decode` choice, else the wgmma kernel with
/// TMA key tiles for a bf16 cache on compute capability 9.0 and mma.sync elsewhere and for the FP8
/// cache.
pub fn decode_kernel(case: &Case, cc: (i32, i32)) -> Result<DecodeKernel, String> {
    let fp8 = case.precision == Precision::Fp8;
    let Some(v) = case.kernel.get("decode") else {
        return Ok(if fp8 || !sm90(cc) { DecodeKernel::Mma } else { DecodeKernel::WgmmaTma });
    };
    let k = DecodeKernel::from_name(v).ok_or_else(|| format!("unknown decode kernel `{v}` (choose from: {})", DecodeKernel::NAMES.join(", ")))?;
    if k.wgmma() && fp8 {
        return Err(format!("decode={v} runs on a bf16 cache; the FP8 cache has only the mma.sync kernel"));
    }
    if k.wgmma() && !sm90(cc) {
        return Err(needs_sm90(format!("decode={v}"), cc));
    }
    Ok(k)
}

variants! {
    /// How the dense decode turns FP8 e4m3 codes into bf16.
    Fp8Convert {
        /// The hardware conversion (`-DDC_FP8_HWCVT`, sm_89 and newer). The default there.
        Hardware = "hw",
        /// Integer bit manipulation (every device; the default before sm_89).
        Integer = "int",
    }
}

/// NVRTC options of a case's decode module: the hardware e4m3 decode (`-DDC_FP8_HWCVT`) on sm_89
/// and newer unless the case chooses `fp8_cvt=int`; sm_90a for the wgmma kernels.
pub fn decode_options(case: &Case, cc: (i32, i32), kernel: DecodeKernel) -> Result<Vec<&'static str>, String> {
    let hw = match case.kernel.get("fp8_cvt").map(|v| Fp8Convert::from_name(v).ok_or(v)) {
        None => cc >= (8, 9),
        Some(Ok(Fp8Convert::Integer)) => false,
        Some(Ok(Fp8Convert::Hardware)) if cc >= (8, 9) => true,
        Some(Ok(Fp8Convert::Hardware)) => return Err(format!("fp8_cvt=hw needs compute capability 8.9 or newer; this device is {}.{}", cc.0, cc.1)),
        Some(Err(v)) => return Err(format!("unknown fp8_cvt `{v}` (choose from: {})", Fp8Convert::NAMES.join(", "))),
    };
    let mut opts = Vec::new();
    if hw {
        opts.push("-DDC_FP8_HWCVT");
    }
    if kernel.wgmma() {
        opts.push("--gpu-architecture=sm_90a");
    }
    Ok(opts)
}

/// Tile shape of `dense_prefill_bf16` (compiled in with `-D` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefillTile {
    /// Warps per CTA; each owns 16 query rows.
    pub warps: usize,
    /// Keys per shared-memory tile.
    pub keys: usize,
    /// CTAs per multiprocessor the register budget is set for.
    pub min_blocks: usize,
}

impl PrefillTile {
    /// 8 warps (128 query rows), 128-key tiles, one CTA per SM: the fastest of the shapes
    /// compared on an H200 (272 TFLOP/s at 16K-64K against 251 for 8x64, 265 for 4x128x2,
    /// 255 for 4x64x2, 210 for 8x32; bench/NOTES.md).
    pub const DEFAULT: PrefillTile = PrefillTile { warps: 8, keys: 128, min_blocks: 1 };

    /// The shapes a case may choose (`prefill_tile=`), the default first: those compared on the
    /// H200 and compiled by the NVRTC test.
    pub const NAMES: &'static [&'static str] = &["8x128", "8x64", "4x128x2", "4x64x2", "8x32", "4x32x2"];

    /// Parse `WARPSxKEYS` or `WARPSxKEYSxBLOCKS` (e.g. `8x64`, `4x64x2`).
    pub fn parse(s: &str) -> Option<PrefillTile> {
        let v: Vec<usize> = s.split('x').map(|p| p.trim().parse().ok()).collect::<Option<_>>()?;
        let t = match v.as_slice() {
            [w, k] => PrefillTile { warps: *w, keys: *k, min_blocks: 1 },
            [w, k, b] => PrefillTile { warps: *w, keys: *k, min_blocks: *b },
            _ => return None,
        };
        (matches!(t.warps, 2 | 4 | 8) && matches!(t.keys, 32 | 64 | 128) && (1..=4).contains(&t.min_blocks)).then_some(t)
    }

    /// Query rows per CTA.
    pub fn rows(&self) -> usize {
        16 * self.warps
    }

    /// Dynamic shared memory (padded Q, K and V tiles of dense_prefill.cu, whose sizes follow the
    /// `-D` options).
    pub fn smem(&self) -> u32 {
        ((self.rows() * 200 + self.keys * 200 + self.keys * 136) * 2) as u32
    }

    /// NVRTC options that compile this shape.
    pub fn options(&self) -> [String; 3] {
        [format!("-DPF_WARPS={}", self.warps), format!("-DPF_BN={}", self.keys), format!("-DPF_MIN_BLOCKS={}", self.min_blocks)]
    }
}

/// The prefill tile of a case: its `prefill_tile` choice, else [`PrefillTile::DEFAULT`].
pub fn prefill_tile(case: &Case) -> Result<PrefillTile, String> {
    match case.kernel.get("prefill_tile") {
        None => Ok(PrefillTile::DEFAULT),
        Some(v) => PrefillTile::NAMES
            .contains(&v)
            .then(|| PrefillTile::parse(v))
            .flatten()
            .ok_or_else(|| format!("unknown prefill_tile `{v}` (choose from: {})", PrefillTile::NAMES.join(", "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::{KernelChoice, Method, ModelShape};

    fn case(engine: &str, phase: Phase, precision: Precision, q: usize, choice: &[(&str, &str)]) -> Case {
        let mut kernel = KernelChoice::default();
        for (a, v) in choice {
            kernel = kernel.with(a, v);
        }
        Case {
            engine: engine.into(),
            method: if engine.starts_with("dsa") { Method::Dsa } else { Method::Dense },
            shape: ModelShape::deepseek_v32_exp(),
            phase,
            context: 4096,
            batch: 8,
            query_len: q,
            precision,
            seed: 1,
            kernel,
        }
    }

    const H200: (i32, i32) = (9, 0);
    const L40: (i32, i32) = (8, 9);

    #[test]
    fn every_axis_value_names_a_variant_and_the_default_is_first() {
        for a in KERNEL_AXES {
            assert!(!a.values.is_empty(), "{}", a.name);
            assert!(crate::registry::entry(a.engine).is_some(), "{} is not in the engine table", a.engine);
        }
        for &n in SparseKernel::NAMES {
            assert_eq!(SparseKernel::from_name(n).map(SparseKernel::name), Some(n));
        }
        for &n in DecodeKernel::NAMES {
            assert_eq!(DecodeKernel::from_name(n).map(DecodeKernel::name), Some(n));
        }
        for &n in IndexerLoad::NAMES {
            assert_eq!(IndexerLoad::from_name(n).map(IndexerLoad::name), Some(n));
        }
        for &n in PrefillTile::NAMES {
            assert!(PrefillTile::parse(n).is_some(), "{n}");
        }
        assert_eq!(PrefillTile::parse(PrefillTile::NAMES[0]), Some(PrefillTile::DEFAULT));
        // The defaults without a choice are the first names.
        let bf16 = case("dsa-cuda", Phase::Decode, Precision::Bf16, 1, &[]);
        assert_eq!(sparse_kernel(&bf16, H200).unwrap().name(), SparseKernel::NAMES[0]);
        let fp8 = case("dsa-cuda", Phase::Decode, Precision::Fp8, 1, &[]);
        assert_eq!(indexer_load(&fp8, true, 1).unwrap().name(), IndexerLoad::NAMES[0]);
        let dense = case("dense-cuda", Phase::Decode, Precision::Bf16, 1, &[]);
        assert_eq!(decode_kernel(&dense, H200).unwrap().name(), DecodeKernel::NAMES[0]);
    }

    #[test]
    fn every_entry_a_choice_names_is_in_its_source() {
        let sparse = KernelId::SparseMla.entry_points();
        for &n in SparseKernel::NAMES {
            for fp8 in [false, true] {
                let e = SparseKernel::from_name(n).unwrap().entry(fp8);
                assert!(sparse.contains(&e), "{e}");
            }
        }
        let decode = KernelId::DenseDecode.entry_points();
        for &n in DecodeKernel::NAMES {
            assert!(decode.contains(&DecodeKernel::from_name(n).unwrap().entry(false)));
        }
        let ix = KernelId::Indexer.entry_points();
        for &n in IndexerLoad::NAMES {
            for (fp8, qg, wgmma) in [(true, 1, true), (true, 4, true), (true, 1, false), (false, 1, false), (false, 4, true)] {
                let e = IndexerLoad::from_name(n).unwrap().indexer_entry(fp8, qg, wgmma);
                assert!(ix.contains(&e), "{e}");
            }
        }
    }

    /// The sizes read from the sources are the ones the engines were launched with before they
    /// were read from the sources (the formulas the kernels lay out).
    #[test]
    fn shared_memory_sizes_come_from_the_sources() {
        assert_eq!(topk_smem(), (4096 + 12288 + 32 + 8) * 4);
        assert_eq!(topk_threads(), 1024);
        assert_eq!(indexer_tile_keys(), 256);
        assert_eq!(SparseKernel::Mma.smem(false), (3 * 64 * 576 + 64 * 64) * 2 + 6 * 64 * 4);
        assert_eq!(SparseKernel::WgmmaSplit.smem(true), (2 * 64 * 576 + 64 * 64) * 2 + 64 * 656 + 6 * 64 * 4);
        assert_eq!(SparseKernel::WgmmaBulk.smem(false), 64 * 576 * 2 + 2 * (64 * 1152 + 896) + 64 * 64 * 2 + 1024 + 32);
        assert_eq!(SparseKernel::WgmmaSplit2.smem(false), 232_224);
        assert_eq!(DecodeKernel::Mma.smem(false), (3 * 64 * 576 + 64 * 64) * 2 + 4 * 64 * 4);
        assert_eq!(DecodeKernel::Mma.smem(true), (2 * 64 * 576 + 64 * 64) * 2 + 64 * 656 + 4 * 64 * 4);
        assert_eq!(DecodeKernel::WgmmaTma.smem(false), (3 * 64 * 576 + 64 * 64) * 2 + 4 * 64 * 4 + 32 + 1024);
        assert_eq!(IndexerLoad::tma_smem(3), 110_896);
        assert_eq!(IndexerLoad::tma_smem(4), 144_704);
        let optin = 232_448u32; // 227 KiB, an H200 block
        for k in [SparseKernel::Mma, SparseKernel::WgmmaSplit] {
            for fp8 in [false, true] {
                assert!(k.smem(fp8) <= optin);
            }
        }
        assert!(topk_smem() <= optin && DecodeKernel::WgmmaTma.smem(false) <= optin);
        for fp8 in [false, true] {
            for qg in [1, 4] {
                assert!(indexer_smem(fp8, qg) <= optin, "{fp8} {qg}");
            }
        }
        // Two FP8 decode CTAs per multiprocessor (228 KiB, 1 KiB reserved per block), also with TMA.
        assert!(2 * (indexer_smem(true, 1) + 1024) <= 233_472);
        assert!(2 * (IndexerLoad::tma_smem(3) + 1024) <= 233_472);
        assert_eq!(indexer_launch_smem(true, 1, IndexerLoad::CpAsync), indexer_smem(true, 1));
        assert_eq!(indexer_launch_smem(true, 1, IndexerLoad::Tma4), IndexerLoad::tma_smem(4));
    }

    #[test]
    fn sparse_choice_defaults_and_refusals() {
        let bf16 = |c: &[(&str, &str)]| case("dsa-cuda", Phase::Decode, Precision::Bf16, 1, c);
        let fp8 = |c: &[(&str, &str)]| case("dsa-cuda", Phase::Decode, Precision::Fp8, 1, c);
        assert_eq!(sparse_kernel(&bf16(&[]), H200), Ok(SparseKernel::WgmmaSplit));
        assert_eq!(sparse_kernel(&bf16(&[]), L40), Ok(SparseKernel::Mma));
        assert_eq!(sparse_kernel(&fp8(&[]), H200), Ok(SparseKernel::Mma));
        assert_eq!(sparse_kernel(&bf16(&[("sparse", "bulk")]), H200), Ok(SparseKernel::WgmmaBulk));
        assert_eq!(sparse_kernel(&bf16(&[("sparse", "mma")]), L40), Ok(SparseKernel::Mma));
        assert!(sparse_kernel(&bf16(&[("sparse", "early")]), L40).unwrap_err().contains("9.0"));
        assert!(sparse_kernel(&fp8(&[("sparse", "split2")]), H200).unwrap_err().contains("FP8 cache"));
        assert!(sparse_kernel(&bf16(&[("sparse", "bogus")]), H200).unwrap_err().contains("split, split2, early, bulk, cpa, mma"));
        // Indexer: wgmma on 9.0 for FP8, the load by TMA in decode, cp.async in prefill.
        assert_eq!(use_wgmma_indexer(&fp8(&[]), H200), Ok(true));
        assert_eq!(use_wgmma_indexer(&fp8(&[("indexer", "mma")]), H200), Ok(false));
        assert!(use_wgmma_indexer(&fp8(&[("indexer", "wgmma")]), L40).is_err());
        assert_eq!(use_wgmma_indexer(&bf16(&[]), H200), Ok(false));
        assert_eq!(indexer_load(&fp8(&[]), true, 1), Ok(IndexerLoad::Tma3));
        assert_eq!(indexer_load(&fp8(&[("indexer_load", "tma4")]), true, 1), Ok(IndexerLoad::Tma4));
        assert_eq!(indexer_load(&fp8(&[("indexer_load", "cpasync")]), true, 1), Ok(IndexerLoad::CpAsync));
        assert_eq!(indexer_load(&fp8(&[]), true, 4), Ok(IndexerLoad::CpAsync));
        assert_eq!(indexer_load(&fp8(&[]), false, 1), Ok(IndexerLoad::CpAsync));
        assert!(indexer_load(&fp8(&[("indexer_load", "tma4")]), false, 1).unwrap_err().contains("wgmma"));
        assert_eq!(IndexerLoad::Tma3.indexer_entry(true, 1, true), "indexer_fp8_tma3_q1");
        assert_eq!(IndexerLoad::Tma3.indexer_entry(true, 4, true), "indexer_fp8_wgmma_q4");
    }

    #[test]
    fn dense_choice_defaults_and_refusals() {
        let dec = |p: Precision, c: &[(&str, &str)]| case("dense-cuda", Phase::Decode, p, 1, c);
        assert_eq!(decode_kernel(&dec(Precision::Bf16, &[]), H200), Ok(DecodeKernel::WgmmaTma));
        assert_eq!(decode_kernel(&dec(Precision::Fp8, &[]), H200), Ok(DecodeKernel::Mma));
        assert_eq!(decode_kernel(&dec(Precision::Bf16, &[("decode", "pipe")]), H200), Ok(DecodeKernel::WgmmaPipe));
        assert!(decode_kernel(&dec(Precision::Bf16, &[("decode", "pipe")]), L40).is_err());
        assert_eq!(decode_options(&dec(Precision::Fp8, &[]), H200, DecodeKernel::Mma), Ok(vec!["-DDC_FP8_HWCVT"]));
        assert_eq!(decode_options(&dec(Precision::Fp8, &[("fp8_cvt", "int")]), H200, DecodeKernel::Mma), Ok(vec![]));
        assert_eq!(decode_options(&dec(Precision::Bf16, &[]), H200, DecodeKernel::WgmmaTma), Ok(vec!["-DDC_FP8_HWCVT", "--gpu-architecture=sm_90a"]));
        assert_eq!(decode_options(&dec(Precision::Bf16, &[]), (8, 0), DecodeKernel::Mma), Ok(vec![]));
        assert!(decode_options(&dec(Precision::Fp8, &[("fp8_cvt", "hw")]), (8, 0), DecodeKernel::Mma).is_err());
        let pre = |c: &[(&str, &str)]| case("dense-cuda", Phase::Prefill, Precision::Bf16, 256, c);
        assert_eq!(prefill_tile(&pre(&[])), Ok(PrefillTile::DEFAULT));
        assert_eq!(prefill_tile(&pre(&[("prefill_tile", "4x64x2")])).map(|t| (t.rows(), t.min_blocks)), Ok((64, 2)));
        assert!(prefill_tile(&pre(&[("prefill_tile", "2x32")])).unwrap_err().contains("8x128, 8x64"));
        assert!(PrefillTile::parse("3x64").is_none() && PrefillTile::parse("8").is_none() && PrefillTile::parse("8x100").is_none());
    }

    #[test]
    fn plans_are_checked_against_the_engines_axes() {
        let engines = vec!["dense-cuda".to_string(), "dsa-cuda".to_string()];
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(check_variant(&engines, "sparse", &v(&["split", "bulk"])).is_ok());
        let e = check_variant(&engines, "sparse", &v(&["split", "nope"])).unwrap_err();
        assert!(e.contains("`sparse=nope`") && e.contains("choose from: split, split2, early, bulk, cpa, mma"), "{e}");
        assert!(check_variant(&engines, "sparse", &v(&["bulk", "bulk"])).unwrap_err().contains("twice"));
        let e = check_variant(&["dense-cpu".to_string()], "sparse", &v(&["split"])).unwrap_err();
        assert!(e.contains("no engine of this run") && e.contains("dsa-cuda sparse=split|"), "{e}");
        // The axes a sweep multiplies a case by.
        assert!(applies(&case("dsa-cuda", Phase::Decode, Precision::Bf16, 1, &[]), "sparse"));
        assert!(!applies(&case("dsa-cuda", Phase::Decode, Precision::Fp8, 1, &[]), "sparse"));
        assert!(applies(&case("dsa-cuda", Phase::Decode, Precision::Fp8, 1, &[]), "indexer_load"));
        assert!(!applies(&case("dsa-cuda", Phase::Prefill, Precision::Fp8, 256, &[]), "indexer_load"));
        assert!(!applies(&case("dense-cuda", Phase::Decode, Precision::Bf16, 1, &[]), "sparse"));
        assert!(!applies(&case("dense-cuda", Phase::Decode, Precision::Bf16, 1, &[]), "prefill_tile"));
        // A case's own choices.
        assert!(check_case(&case("dsa-cuda", Phase::Decode, Precision::Bf16, 1, &[("sparse", "early")])).is_ok());
        assert!(check_case(&case("dsa-cuda", Phase::Decode, Precision::Bf16, 1, &[("decode", "mma")])).unwrap_err().contains("no kernel choice `decode`"));
        assert!(check_case(&case("dense-cuda", Phase::Decode, Precision::Bf16, 1, &[("decode", "x")])).unwrap_err().contains("tma, pipe, mma"));
    }
}
