//! Q4_1: 32 weights per block, f16 scale and f16 minimum, 32 unsigned nibbles
//! (5 bits per weight).
//!
//! Layout (ggml-common.h `block_q4_1`, 20 bytes): `d: f16`, `m: f16`, `qs: [u8; 16]`. Byte `j`
//! holds weight `j` (low nibble) and weight `j + 16` (high nibble); weight = `q * d + m`.
//! ggml multiplies Q4_1 by Q8_1 activations; we use Q8_0 and compute the `m · Σ a` term from the
//! activation codes directly, which is the same sum without Q8_1's extra f16 rounding.

use half::f16;

use super::float::{f16_to_f32, f32_to_f16};
use super::kquant_common::make_qkx3_quants;
use super::q8_0::{c_float_to_byte, BlockQ8_0};
use super::Block;

/// Weights per Q4_1 block (ggml's `QK4_1`).
pub const QK4_1: usize = 32;

/// One Q4_1 block, byte-for-byte ggml's `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum): weight = `nibble * d + m`.
    pub m: f16,
    /// Nibbles: low = weights 0..16, high = weights 16..32.
    pub qs: [u8; QK4_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 4 + QK4_1 / 2);

// SAFETY: repr(C), two f16 then 16 bytes: no padding, size 20; all bit patterns valid.
unsafe impl Block for BlockQ4_1 {
    const BLOCK_SIZE: usize = QK4_1;
}

impl BlockQ4_1 {
    /// An all-zero block.
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        m: f16::ZERO,
        qs: [0; QK4_1 / 2],
    };
}

/// Block minimum and maximum, scanned as ggml does (from ±FLT_MAX, strict comparisons).
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// Mirrors ggml's `quantize_row_q4_1_ref`: d = (max − min)/15, m = min, codes
/// `min(15, trunc((x − min)/d + 0.5))`. `x.len() == y.len() * 32`.
pub fn quantize_row_q4_1_ref(x: &[f32], y: &mut [BlockQ4_1]) {
    debug_assert_eq!(x.len(), y.len() * QK4_1);
    for (xb, yb) in x.chunks_exact(QK4_1).zip(y.iter_mut()) {
        let (min, max) = min_max(xb);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16(d);
        yb.m = f32_to_f16(min);
        for j in 0..QK4_1 / 2 {
            let x0 = (xb[j] - min) * id;
            let x1 = (xb[j + QK4_1 / 2] - min) * id;
            // Arguments are in [0.5, 15.5]: C's (int8_t) cast truncates.
            let q0 = (c_float_to_byte(x0 + 0.5) as i8).min(15) as u8;
            let q1 = (c_float_to_byte(x1 + 0.5) as i8).min(15) as u8;
            yb.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Mirrors ggml's `quantize_row_q4_1_impl` with `quant_weights`: per block,
/// `kquant_common::make_qkx3_quants` (nmax 15, rmin −0.9, rdelta 0.05, 36 steps) searches scale and minimum for the weights qw·sqrt(σ² + x²), σ² the
/// row's mean square. `x.len() == qw.len() == y.len() * 32`.
pub fn quantize_row_q4_1_imatrix(x: &[f32], y: &mut [BlockQ4_1], qw: &[f32]) {
    debug_assert_eq!(x.len(), y.len() * QK4_1);
    debug_assert_eq!(qw.len(), x.len());
    let sigma2 = super::q4_0::row_sigma2(x);
    let mut weight = [0.0f32; QK4_1];
    let mut l = [0u8; QK4_1];
    for ((xb, qb), yb) in x
        .chunks_exact(QK4_1)
        .zip(qw.chunks_exact(QK4_1))
        .zip(y.iter_mut())
    {
        super::q4_0::importance(xb, qb, sigma2, &mut weight);
        let (d, min) = make_qkx3_quants(15, xb, Some(&weight), &mut l, -0.9, 0.05, 36, false);
        yb.d = f32_to_f16(d);
        yb.m = f32_to_f16(-min);
        for j in 0..QK4_1 / 2 {
            yb.qs[j] = l[j] | (l[j + 16] << 4);
        }
    }
}

/// Mirrors ggml's `dequantize_row_q4_1`. `y.len() == x.len() * 32`.
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK4_1);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK4_1)) {
        let d = f16_to_f32(xb.d);
        let m = f16_to_f32(xb.m);
        for (j, &q) in xb.qs.iter().enumerate() {
            yb[j] = (q & 0x0f) as f32 * d + m;
            yb[j + QK4_1 / 2] = (q >> 4) as f32 * d + m;
        }
    }
}

/// Q4_1 · Q8_0 (ggml pairs Q4_1 with Q8_1; see the module note). Per block:
/// `d_x·d_y·Σ q_x q_y + m_x·d_y·Σ q_y`, one f32 accumulator. `x.len() == y.len()`.
pub fn vec_dot_q4_1_q8_0_ref(x: &[BlockQ4_1], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for (j, &q) in xb.qs.iter().enumerate() {
            sumi += (q & 0x0f) as i32 * yb.qs[j] as i32;
            sumi += (q >> 4) as i32 * yb.qs[j + QK4_1 / 2] as i32;
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

    fn quant(x: &[f32]) -> Vec<BlockQ4_1> {
        let mut q = vec![BlockQ4_1::ZERO; x.len() / QK4_1];
        quantize_row_q4_1_ref(x, &mut q);
        q
    }

    fn dequant(q: &[BlockQ4_1]) -> Vec<f32> {
        let mut y = vec![0.0; q.len() * QK4_1];
        dequantize_row_q4_1(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        assert_eq!(std::mem::size_of::<BlockQ4_1>(), 20);
        assert_eq!(crate::BlockFormat::Q4_1.type_size(), 20);
    }

    /// Half a step of (max − min)/15, plus the f16 rounding of d (times 15) and of m.
    fn check_round_trip(name: &str, x: &[f32], q: &[BlockQ4_1], slack: f32) {
        let y = dequant(q);
        for (b, (xb, yb)) in x.chunks(QK4_1).zip(y.chunks(QK4_1)).enumerate() {
            let (mn, mx) = min_max(xb);
            let d = (mx - mn) / 15.0;
            let d16 = q[b].d.to_f32();
            let m_err = (mn - q[b].m.to_f32()).abs();
            let bound = slack * d / 2.0 + 15.0 * (d - d16).abs() + m_err + amax(xb) * 1e-6;
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
    fn constant_block_is_exact_min() {
        let q = quant(&[1.25; 32]);
        assert_eq!(q[0].d.to_bits(), 0);
        assert_eq!(q[0].m.to_f32(), 1.25);
        assert!(q[0].qs.iter().all(|&v| v == 0));
        assert!(dequant(&q).iter().all(|&v| v == 1.25));
    }

    #[test]
    fn endpoints_map_to_0_and_15() {
        let x: Vec<f32> = (0..32).map(|i| i as f32 - 4.0).collect();
        let q = quant(&x);
        assert_eq!(q[0].m.to_f32(), -4.0);
        assert_eq!(q[0].qs[0] & 0x0f, 0);
        assert_eq!(q[0].qs[15] >> 4, 15);
    }

    #[test]
    fn imatrix_round_trip() {
        let n = 32 * 64;
        let mut rng = Rng(21);
        for (name, x) in cases(n) {
            let qw: Vec<f32> = (0..n).map(|_| 0.1 + rng.unit()).collect();
            let mut q = vec![BlockQ4_1::ZERO; n / QK4_1];
            quantize_row_q4_1_imatrix(&x, &mut q, &qw);
            // make_qkx3_quants clamps the minimum at 0 and may shrink the range: allow a
            // wider step than the min/max grid.
            check_round_trip(name, &x, &q, 3.0);
        }
    }

    #[test]
    fn dot_matches_dequantized_f64() {
        let n = 32 * 128;
        let mut rng = Rng(4);
        for (name, w) in cases(n) {
            let a: Vec<f32> = (0..n).map(|_| rng.gauss()).collect();
            let qw = quant(&w);
            let mut qa = vec![BlockQ8_0::ZERO; n / 32];
            quantize_row_q8_0(&a, &mut qa);
            let mut da = vec![0.0; n];
            dequantize_row_q8_0(&qa, &mut da);
            let (exact, scale) = dot_f64(&dequant(&qw), &da);
            let got = vec_dot_q4_1_q8_0_ref(&qw, &qa) as f64;
            assert!(
                (got - exact).abs() <= 1e-5 * scale + 1e-30,
                "{name}: {got} vs {exact}"
            );
        }
    }
}
