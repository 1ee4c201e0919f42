//! Number formats the engines compute in, reproduced exactly on the host so the reference
//! sees the same rounded inputs as the engine: bf16 (round to nearest even) and FP8 e4m3
//! with per-block scales (DSA.md section 1).

/// Round an f32 to the nearest bf16 (ties to even), returned as f32.
pub fn round_bf16(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let b = x.to_bits();
    let lsb = (b >> 16) & 1;
    let r = b.wrapping_add(0x7FFF + lsb) & 0xFFFF_0000;
    f32::from_bits(r)
}

/// Largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Round an f32 to the nearest FP8 e4m3 value (ties to even, saturating at +-448), as f32.
pub fn round_e4m3(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs().min(E4M3_MAX);
    if a == 0.0 {
        return 0.0f32.copysign(x);
    }
    // e4m3: exponent bias 7, 3 mantissa bits, subnormals below 2^-6 with step 2^-9.
    let e = a.log2().floor().max(-6.0);
    let step = (e - 3.0).exp2();
    let q = a / step;
    let r = q.round_ties_even_compat() * step;
    r.min(E4M3_MAX).copysign(x)
}

trait RoundEven {
    fn round_ties_even_compat(self) -> Self;
}
impl RoundEven for f32 {
    fn round_ties_even_compat(self) -> f32 {
        let r = self.round();
        if (self - self.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
            r - self.signum()
        } else {
            r
        }
    }
}

/// How a block's scale is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleKind {
    /// fp32 scale = amax / 448 (FlashMLA's FP8 latent cache).
    Fp32,
    /// power-of-two scale >= amax / 448 ("ue8m0", DeepSeek's indexer).
    Pow2,
}

/// The scale of one block for e4m3 quantisation.
pub fn e4m3_scale(block: &[f32], kind: ScaleKind) -> f32 {
    let amax = block.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let s = amax / E4M3_MAX;
    match kind {
        ScaleKind::Fp32 => s,
        ScaleKind::Pow2 => s.log2().ceil().exp2(),
    }
}

/// Quantise a block to e4m3 with one scale and return the dequantised values and the scale.
pub fn fake_quant_e4m3(block: &[f32], kind: ScaleKind) -> (Vec<f32>, f32) {
    let s = e4m3_scale(block, kind);
    (block.iter().map(|&x| round_e4m3(x / s) * s).collect(), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even -> 1.
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_bf16(-0.3), -0.30078125);
    }

    #[test]
    fn e4m3_rounding() {
        assert_eq!(round_e4m3(1.0), 1.0);
        assert_eq!(round_e4m3(1.0625), 1.0); // tie between 1.0 and 1.125 -> even (1.0)
        assert_eq!(round_e4m3(1.1), 1.125);
        assert_eq!(round_e4m3(500.0), 448.0);
        assert_eq!(round_e4m3(-3.3), -3.25);
        assert_eq!(round_e4m3(2f32.powi(-9)), 2f32.powi(-9)); // smallest subnormal
        let (q, s) = fake_quant_e4m3(&[0.5, -1.0, 0.25], ScaleKind::Pow2);
        assert_eq!(s, (1.0f32 / 448.0).log2().ceil().exp2());
        assert!(q.iter().zip([0.5f32, -1.0, 0.25]).all(|(a, b)| (a - b).abs() <= 0.07 * b.abs()));
    }
}
