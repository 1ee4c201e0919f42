//! The analytic work model of DSA.md section 3: FLOPs, bytes read and KV-cache bytes per
//! token, per layer. The reports use it for achieved rates and roofline floors; the runner
//! uses it to estimate memory before allocating.

use serde::{Deserialize, Serialize};

use crate::{Case, ModelShape, Phase, Precision};

/// The four variants of DSA.md section 3 (attention method x cache precision).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    DenseBf16,
    DenseFp8,
    DsaBf16,
    DsaFp8,
}

/// FLOPs of one (query, key) pair in MQA-mode MLA: 2*H*(576+512) = 278,528 on V3.2.
pub fn mqa_flops_per_pair(s: &ModelShape) -> f64 {
    2.0 * s.heads as f64 * (s.mqa_kv_dim() + s.mqa_v_dim()) as f64
}

/// FLOPs of one (query, key) pair in MHA-mode MLA: 2*H*(192+128) = 81,920 on V3.2.
pub fn mha_flops_per_pair(s: &ModelShape) -> f64 {
    2.0 * s.heads as f64 * (s.mha_qk_dim() + s.mha_v_dim()) as f64
}

/// FLOPs of one indexer score: 2*H_I*d_I = 16,384 on V3.2.
pub fn indexer_flops_per_pair(s: &ModelShape) -> f64 {
    2.0 * s.index_heads as f64 * s.index_dim as f64
}

/// Bytes of one latent cache entry: bf16 1152 (576 x 2); FP8 656 (512 e4m3 + 4 fp32 scales +
/// 64 bf16 RoPE dims; FlashMLA's format, generalised as latent + 4*ceil(latent/128) + 2*rope).
pub fn latent_bytes_per_token(s: &ModelShape, fp8: bool) -> usize {
    if fp8 {
        s.kv_lora_rank + 4 * s.kv_lora_rank.div_ceil(128) + 2 * s.qk_rope_dim
    } else {
        2 * s.mqa_kv_dim()
    }
}

/// Bytes of one indexer key: FP8 128 + 4-byte scale = 132; bf16 256.
pub fn indexer_bytes_per_token(s: &ModelShape, fp8: bool) -> usize {
    if !s.has_indexer() {
        0
    } else if fp8 {
        s.index_dim + 4
    } else {
        2 * s.index_dim
    }
}

/// KV-cache bytes per token per layer held by a variant (DSA keeps the full latent cache
/// and adds the indexer keys: it does not shrink memory).
pub fn kv_bytes_per_token(s: &ModelShape, v: Variant) -> usize {
    match v {
        Variant::DenseBf16 => latent_bytes_per_token(s, false),
        Variant::DenseFp8 => latent_bytes_per_token(s, true),
        Variant::DsaBf16 => latent_bytes_per_token(s, false) + indexer_bytes_per_token(s, false),
        Variant::DsaFp8 => latent_bytes_per_token(s, true) + indexer_bytes_per_token(s, true),
    }
}

/// Bytes one decode step reads per layer per sequence at context `l` (the memory floor):
/// dense 1152*L (bf16) or 656*L (FP8); DSA 656*min(L,k) + 132*L (FP8).
pub fn decode_bytes_per_step(s: &ModelShape, v: Variant, l: usize) -> f64 {
    let k = s.top_k.min(l);
    match v {
        Variant::DenseBf16 => (latent_bytes_per_token(s, false) * l) as f64,
        Variant::DenseFp8 => (latent_bytes_per_token(s, true) * l) as f64,
        Variant::DsaBf16 => (latent_bytes_per_token(s, false) * k + indexer_bytes_per_token(s, false) * l) as f64,
        Variant::DsaFp8 => (latent_bytes_per_token(s, true) * k + indexer_bytes_per_token(s, true) * l) as f64,
    }
}

/// FLOPs per query token at context `l`: dense MHA 81,920*L, dense MQA 278,528*L,
/// DSA 16,384*L + 278,528*min(L, k).
pub fn flops_per_query(s: &ModelShape, sparse: bool, mha: bool, l: usize) -> f64 {
    if sparse {
        indexer_flops_per_pair(s) * l as f64 + mqa_flops_per_pair(s) * s.top_k.min(l) as f64
    } else if mha {
        mha_flops_per_pair(s) * l as f64
    } else {
        mqa_flops_per_pair(s) * l as f64
    }
}

/// Analytic work of one case.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Work {
    /// Total floating-point operations (multiply-add = 2).
    pub flops: f64,
    /// Of which the indexer (DSA only).
    pub indexer_flops: f64,
    /// Of which the attention proper.
    pub attention_flops: f64,
    /// Fewest bytes the case must move through memory: every input read once, output written once.
    pub bytes: f64,
}

/// Whether a case's dense engine runs MLA in MHA mode (prefill) or MQA mode (decode).
pub fn dense_uses_mha(case: &Case) -> bool {
    case.phase == Phase::Prefill
}

/// The analytic work of a case, counting causal visibility exactly: query `i` at position
/// `p = context - query_len + i` sees `p + 1` keys (DSA: min(k, p + 1) selected).
pub fn case_work(case: &Case) -> Work {
    if case.is_rest() {
        return crate::rest::work(case);
    }
    let s = &case.shape;
    let b = case.batch as f64;
    let fp8 = case.precision == Precision::Fp8;
    let el = case.precision.element_bytes() as f64;
    let (mut idx_pairs, mut att_pairs) = (0f64, 0f64);
    let mut visible = 0f64;
    for i in 0..case.query_len {
        let seen = case.query_position(i) + 1;
        visible += seen as f64;
        idx_pairs += seen as f64;
        att_pairs += s.top_k.min(seen) as f64;
    }
    let q = case.query_tokens() as f64;
    let l = case.context as f64;
    if case.is_sparse() {
        let indexer_flops = b * idx_pairs * indexer_flops_per_pair(s);
        let attention_flops = b * att_pairs * mqa_flops_per_pair(s);
        let lat = latent_bytes_per_token(s, fp8) as f64;
        let idx = indexer_bytes_per_token(s, fp8) as f64;
        let k = s.top_k.min(case.context) as f64;
        // Keys read once per sequence (indexer keys over all L; latents only where selected,
        // bounded by both k*queries and L), queries and output once.
        let latents_read = (k * case.query_len as f64).min(l);
        let bytes = b * (l * idx + latents_read * lat)
            + q * (s.index_heads * s.index_dim) as f64 * el
            + q * (s.heads * s.mqa_kv_dim()) as f64 * el
            + q * (s.heads * s.mqa_v_dim()) as f64 * el;
        Work { flops: indexer_flops + attention_flops, indexer_flops, attention_flops, bytes }
    } else if dense_uses_mha(case) {
        let flops = b * visible * mha_flops_per_pair(s);
        let kv = l * (s.heads * (s.mha_qk_dim() + s.mha_v_dim())) as f64 * el;
        let qo = q * (s.heads * (s.mha_qk_dim() + s.mha_v_dim())) as f64 * el;
        Work { flops, indexer_flops: 0.0, attention_flops: flops, bytes: b * kv + qo }
    } else {
        let flops = b * visible * mqa_flops_per_pair(s);
        let kv = l * latent_bytes_per_token(s, fp8) as f64;
        let qo = q * (s.heads * (s.mqa_kv_dim() + s.mqa_v_dim())) as f64 * el;
        Work { flops, indexer_flops: 0.0, attention_flops: flops, bytes: b * kv + qo }
    }
}

/// Bytes of the KV cache the case models (per layer, all sequences), for the memory columns.
pub fn case_kv_bytes(case: &Case) -> f64 {
    if case.is_rest() {
        return 0.0;
    }
    let fp8 = case.precision == Precision::Fp8;
    let v = match (case.is_sparse(), fp8) {
        (false, false) => Variant::DenseBf16,
        (false, true) => Variant::DenseFp8,
        (true, false) => Variant::DsaBf16,
        (true, true) => Variant::DsaFp8,
    };
    (case.batch * case.context * kv_bytes_per_token(&case.shape, v)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_pair_flops_match_dsa_md() {
        let s = ModelShape::deepseek_v32_exp();
        assert_eq!(mqa_flops_per_pair(&s), 278_528.0);
        assert_eq!(mha_flops_per_pair(&s), 81_920.0);
        assert_eq!(indexer_flops_per_pair(&s), 16_384.0);
    }

    #[test]
    fn decode_bytes_at_128k_match_dsa_md() {
        let s = ModelShape::deepseek_v32_exp();
        let l = 128 * 1024;
        let mb = |v| decode_bytes_per_step(&s, v, l) / 1e6;
        assert!((mb(Variant::DenseBf16) - 151.0).abs() < 0.5, "{}", mb(Variant::DenseBf16));
        assert!((mb(Variant::DenseFp8) - 86.0).abs() < 0.5, "{}", mb(Variant::DenseFp8));
        assert!((mb(Variant::DsaFp8) - 18.6).abs() < 0.05, "{}", mb(Variant::DsaFp8));
        assert_eq!(kv_bytes_per_token(&s, Variant::DenseBf16), 1152);
        assert_eq!(kv_bytes_per_token(&s, Variant::DenseFp8), 656);
        assert_eq!(kv_bytes_per_token(&s, Variant::DsaFp8), 656 + 132);
    }

    #[test]
    fn per_query_flops_at_128k_match_dsa_md() {
        let s = ModelShape::deepseek_v32_exp();
        let l = 128 * 1024;
        let g = |sparse, mha| flops_per_query(&s, sparse, mha, l) / 1e9;
        assert!((g(false, false) - 36.5).abs() < 0.05);
        assert!((g(false, true) - 10.7).abs() < 0.05);
        assert!((g(true, false) - 2.72).abs() < 0.01);
        // FLOP break-even vs MQA-mode dense decode ~2.2K (DSA.md section 3).
        let be = (2048..8192).find(|&l| flops_per_query(&s, true, false, l) < flops_per_query(&s, false, false, l)).unwrap();
        assert!((2100..2300).contains(&be), "{be}");
    }

    #[test]
    fn case_work_counts_causal_pairs() {
        let case = Case {
            engine: "dense-cpu".into(),
            method: crate::Method::Dense,
            shape: ModelShape::tiny(),
            phase: Phase::Prefill,
            context: 100,
            batch: 2,
            query_len: 4,
            precision: Precision::F32,
            seed: 1,
            kernel: Default::default(),
        };
        // positions 96..100 see 97+98+99+100 = 394 keys.
        assert_eq!(case_work(&case).flops, 2.0 * 394.0 * mha_flops_per_pair(&case.shape));
        let dsa = Case { engine: "dsa-cpu".into(), method: crate::Method::Dsa, ..case.clone() };
        let w = case_work(&dsa);
        assert_eq!(w.indexer_flops, 2.0 * 394.0 * indexer_flops_per_pair(&dsa.shape));
        assert_eq!(w.attention_flops, 2.0 * 4.0 * 64.0 * mqa_flops_per_pair(&dsa.shape));
    }
}
