//! Q5_0: 32 weights per block, one f16 scale, 5-bit codes offset by 16 (5.5 bits per weight).
//!
//! Layout (ggml-common.h `block_q5_0`, 22 bytes): `d: f16`, `qh: [u8; 4]`, `qs: [u8; 16]`.
//! The low four bits of weight `j` sit in `qs[j % 16]` (low nibble for j < 16, high nibble
//! otherwise); its fifth bit is bit `j` of the little-endian u32 `qh`. Weight = `(q − 16) · d`.
//! Like Q4_0 the scale is the signed extreme divided by −16.

use half::f16;

use super::float::{f16_to_f32, f32_to_f16};
use super::kquant_common::make_qx_quants;
use super::q4_0::{importance, row_sigma2, signed_absmax};
use super::q8_0::{c_float_to_byte, BlockQ8_0};
use super::Block;

/// Weights per Q5_0 block (ggml's `QK5_0`).
pub const QK5_0: usize = 32;

/// One Q5_0 block, byte-for-byte ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale: weight = `(code − 16) · d`.
    pub d: f16,
    /// Fifth bits, bit `j` of the little-endian u32 for weight `j`.
    pub qh: [u8; 4],
    /// Low four bits: low nibble = weights 0..16, high nibble = weights 16..32.
    pub qs: [u8; QK5_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 2 + 4 + QK5_0 / 2);

// SAFETY: repr(C), f16 (align 2) then 4 + 16 bytes: no padding, size 22; all bit patterns valid.
unsafe impl Block for BlockQ5_0 {
    const BLOCK_SIZE: usize = QK5_0;
}

impl BlockQ5_0 {
    /// An all-zero block.
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        qh: [0; 4],
        qs: [0; QK5_0 / 2],
    };
}

/// Packs 32 five-bit codes (weights j and j+16 share `qs[j]`) into `qs` and `qh`.
pub(crate) fn pack5(codes: &[u8; 32], qs: &mut [u8; 16], qh: &mut [u8; 4]) {
    let mut h = 0u32;
    for j in 0..16 {
        let (c0, c1) = (codes[j], codes[j + 16]);
        qs[j] = (c0 & 0x0f) | ((c1 & 0x0f) << 4);
        h |= (((c0 & 0x10) >> 4) as u32) << j;
        h |= (((c1 & 0x10) >> 4) as u32) << (j + 16);
    }
    *qh = h.to_le_bytes();
}

/// Unpacks the 5-bit codes of weights `j` and `j + 16` (j < 16).
#[inline(always)]
pub(crate) fn unpack5(qs: &[u8; 16], qh: u32, j: usize) -> (i32, i32) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    (
        ((qs[j] & 0x0f) as u32 | h0) as i32,
        ((qs[j] >> 4) as u32 | h1) as i32,
    )
}

/// Mirrors ggml's `quantize_row_q5_0_ref`: d = (signed extreme)/−16, codes
/// `min(31, trunc(x/d + 16.5))`. `x.len() == y.len() * 32`.
pub fn quantize_row_q5_0_ref(x: &[f32], y: &mut [BlockQ5_0]) {
    debug_assert_eq!(x.len(), y.len() * QK5_0);
    let mut codes = [0u8; QK5_0];
    for (xb, yb) in x.chunks_exact(QK5_0).zip(y.iter_mut()) {
        let max = signed_absmax(xb);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16(d);
        for (c, &v) in codes.iter_mut().zip(xb) {
            // x/d in [-16, 16]: the argument is in [0.5, 32.5]; truncation as C's (int8_t).
            *c = (c_float_to_byte(v * id + 16.5) as i8).min(31) as u8;
        }
        pack5(&codes, &mut yb.qs, &mut yb.qh);
    }
}

/// Mirrors ggml's `quantize_row_q5_0_impl` with `quant_weights` (see
/// [`super::q4_0::quantize_row_q4_0_imatrix`]; here nmax = 16). `x.len() == qw.len() == y.len() * 32`.
pub fn quantize_row_q5_0_imatrix(x: &[f32], y: &mut [BlockQ5_0], qw: &[f32]) {
    debug_assert_eq!(x.len(), y.len() * QK5_0);
    debug_assert_eq!(qw.len(), x.len());
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; QK5_0];
    let mut l = [0i8; QK5_0];
    let mut codes = [0u8; QK5_0];
    for ((xb, qb), yb) in x
        .chunks_exact(QK5_0)
        .zip(qw.chunks_exact(QK5_0))
        .zip(y.iter_mut())
    {
        importance(xb, qb, sigma2, &mut weight);
        let d = make_qx_quants(16, xb, &mut l, 1, Some(&weight));
        yb.d = f32_to_f16(d);
        for (c, &v) in codes.iter_mut().zip(&l) {
            *c = v as u8; // in [0, 31] by construction
        }
        pack5(&codes, &mut yb.qs, &mut yb.qh);
    }
}

/// Mirrors ggml's `dequantize_row_q5_0`. `y.len() == x.len() * 32`.
pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK5_0);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK5_0)) {
        let d = f16_to_f32(xb.d);
        let qh = u32::from_le_bytes(xb.qh);
        for j in 0..QK5_0 / 2 {
            let (c0, c1) = unpack5(&xb.qs, qh, j);
            yb[j] = (c0 - 16) as f32 * d;
            yb[j + QK5_0 / 2] = (c1 - 16) as f32 * d;
        }
    }
}

/// Mirrors ggml's `ggml_vec_dot_q5_0_q8_0_generic`. `x.len() == y.len()`.
pub fn vec_dot_q5_0_q8_0_ref(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(xb.qh);
        let mut sumi = 0i32;
        for j in 0..QK5_0 / 2 {
            let (c0, c1) = unpack5(&xb.qs, qh, j);
            sumi += (c0 - 16) * yb.qs[j] as i32;
            sumi += (c1 - 16) * yb.qs[j + QK5_0 / 2] as i32;
        }
        sumf += f16_to_f32(xb.d) * f16_to_f32(yb.d) * sumi as f32;
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::super::q8_0::testutil::*;
    use super::super::q8_0::{dequantize_row_q8_0, quantize_row_q8_0};
    use super::*;

    fn quant(x: &[f32]) -> Vec<BlockQ5_0> {
        let mut q = vec![BlockQ5_0::ZERO; x.len() / QK5_0];
        quantize_row_q5_0_ref(x, &mut q);
        q
    }

    fn dequant(q: &[BlockQ5_0]) -> Vec<f32> {
        let mut y = vec![0.0; q.len() * QK5_0];
        dequantize_row_q5_0(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        assert_eq!(std::mem::size_of::<BlockQ5_0>(), 22);
        assert_eq!(crate::BlockFormat::Q5_0.type_size(), 22);
    }

    fn check_round_trip(name: &str, x: &[f32], q: &[BlockQ5_0], slack: f32) {
        let y = dequant(q);
        for (b, (xb, yb)) in x.chunks(QK5_0).zip(y.chunks(QK5_0)).enumerate() {
            let d = amax(xb) / 16.0;
            let d16 = q[b].d.to_f32().abs();
            // A full step: the extreme opposite the defining one is clamped from code 32 to 31.
            let bound = slack * d + 16.0 * (d - d16).abs() + amax(xb) * 1e-6;
            for (i, (&a, &c)) in xb.iter().zip(yb).enumerate() {
                assert!(
                    (a - c).abs() <= bound,
                    "{name} block {b} elem {i}: {a} vs {c} (bound {bound})"
                );
            }
        }
    }

    #[test]
    fn round_trip_error_bounds() {
        for (name, x) in cases(32 * 64) {
            check_round_trip(name, &x, &quant(&x), 1.0);
        }
    }

    #[test]
    fn pack_unpack_every_code() {
        // Every code 0..31 in every position survives packing, including the fifth bit.
        for shift in 0..32u8 {
            let mut codes = [0u8; 32];
            for (j, c) in codes.iter_mut().enumerate() {
                *c = (j as u8 + shift) % 32;
            }
            let (mut qs, mut qh) = ([0u8; 16], [0u8; 4]);
            pack5(&codes, &mut qs, &mut qh);
            let h = u32::from_le_bytes(qh);
            for j in 0..16 {
                assert_eq!(unpack5(&qs, h, j), (codes[j] as i32, codes[j + 16] as i32));
            }
        }
    }

    #[test]
    fn extreme_value_maps_to_code_zero() {
        let mut x = vec![0.5f32; 32];
        x[20] = 8.0;
        let q = quant(&x);
        assert_eq!(q[0].d.to_f32(), -0.5);
        let h = u32::from_le_bytes(q[0].qh);
        assert_eq!(unpack5(&q[0].qs, h, 4).1, 0);
        // 0.5 / -0.5 = -1 → trunc(15.5) = 15.
        assert_eq!(unpack5(&q[0].qs, h, 0).0, 15);
        assert_eq!(dequant(&q)[20], 8.0);
    }

    #[test]
    fn imatrix_round_trip() {
        let n = 32 * 64;
        let mut rng = Rng(31);
        for (name, x) in cases(n) {
            let qw: Vec<f32> = (0..n).map(|_| 0.1 + rng.unit()).collect();
            let mut q = vec![BlockQ5_0::ZERO; n / QK5_0];
            quantize_row_q5_0_imatrix(&x, &mut q, &qw);
            check_round_trip(name, &x, &q, 1.5);
        }
    }

    #[test]
    fn dot_matches_dequantized_f64() {
        let n = 32 * 128;
        let mut rng = Rng(8);
        for (name, w) in cases(n) {
            let a: Vec<f32> = (0..n).map(|_| rng.gauss()).collect();
            let qw = quant(&w);
            let mut qa = vec![BlockQ8_0::ZERO; n / 32];
            quantize_row_q8_0(&a, &mut qa);
            let mut da = vec![0.0; n];
            dequantize_row_q8_0(&qa, &mut da);
            let (exact, scale) = dot_f64(&dequant(&qw), &da);
            let got = vec_dot_q5_0_q8_0_ref(&qw, &qa) as f64;
            assert!(
                (got - exact).abs() <= 1e-5 * scale + 1e-30,
                "{name}: {got} vs {exact}"
            );
        }
    }
}
