//! The rest of a layer: the GEMMs of one layer's non-attention work, as the `rest` engines
//! time them and the reports scale them to the whole model.
//!
//! A `rest` case ([`crate::Method::Rest`]) at `T = batch x query_len` tokens (decode: one
//! token per sequence of the batch; prefill: the chunk) runs, once each:
//! - `mla_proj`: q down (hidden -> q_lora_rank), q up (-> heads x (nope + rope)), kv down
//!   (hidden -> latent + rope), the output projection (heads x v -> hidden); in decode the
//!   absorbed per-head products (q nope -> latent, latent output -> v, `heads` batched GEMMs),
//!   in prefill the kv up-projection of the chunk's latents (-> heads x (nope + v), MHA mode).
//! - `indexer_proj` (shapes with a lightning indexer): q (q_lora_rank -> index heads x dim),
//!   k (hidden -> dim), head weights (hidden -> index heads).
//! - `router`: hidden -> routed experts.
//! - `moe`: the shared expert on every token and each routed expert held on this GPU on the
//!   tokens routed to it, each a SwiGLU as two GEMMs (gate and up fused: hidden -> 2 x inter;
//!   down: inter -> hidden).
//! - `dense_mlp`: the dense SwiGLU MLP of the leading layers (hidden -> 2 x dense inter -> hidden).
//! - `head`: the LM head (hidden -> vocab), on every token in decode and on one token per
//!   sequence in prefill (logits only at the end of a prompt).
//!
//! Routing ([`expert_tokens`]): uniform at random, with expert parallelism `ep` (the shape's
//! `ep`, from `--ep`): the deployment has `ep` GPUs each holding `routed_experts / ep` experts
//! and each bringing `T` tokens; every one of the `T x ep` tokens picks `active_experts`
//! distinct experts uniformly; this GPU runs experts `0 .. routed_experts / ep` on the tokens
//! that picked them. Seeded, so every engine routes the same way.
//!
//! Only GEMMs are timed: norms, RoPE, the SwiGLU activation, the router's top-k, the
//! embedding lookup (a row gather, no FLOPs) and the all-to-all communication of expert
//! parallelism are not. Every GEMM reads its own seeded input (`[batch, m, k]`) and weight
//! (`[batch, k, n]`), so any output element can be recomputed from the generator:
//! `uniform(seed, stream, index)` with the streams of [`Gemm`] (from 0x100 up; the attention
//! tensors use streams 1 to 8).
//!
//! FP8 (`fp8` cases, DeepSeek-V3's recipe): the GEMMs [`Gemm::fp8`] marks run block-scaled
//! FP8 e4m3 with fp32 accumulation and a bf16 output. Weights are an FP8 checkpoint: e4m3 codes
//! ([`fp8_weight_code`]) with one fp32 scale per 128 x 128 block ([`fp8_weight_scale`]), both
//! from the generator. Activations are the bf16 inputs quantised by the engine, inside the
//! timed span, in groups of 1 x 128 along k: scale = max(amax, 1e-12) / 448 (fp32), code =
//! e4m3(x / scale) rounded to nearest even ([`fp8_quantise_row`]). The absorbed per-head
//! products, the router, the indexer's head weights and the LM head stay bf16, as in
//! DeepSeek's inference code (it keeps those weights in bf16 and multiplies the absorbed
//! products with dequantised weights).
//!
//! Whole model ([`model_ms`]): `layers x (mla_proj + indexer_proj) + moe_layers x (router +
//! moe) + dense_layers x dense_mlp + head`, from one run's component times.

use crate::analytic::Work;
use crate::inputs::uniform;
use crate::numeric::{e4m3_scale, round_bf16, round_e4m3, ScaleKind, E4M3_MAX};
use crate::{Case, Phase, Precision};

/// Which part of the layer a GEMM belongs to (the record's `components_ms` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    MlaProj,
    IndexerProj,
    Router,
    Moe,
    DenseMlp,
    Head,
}

impl Component {
    pub const ALL: [Component; 6] =
        [Component::MlaProj, Component::IndexerProj, Component::Router, Component::Moe, Component::DenseMlp, Component::Head];

    /// The name in `components_ms`.
    pub fn name(self) -> &'static str {
        match self {
            Component::MlaProj => "mla_proj",
            Component::IndexerProj => "indexer_proj",
            Component::Router => "router",
            Component::Moe => "moe",
            Component::DenseMlp => "dense_mlp",
            Component::Head => "head",
        }
    }
}

/// Seeded stream of the routing draws.
pub const ROUTING_STREAM: u64 = 0xF0;
/// First stream of the GEMM operands: GEMM `i` has weights `0x100 + 2i`, inputs `0x101 + 2i`.
pub const FIRST_GEMM_STREAM: u64 = 0x100;

/// One GEMM (or `batch` independent ones of the same size): `out[b] = input[b] x weight[b]`,
/// input `[m, k]`, weight `[k, n]`, output `[m, n]`, all row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Gemm {
    pub name: &'static str,
    pub component: Component,
    /// The routed expert (local index) of an expert GEMM.
    pub expert: Option<usize>,
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub weight_stream: u64,
    pub input_stream: u64,
    /// Runs block-scaled FP8 (only in `fp8` cases, only on unbatched GEMMs; see the module
    /// doc); otherwise bf16 (or f32 in `f32` cases).
    pub fp8: bool,
}

/// Edge of an FP8 scale block: 1 x 128 activation groups, 128 x 128 weight blocks.
pub const FP8_BLOCK: usize = 128;

/// The GEMMs an `fp8` case runs in FP8: every linear layer except the absorbed per-head
/// products, the router, the indexer's head weights and the LM head.
fn runs_fp8(name: &str) -> bool {
    !matches!(name, "q_absorb" | "o_absorb" | "index_w" | "router" | "lm_head")
}

impl Gemm {
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.k * self.n) as f64
    }
    /// Elements of the input, weight and output.
    pub fn elements(&self) -> (usize, usize, usize) {
        (self.batch * self.m * self.k, self.batch * self.k * self.n, self.batch * self.m * self.n)
    }
    /// 128-element blocks along k and along n (the last ones partial).
    pub fn blocks(&self) -> (usize, usize) {
        (self.k.div_ceil(FP8_BLOCK), self.n.div_ceil(FP8_BLOCK))
    }
    /// Bytes moved once each: input, weight and output at the GEMM's precision (an FP8 GEMM
    /// also reads its bf16 input once to quantise it, and writes bf16).
    pub fn bytes(&self, precision: Precision) -> f64 {
        let (i, w, o) = self.elements();
        let (i, w, o) = (i as f64, w as f64, o as f64);
        if self.fp8 {
            let (kb, nb) = self.blocks();
            // bf16 read + e4m3 write + e4m3 read of the input, its scales; weight codes and scales; bf16 output.
            (2.0 + 1.0 + 1.0) * i + 4.0 * (self.m * kb) as f64 + w + 4.0 * (kb * nb) as f64 + 2.0 * o
        } else {
            (i + w + o) * precision.element_bytes() as f64
        }
    }
}

/// Stream of a GEMM's FP8 weight block scales.
pub fn weight_scale_stream(g: &Gemm) -> u64 {
    g.weight_stream | (1 << 32)
}

/// The e4m3 code (as its f32 value) of weight element `[row, col]` of an FP8 GEMM:
/// `e4m3(448 x uniform)`, so codes span the whole e4m3 range.
#[inline]
pub fn fp8_weight_code(case: &Case, g: &Gemm, row: usize, col: usize) -> f32 {
    round_e4m3(E4M3_MAX * uniform(case.seed, g.weight_stream, (row * g.n + col) as u64))
}

/// The fp32 scale of weight block `[kb, nb]` (rows `128 kb ..`, columns `128 nb ..`) of an FP8
/// GEMM: `(1.5 + 0.5 x uniform) / 448`, so dequantised weights lie in (-2, 2).
#[inline]
pub fn fp8_weight_scale(case: &Case, g: &Gemm, kb: usize, nb: usize) -> f32 {
    let u = uniform(case.seed, weight_scale_stream(g), (kb * g.blocks().1 + nb) as u64);
    (1.5 + 0.5 * u) / E4M3_MAX
}

/// One 1 x 128 group of activations quantised to e4m3 as the engines do: the group's fp32
/// scale and the codes (as f32 values); the dequantised value is `code x scale`.
pub fn fp8_quantise_group(x: &[f32]) -> (f32, Vec<f32>) {
    let s = e4m3_scale(x, ScaleKind::Fp32);
    (s, x.iter().map(|&v| round_e4m3(v / s)).collect())
}

/// A row of input as an FP8 GEMM multiplies it: quantised group by group, dequantised exactly
/// (f64).
pub fn fp8_quantise_row(x: &[f32]) -> Vec<f64> {
    x.chunks(FP8_BLOCK)
        .flat_map(|group| {
            let (s, codes) = fp8_quantise_group(group);
            codes.into_iter().map(move |c| f64::from(c) * f64::from(s))
        })
        .collect()
}

/// Tokens this GPU runs through the layer: `batch x query_len`.
pub fn tokens(case: &Case) -> usize {
    case.query_tokens()
}

/// Rows of the LM head: every token in decode, one per sequence in prefill.
pub fn head_rows(case: &Case) -> usize {
    match case.phase {
        Phase::Decode => case.query_tokens(),
        Phase::Prefill => case.batch,
    }
}

/// Tokens routed to each of this GPU's experts (`routed_experts / ep` of them), from routing
/// the `T x ep` tokens of the deployment uniformly at random, `active_experts` distinct
/// experts per token (a partial Fisher-Yates shuffle driven by the seeded generator).
pub fn expert_tokens(case: &Case) -> Vec<usize> {
    let s = &case.shape;
    let (e, k) = (s.routed_experts, s.active_experts.min(s.routed_experts));
    let local = s.local_experts();
    let mut counts = vec![0usize; local];
    if e == 0 || k == 0 {
        return counts;
    }
    let global = tokens(case) * s.ep.max(1);
    let mut perm: Vec<usize> = (0..e).collect();
    for t in 0..global {
        for j in 0..k {
            let u = (f64::from(uniform(case.seed, ROUTING_STREAM, (t * k + j) as u64)) + 1.0) / 2.0;
            let pick = j + ((u * (e - j) as f64) as usize).min(e - j - 1);
            perm.swap(j, pick);
            if perm[j] < local {
                counts[perm[j]] += 1;
            }
        }
        // Undo the swaps in reverse so each token starts from the identity permutation.
        for j in (0..k).rev() {
            let u = (f64::from(uniform(case.seed, ROUTING_STREAM, (t * k + j) as u64)) + 1.0) / 2.0;
            let pick = j + ((u * (e - j) as f64) as usize).min(e - j - 1);
            perm.swap(j, pick);
        }
    }
    counts
}

/// The GEMMs of one run of a `rest` case, in the order they run (grouped by component in
/// [`Component::ALL`] order). Experts that receive no token have no GEMM.
pub fn plan(case: &Case) -> Vec<Gemm> {
    let s = &case.shape;
    let t = tokens(case);
    let h = s.heads;
    let fp8 = case.precision == Precision::Fp8;
    let mut out: Vec<Gemm> = Vec::new();
    let mut push = |name: &'static str, component: Component, expert: Option<usize>, batch: usize, m: usize, k: usize, n: usize| {
        let i = out.len() as u64;
        out.push(Gemm {
            name,
            component,
            expert,
            batch,
            m,
            k,
            n,
            weight_stream: FIRST_GEMM_STREAM + 2 * i,
            input_stream: FIRST_GEMM_STREAM + 2 * i + 1,
            fp8: fp8 && batch == 1 && runs_fp8(name),
        });
    };
    let c = Component::MlaProj;
    push("q_down", c, None, 1, t, s.hidden_dim, s.q_lora_rank);
    push("q_up", c, None, 1, t, s.q_lora_rank, h * s.mha_qk_dim());
    push("kv_down", c, None, 1, t, s.hidden_dim, s.mqa_kv_dim());
    match case.phase {
        Phase::Decode => {
            push("q_absorb", c, None, h, t, s.qk_nope_dim, s.kv_lora_rank);
            push("o_absorb", c, None, h, t, s.kv_lora_rank, s.v_head_dim);
        }
        Phase::Prefill => push("kv_up", c, None, 1, t, s.kv_lora_rank, h * (s.qk_nope_dim + s.v_head_dim)),
    }
    push("o_proj", c, None, 1, t, h * s.v_head_dim, s.hidden_dim);
    if s.has_indexer() {
        let c = Component::IndexerProj;
        push("index_q", c, None, 1, t, s.q_lora_rank, s.index_heads * s.index_dim);
        push("index_k", c, None, 1, t, s.hidden_dim, s.index_dim);
        push("index_w", c, None, 1, t, s.hidden_dim, s.index_heads);
    }
    push("router", Component::Router, None, 1, t, s.hidden_dim, s.routed_experts);
    let c = Component::Moe;
    if s.shared_experts > 0 {
        let inter = s.shared_experts * s.moe_inter_dim;
        push("shared_gate_up", c, None, 1, t, s.hidden_dim, 2 * inter);
        push("shared_down", c, None, 1, t, inter, s.hidden_dim);
    }
    for (e, &n) in expert_tokens(case).iter().enumerate() {
        if n > 0 {
            push("expert_gate_up", c, Some(e), 1, n, s.hidden_dim, 2 * s.moe_inter_dim);
            push("expert_down", c, Some(e), 1, n, s.moe_inter_dim, s.hidden_dim);
        }
    }
    let c = Component::DenseMlp;
    push("dense_gate_up", c, None, 1, t, s.hidden_dim, 2 * s.dense_inter_dim);
    push("dense_down", c, None, 1, t, s.dense_inter_dim, s.hidden_dim);
    push("lm_head", Component::Head, None, 1, head_rows(case), s.hidden_dim, s.vocab);
    out
}

/// Why a case cannot be a `rest` case, if it cannot.
pub fn unsupported(case: &Case) -> Option<String> {
    if let Err(e) = case.validate() {
        return Some(format!("invalid case: {e}"));
    }
    if !case.shape.has_rest_geometry() {
        return Some(format!("shape `{}` records no geometry for the rest of the layer", case.shape.name));
    }
    None
}

/// Round a generated value to the case's compute precision (bf16 for `bf16` and `fp8`).
fn rounded(x: f32, precision: Precision) -> f32 {
    match precision {
        Precision::F32 => x,
        Precision::Bf16 | Precision::Fp8 => round_bf16(x),
    }
}

/// Input element `[b, row, col]` of a GEMM (rounded to the case's precision).
#[inline]
pub fn input_value(case: &Case, g: &Gemm, b: usize, row: usize, col: usize) -> f32 {
    rounded(uniform(case.seed, g.input_stream, ((b * g.m + row) * g.k + col) as u64), case.precision)
}

/// Weight element `[b, row, col]` of a GEMM (rounded to the case's precision). Not for FP8
/// GEMMs: see [`reference_weight`].
#[inline]
pub fn weight_value(case: &Case, g: &Gemm, b: usize, row: usize, col: usize) -> f32 {
    rounded(uniform(case.seed, g.weight_stream, ((b * g.k + row) * g.n + col) as u64), case.precision)
}

/// Weight element `[b, row, col]` as the GEMM multiplies it, exactly (f64): the rounded value,
/// or for an FP8 GEMM its code times its block's scale.
pub fn reference_weight(case: &Case, g: &Gemm, b: usize, row: usize, col: usize) -> f64 {
    if g.fp8 {
        f64::from(fp8_weight_code(case, g, row, col)) * f64::from(fp8_weight_scale(case, g, row / FP8_BLOCK, col / FP8_BLOCK))
    } else {
        f64::from(weight_value(case, g, b, row, col))
    }
}

/// Input row `[b, row, ..]` as the GEMM multiplies it, exactly (f64): the rounded values, or
/// for an FP8 GEMM their quantised values ([`fp8_quantise_row`]).
pub fn reference_input_row(case: &Case, g: &Gemm, b: usize, row: usize) -> Vec<f64> {
    let x: Vec<f32> = (0..g.k).map(|k| input_value(case, g, b, row, k)).collect();
    if g.fp8 {
        fp8_quantise_row(&x)
    } else {
        x.into_iter().map(f64::from).collect()
    }
}

/// The analytic work of one run: 2 m k n per GEMM; bytes = inputs, weights and outputs once
/// each at each GEMM's precision ([`Gemm::bytes`]).
pub fn work(case: &Case) -> Work {
    let gemms = plan(case);
    let flops = gemms.iter().map(Gemm::flops).sum();
    let bytes = gemms.iter().map(|g| g.bytes(case.precision)).sum();
    Work { flops, indexer_flops: 0.0, attention_flops: 0.0, bytes }
}

/// The whole model's non-attention time per run, from one run's component times (ms), as
/// `(without the indexer's projections, the indexer's projections)`: the first is what a
/// model without the indexer (V3.1-Terminus) spends, the DSA side adds the second.
/// `layers x mla_proj + moe_layers x (router + moe) + dense_layers x dense_mlp + head`, and
/// `layers x indexer_proj`.
pub fn model_ms(shape: &crate::ModelShape, component_ms: impl Fn(Component) -> f64) -> (f64, f64) {
    let (l, moe, dense) = (f64::from(shape.layers), f64::from(shape.moe_layers()), f64::from(shape.dense_layers));
    let base = l * component_ms(Component::MlaProj)
        + moe * (component_ms(Component::Router) + component_ms(Component::Moe))
        + dense * component_ms(Component::DenseMlp)
        + component_ms(Component::Head);
    (base, l * component_ms(Component::IndexerProj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Method, ModelShape};

    fn case(shape: ModelShape, phase: Phase, batch: usize, q: usize) -> Case {
        Case { engine: "rest-cpu".into(), method: Method::Rest, shape, phase, context: 4096.max(q), batch, query_len: q, precision: Precision::Bf16, seed: 5, kernel: Default::default() }
    }

    #[test]
    fn routing_sends_each_token_to_k_distinct_experts() {
        let c = case(ModelShape::deepseek_v32_exp(), Phase::Decode, 64, 1);
        let all = expert_tokens(&c);
        assert_eq!(all.len(), 256);
        assert_eq!(all.iter().sum::<usize>(), 64 * 8);
        // EP 8: 32 experts here, receiving their share of 8 x 64 tokens: about 8 x 64 again.
        let c8 = Case { shape: ModelShape { ep: 8, ..c.shape.clone() }, ..c.clone() };
        let part = expert_tokens(&c8);
        assert_eq!(part.len(), 32);
        let n: usize = part.iter().sum();
        assert!((400..=630).contains(&n), "{n}");
        // Distinct experts per token: with k = E every token reaches every expert once.
        let mut s = ModelShape::tiny();
        s.active_experts = s.routed_experts;
        let every = expert_tokens(&case(s, Phase::Decode, 3, 1));
        assert!(every.iter().all(|&x| x == 3), "{every:?}");
        // Seeded: the same case routes the same way, another seed differently.
        assert_eq!(expert_tokens(&c), all);
        assert_ne!(expert_tokens(&Case { seed: 6, ..c }), all);
    }

    #[test]
    fn v32_plan_matches_the_geometry() {
        let c = case(ModelShape::deepseek_v32_exp(), Phase::Decode, 16, 1);
        let p = plan(&c);
        let g = |name: &str| p.iter().find(|g| g.name == name).unwrap().clone();
        assert_eq!((g("q_up").k, g("q_up").n), (1536, 128 * 192));
        assert_eq!((g("kv_down").n, g("q_absorb").batch, g("q_absorb").k, g("q_absorb").n), (576, 128, 128, 512));
        assert_eq!((g("o_proj").k, g("o_proj").n), (128 * 128, 7168));
        assert_eq!((g("index_q").n, g("index_k").n, g("index_w").n, g("router").n), (8192, 128, 64, 256));
        assert_eq!((g("shared_gate_up").n, g("dense_gate_up").n, g("lm_head").n, g("lm_head").m), (4096, 2 * 18432, 129280, 16));
        let experts = p.iter().filter(|g| g.name == "expert_gate_up");
        assert_eq!(experts.map(|g| g.m).sum::<usize>(), 16 * 8);
        // Streams are distinct and clear of the attention tensors.
        let mut streams: Vec<u64> = p.iter().flat_map(|g| [g.weight_stream, g.input_stream]).collect();
        streams.sort_unstable();
        streams.dedup();
        assert_eq!(streams.len(), 2 * p.len());
        assert!(streams[0] > 8);
        // Prefill: kv up instead of the absorbed products; the head on one token per sequence.
        let pf = plan(&case(ModelShape::deepseek_v32_exp(), Phase::Prefill, 1, 4096));
        assert!(pf.iter().any(|g| g.name == "kv_up" && g.n == 128 * 256) && !pf.iter().any(|g| g.name == "q_absorb"));
        assert_eq!(pf.last().unwrap().m, 1);
        // No indexer on V3.1.
        assert!(!plan(&case(ModelShape::deepseek_v31_terminus(), Phase::Decode, 4, 1)).iter().any(|g| g.component == Component::IndexerProj));
        // Work: the FLOPs of every GEMM.
        let w = work(&c);
        assert_eq!(w.flops, p.iter().map(|g| 2.0 * (g.batch * g.m * g.k * g.n) as f64).sum::<f64>());
        assert!(w.bytes > 2.0 * 7168.0 * 129280.0);
    }

    #[test]
    fn fp8_runs_the_linear_layers_and_keeps_the_rest_bf16() {
        let mut c = case(ModelShape::deepseek_v32_exp(), Phase::Decode, 16, 1);
        assert!(plan(&c).iter().all(|g| !g.fp8));
        c.precision = Precision::Fp8;
        let p = plan(&c);
        let fp8: Vec<&str> = p.iter().filter(|g| g.fp8).map(|g| g.name).collect();
        for name in ["q_down", "q_up", "kv_down", "o_proj", "index_q", "index_k", "shared_gate_up", "expert_down", "dense_down"] {
            assert!(fp8.contains(&name), "{name} {fp8:?}");
        }
        for name in ["q_absorb", "o_absorb", "index_w", "router", "lm_head"] {
            assert!(!fp8.contains(&name), "{name}");
        }
        // FP8 GEMMs move fewer bytes than the same GEMMs in bf16.
        let bf = Case { precision: Precision::Bf16, ..c.clone() };
        assert!(work(&c).bytes < 0.7 * work(&bf).bytes, "{} {}", work(&c).bytes, work(&bf).bytes);
        assert_eq!(work(&c).flops, work(&bf).flops);
    }

    #[test]
    fn fp8_values_are_codes_times_scales() {
        let mut c = case(ModelShape::deepseek_v32_exp(), Phase::Decode, 4, 1);
        c.precision = Precision::Fp8;
        let p = plan(&c);
        let g = p.iter().find(|g| g.name == "kv_down").unwrap();
        assert_eq!(g.blocks(), (56, 5)); // k 7168, n 576: a partial last column block
        let mut seen_scales = std::collections::BTreeSet::new();
        for (row, col) in [(0, 0), (127, 127), (128, 0), (7167, 575), (300, 520)] {
            let code = fp8_weight_code(&c, g, row, col);
            assert_eq!(round_e4m3(code), code);
            assert!(code.abs() <= E4M3_MAX);
            let s = fp8_weight_scale(&c, g, row / 128, col / 128);
            assert!((1.0 / 448.0..2.0 / 448.0).contains(&s), "{s}");
            seen_scales.insert(s.to_bits());
            assert_eq!(reference_weight(&c, g, 0, row, col), f64::from(code) * f64::from(s));
        }
        assert!(seen_scales.len() >= 4, "blocks have their own scales");
        // The same element of the same block shares the scale; a neighbour block does not.
        assert_eq!(fp8_weight_scale(&c, g, 0, 0), fp8_weight_scale(&c, g, 0, 0));
        assert_ne!(fp8_weight_scale(&c, g, 0, 0), fp8_weight_scale(&c, g, 0, 1));
        // Inputs: quantised in groups of 128, within e4m3's relative step of the bf16 values.
        let row = reference_input_row(&c, g, 0, 2);
        let raw: Vec<f32> = (0..g.k).map(|k| input_value(&c, g, 0, 2, k)).collect();
        assert_eq!(row.len(), g.k);
        let amax = raw[..128].iter().fold(0f32, |m, x| m.max(x.abs()));
        for (q, x) in row.iter().zip(&raw) {
            assert!((q - f64::from(*x)).abs() <= 0.0625 * f64::from(x.abs()) + 1e-3 * f64::from(amax), "{q} {x}");
        }
        assert!(row.iter().zip(&raw).any(|(q, x)| *q != f64::from(*x)), "quantisation changes some values");
        // The largest element of a group maps to 448 exactly.
        let (s, codes) = fp8_quantise_group(&raw[..128]);
        assert_eq!(s, amax / 448.0);
        assert!(codes.iter().any(|c| c.abs() == 448.0));
        // bf16 GEMMs of an fp8 case read their rounded values.
        let r = p.iter().find(|g| g.name == "router").unwrap();
        assert_eq!(reference_weight(&c, r, 0, 3, 5), f64::from(weight_value(&c, r, 0, 3, 5)));
    }

    #[test]
    fn whole_model_weights_each_component_by_its_layers() {
        let s = ModelShape::deepseek_v32_exp();
        let ms = |c: Component| match c {
            Component::MlaProj => 1.0,
            Component::IndexerProj => 0.5,
            Component::Router => 0.25,
            Component::Moe => 4.0,
            Component::DenseMlp => 3.0,
            Component::Head => 7.0,
        };
        // 61 x 1 + 58 x 4.25 + 3 x 3 + 7 = 323.5; indexer 61 x 0.5.
        assert_eq!(model_ms(&s, ms), (323.5, 30.5));
    }

    #[test]
    fn rest_method_and_key() {
        assert_eq!(Method::parse("rest").unwrap(), Method::Rest);
        assert_eq!(serde_json::to_string(&Method::Rest).unwrap(), "\"rest\"");
        assert!(Method::parse("gemm").unwrap_err().to_string().contains("rest"));
        let c = case(ModelShape { ep: 8, ..ModelShape::tiny() }, Phase::Decode, 4, 1);
        assert!(c.key().ends_with("|ep=8"), "{}", c.key());
        assert!(c.is_rest());
        // Attention keys are unchanged by the EP degree.
        let d = Case { engine: "dense-cpu".into(), method: Method::Dense, ..c };
        assert!(!d.key().contains("ep="));
    }
}
