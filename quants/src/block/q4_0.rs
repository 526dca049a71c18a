//! Q4_0: 32 weights per block, one f16 scale and 32 unsigned nibbles offset by 8
//! (4.5 bits per weight).
//!
//! Layout (ggml-common.h `block_q4_0`, 18 bytes): `d: f16`, `qs: [u8; 16]`. Byte `j` holds
//! weight `j` in its low nibble and weight `j + 16` in its high nibble; weight = `(q - 8) * d`.
//! The scale is signed: ggml divides the value of largest magnitude by -8 so that value lands
//! exactly on the code 0 (the one end of [-8, 7] that has no positive twin).

use half::f16;

use super::float::{f16_to_f32, f32_to_f16};
use super::kquant_common::make_qx_quants;
use super::q8_0::{c_float_to_byte, BlockQ8_0};
use super::Block;

/// Weights per Q4_0 block (ggml's `QK4_0`).
pub const QK4_0: usize = 32;

/// One Q4_0 block, byte-for-byte ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale: weight = `(nibble - 8) * d`.
    pub d: f16,
    /// Nibbles: low = weights 0..16, high = weights 16..32.
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 2 + QK4_0 / 2);

// SAFETY: repr(C), f16 (align 2) followed by 16 bytes: no padding, size 18; all bit patterns valid.
unsafe impl Block for BlockQ4_0 {
    const BLOCK_SIZE: usize = QK4_0;
}

impl BlockQ4_0 {
    /// An all-zero block.
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        qs: [0; QK4_0 / 2],
    };
}

/// Mirrors ggml's `quantize_row_q4_0_ref`: d = (signed value of largest magnitude) / -8, codes
/// `min(15, trunc(x/d + 8.5))`. The truncating cast (not `roundf`) is what ggml does; for the
/// non-negative argument it is round-half-up. `x.len() == y.len() * 32`.
pub fn quantize_row_q4_0_ref(x: &[f32], y: &mut [BlockQ4_0]) {
    debug_assert_eq!(x.len(), y.len() * QK4_0);
    for (xb, yb) in x.chunks_exact(QK4_0).zip(y.iter_mut()) {
        let max = signed_absmax(xb);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = f32_to_f16(d);
        for j in 0..QK4_0 / 2 {
            let x0 = xb[j] * id;
            let x1 = xb[j + QK4_0 / 2] * id;
            // C's (int8_t) cast truncates; x/d is in [-8, 8] so the argument is in [0.5, 16.5]
            // (only an overflowed `id` leaves that range, see `c_float_to_byte`).
            let q0 = (c_float_to_byte(x0 + 8.5) as i8).min(15) as u8;
            let q1 = (c_float_to_byte(x1 + 8.5) as i8).min(15) as u8;
            yb.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Mirrors ggml's `quantize_row_q4_0_impl` with `quant_weights`: a whole row `x` (the row's
/// mean square sets the weighting), importance `qw` per weight. Each block's scale is searched
/// by `kquant_common::make_qx_quants` (nmax 8, rmse_type 1) minimising Σ w·(x − d·q)² with w = qw·sqrt(σ² + x²).
/// `x.len() == qw.len() == y.len() * 32`.
pub fn quantize_row_q4_0_imatrix(x: &[f32], y: &mut [BlockQ4_0], qw: &[f32]) {
    debug_assert_eq!(x.len(), y.len() * QK4_0);
    debug_assert_eq!(qw.len(), x.len());
    let sigma2 = row_sigma2(x);
    let mut weight = [0.0f32; QK4_0];
    let mut l = [0i8; QK4_0];
    for ((xb, qb), yb) in x
        .chunks_exact(QK4_0)
        .zip(qw.chunks_exact(QK4_0))
        .zip(y.iter_mut())
    {
        importance(xb, qb, sigma2, &mut weight);
        let d = make_qx_quants(8, xb, &mut l, 1, Some(&weight));
        yb.d = f32_to_f16(d);
        for j in 0..QK4_0 / 2 {
            // Codes are in [0, 15] by construction.
            yb.qs[j] = (l[j] as u8) | ((l[j + 16] as u8) << 4);
        }
    }
}

/// Mirrors ggml's `dequantize_row_q4_0`. `y.len() == x.len() * 32`.
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK4_0);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK4_0)) {
        let d = f16_to_f32(xb.d);
        for (j, &q) in xb.qs.iter().enumerate() {
            yb[j] = ((q & 0x0f) as i32 - 8) as f32 * d;
            yb[j + QK4_0 / 2] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Mirrors ggml's `ggml_vec_dot_q4_0_q8_0_generic`. `x.len() == y.len()`.
pub fn vec_dot_q4_0_q8_0_ref(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for (j, &q) in xb.qs.iter().enumerate() {
            sumi += ((q & 0x0f) as i32 - 8) * yb.qs[j] as i32;
            sumi += ((q >> 4) as i32 - 8) * yb.qs[j + QK4_0 / 2] as i32;
        }
        sumf += sumi as f32 * f16_to_f32(xb.d) * f16_to_f32(yb.d);
    }
    sumf
}

/// The value of largest magnitude, with its sign (first one wins on ties), as the symmetric
/// legacy quantizers pick it.
pub(crate) fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// Mean square of a whole row, summed left to right in f32 as ggml does.
pub(crate) fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// ggml's per-weight importance for the legacy `_impl` quantizers: `qw * sqrt(σ² + x²)`.
pub(crate) fn importance(xb: &[f32], qw: &[f32], sigma2: f32, out: &mut [f32]) {
    for ((o, &q), &v) in out.iter_mut().zip(qw).zip(xb) {
        *o = q * (sigma2 + v * v).sqrt();
    }
}

#[cfg(test)]
mod tests {
    use super::super::q8_0::testutil::*;
    use super::super::q8_0::{dequantize_row_q8_0, quantize_row_q8_0};
    use super::*;

    fn quant(x: &[f32]) -> Vec<BlockQ4_0> {
        let mut q = vec![BlockQ4_0::ZERO; x.len() / QK4_0];
        quantize_row_q4_0_ref(x, &mut q);
        q
    }

    fn dequant(q: &[BlockQ4_0]) -> Vec<f32> {
        let mut y = vec![0.0; q.len() * QK4_0];
        dequantize_row_q4_0(q, &mut y);
        y
    }

    #[test]
    fn layout() {
        assert_eq!(std::mem::size_of::<BlockQ4_0>(), 18);
        assert_eq!(crate::BlockFormat::Q4_0.type_size(), 18);
    }

    /// One quantization step |d| (the extreme opposite the one that defines d would need code
    /// 16 and is clamped to 15, a full step off) plus the f16 rounding of d times the largest
    /// code magnitude (8).
    fn check_round_trip(name: &str, x: &[f32], q: &[BlockQ4_0], slack: f32) {
        let y = dequant(q);
        for (b, (xb, yb)) in x.chunks(QK4_0).zip(y.chunks(QK4_0)).enumerate() {
            let d = amax(xb) / 8.0;
            let d16 = q[b].d.to_f32().abs();
            let bound = slack * d + 8.0 * (d - d16).abs() + amax(xb) * 1e-6;
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
            let q = quant(&x);
            check_round_trip(name, &x, &q, 1.0);
        }
    }

    #[test]
    fn extreme_value_maps_to_code_zero() {
        let mut x: Vec<f32> = (0..32).map(|i| i as f32 * 0.1).collect();
        x[7] = -5.0; // largest magnitude, negative
        let q = quant(&x);
        assert_eq!(q[0].d.to_f32(), 5.0 / 8.0);
        assert_eq!(q[0].qs[7] & 0x0f, 0);
        // Truncation of x/d + 8.5: 0.1/0.625 + 8.5 = 8.66 → 8; weight 16 (high nibble of byte 0):
        // 1.6/0.625 + 8.5 = 11.06 → 11.
        assert_eq!(q[0].qs[1] & 0x0f, 8);
        assert_eq!(q[0].qs[0] >> 4, 11);
        let y = dequant(&q);
        assert_eq!(y[7], -5.0);
    }

    #[test]
    fn zeros_give_zero_block() {
        let q = quant(&[0.0; 64]);
        for b in &q {
            // 0 / -8 is -0.0 in IEEE arithmetic, and ggml stores exactly that.
            assert_eq!(b.d.to_bits(), 0x8000);
            // Code 8 is zero: ggml stores 0*0 + 8.5 truncated = 8.
            assert!(b.qs.iter().all(|&v| v == 0x88));
        }
        assert!(dequant(&q).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn imatrix_round_trip_and_quality() {
        let n = 32 * 64;
        let mut rng = Rng(11);
        for (name, x) in cases(n) {
            let qw: Vec<f32> = (0..n).map(|_| 0.1 + rng.unit()).collect();
            let mut q = vec![BlockQ4_0::ZERO; n / QK4_0];
            quantize_row_q4_0_imatrix(&x, &mut q, &qw);
            // The searched scale can be up to ~1/8 larger than amax/8: allow a wider step.
            check_round_trip(name, &x, &q, 1.5);
            // The weighted error should be no worse than the plain reference's (it optimises
            // it), up to the f16 rounding of the chosen scale, which the search cannot see.
            let y = dequant(&q);
            let yr = dequant(&quant(&x));
            let sigma2 = row_sigma2(&x);
            let err = |y: &[f32]| -> f64 {
                x.iter()
                    .zip(y)
                    .zip(&qw)
                    .map(|((&a, &b), &w)| {
                        (w * (sigma2 + a * a).sqrt()) as f64 * ((a - b) as f64).powi(2)
                    })
                    .sum()
            };
            let energy: f64 = x.iter().zip(&qw).map(|(&a, &w)| (w * a * a) as f64).sum();
            assert!(
                err(&y) <= err(&yr) * 1.001 + 1e-6 * energy,
                "{name}: {} > {}",
                err(&y),
                err(&yr)
            );
        }
    }

    #[test]
    fn dot_matches_dequantized_f64() {
        let n = 32 * 128;
        let mut rng = Rng(3);
        for (name, w) in cases(n) {
            let a: Vec<f32> = (0..n).map(|_| rng.gauss()).collect();
            let qw = quant(&w);
            let mut qa = vec![BlockQ8_0::ZERO; n / 32];
            quantize_row_q8_0(&a, &mut qa);
            let mut da = vec![0.0; n];
            dequantize_row_q8_0(&qa, &mut da);
            let (exact, scale) = dot_f64(&dequant(&qw), &da);
            let got = vec_dot_q4_0_q8_0_ref(&qw, &qa) as f64;
            assert!(
                (got - exact).abs() <= 1e-5 * scale + 1e-30,
                "{name}: {got} vs {exact}"
            );
        }
    }
}
