//! The host side of the CUDA engines' inputs: the bf16 and FP8 (e4m3) codec, and the device
//! layouts of inputs loaded from a file (`--tensors`), ready to upload.
//!
//! Seeded inputs are generated on the device (`kernels/generate.cu`, `gen_f32` and
//! `gen_e4m3_pow2` in `indexer.cu`, launched from `launch`); loaded ones are encoded here, with the
//! same roundings as `reference::round_row`, so both paths give the kernels the same bytes.

use ctxcost_core::numeric::{e4m3_scale, round_bf16, round_e4m3, ScaleKind};
use ctxcost_core::{Case, InputTensor, Inputs};

/// Bits of `x` rounded to bf16.
pub fn bf16_bits(x: f32) -> u16 {
    (round_bf16(x).to_bits() >> 16) as u16
}

/// Bits of an exact e4m3 value (as `round_e4m3` returns).
pub fn e4m3_bits(r: f32) -> u8 {
    let sign = if r.is_sign_negative() { 0x80u8 } else { 0 };
    let a = r.abs();
    if a == 0.0 {
        return sign;
    }
    if a < 2f32.powi(-6) {
        return sign | (a * 512.0) as u8;
    }
    let e = ((a.to_bits() >> 23) & 0xFF) as i32 - 127;
    let mant = ((a.to_bits() >> 20) & 7) as u8;
    sign | (((e + 7) as u8) << 3) | mant
}

/// The value of an e4m3 code (sign, exponent with bias 7, 3 mantissa bits, subnormals at 2^-9).
#[cfg(test)]
pub fn e4m3_value(bits: u8) -> f32 {
    let e = ((bits >> 3) & 0xF) as i32;
    let m = (bits & 7) as f32;
    let v = if e == 0 { m * 2f32.powi(-9) } else { (1.0 + m / 8.0) * 2f32.powi(e - 7) };
    if bits & 0x80 != 0 {
        -v
    } else {
        v
    }
}

/// One latent row in the FP8 cache layout: e4m3 codes, fp32 scales, bf16 RoPE dims.
pub fn encode_fp8_latent_row(raw: &[f32], lat: usize, out: &mut Vec<u8>) {
    let mut scales = Vec::new();
    for block in raw[..lat].chunks(128) {
        let s = e4m3_scale(block, ScaleKind::Fp32);
        scales.push(s);
        out.extend(block.iter().map(|&x| e4m3_bits(round_e4m3(x / s))));
    }
    for s in scales {
        out.extend_from_slice(&s.to_le_bytes());
    }
    for &x in &raw[lat..] {
        out.extend_from_slice(&bf16_bits(x).to_le_bytes());
    }
}

/// The FP8 latent cache `[B, L, 656 bytes]` of a loaded latent tensor.
pub fn fp8_latent_cache(case: &Case, inputs: &Inputs) -> Vec<u8> {
    let (b, l) = (case.batch, case.context);
    let lat = case.shape.kv_lora_rank;
    let mut bytes = Vec::with_capacity(b * l * (lat + 4 * (lat / 128) + 2 * case.shape.qk_rope_dim));
    for bi in 0..b {
        for key in 0..l {
            encode_fp8_latent_row(&inputs.row(case, InputTensor::Latent, bi, key), lat, &mut bytes);
        }
    }
    bytes
}

/// Host copy of a loaded tensor as bf16 bits: logical `[B, R, H, D]` read through
/// `Inputs::value`, written in (b, h, r, d) order when `head_major` (else in its logical layout
/// `[B, R, H * D]`, and `heads` is not used).
pub fn host_bf16(case: &Case, inputs: &Inputs, t: InputTensor, heads: usize, head_major: bool) -> Vec<u16> {
    let [b, r, cols] = t.dims(case);
    let d = cols / heads;
    let mut out = Vec::with_capacity(b * r * cols);
    for bi in 0..b {
        if head_major {
            for h in 0..heads {
                for ri in 0..r {
                    out.extend((0..d).map(|di| bf16_bits(inputs.value(case, t, bi, ri, h * d + di))));
                }
            }
        } else {
            for ri in 0..r {
                out.extend((0..cols).map(|c| bf16_bits(inputs.value(case, t, bi, ri, c))));
            }
        }
    }
    out
}

/// A loaded indexer tensor as e4m3 codes with one power-of-two scale per 128-value block (as
/// `reference::round_row` quantises it). Scales of block `j` of row `r` of sequence `b` land at
/// `b * scale_stride + r * blocks + j`.
pub fn host_e4m3_pow2(case: &Case, inputs: &Inputs, t: InputTensor, scale_stride: usize) -> (Vec<u8>, Vec<f32>) {
    let [b, r, c] = t.dims(case);
    let blocks = c / 128;
    let mut codes = Vec::with_capacity(b * r * c);
    let mut scales = vec![1.0f32; b * scale_stride];
    for bi in 0..b {
        for ri in 0..r {
            let raw = inputs.row(case, t, bi, ri);
            for (j, block) in raw.chunks(128).enumerate() {
                let s = e4m3_scale(block, ScaleKind::Pow2);
                scales[bi * scale_stride + ri * blocks + j] = s;
                codes.extend(block.iter().map(|&x| e4m3_bits(round_e4m3(x / s))));
            }
        }
    }
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctxcost_core::{ModelShape, Phase, Precision};

    #[test]
    fn e4m3_codes_round_trip() {
        for i in 0..4000 {
            let x = ctxcost_core::inputs::uniform(3, 5, i) * 448.0;
            let r = round_e4m3(x);
            assert_eq!(e4m3_value(e4m3_bits(r)), r, "x {x}");
        }
        let mut row = Vec::new();
        let raw: Vec<f32> = (0..576).map(|i| ctxcost_core::inputs::uniform(1, 5, i)).collect();
        encode_fp8_latent_row(&raw, 512, &mut row);
        assert_eq!(row.len(), 656);
    }

    #[test]
    fn host_fp8_indexer_rows_match_the_reference_rounding() {
        let c = Case {
            engine: "dsa-cuda".into(),
            method: ctxcost_core::Method::Dsa,
            shape: ModelShape::deepseek_v32_exp(),
            phase: Phase::Decode,
            context: 8,
            batch: 1,
            query_len: 1,
            precision: Precision::Fp8,
            seed: 1,
            kernel: Default::default(),
        };
        let inputs = Inputs::seeded(7);
        let (codes, scales) = host_e4m3_pow2(&c, &inputs, InputTensor::IndexK, 8);
        let view = crate::reference::View::new(&c, &inputs);
        for key in 0..8 {
            let want = view.row(InputTensor::IndexK, 0, key);
            for d in 0..128 {
                assert_eq!((e4m3_value(codes[key * 128 + d]) * scales[key]) as f64, want[d], "key {key} dim {d}");
            }
            assert_eq!(scales[key], scales[key].log2().round().exp2(), "power of two");
        }
    }

    #[test]
    fn head_major_layout_transposes_rows_and_heads() {
        let c = Case {
            engine: "dense-cuda".into(),
            method: ctxcost_core::Method::Dense,
            shape: ModelShape::deepseek_v32_exp(),
            phase: Phase::Prefill,
            context: 4,
            batch: 1,
            query_len: 2,
            precision: Precision::Bf16,
            seed: 1,
            kernel: Default::default(),
        };
        let inputs = Inputs::seeded(3);
        let h = c.shape.heads;
        let logical = host_bf16(&c, &inputs, InputTensor::MhaK, h, false);
        let major = host_bf16(&c, &inputs, InputTensor::MhaK, h, true);
        let [_, r, cols] = InputTensor::MhaK.dims(&c);
        let d = cols / h;
        assert_eq!(logical.len(), major.len());
        // Row 1, head 3, dim 5 in both layouts.
        assert_eq!(logical[cols + 3 * d + 5], major[3 * r * d + d + 5]);
    }
}
