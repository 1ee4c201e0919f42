//! Operands as the CPU engines hold them, and the layout work done once in `prepare`.
//!
//! A [`Stored`] operand is a 3-D array: in f32 cases a candle tensor (blocks are views, no
//! copy); in bf16 cases the bf16 values as their 16-bit patterns, half the bytes, widened to
//! an f32 tensor block by block right before each product. That is what candle-core's own
//! bf16 matmul does on the CPU (it has no bf16 GEMM kernel: it widens both operands to f32,
//! multiplies and rounds the product to bf16), minus the rounding of the product, and it
//! widens only the block a product reads. The values are the case's rounded inputs
//! ([`crate::reference::materialize_rounded`]), so the bf16 patterns are exact.

use std::ops::Range;

use candle_core::{Device, Tensor};

use super::ops::{backend, with_f32};
use crate::EngineError;

/// A 3-D operand `[d0, d1, d2]`, row-major.
pub(crate) enum Stored {
    F32(Tensor),
    Bf16 { bits: Vec<u16>, dims: [usize; 3] },
}

/// An element type the gathers read: f32, or bf16 bits.
pub(crate) trait Widen: Copy + Send + Sync {
    fn widen(self) -> f32;
}

impl Widen for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl Widen for u16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits(u32::from(self) << 16)
    }
}

impl Stored {
    /// Hold `data` (`dims`, row-major, already rounded to the case's precision).
    pub(crate) fn new(data: Vec<f32>, dims: [usize; 3], bf16: bool) -> Result<Self, EngineError> {
        debug_assert_eq!(data.len(), dims.iter().product::<usize>());
        if bf16 {
            Ok(Stored::Bf16 { bits: data.iter().map(|x| (x.to_bits() >> 16) as u16).collect(), dims })
        } else {
            Ok(Stored::F32(Tensor::from_vec(data, dims.as_slice(), &Device::Cpu).map_err(backend("upload"))?))
        }
    }

    pub(crate) fn dims(&self) -> [usize; 3] {
        match self {
            Stored::F32(t) => {
                let d = t.dims();
                [d[0], d[1], d[2]]
            }
            Stored::Bf16 { dims, .. } => *dims,
        }
    }

    /// The block `[a, b, c]` as an f32 tensor: a view of an f32 operand, a widened contiguous
    /// copy of a bf16 one. The last dim of the result always has unit stride.
    pub(crate) fn block(&self, a: Range<usize>, b: Range<usize>, c: Range<usize>) -> Result<Tensor, EngineError> {
        match self {
            Stored::F32(t) => t
                .narrow(0, a.start, a.len())
                .and_then(|t| t.narrow(1, b.start, b.len()))
                .and_then(|t| t.narrow(2, c.start, c.len()))
                .map_err(backend("operand block")),
            Stored::Bf16 { bits, dims } => {
                let mut out = Vec::with_capacity(a.len() * b.len() * c.len());
                for i in a.clone() {
                    for j in b.clone() {
                        let start = (i * dims[1] + j) * dims[2];
                        out.extend(bits[start + c.start..start + c.end].iter().map(|&h| h.widen()));
                    }
                }
                Tensor::from_vec(out, (a.len(), b.len(), c.len()), &Device::Cpu).map_err(backend("widened block"))
            }
        }
    }

    /// Call `f32_rows` or `bf16_rows` with the operand's elements (row-major, no copy).
    pub(crate) fn with_host<R>(&self, f32_rows: impl FnOnce(&[f32]) -> R, bf16_rows: impl FnOnce(&[u16]) -> R) -> Result<R, EngineError> {
        match self {
            Stored::F32(t) => with_f32(t, f32_rows),
            Stored::Bf16 { bits, .. } => Ok(bf16_rows(bits)),
        }
    }
}

/// Permute a row-major 4-D array `[d0, d1, d2, d3]`: output dim `i` is input dim `perm[i]`.
pub(crate) fn permute4(data: &[f32], dims: [usize; 4], perm: [usize; 4]) -> Vec<f32> {
    let stride = [dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1];
    let od = perm.map(|p| dims[p]);
    let os = perm.map(|p| stride[p]);
    let mut out = Vec::with_capacity(data.len());
    for i0 in 0..od[0] {
        for i1 in 0..od[1] {
            for i2 in 0..od[2] {
                let base = i0 * os[0] + i1 * os[1] + i2 * os[2];
                if os[3] == 1 {
                    out.extend_from_slice(&data[base..base + od[3]]);
                } else {
                    out.extend((0..od[3]).map(|i3| data[base + i3 * os[3]]));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_agree_between_f32_and_bf16() {
        let data: Vec<f32> = (0..2 * 3 * 5).map(|i| ctxcost_core::numeric::round_bf16(i as f32 * 0.37 - 4.0)).collect();
        let f = Stored::new(data.clone(), [2, 3, 5], false).unwrap();
        let h = Stored::new(data, [2, 3, 5], true).unwrap();
        let a = f.block(1..2, 0..2, 1..4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = h.block(1..2, 0..2, 1..4).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 6);
        assert_eq!(h.dims(), [2, 3, 5]);
    }

    #[test]
    fn permute_moves_dims() {
        let data: Vec<f32> = (0..24).map(|i| i as f32).collect();
        // [2, 3, 4] (d0 = 1) -> [4, 3, 2]
        let t = permute4(&data, [1, 2, 3, 4], [0, 3, 2, 1]);
        assert_eq!(t[0..3], [0.0, 12.0, 4.0]);
        assert_eq!(t.len(), 24);
    }
}
