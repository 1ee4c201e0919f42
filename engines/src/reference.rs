//! The oracle: naive f64 implementations of every computation ctxcost measures.
//!
//! All functions compute one output row (one sequence `b`, one query `i`, one head `h`) so
//! that the same code serves full verification at small sizes and sampled verification at
//! large ones. Inputs are read through a [`View`], which applies the rounding the engine's
//! precision implies (bf16, or FP8 with per-block scales), so the reference and the engine
//! see the same numbers and only the arithmetic differs.
//!
//! Top-k rule (shared by every engine): the k keys with the largest indexer score among the
//! keys visible to the query; **ties go to the smaller key position**; the selected
//! positions are returned ascending, padded with `-1` to `k = min(top_k, context)`.

use std::cmp::Ordering;
use std::collections::HashMap;

use ctxcost_core::numeric::{fake_quant_e4m3, round_bf16, ScaleKind};
use ctxcost_core::{Case, InputTensor, Inputs, Precision};

/// Case inputs as the engine sees them (rounded to its precision), as f64.
/// Rows are recomputed from the seeded generator on demand, or read from a cache of whole
/// rounded tensors ([`View::cached`]) when the case is small enough to hold them.
pub struct View<'a> {
    pub case: &'a Case,
    pub inputs: &'a Inputs,
    cache: HashMap<InputTensor, Vec<f32>>,
}

impl<'a> View<'a> {
    pub fn new(case: &'a Case, inputs: &'a Inputs) -> Self {
        Self { case, inputs, cache: HashMap::new() }
    }

    /// A view holding the given tensors materialised and rounded (fast repeated reads).
    pub fn cached(case: &'a Case, inputs: &'a Inputs, tensors: &[InputTensor]) -> Self {
        let mut cache = HashMap::new();
        for &t in tensors {
            cache.insert(t, materialize_rounded(case, inputs, t));
        }
        Self { case, inputs, cache }
    }

    /// Columns `cols` of row `r` of tensor `t` (rounded), as f64. Element-wise roundings
    /// only (bf16/f32) may be read in part; block-scaled FP8 rows are read whole.
    pub fn row_part(&self, t: InputTensor, b: usize, r: usize, cols: std::ops::Range<usize>) -> Vec<f64> {
        if let Some(data) = self.cache.get(&t) {
            let n = t.cols(self.case);
            let start = (b * t.rows(self.case) + r) * n;
            return data[start + cols.start..start + cols.end].iter().map(|&x| f64::from(x)).collect();
        }
        let elementwise = self.case.precision != Precision::Fp8 || matches!(t, InputTensor::MhaQ | InputTensor::MhaK | InputTensor::MhaV | InputTensor::MqaQ | InputTensor::IndexW);
        if elementwise {
            let raw: Vec<f32> = cols.map(|c| self.inputs.value(self.case, t, b, r, c)).collect();
            round_row(self.case, t, &raw).into_iter().map(f64::from).collect()
        } else {
            self.row(t, b, r)[cols].to_vec()
        }
    }

    /// Row `r` of tensor `t` for sequence `b`, rounded as the case's precision implies:
    /// f32 exact; bf16 every tensor except the fp32 indexer weights; fp8 the latent's first
    /// `kv_lora_rank` dims in e4m3 with an fp32 scale per 128-dim block (RoPE dims bf16), the
    /// indexer keys and queries in e4m3 with a power-of-two scale per `index_dim` block,
    /// everything else bf16.
    pub fn row(&self, t: InputTensor, b: usize, r: usize) -> Vec<f64> {
        if self.cache.contains_key(&t) {
            return self.row_part(t, b, r, 0..t.cols(self.case));
        }
        let raw = self.inputs.row(self.case, t, b, r);
        round_row(self.case, t, &raw).into_iter().map(f64::from).collect()
    }
}

/// A whole tensor `[B, rows, cols]` with the case's rounding applied row by row.
pub fn materialize_rounded(case: &Case, inputs: &Inputs, t: InputTensor) -> Vec<f32> {
    let [b, rows, _] = t.dims(case);
    let mut out = Vec::with_capacity(t.len(case));
    for bi in 0..b {
        for r in 0..rows {
            out.extend(round_row(case, t, &inputs.row(case, t, bi, r)));
        }
    }
    out
}

/// Apply a case's precision to one raw row of a tensor (shared with the CPU engines, which
/// materialise rounded inputs with it).
pub fn round_row(case: &Case, t: InputTensor, raw: &[f32]) -> Vec<f32> {
    match case.precision {
        Precision::F32 => raw.to_vec(),
        _ if t == InputTensor::IndexW => raw.to_vec(),
        Precision::Bf16 => raw.iter().map(|&x| round_bf16(x)).collect(),
        Precision::Fp8 => match t {
            InputTensor::Latent => {
                let lat = case.shape.kv_lora_rank;
                let mut out = Vec::with_capacity(raw.len());
                for block in raw[..lat].chunks(128) {
                    out.extend(fake_quant_e4m3(block, ScaleKind::Fp32).0);
                }
                out.extend(raw[lat..].iter().map(|&x| round_bf16(x)));
                out
            }
            InputTensor::IndexK | InputTensor::IndexQ => {
                let d = case.shape.index_dim;
                raw.chunks(d).flat_map(|blk| fake_quant_e4m3(blk, ScaleKind::Pow2).0).collect()
            }
            _ => raw.iter().map(|&x| round_bf16(x)).collect(),
        },
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Softmax-weighted sum: `sum_j softmax(scores)_j * values[j]`, numerically stable.
fn attend(scores: &[f64], values: &[Vec<f64>], v_dim: usize) -> Vec<f64> {
    let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut out = vec![0.0; v_dim];
    let mut denom = 0.0;
    for (s, v) in scores.iter().zip(values) {
        let p = (s - m).exp();
        denom += p;
        for (o, x) in out.iter_mut().zip(v) {
            *o += p * x;
        }
    }
    out.iter_mut().for_each(|o| *o /= denom);
    out
}

/// Dense MLA in MHA mode (prefill), causal: output of head `h` for query `i` of sequence `b`
/// (`v_head_dim` values).
pub fn mha_row(view: &View, b: usize, i: usize, h: usize) -> Vec<f64> {
    let s = &view.case.shape;
    let (qk, vd) = (s.mha_qk_dim(), s.mha_v_dim());
    let scale = s.softmax_scale();
    let qh = view.row_part(InputTensor::MhaQ, b, i, h * qk..(h + 1) * qk);
    let visible = view.case.query_position(i) + 1;
    let mut scores = Vec::with_capacity(visible);
    let mut values = Vec::with_capacity(visible);
    for key in 0..visible {
        let k = view.row_part(InputTensor::MhaK, b, key, h * qk..(h + 1) * qk);
        scores.push(dot(&qh, &k) * scale);
        values.push(view.row_part(InputTensor::MhaV, b, key, h * vd..(h + 1) * vd));
    }
    attend(&scores, &values, vd)
}

/// MLA in MQA mode over the given key positions (dense: all visible keys, `keys = None`;
/// sparse: the selected ones, `-1` entries ignored): output of head `h` for query `i`
/// (`kv_lora_rank` values).
pub fn mqa_row(view: &View, b: usize, i: usize, h: usize, keys: Option<&[i32]>) -> Vec<f64> {
    mqa_rows(view, b, i, &[h], keys).remove(0)
}

/// [`mqa_row`] for several heads at once (the latent rows are read once).
pub fn mqa_rows(view: &View, b: usize, i: usize, heads: &[usize], keys: Option<&[i32]>) -> Vec<Vec<f64>> {
    let s = &view.case.shape;
    let (kd, vd) = (s.mqa_kv_dim(), s.mqa_v_dim());
    let scale = s.softmax_scale();
    let q = view.row(InputTensor::MqaQ, b, i);
    let positions: Vec<usize> = match keys {
        None => (0..=view.case.query_position(i)).collect(),
        Some(ks) => ks.iter().filter(|&&k| k >= 0).map(|&k| k as usize).collect(),
    };
    let latents: Vec<Vec<f64>> = positions.iter().map(|&p| view.row(InputTensor::Latent, b, p)).collect();
    let values: Vec<Vec<f64>> = latents.iter().map(|l| l[..vd].to_vec()).collect();
    heads
        .iter()
        .map(|&h| {
            let qh = &q[h * kd..(h + 1) * kd];
            let scores: Vec<f64> = latents.iter().map(|l| dot(qh, l) * scale).collect();
            attend(&scores, &values, vd)
        })
        .collect()
}

/// Lightning-indexer scores of query `i` over every visible key:
/// `I[s] = sum_j w[j] * ReLU(q[j] . k[s])`, `s` in `0..=position(i)`.
pub fn indexer_scores(view: &View, b: usize, i: usize) -> Vec<f64> {
    let s = &view.case.shape;
    let d = s.index_dim;
    let q = view.row(InputTensor::IndexQ, b, i);
    let w = view.row(InputTensor::IndexW, b, i);
    let visible = view.case.query_position(i) + 1;
    (0..visible)
        .map(|key| {
            let k = view.row(InputTensor::IndexK, b, key);
            (0..s.index_heads).map(|j| w[j] * dot(&q[j * d..(j + 1) * d], &k).max(0.0)).sum()
        })
        .collect()
}

/// Order used by top-k: larger score first, ties to the smaller position.
pub fn topk_order(scores: &[f64], a: usize, b: usize) -> Ordering {
    scores[b].total_cmp(&scores[a]).then(a.cmp(&b))
}

/// Top-k selection: the `k` best positions (see the module docs), ascending, `-1` padded.
pub fn topk(scores: &[f64], k: usize) -> Vec<i32> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let take = k.min(scores.len());
    if take < idx.len() {
        idx.select_nth_unstable_by(take, |&a, &b| topk_order(scores, a, b));
        idx.truncate(take);
    }
    idx.sort_unstable();
    let mut out: Vec<i32> = idx.into_iter().map(|i| i as i32).collect();
    out.resize(k, -1);
    out
}

/// DSA for one query: indexer scores, top-k, then MQA-mode attention over the selection.
/// Returns the selection and the outputs of the given heads.
pub fn dsa_rows(view: &View, b: usize, i: usize, heads: &[usize]) -> (Vec<i32>, Vec<Vec<f64>>) {
    let scores = indexer_scores(view, b, i);
    let sel = topk(&scores, view.case.effective_top_k());
    let out = mqa_rows(view, b, i, heads, Some(&sel));
    (sel, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::{ModelShape, Phase};

    fn case(engine: &str, context: usize, q: usize) -> Case {
        Case {
            engine: engine.into(),
            method: ctxcost_core::Method::legacy_from_id(engine),
            shape: ModelShape::tiny(),
            phase: Phase::Prefill,
            context,
            batch: 1,
            query_len: q,
            precision: Precision::F32,
            seed: 3,
            kernel: Default::default(),
        }
    }

    #[test]
    fn topk_ties_go_to_smaller_position_and_pad() {
        let s = [1.0, 3.0, 3.0, 2.0, 3.0];
        assert_eq!(topk(&s, 2), vec![1, 2]);
        assert_eq!(topk(&s, 4), vec![1, 2, 3, 4]);
        assert_eq!(topk(&s[..2], 4), vec![0, 1, -1, -1]);
    }

    #[test]
    fn dsa_with_k_at_least_context_is_dense_mqa() {
        let c = case("dsa-cpu", 40, 3);
        assert!(c.shape.top_k >= c.context);
        let inputs = Inputs::seeded(9);
        let v = View::new(&c, &inputs);
        for i in 0..3 {
            let (sel, out) = dsa_rows(&v, 0, i, &[0, 5]);
            assert_eq!(sel.iter().filter(|&&x| x >= 0).count(), c.query_position(i) + 1);
            let dense = mqa_rows(&v, 0, i, &[0, 5], None);
            for (a, b) in out.iter().flatten().zip(dense.iter().flatten()) {
                assert!((a - b).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn single_key_attention_returns_its_value() {
        // The first position sees only key 0: the output is exactly v[0].
        let c = case("dense-cpu", 8, 8);
        let inputs = Inputs::seeded(5);
        let v = View::new(&c, &inputs);
        let out = mha_row(&v, 0, 0, 2);
        let vd = c.shape.mha_v_dim();
        let want = &v.row(InputTensor::MhaV, 0, 0)[2 * vd..3 * vd];
        assert!(out.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12));
    }
}
