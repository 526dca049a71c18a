//! Q5_1: 32 weights per block, f16 scale and f16 minimum, 5-bit codes (6 bits per weight).
//!
//! Layout (ggml-common.h `block_q5_1`, 24 bytes): `d: f16`, `m: f16`, `qh: [u8; 4]`,
//! `qs: [u8; 16]`, packed as in Q5_0 (see [`super::q5_0`]). Weight = `q · d + m`.
//! As for Q4_1, we pair it with Q8_0 activations rather than ggml's Q8_1.

use half::f16;

use super::float::{f16_to_f32, f32_to_f16};
use super::kquant_common::make_qkx3_quants;
use super::q4_0::{importance, row_sigma2};
use super::q4_1::min_max;
use super::q5_0::{pack5, unpack5};
use super::q8_0::{c_float_to_byte, BlockQ8_0};
use super::Block;

/// Weights per Q5_1 block (ggml's `QK5_1`).
pub const QK5_1: usize = 32;

/// One Q5_1 block, byte-for-byte ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum): weight = `code · d + m`.
    pub m: f16,
    /// Fifth bits, bit `j` of the little-endian u32 for weight `j`.
    pub qh: [u8; 4],
    /// Low four bits: low nibble = weights 0..16, high nibble = weights 16..32.
    pub qs: [u8; QK5_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 4 + 4 + QK5_1 / 2);

// SAFETY: repr(C), two f16 then 4 + 16 bytes: no padding, size 24; all bit patterns valid.
unsafe impl Block for BlockQ5_1 {
    const BLOCK_SIZE: usize = QK5_1;
}

impl BlockQ5_1 {
    /// An all-zero block.
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        m: f16::ZERO,
        qh: [0; 4],
        qs: [0; QK5_1 / 2],
    };
}

/// Mirrors ggml's `quantize_row_q5_1_ref`: d = (max − min)/31, m = min, codes
/// `trunc((x − min)/d + 0.5)` (ggml applies no clamp here; the argument is at most 31.5).
/// `x.len() == y.len() * 32`.
pub fn quantize_row_q5_1_ref(x: &[f32], y: &mut [BlockQ5_1]) {
    debug_assert_eq!(x.len(), y.len() * QK5_1);
    let mut codes = [0u8; QK5_1];
    for (xb, yb) in x.chunks_exact(QK5_1).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16(d);
        yb.m = f32_to_f16(min);
        for (c, &v) in codes.iter_mut().zip(xb) {
            // C casts to uint8_t; the argument is in [0.5, 31.5], so truncation is exact here.
            *c = c_float_to_byte((v - min) * id + 0.5);
        }
        pack5(&codes, &mut yb.qs, &mut yb.qh);
    }
}

/// Mirrors ggml's `quantize_row_q5_1_impl` with `quant_weights` (see
/// [`super::q4_1::quantize_row_q4_1_imatrix`]; here nmax = 31). `x.len() == qw.len() == y.len() * 32`.
pub fn quantize_row_q5_1_imatrix(x: &[f32], y: &mut [BlockQ5_1], qw: &[f32]) {
    debug_assert_eq!(x.len(), y.len() * QK5_1);
    debug_assert_eq!(qw.len(), x.len());
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; QK5_1];
    let mut l = [0u8; QK5_1];
    for ((xb, qb), yb) in x
        .chunks_exact(QK5_1)
        .zip(qw.chunks_exact(QK5_1))
        .zip(y.iter_mut())
    {
        importance(xb, qb, sigma2, &mut weight);
        let (d, min) = make_qkx3_quants(31, xb, Some(&weight), &mut l, -0.9, 0.05, 36, false);
        yb.d = f32_to_f16(d);
        yb.m = f32_to_f16(-min);
        pack5(&l, &mut yb.qs, &mut yb.qh);
    }
}

/// Mirrors ggml's `dequantize_row_q5_1`. `y.len() == x.len() * 32`.
pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK5_1);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK5_1)) {
        let d = f16_to_f32(xb.d);
        let m = f16_to_f32(xb.m);
        let qh = u32::from_le_bytes(xb.qh);
        for j in 0..QK5_1 / 2 {
            let (c0, c1) = unpack5(&xb.qs, qh, j);
            yb[j] = c0 as f32 * d + m;
            yb[j + QK5_1 / 2] = c1 as f32 * d + m;
        }
    }
}

/// Q5_1 · Q8_0: per block `d_x·d_y·Σ q_x q_y + m_x·d_y·Σ q_y`. `x.len() == y.len()`.
pub fn vec_dot_q5_1_q8_0_ref(x: &[BlockQ5_1], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(xb.qh);
        let mut sumi = 0i32;
        for j in 0..QK5_1 / 2 {
            let (c0, c1) = unpack5(&xb.qs, qh, j);
            sumi += c0 * yb.qs[j] as i32;
            sumi += c1 * yb.qs[j + QK5_1 / 2] as i32;
        }
        let sumy: i32 = yb.qs.iter().map(|&v| v as i32).sum();
        let dy = f16_to_f32(yb.d);
        sumf += f16_to_f32(xb.d) * dy * sumi as f32 + f16_to_f32(xb.m) * (dy * sumy as f32);
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::super::q8_0::testutil::*;
    use super::super::q8_0::{dequantize_row_q8_0, quantize_row_q8_0};
    use super::*;

    fn quant(x: &[f32]) -> Vec<BlockQ5_1> {
        let mut q = vec![BlockQ5_1::ZERO; x.len() / QK5_1];
        quantize_row_q5_1_ref(x, &mut q);
        q
    }

    fn dequant(q: &[BlockQ5_1]) -> Vec<f32> {
        let mut y = vec![0.0; q.len() * QK5_1];
        dequantize_row_q5_1(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        assert_eq!(std::mem::size_of::<BlockQ5_1>(), 24);
        assert_eq!(crate::BlockFormat::Q5_1.type_size(), 24);
    }

    fn check_round_trip(name: &str, x: &[f32], q: &[BlockQ5_1], slack: f32) {
        let y = dequant(q);
        for (b, (xb, yb)) in x.chunks(QK5_1).zip(y.chunks(QK5_1)).enumerate() {
            let (mn, mx) = min_max(xb);
            let d = (mx - mn) / 31.0;
            let d16 = q[b].d.to_f32();
            let m_err = (mn - q[b].m.to_f32()).abs();
            let bound = slack * d / 2.0 + 31.0 * (d - d16).abs() + m_err + amax(xb) * 1e-6;
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
    fn endpoints_map_to_0_and_31() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 * 0.5 - 2.0).collect();
        let q = quant(&x);
        assert_eq!(q[0].m.to_f32(), -2.0);
        assert_eq!(q[0].d.to_f32(), 0.5);
        let h = u32::from_le_bytes(q[0].qh);
        for j in 0..16 {
            assert_eq!(unpack5(&q[0].qs, h, j), (j as i32, j as i32 + 16));
        }
        assert_eq!(dequant(&q), x);
    }

    #[test]
    fn imatrix_round_trip() {
        let n = 32 * 64;
        let mut rng = Rng(41);
        for (name, x) in cases(n) {
            let qw: Vec<f32> = (0..n).map(|_| 0.1 + rng.unit()).collect();
            let mut q = vec![BlockQ5_1::ZERO; n / QK5_1];
            quantize_row_q5_1_imatrix(&x, &mut q, &qw);
            check_round_trip(name, &x, &q, 3.0);
        }
    }

    #[test]
    fn dot_matches_dequantized_f64() {
        let n = 32 * 128;
        let mut rng = Rng(9);
        for (name, w) in cases(n) {
            let a: Vec<f32> = (0..n).map(|_| rng.gauss()).collect();
            let qw = quant(&w);
            let mut qa = vec![BlockQ8_0::ZERO; n / 32];
            quantize_row_q8_0(&a, &mut qa);
            let mut da = vec![0.0; n];
            dequantize_row_q8_0(&qa, &mut da);
            let (exact, scale) = dot_f64(&dequant(&qw), &da);
            let got = vec_dot_q5_1_q8_0_ref(&qw, &qa) as f64;
            assert!(
                (got - exact).abs() <= 1e-5 * scale + 1e-30,
                "{name}: {got} vs {exact}"
            );
        }
    }
}
