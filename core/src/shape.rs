//! Model shapes: the attention geometry of DeepSeek-V3.2-Exp / V3.1-Terminus (DSA.md section 2)
//! and scaled-down shapes of the same structure for CPU runs.
//!
//! One shape describes both attention modes of MLA:
//! - MHA mode (dense prefill): `heads` heads, qk dim `qk_nope_dim + qk_rope_dim`, v dim `v_head_dim`.
//! - MQA mode (dense decode, all DSA attention): `heads` query heads sharing one latent of
//!   `kv_lora_rank + qk_rope_dim` dims; the value is the first `kv_lora_rank` dims.
//! - The lightning indexer: `index_heads` x `index_dim`, top-k `top_k` (0 heads = no indexer).
//!
//! The rest of a layer (what the `rest` engines time, [`crate::rest`]): the hidden size, the
//! q LoRA rank, the first `dense_layers` layers with a dense SwiGLU MLP of `dense_inter_dim`,
//! the others MoE (`routed_experts`, `shared_experts`, `active_experts` per token, each a
//! SwiGLU of `moe_inter_dim`), and the vocabulary of the LM head. `ep` is the expert-parallel
//! degree the MoE is measured at (`--ep`): `routed_experts / ep` experts on the measured GPU.
//! Records written before these fields existed read them as 0 (`ep` as 1): not recorded.

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
    /// Model (residual stream) width: 7168 on V3.2.
    #[serde(default)]
    pub hidden_dim: usize,
    /// Rank of the query down-projection: 1536 on V3.2.
    #[serde(default)]
    pub q_lora_rank: usize,
    /// Leading layers with a dense MLP instead of the MoE: 3 on V3.2 (the other 58 are MoE).
    #[serde(default)]
    pub dense_layers: u32,
    /// Intermediate width of the dense MLP: 18432 on V3.2.
    #[serde(default)]
    pub dense_inter_dim: usize,
    /// Routed experts per MoE layer: 256 on V3.2.
    #[serde(default)]
    pub routed_experts: usize,
    /// Shared experts per MoE layer (every token uses them): 1 on V3.2.
    #[serde(default)]
    pub shared_experts: usize,
    /// Routed experts per token: 8 on V3.2.
    #[serde(default)]
    pub active_experts: usize,
    /// Intermediate width of one expert: 2048 on V3.2.
    #[serde(default)]
    pub moe_inter_dim: usize,
    /// Vocabulary (rows of the embedding, columns of the LM head): 129280 on V3.2.
    #[serde(default)]
    pub vocab: usize,
    /// Expert-parallel degree of the measured deployment (`--ep N`): this GPU holds
    /// `routed_experts / ep` routed experts and receives their share of `ep` GPUs' tokens.
    #[serde(default = "one")]
    pub ep: usize,
}

fn one() -> usize {
    1
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
            hidden_dim: 7168,
            q_lora_rank: 1536,
            dense_layers: 3,
            dense_inter_dim: 18432,
            routed_experts: 256,
            shared_experts: 1,
            active_experts: 8,
            moe_inter_dim: 2048,
            vocab: 129280,
            ep: 1,
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
            hidden_dim: 256,
            q_lora_rank: 96,
            dense_layers: 3,
            dense_inter_dim: 512,
            routed_experts: 16,
            shared_experts: 1,
            active_experts: 4,
            moe_inter_dim: 64,
            vocab: 1024,
            ep: 1,
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
            hidden_dim: 512,
            q_lora_rank: 192,
            dense_layers: 3,
            dense_inter_dim: 1024,
            routed_experts: 32,
            shared_experts: 1,
            active_experts: 8,
            moe_inter_dim: 128,
            vocab: 4096,
            ep: 1,
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

    /// Whether the shape records the geometry of the rest of a layer (records written before
    /// it existed do not).
    pub fn has_rest_geometry(&self) -> bool {
        self.hidden_dim > 0 && self.q_lora_rank > 0 && self.moe_inter_dim > 0 && self.routed_experts > 0 && self.active_experts > 0 && self.vocab > 0
    }

    /// Layers with an MoE (all but the leading dense-MLP layers).
    pub fn moe_layers(&self) -> u32 {
        self.layers.saturating_sub(self.dense_layers)
    }

    /// Routed experts on the measured GPU: `routed_experts / ep`.
    pub fn local_experts(&self) -> usize {
        self.routed_experts / self.ep.max(1)
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
        pos("ep", self.ep)?;
        if self.dense_layers > self.layers {
            return Err(CoreError::Invalid {
                field: "dense_layers",
                value: self.dense_layers.to_string(),
                why: format!("at most the {} layers of the model", self.layers),
            });
        }
        if self.active_experts > self.routed_experts {
            return Err(CoreError::Invalid {
                field: "active_experts",
                value: self.active_experts.to_string(),
                why: format!("a token picks at most the {} routed experts", self.routed_experts),
            });
        }
        if self.routed_experts > 0 && self.routed_experts % self.ep != 0 {
            return Err(CoreError::Invalid {
                field: "ep",
                value: self.ep.to_string(),
                why: format!("the expert-parallel degree must divide the {} routed experts (e.g. `--ep 8`)", self.routed_experts),
            });
        }
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

    #[test]
    fn rest_geometry_matches_dsa_md_and_old_records_read() {
        let s = ModelShape::deepseek_v32_exp();
        assert_eq!((s.hidden_dim, s.q_lora_rank, s.dense_layers, s.moe_layers(), s.dense_inter_dim), (7168, 1536, 3, 58, 18432));
        assert_eq!((s.routed_experts, s.shared_experts, s.active_experts, s.moe_inter_dim, s.vocab), (256, 1, 8, 2048, 129280));
        assert_eq!(ModelShape { ep: 8, ..s.clone() }.local_experts(), 32);
        assert!(ModelShape { ep: 3, ..s.clone() }.validate().unwrap_err().to_string().contains("--ep"));
        assert!(ModelShape { ep: 0, ..s.clone() }.validate().is_err());
        for n in SHAPE_NAMES {
            let sh = ModelShape::by_name(n).unwrap();
            assert!(sh.has_rest_geometry() && sh.validate().is_ok(), "{n}");
        }
        // A shape as written before the rest geometry existed: the fields read as absent.
        let mut v = serde_json::to_value(ModelShape::tiny()).unwrap();
        for k in ["hidden_dim", "q_lora_rank", "dense_layers", "dense_inter_dim", "routed_experts", "shared_experts", "active_experts", "moe_inter_dim", "vocab", "ep"] {
            v.as_object_mut().unwrap().remove(k);
        }
        let old: ModelShape = serde_json::from_value(v).unwrap();
        assert!(!old.has_rest_geometry());
        assert_eq!((old.ep, old.heads), (1, 8));
        assert!(old.validate().is_ok());
    }
}
