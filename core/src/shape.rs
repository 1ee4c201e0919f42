//! Model shapes: the attention geometry of DeepSeek-V3.2-Exp / V3.1-Terminus (DSA.md section 2)
//! and scaled-down shapes of the same structure for CPU runs.
//!
//! One shape describes both attention modes of MLA:
//! - MHA mode (dense prefill): `heads` heads, qk dim `qk_nope_dim + qk_rope_dim`, v dim `v_head_dim`.
//! - MQA mode (dense decode, all DSA attention): `heads` query heads sharing one latent of
//!   `kv_lora_rank + qk_rope_dim` dims; the value is the first `kv_lora_rank` dims.
//! - The lightning indexer: `index_heads` x `index_dim`, top-k `top_k` (0 heads = no indexer).

use serde::{Deserialize, Serialize};

use crate::CoreError;

/// Attention geometry of one model (one layer; `layers` scales it to the model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    pub name: String,
    pub layers: u32,
    pub heads: usize,
    pub kv_lora_rank: usize,
    pub qk_nope_dim: usize,
    pub qk_rope_dim: usize,
    pub v_head_dim: usize,
    pub index_heads: usize,
    pub index_dim: usize,
    pub top_k: usize,
    /// Parameters active per token (whole model), for the analytic "rest of the model" cost.
    pub active_params: f64,
}

/// Names of the built-in shapes, in the order `--help` lists them.
pub const SHAPE_NAMES: &[&str] = &["deepseek-v3.2-exp", "deepseek-v3.1-terminus", "tiny", "small"];

impl ModelShape {
    /// DeepSeek-V3.2-Exp (config_671B_v3.2.json): MLA + lightning indexer 64 x 128, top-2048.
    pub fn deepseek_v32_exp() -> Self {
        Self {
            name: "deepseek-v3.2-exp".into(),
            layers: 61,
            heads: 128,
            kv_lora_rank: 512,
            qk_nope_dim: 128,
            qk_rope_dim: 64,
            v_head_dim: 128,
            index_heads: 64,
            index_dim: 128,
            top_k: 2048,
            active_params: 37e9,
        }
    }

    /// DeepSeek-V3.1-Terminus: the same attention without the indexer (dense only).
    pub fn deepseek_v31_terminus() -> Self {
        Self { name: "deepseek-v3.1-terminus".into(), index_heads: 0, index_dim: 0, top_k: 0, ..Self::deepseek_v32_exp() }
    }

    /// A scaled-down shape of the same structure for quick CPU runs.
    pub fn tiny() -> Self {
        Self {
            name: "tiny".into(),
            layers: 61,
            heads: 8,
            kv_lora_rank: 64,
            qk_nope_dim: 8,
            qk_rope_dim: 16,
            v_head_dim: 16,
            index_heads: 4,
            index_dim: 32,
            top_k: 64,
            active_params: 37e9,
        }
    }

    /// A middle shape: bigger than `tiny`, still CPU-friendly.
    pub fn small() -> Self {
        Self {
            name: "small".into(),
            layers: 61,
            heads: 16,
            kv_lora_rank: 128,
            qk_nope_dim: 32,
            qk_rope_dim: 32,
            v_head_dim: 32,
            index_heads: 8,
            index_dim: 64,
            top_k: 256,
            active_params: 37e9,
        }
    }

    /// Look a shape up by name.
    pub fn by_name(name: &str) -> Result<Self, CoreError> {
        match name {
            "deepseek-v3.2-exp" | "v3.2-exp" | "v32" => Ok(Self::deepseek_v32_exp()),
            "deepseek-v3.1-terminus" | "v3.1-terminus" | "v31" => Ok(Self::deepseek_v31_terminus()),
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            _ => Err(CoreError::Unknown { kind: "model shape", value: name.into(), choices: SHAPE_NAMES.join(", ") }),
        }
    }

    /// MHA-mode query/key dim (192 on V3.2).
    pub fn mha_qk_dim(&self) -> usize {
        self.qk_nope_dim + self.qk_rope_dim
    }
    /// MHA-mode value dim (128 on V3.2).
    pub fn mha_v_dim(&self) -> usize {
        self.v_head_dim
    }
    /// MQA-mode latent dim: the key (576 on V3.2).
    pub fn mqa_kv_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_dim
    }
    /// MQA-mode value dim: the first `kv_lora_rank` dims of the latent (512 on V3.2).
    pub fn mqa_v_dim(&self) -> usize {
        self.kv_lora_rank
    }
    /// Softmax scale of both modes: 1/sqrt(MHA qk dim) (the YaRN mscale is left out).
    pub fn softmax_scale(&self) -> f64 {
        1.0 / (self.mha_qk_dim() as f64).sqrt()
    }
    /// Whether the shape has a lightning indexer (DSA can run on it).
    pub fn has_indexer(&self) -> bool {
        self.index_heads > 0 && self.index_dim > 0 && self.top_k > 0
    }

    /// Reject geometry that cannot run.
    pub fn validate(&self) -> Result<(), CoreError> {
        let pos = |field: &'static str, v: usize| {
            if v == 0 {
                Err(CoreError::Invalid { field, value: "0".into(), why: "must be at least 1".into() })
            } else {
                Ok(())
            }
        };
        pos("heads", self.heads)?;
        pos("kv_lora_rank", self.kv_lora_rank)?;
        pos("qk_rope_dim", self.qk_rope_dim)?;
        pos("v_head_dim", self.v_head_dim)?;
        pos("layers", self.layers as usize)?;
        if self.index_heads > 0 || self.index_dim > 0 {
            pos("index_heads", self.index_heads)?;
            pos("index_dim", self.index_dim)?;
            if self.top_k == 0 {
                return Err(CoreError::Invalid {
                    field: "top_k",
                    value: "0".into(),
                    why: "DSA keeps the top-k keys per query; use a positive k such as 2048".into(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v32_geometry_matches_dsa_md() {
        let s = ModelShape::deepseek_v32_exp();
        assert_eq!((s.mha_qk_dim(), s.mha_v_dim(), s.mqa_kv_dim(), s.mqa_v_dim()), (192, 128, 576, 512));
        assert_eq!((s.index_heads, s.index_dim, s.top_k, s.layers), (64, 128, 2048, 61));
        assert!(!ModelShape::deepseek_v31_terminus().has_indexer());
        let t = ModelShape::tiny();
        assert_eq!((t.mha_qk_dim(), t.mha_v_dim(), t.mqa_kv_dim()), (24, 16, 80));
        for n in SHAPE_NAMES {
            assert_eq!(&ModelShape::by_name(n).unwrap().name, n);
        }
        assert!(ModelShape::by_name("gpt").is_err());
        let bad = ModelShape { top_k: 0, ..ModelShape::tiny() };
        assert!(bad.validate().unwrap_err().to_string().contains("top_k"));
    }
}
