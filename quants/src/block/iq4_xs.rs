//! IQ4_XS: IQ4_NL's non-linear 4-bit levels in super-blocks of 256 with 6-bit block scales.
//!
//! Layout (ggml `block_iq4_xs`, 136 bytes per 256 weights = 4.25 bits per weight):
//! ```text
//! offset  size  field
//!      0     2  d         f16 super-scale
//!      2     2  scales_h  u16: the high 2 bits of block scale ib in bits 2ib..2ib+2
//!      4     4  scales_l  low 4 bits of the block scales, two per byte (even ib low nibble)
//!      8   128  qs        level indices: byte 16ib+j holds weight 32ib+j (low nibble) and
//!                         weight 32ib+16+j (high nibble)
//! ```
//! Weight `i` in block `ib = i/32` is `d · (scale_ib − 32) · KVALUES_IQ4NL[index_i]`.

use super::iq4_nl::{quantize_iq4_nl_block, IQ4_NTRY, KVALUES_IQ4NL};
use super::q8_k::BlockQ8K;
use super::Block;
use crate::QK_K;
use half::f16;

/// One IQ4_XS super-block (ggml `block_iq4_xs`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockIQ4XS {
    /// Super-block scale.
    pub d: f16,
    /// High 2 bits of the eight block scales.
    pub scales_h: u16,
    /// Low 4 bits of the eight block scales.
    pub scales_l: [u8; QK_K / 64],
    /// Level indices, two per byte.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);

// SAFETY: `#[repr(C)]`: f16 and u16 (align 2) at offsets 0 and 2, then 4 + 128 bytes: 136
// bytes with alignment 2, no padding (size asserted above); any bits are valid. `scales_h` is
// little-endian on disk, which is the byte order of every target this crate builds for.
unsafe impl Block for BlockIQ4XS {
    const BLOCK_SIZE: usize = QK_K;
}

impl Default for BlockIQ4XS {
    /// The all-zero block (dequantizes to zeros).
    fn default() -> Self {
        Self {
            d: f16::ZERO,
            scales_h: 0,
            scales_l: [0; QK_K / 64],
            qs: [0; QK_K / 2],
        }
    }
}

fn quantize_rows(x: &[f32], y: &mut [BlockIQ4XS], qw: Option<&[f32]>) {
    for (ib, (xb, yb)) in x.chunks_exact(QK_K).zip(y.iter_mut()).enumerate() {
        let w = qw.map(|q| &q[QK_K * ib..QK_K * ib + QK_K]);
        let r = quantize_iq4_nl_block::<QK_K>(xb, w, IQ4_NTRY);
        *yb = BlockIQ4XS {
            d: r.d,
            scales_h: r.scales_h,
            scales_l: r.scales_l,
            qs: r.qs,
        };
    }
}

// ggml: quantize_iq4_xs (quant_weights == NULL), also quantize_row_iq4_xs_ref
/// Quantizes `x` to IQ4_XS as ggml does without an importance matrix (weights x², 15 trial
/// scales per block; see `quantize_iq4_nl_block` in `iq4_nl`).
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_iq4_xs_ref(x: &[f32], y: &mut [BlockIQ4XS]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_iq4_xs_ref: length mismatch"
    );
    quantize_rows(x, y, None);
}

// ggml: quantize_iq4_xs (quant_weights != NULL)
/// Importance-weighted IQ4_XS quantization (`qw` covers exactly `x`).
///
/// # Panics
/// If `x.len() != y.len() * QK_K` or `qw.len() != x.len()`.
pub fn quantize_row_iq4_xs_imatrix(x: &[f32], y: &mut [BlockIQ4XS], qw: &[f32]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_iq4_xs_imatrix: length mismatch"
    );
    assert_eq!(
        qw.len(),
        x.len(),
        "quantize_row_iq4_xs_imatrix: importance length mismatch"
    );
    quantize_rows(x, y, Some(qw));
}

/// Block scale `ib` of a super-block, unbiased (`-32..32`).
#[inline]
fn block_scale(xb: &BlockIQ4XS, ib: usize) -> i32 {
    let lo = (xb.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
    let hi = (xb.scales_h >> (2 * ib)) & 3;
    (i32::from(lo) | (i32::from(hi) << 4)) - 32
}

// ggml: dequantize_row_iq4_xs
/// Dequantizes IQ4_XS blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_iq4_xs(x: &[BlockIQ4XS], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_iq4_xs: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        for (ib, (q, out)) in xb
            .qs
            .chunks_exact(16)
            .zip(yb.chunks_exact_mut(32))
            .enumerate()
        {
            let dl = d * block_scale(xb, ib) as f32;
            let (lo, hi) = out.split_at_mut(16);
            for ((&b, a), h) in q.iter().zip(lo).zip(hi) {
                *a = dl * f32::from(KVALUES_IQ4NL[usize::from(b & 0xF)]);
                *h = dl * f32::from(KVALUES_IQ4NL[usize::from(b >> 4)]);
            }
        }
    }
}

// ggml: ggml_vec_dot_iq4_xs_q8_K_generic
/// Dot product of IQ4_XS weights with Q8_K activations in ggml's generic order: per 32-weight
/// block the exact integer sum, `sumf += (d·y.d·(scale − 32))·sum`, blocks in order.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_iq4_xs_q8_k_ref(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    assert_eq!(
        x.len(),
        y.len(),
        "vec_dot_iq4_xs_q8_k_ref: block count mismatch"
    );
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d4d8 = xb.d.to_f32() * yb.d;
        for (ib, (q, q8)) in xb
            .qs
            .chunks_exact(16)
            .zip(yb.qs.chunks_exact(32))
            .enumerate()
        {
            let dl = d4d8 * block_scale(xb, ib) as f32;
            let (mut s1, mut s2) = (0i32, 0i32);
            for (j, &b) in q.iter().enumerate() {
                s1 += i32::from(q8[j]) * i32::from(KVALUES_IQ4NL[usize::from(b & 0xF)]);
                s2 += i32::from(q8[j + 16]) * i32::from(KVALUES_IQ4NL[usize::from(b >> 4)]);
            }
            sumf += dl * (s1 + s2) as f32;
        }
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::super::kquant_common::test_util::{
        adversarial_blocks, relative_rmse, weighted_sq_err, SplitMix64,
    };
    use super::super::q8_k::{dequantize_row_q8_k, quantize_row_q8_k_ref};
    use super::*;

    fn round_trip(x: &[f32]) -> (Vec<BlockIQ4XS>, Vec<f32>) {
        let mut q = vec![BlockIQ4XS::default(); x.len() / QK_K];
        quantize_row_iq4_xs_ref(x, &mut q);
        let mut y = vec![0.0; x.len()];
        dequantize_row_iq4_xs(&q, &mut y);
        (q, y)
    }

    #[test]
    fn block_size_matches_ggml() {
        assert_eq!(
            std::mem::size_of::<BlockIQ4XS>(),
            crate::BlockFormat::IQ4_XS.type_size()
        );
        assert_eq!(std::mem::offset_of!(BlockIQ4XS, qs), 8);
    }

    #[test]
    fn gaussian_round_trip_error() {
        let mut rng = SplitMix64(42);
        for std in [1.0f32, 0.02, 300.0] {
            let x = rng.gaussian_vec(QK_K * 64, std);
            let (_, y) = round_trip(&x);
            let rel = relative_rmse(&x, &y);
            // Measured 0.075-0.078 on such data.
            assert!(rel < 0.085, "std {std}: relative RMSE {rel}");
        }
    }

    #[test]
    fn adversarial_inputs() {
        for (name, x) in adversarial_blocks() {
            let (_, y) = round_trip(&x);
            let xmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if x.iter().all(|&v| v == 0.0) {
                assert!(y.iter().all(|&v| v == 0.0), "{name}: zeros stay zeros");
            } else if !(1e-18..=1e18).contains(&xmax) {
                // x² overflows or underflows f32 in the search, as in ggml.
            } else {
                let rel = relative_rmse(&x, &y);
                assert!(y.iter().all(|v| v.is_finite()), "{name}: non-finite output");
                assert!(rel < 0.2, "{name}: relative RMSE {rel}");
            }
        }
    }

    #[test]
    fn dot_matches_dequantized_dot() {
        let mut rng = SplitMix64(5);
        for nb in [1usize, 3, 16] {
            let xw = rng.gaussian_vec(QK_K * nb, 0.5);
            let xa = rng.gaussian_vec(QK_K * nb, 2.0);
            let (q, dq) = round_trip(&xw);
            let mut a = vec![BlockQ8K::default(); nb];
            quantize_row_q8_k_ref(&xa, &mut a);
            let mut da = vec![0.0; xa.len()];
            dequantize_row_q8_k(&a, &mut da);
            let (reference, norm) =
                dq.iter()
                    .zip(&da)
                    .fold((0.0f64, 0.0f64), |(s, n), (&u, &v)| {
                        let p = f64::from(u) * f64::from(v);
                        (s + p, n + p.abs())
                    });
            let got = f64::from(vec_dot_iq4_xs_q8_k_ref(&q, &a));
            assert!(
                (got - reference).abs() <= 1e-5 * norm,
                "nb {nb}: {got} vs {reference}"
            );
        }
    }

    #[test]
    fn imatrix_skewed_weights_reduce_weighted_error() {
        let mut rng = SplitMix64(23);
        let (mut total_imx, mut total_ref) = (0.0f64, 0.0f64);
        let qw: Vec<f32> = (0..QK_K).map(|_| (rng.gaussian() * 1.5).exp()).collect();
        for _ in 0..64 {
            let x = rng.gaussian_vec(QK_K, 1.0);
            let (_, y_ref) = round_trip(&x);
            let mut q = [BlockIQ4XS::default()];
            quantize_row_iq4_xs_imatrix(&x, &mut q, &qw);
            let mut y = vec![0.0; QK_K];
            dequantize_row_iq4_xs(&q, &mut y);
            total_imx += weighted_sq_err(&x, &y, &qw);
            total_ref += weighted_sq_err(&x, &y_ref, &qw);
        }
        assert!(
            total_imx < 0.9 * total_ref,
            "weighted error {total_imx} vs {total_ref}"
        );
    }
}
