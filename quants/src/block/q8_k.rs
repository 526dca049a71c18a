//! Q8_K: the activation format that the K-quant dot products consume.
//!
//! Layout (ggml `block_q8_K`, 292 bytes per 256 values, 9.125 bits per value):
//! ```text
//! offset  size  field
//!      0     4  d         f32 scale (value = d · q)
//!      4   256  qs        i8 quants, in weight order
//!    260    32  bsums     16 × i16: sum of qs over each group of 16 (lets Q4_K/Q5_K apply
//!                         their per-sub-block mins without touching qs again)
//! ```
//! It is never written to GGUF files; it exists only as the right-hand side of
//! `vec_dot_q*_k_q8_k`, so its scale is a full f32.

use super::nearest_int;
use crate::QK_K;

/// One Q8_K block (ggml `block_q8_K`): 256 activations as `d · qs[i]`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// Quantized values in `-127..=127` (`-128` only from foreign data).
    pub qs: [i8; QK_K],
    /// `bsums[g] = Σ qs[16g..16g+16]`.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

// SAFETY: `#[repr(C)]` with an f32 followed by i8 and i16 arrays: 4 + 256 + 32 = 292 bytes,
// no padding (the size assertion above), and every bit pattern is a valid value.
unsafe impl super::Block for BlockQ8K {
    const BLOCK_SIZE: usize = QK_K;
}

impl Default for BlockQ8K {
    /// The all-zero block (dequantizes to zeros).
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        }
    }
}

// ggml: quantize_row_q8_K_ref
/// Quantizes `x` to Q8_K: per block, `d = max/-127` where `max` is the value of largest
/// magnitude, `qs = nearest_int(x/d)` (capped at 127), and the 16-value group sums.
///
/// An all-zero block gets `d = 0` and zero quants; its `bsums` are zeroed too (ggml leaves
/// them untouched, which is only harmless because `d = 0`).
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q8_k_ref(x: &[f32], y: &mut [BlockQ8K]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q8_k_ref: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xb {
            let av = v.abs();
            if av > amax {
                amax = av;
                max = v;
            }
        }
        if amax == 0.0 {
            *yb = BlockQ8K::default();
            continue;
        }
        // ggml uses -127 rather than -128 so that SIMD kernels may negate quants safely.
        let iscale = -127.0f32 / max;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            // int → int8_t in C keeps the low byte.
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (sum, group) in yb.bsums.iter_mut().zip(yb.qs.chunks_exact(16)) {
            *sum = group.iter().map(|&q| i32::from(q)).sum::<i32>() as i16;
        }
        yb.d = 1.0 / iscale;
    }
}

// ggml: dequantize_row_q8_K
/// Dequantizes Q8_K blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q8_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (out, &q) in yb.iter_mut().zip(&xb.qs) {
            *out = xb.d * f32::from(q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::kquant_common::test_util::{adversarial_blocks, relative_rmse, SplitMix64};
    use super::*;

    #[test]
    fn block_size_matches_ggml() {
        assert_eq!(std::mem::size_of::<BlockQ8K>(), 292);
        assert_eq!(
            std::mem::size_of::<BlockQ8K>(),
            crate::BlockFormat::Q8_K.type_size()
        );
    }

    #[test]
    fn gaussian_round_trip_and_bsums() {
        let mut rng = SplitMix64(1);
        let x = rng.gaussian_vec(QK_K * 16, 1.0);
        let mut q = vec![BlockQ8K::default(); 16];
        quantize_row_q8_k_ref(&x, &mut q);
        let mut y = vec![0.0; x.len()];
        dequantize_row_q8_k(&q, &mut y);
        let rel = relative_rmse(&x, &y);
        assert!(rel < 0.012, "relative RMSE {rel}");
        for b in &q {
            // The extreme value maps to exactly -127 · d.
            assert!(b.qs.iter().any(|&v| v == -127 || v == 127));
            for g in 0..16 {
                let s: i32 = b.qs[16 * g..16 * g + 16]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum();
                assert_eq!(i32::from(b.bsums[g]), s);
            }
        }
    }

    #[test]
    fn extreme_value_sign_and_exactness() {
        let mut x = vec![0.25f32; QK_K];
        x[9] = -2.0;
        let mut q = [BlockQ8K::default()];
        quantize_row_q8_k_ref(&x, &mut q);
        // max = -2 → iscale = -127/max = 63.5: the extreme becomes -127 and d = 1/63.5 > 0.
        assert_eq!(q[0].qs[9], -127);
        assert!(q[0].d > 0.0);
        let mut y = vec![0.0; QK_K];
        dequantize_row_q8_k(&q, &mut y);
        assert!((y[9] + 2.0).abs() < 1e-6);
    }

    #[test]
    fn adversarial_inputs_stay_finite() {
        for (name, x) in adversarial_blocks() {
            let mut q = [BlockQ8K::default()];
            quantize_row_q8_k_ref(&x, &mut q);
            let mut y = vec![0.0; QK_K];
            dequantize_row_q8_k(&q, &mut y);
            assert!(y.iter().all(|v| v.is_finite()), "{name}: non-finite output");
            if x.iter().all(|&v| v == 0.0) {
                assert!(y.iter().all(|&v| v == 0.0), "{name}");
                assert!(q[0].bsums.iter().all(|&s| s == 0), "{name}");
            } else {
                // Round to nearest: every value is within half a step of its code.
                let step = q[0].d.abs();
                for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
                    assert!(
                        (a - b).abs() <= 0.5 * step * (1.0 + 1e-5),
                        "{name}[{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
