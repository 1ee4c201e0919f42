//! Whether a case fits this machine's memory, and how many queries each step processes.
//!
//! The estimate counts the inputs as the engine holds them (bf16 or f32), the f32 buffers
//! `prepare` builds them from, the output, and the per-step working set: scores and
//! probabilities of one key block per thread, the DSA score rows `[B, queries, L]` and
//! gathered latents, the f32 copies bf16 operands are widened into. Queries are processed in
//! chunks sized by the constants below; a case whose peak would exceed 80% of the memory the kernel reports available
//! (`MemAvailable` in `/proc/meminfo`) is refused before anything is allocated.

use ctxcost_core::{Case, Phase};

/// Dense attention: (query, head) rows per chunk. Key blocks keep the score working set at
/// about 1 MiB per thread whatever the chunk; the chunk bounds the per-row state and how often
/// the keys are re-read.
const DENSE_ROWS_PER_CHUNK: u64 = 4096;
/// DSA: bytes of indexer score rows per chunk (`[B, queries, L]` f32), read again by top-k.
const DSA_SCORES_BUDGET: u64 = 2 << 20;
/// DSA: bytes of gathered latents per chunk.
const DSA_GATHER_BUDGET: u64 = 32 << 20;
/// Working bytes of one key block per thread (scores and probabilities, 1 MiB each).
const BLOCK_BYTES: u64 = 2 << 20;

/// Share of the available memory a case may plan to use.
const USABLE_SHARE: f64 = 0.8;

/// Which computation a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Dense MLA, MHA mode (dense prefill).
    DenseMha,
    /// Dense MLA, MQA mode (dense decode).
    DenseMqa,
    /// Indexer, top-k and MQA-mode attention over the selection.
    Dsa,
}

impl Kind {
    pub(crate) fn of(case: &Case, sparse: bool) -> Kind {
        match (sparse, case.phase) {
            (true, _) => Kind::Dsa,
            (false, Phase::Prefill) => Kind::DenseMha,
            (false, Phase::Decode) => Kind::DenseMqa,
        }
    }
}

/// Memory figures and the chunking of one case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Plan {
    /// Queries (per sequence) per step.
    pub chunk: usize,
    /// Bytes held for the whole case (inputs, outputs).
    pub resident: u64,
    /// Bytes held only while `prepare` builds the inputs.
    pub transient: u64,
    /// Working bytes of one step at `chunk` queries.
    pub working: u64,
}

impl Plan {
    pub(crate) fn peak(&self) -> u64 {
        self.resident + self.transient.max(self.working)
    }
}

/// Bytes the kernel says can be allocated without swapping (`MemAvailable`), if known.
pub(crate) fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Plan a case: chunk size, resident and working bytes.
pub(crate) fn plan(case: &Case, kind: Kind) -> Plan {
    let s = &case.shape;
    let f = |x: usize| x as u64;
    let (b, q, l) = (f(case.batch), f(case.query_len), f(case.context));
    let elem = f(case.precision.element_bytes());
    let threads = f(super::ops::threads());
    let (heads, qk, vd) = (f(s.heads), f(s.mha_qk_dim()), f(s.mha_v_dim()));
    let (kv, mv) = (f(s.mqa_kv_dim()), f(s.mqa_v_dim()));
    let (ih, id) = (f(s.index_heads), f(s.index_dim));
    let k = f(case.effective_top_k());
    let per_thread_blocks = threads * (BLOCK_BYTES + BLOCK_BYTES / 2);
    let (chunk, inputs, largest, working, output) = match kind {
        Kind::DenseMha => {
            let chunk = (DENSE_ROWS_PER_CHUNK / (b * heads).max(1)).clamp(1, q);
            let inputs = b * q * heads * qk + b * l * heads * (qk + vd);
            // Per row of the chunk: f32 queries, running state and output (twice, merged).
            let working = per_thread_blocks + b * heads * chunk * 4 * (qk + 2 * vd + 4);
            (chunk, inputs, b * l * heads * qk, working, 4 * b * q * heads * vd)
        }
        Kind::DenseMqa => {
            let chunk = (DENSE_ROWS_PER_CHUNK / (b * heads).max(1)).clamp(1, q);
            // The latent transposed, plus its value dims row-major.
            let inputs = b * q * heads * kv + b * l * (kv + mv);
            let working = per_thread_blocks + b * heads * chunk * 4 * (kv + 2 * mv + 4);
            (chunk, inputs, b * l * kv, working, 4 * b * q * heads * mv)
        }
        Kind::Dsa => {
            let gather_per_query = b * k * (kv * (elem + 8) + 4);
            let chunk = (DSA_SCORES_BUDGET / (4 * b * l).max(1)).min(DSA_GATHER_BUDGET / gather_per_query.max(1)).clamp(1, q);
            let inputs = b * q * (heads * kv + ih * id) + b * l * (kv + id);
            // Score rows, one logit block, gathered latents, attention state.
            let working = 4 * b * chunk * l + (1 << 20) + chunk * gather_per_query + per_thread_blocks + b * chunk * heads * 4 * (kv + 2 * mv + 4);
            (chunk, inputs, b * l * kv, working, 4 * b * q * (heads * mv + k))
        }
    };
    let resident = inputs * elem + 4 * b * q * ih + output;
    // `prepare` materialises each tensor in f32 and converts or transposes it once.
    let transient = largest * (4 + 4 + elem);
    Plan { chunk: chunk as usize, resident, transient, working }
}

/// `Err(reason)` when the case would not fit in the memory available now.
pub(crate) fn check_fits(case: &Case, kind: Kind) -> Result<Plan, String> {
    let p = plan(case, kind);
    let Some(avail) = mem_available() else { return Ok(p) };
    let usable = (avail as f64 * USABLE_SHARE) as u64;
    if p.peak() > usable {
        let gib = |x: u64| x as f64 / (1u64 << 30) as f64;
        return Err(format!(
            "needs about {:.1} GiB of host memory ({:.1} GiB inputs and outputs, {:.1} GiB working set), \
             {:.1} GiB available",
            gib(p.peak()),
            gib(p.resident),
            gib(p.transient.max(p.working)),
            gib(avail)
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::{ModelShape, Precision};

    fn case(shape: ModelShape, phase: Phase, context: usize, query_len: usize) -> Case {
        Case { engine: "dense-cpu".into(), method: ctxcost_core::Method::Dense, shape, phase, context, batch: 1, query_len, precision: Precision::Bf16, seed: 1, kernel: Default::default() }
    }

    #[test]
    fn chunks_bound_the_working_set_and_huge_cases_are_refused() {
        let p = plan(&case(ModelShape::tiny(), Phase::Prefill, 8192, 128), Kind::DenseMha);
        assert!(p.chunk >= 1 && p.chunk <= 128);
        let big = plan(&case(ModelShape::tiny(), Phase::Prefill, 65536, 65536), Kind::DenseMha);
        assert!(big.chunk < 65536 && big.working < 64 << 20, "{big:?}");
        let dsa = plan(&case(ModelShape::tiny(), Phase::Prefill, 65536, 65536), Kind::Dsa);
        assert!(dsa.chunk < 65536 && dsa.working < 64 << 20, "{dsa:?}");
        let huge = case(ModelShape::deepseek_v32_exp(), Phase::Prefill, 1 << 22, 1 << 22);
        if mem_available().is_some() {
            assert!(check_fits(&huge, Kind::DenseMha).unwrap_err().contains("GiB available"));
        }
    }
}
