//! Case inputs: seeded random tensors that every engine reproduces bit for bit, or tensors
//! loaded from a file.
//!
//! Seeded values come from a counter-based generator: element `i` of tensor `t` is
//! `uniform(seed, t, i)`, a SplitMix64 hash mapped to `[-1, 1)` with 24 random bits, so
//! the value is exact in f32 and a GPU kernel computes the same number from the same
//! integers. Engines materialise only what they need (on the host or on the device), and a
//! verifier can recompute any row without holding the whole tensor. Values are never zero
//! tensors: a zero input hides unwritten outputs and wrong indexing.
//!
//! Every tensor is logically `[batch, rows, cols]` (row-major, `cols` flattening the inner
//! dims). Query tensors have `rows = query_len`; key tensors `rows = context`.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{Case, CoreError};

/// The tensors a case may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputTensor {
    /// MHA-mode queries `[B, q, H * qk]`.
    MhaQ = 1,
    /// MHA-mode keys `[B, L, H * qk]`.
    MhaK = 2,
    /// MHA-mode values `[B, L, H * v]`.
    MhaV = 3,
    /// MQA-mode (absorbed) queries `[B, q, H * (latent + rope)]`.
    MqaQ = 4,
    /// The latent cache `[B, L, latent + rope]`; the value is its first `latent` dims.
    Latent = 5,
    /// Indexer queries `[B, q, H_I * d_I]`.
    IndexQ = 6,
    /// Indexer keys `[B, L, d_I]`.
    IndexK = 7,
    /// Indexer head weights `[B, q, H_I]`.
    IndexW = 8,
}

impl InputTensor {
    pub const ALL: [InputTensor; 8] = [
        InputTensor::MhaQ,
        InputTensor::MhaK,
        InputTensor::MhaV,
        InputTensor::MqaQ,
        InputTensor::Latent,
        InputTensor::IndexQ,
        InputTensor::IndexK,
        InputTensor::IndexW,
    ];

    /// Name used in safetensors files.
    pub fn name(self) -> &'static str {
        match self {
            InputTensor::MhaQ => "mha_q",
            InputTensor::MhaK => "mha_k",
            InputTensor::MhaV => "mha_v",
            InputTensor::MqaQ => "mqa_q",
            InputTensor::Latent => "latent",
            InputTensor::IndexQ => "index_q",
            InputTensor::IndexK => "index_k",
            InputTensor::IndexW => "index_w",
        }
    }

    /// Stream id mixed into the seed.
    pub fn stream(self) -> u64 {
        self as u64
    }

    /// Whether rows are query tokens (else key positions).
    pub fn is_query(self) -> bool {
        matches!(self, InputTensor::MhaQ | InputTensor::MqaQ | InputTensor::IndexQ | InputTensor::IndexW)
    }

    /// Columns (flattened inner dims) for a case's shape.
    pub fn cols(self, case: &Case) -> usize {
        let s = &case.shape;
        match self {
            InputTensor::MhaQ | InputTensor::MhaK => s.heads * s.mha_qk_dim(),
            InputTensor::MhaV => s.heads * s.mha_v_dim(),
            InputTensor::MqaQ => s.heads * s.mqa_kv_dim(),
            InputTensor::Latent => s.mqa_kv_dim(),
            InputTensor::IndexQ => s.index_heads * s.index_dim,
            InputTensor::IndexK => s.index_dim,
            InputTensor::IndexW => s.index_heads,
        }
    }

    /// Rows per sequence for a case.
    pub fn rows(self, case: &Case) -> usize {
        if self.is_query() {
            case.query_len
        } else {
            case.context
        }
    }

    /// Logical shape `[batch, rows, cols]`.
    pub fn dims(self, case: &Case) -> [usize; 3] {
        [case.batch, self.rows(case), self.cols(case)]
    }

    /// Element count for a case.
    pub fn len(self, case: &Case) -> usize {
        let [b, r, c] = self.dims(case);
        b * r * c
    }
}

/// SplitMix64 finaliser.
pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seeded value of element `index` of stream `stream`: uniform in [-1, 1), 24 bits, exact
/// in f32. GPU kernels implement the same function (`kernels/common.cuh`).
#[inline]
pub fn uniform(seed: u64, stream: u64, index: u64) -> f32 {
    let base = splitmix64(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
    let bits = splitmix64(base.wrapping_add(index)) >> 40; // 24 bits
    (bits as f32) * (1.0 / 8_388_608.0) - 1.0
}

/// Host tensors loaded from a file, by name. Each is `[positions, cols]`: query tensors are
/// indexed by the query's position, key tensors by key position; batches share them.
#[derive(Debug, Default)]
pub struct LoadedTensors {
    pub tensors: HashMap<InputTensor, (usize, usize, Vec<f32>)>,
    pub source: String,
}

/// Where a case's inputs come from.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub seed: u64,
    pub loaded: Option<Arc<LoadedTensors>>,
}

impl Inputs {
    pub fn seeded(seed: u64) -> Self {
        Self { seed, loaded: None }
    }

    /// Check that loaded tensors (if any) cover what the case reads.
    pub fn check(&self, case: &Case, needed: &[InputTensor]) -> Result<(), CoreError> {
        let Some(lt) = &self.loaded else { return Ok(()) };
        for &t in needed {
            let (rows, cols, _) = lt.tensors.get(&t).ok_or_else(|| CoreError::BadTensor {
                name: t.name().into(),
                why: format!("missing from {} (needed by this case)", lt.source),
            })?;
            if *cols != t.cols(case) {
                return Err(CoreError::BadTensor {
                    name: t.name().into(),
                    why: format!("has {cols} columns, shape `{}` needs {}", case.shape.name, t.cols(case)),
                });
            }
            if *rows < case.context {
                return Err(CoreError::BadTensor {
                    name: t.name().into(),
                    why: format!("has {rows} positions, context {} needs at least that many", case.context),
                });
            }
        }
        Ok(())
    }

    /// Element `(b, row, col)` of tensor `t` for a case.
    #[inline]
    pub fn value(&self, case: &Case, t: InputTensor, b: usize, row: usize, col: usize) -> f32 {
        match &self.loaded {
            Some(lt) => {
                let (_, cols, data) = &lt.tensors[&t];
                let pos = if t.is_query() { case.query_position(row) } else { row };
                data[pos * cols + col]
            }
            None => {
                let [_, rows, cols] = t.dims(case);
                let idx = ((b * rows + row) * cols + col) as u64;
                uniform(self.seed, t.stream(), idx)
            }
        }
    }

    /// One row (all columns) of tensor `t` for sequence `b`.
    pub fn row(&self, case: &Case, t: InputTensor, b: usize, row: usize) -> Vec<f32> {
        (0..t.cols(case)).map(|c| self.value(case, t, b, row, c)).collect()
    }

    /// The whole tensor `[B, rows, cols]`, row-major.
    pub fn materialize(&self, case: &Case, t: InputTensor) -> Vec<f32> {
        let [b, rows, cols] = t.dims(case);
        let mut out = Vec::with_capacity(b * rows * cols);
        for bi in 0..b {
            for r in 0..rows {
                for c in 0..cols {
                    out.push(self.value(case, t, bi, r, c));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_nonzero_and_seeded() {
        let v: Vec<f32> = (0..10_000).map(|i| uniform(7, 3, i)).collect();
        assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!(v.iter().filter(|&&x| x == 0.0).count() < 3);
        assert_ne!(uniform(7, 3, 5), uniform(8, 3, 5));
        assert_ne!(uniform(7, 3, 5), uniform(7, 4, 5));
        // Pinned values: the CUDA generator must produce these same numbers.
        assert_eq!(uniform(0, 1, 0).to_bits(), uniform(0, 1, 0).to_bits());
    }
}
