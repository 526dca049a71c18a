//! Q2_K: 2-bit weights in super-blocks of 256 with 4-bit sub-block scales and mins.
//!
//! Layout (ggml `block_q2_K`, 84 bytes per 256 weights = 2.625 bits per weight):
//! ```text
//! offset  size  field
//!      0    16  scales  per 16-weight sub-block: scale in the low nibble, min in the high one
//!     16    64  qs      2-bit levels: byte 32h+l holds weights 128h+l, +32, +64, +96 in bit
//!                       pairs 0-1, 2-3, 4-5, 6-7 (h = 0..2, l = 0..32)
//!     80     2  d       f16 super-scale of the sub-block scales
//!     82     2  dmin    f16 super-scale of the sub-block mins
//! ```
//! Weight `i` in sub-block `j = i/16` is `d·(scales[j] & 15)·q_i − dmin·(scales[j] >> 4)`.

// Indexed loops mirror ggml's C loops (several arrays share one index).
#![allow(clippy::needless_range_loop)]

use super::kquant_common::{make_qkx2_quants, make_qkx3_quants, make_qp_quants};
use super::nearest_int;
use super::q8_k::BlockQ8K;
use crate::QK_K;
use half::f16;

/// One Q2_K super-block (ggml `block_q2_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ2K {
    /// Sixteen (4-bit scale, 4-bit min) pairs.
    pub scales: [u8; QK_K / 16],
    /// 2-bit levels, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale for the quantized sub-block scales.
    pub d: f16,
    /// Super-block scale for the quantized sub-block mins.
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);

// SAFETY: `#[repr(C)]`, two byte arrays (80 bytes) then two f16 (u16 bit patterns) at offsets
// 80 and 82: 84 bytes with alignment 2, no padding (size asserted above); any bits are valid.
unsafe impl super::Block for BlockQ2K {
    const BLOCK_SIZE: usize = QK_K;
}

impl Default for BlockQ2K {
    /// The all-zero block (dequantizes to zeros).
    fn default() -> Self {
        Self {
            scales: [0; QK_K / 16],
            qs: [0; QK_K / 4],
            d: f16::ZERO,
            dmin: f16::ZERO,
        }
    }
}

/// Re-rounds every weight against the stored scales and mins (the last step of both ggml
/// quantizers), then packs the 2-bit levels. Sub-blocks whose stored scale is zero keep the
/// levels of the search.
fn requantize_and_pack(x: &[f32], l: &mut [u8; QK_K], y: &mut BlockQ2K) {
    let d_all = y.d.to_f32();
    let m_all = y.dmin.to_f32();
    for j in 0..QK_K / 16 {
        let d = d_all * f32::from(y.scales[j] & 0xF);
        if d == 0.0 {
            continue;
        }
        let dm = m_all * f32::from(y.scales[j] >> 4);
        for ii in 0..16 {
            let q = nearest_int((x[16 * j + ii] + dm) / d);
            l[16 * j + ii] = 3.min(q).max(0) as u8;
        }
    }
    pack_levels_2bit(l, &mut y.qs);
}

/// Packs 256 levels (low two bits used) into ggml's 2-bit order, shared with Q3_K.
pub(crate) fn pack_levels_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    for h in 0..2 {
        let lv = &l[128 * h..128 * h + 128];
        for i in 0..32 {
            qs[32 * h + i] = lv[i] | (lv[i + 32] << 2) | (lv[i + 64] << 4) | (lv[i + 96] << 6);
        }
    }
}

// ggml: quantize_row_q2_K_ref
/// Quantizes `x` to Q2_K exactly as ggml's reference quantizer (llama-quantize's path without
/// an importance matrix): per 16-weight sub-block a `make_qkx2_quants` fit (nmax 3, weights
/// `|x|`, mean absolute error, 16 trial scales), sub-block scales and mins quantized linearly
/// to 4 bits against their maxima, then every weight re-rounded against the stored values.
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q2_k_ref(x: &[f32], y: &mut [BlockQ2K]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q2_k_ref: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0u8; QK_K];
        let mut weights = [0.0f32; 16];
        let mut scales = [0.0f32; QK_K / 16];
        let mut mins = [0.0f32; QK_K / 16];
        for j in 0..QK_K / 16 {
            let xs = &xb[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            let (scale, min) = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                -0.5,
                0.1,
                15,
                true,
            );
            scales[j] = scale;
            mins[j] = min;
        }
        let mut out = scales_ref(&scales, &mins);
        requantize_and_pack(xb, &mut l, &mut out);
        *yb = out;
    }
}

/// The sub-block scale step of `quantize_row_q2_K_ref`: the sixteen scales and mins quantized
/// linearly to 4 bits against their maxima. Returns a block with `scales`, `d` and `dmin` set
/// (levels zero). Shared with the SIMD quantizers.
pub(crate) fn scales_ref(scales: &[f32; QK_K / 16], mins: &[f32; QK_K / 16]) -> BlockQ2K {
    const Q4SCALE: f32 = 15.0;
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..QK_K / 16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let mut out = BlockQ2K::default();
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..QK_K / 16 {
            // int → uint8_t keeps the low byte.
            out.scales[j] = nearest_int(iscale * scales[j]) as u8;
        }
        out.d = f16::from_f32(max_scale / Q4SCALE);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..QK_K / 16 {
            let v = nearest_int(iscale * mins[j]);
            out.scales[j] |= v.wrapping_shl(4) as u8;
        }
        out.dmin = f16::from_f32(max_min / Q4SCALE);
    }
    out
}

/// The sub-block scale step of `quantize_row_q2_K_impl`: scales and mins to 4 bits with
/// `make_qp_quants`, weighted by each sub-block's total importance `sw`. Returns a block with
/// `scales`, `d` and `dmin` set (levels zero). Shared with the SIMD quantizers.
pub(crate) fn scales_imatrix(
    scales: &[f32; QK_K / 16],
    mins: &[f32; QK_K / 16],
    sw: &[f32; QK_K / 16],
) -> BlockQ2K {
    let mut ls = [0u8; QK_K / 16];
    let mut lm = [0u8; QK_K / 16];
    let dm = make_qp_quants(15, scales, &mut ls, sw);
    let mm = make_qp_quants(15, mins, &mut lm, sw);
    let mut out = BlockQ2K {
        d: f16::from_f32(dm),
        dmin: f16::from_f32(mm),
        ..BlockQ2K::default()
    };
    for j in 0..QK_K / 16 {
        out.scales[j] = ls[j] | (u32::from(lm[j]) << 4) as u8;
    }
    out
}

// ggml: quantize_row_q2_K_impl (quant_weights != NULL)
/// Importance-weighted quantization, as ggml's `quantize_q2_K` does with an imatrix: each
/// weight's importance is `qw · sqrt(sigma2 + x²)` with `sigma2 = mean(x²)` over the
/// super-block; sub-blocks are fitted with `make_qkx3_quants` (squared error, 37 trial
/// scales) and the 4-bit sub-block scales and mins with `make_qp_quants`, weighted by each
/// sub-block's total importance.
///
/// # Panics
/// If `x.len() != y.len() * QK_K` or `qw.len() != x.len()`.
pub fn quantize_row_q2_k_imatrix(x: &[f32], y: &mut [BlockQ2K], qw: &[f32]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q2_k_imatrix: length mismatch"
    );
    assert_eq!(
        qw.len(),
        x.len(),
        "quantize_row_q2_k_imatrix: importance length mismatch"
    );
    for ((xb, wb), yb) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(y.iter_mut())
    {
        let mut l = [0u8; QK_K];
        let mut weight = [0.0f32; 16];
        let mut sw = [0.0f32; QK_K / 16];
        let mut scales = [0.0f32; QK_K / 16];
        let mut mins = [0.0f32; QK_K / 16];
        let mut sumx2 = 0.0f32;
        for &v in xb {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        for j in 0..QK_K / 16 {
            let xs = &xb[16 * j..16 * j + 16];
            let qws = &wb[16 * j..16 * j + 16];
            for ((w, &v), &q) in weight.iter_mut().zip(xs).zip(qws) {
                *w = q * (sigma2 + v * v).sqrt();
            }
            for &w in &weight {
                sw[j] += w;
            }
            let (scale, min) = make_qkx3_quants(
                3,
                xs,
                Some(&weight),
                &mut l[16 * j..16 * j + 16],
                -0.9,
                0.05,
                36,
                false,
            );
            scales[j] = scale;
            mins[j] = min;
        }
        let mut out = scales_imatrix(&scales, &mins, &sw);
        requantize_and_pack(xb, &mut l, &mut out);
        *yb = out;
    }
}

/// Unpacks the 2-bit levels of a block into weight order (`0..4`).
fn unpack_levels(xb: &BlockQ2K) -> [u8; QK_K] {
    let mut a = [0u8; QK_K];
    for h in 0..2 {
        let q = &xb.qs[32 * h..32 * h + 32];
        for s in 0..4 {
            for l in 0..32 {
                a[128 * h + 32 * s + l] = (q[l] >> (2 * s)) & 3;
            }
        }
    }
    a
}

// ggml: dequantize_row_q2_K
/// Dequantizes Q2_K blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q2_k(x: &[BlockQ2K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q2_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let min = xb.dmin.to_f32();
        let a = unpack_levels(xb);
        for (j, (lv, out)) in a.chunks_exact(16).zip(yb.chunks_exact_mut(16)).enumerate() {
            let sc = xb.scales[j];
            let dl = d * f32::from(sc & 0xF);
            let ml = min * f32::from(sc >> 4);
            for (o, &q) in out.iter_mut().zip(lv) {
                *o = dl * f32::from(q) - ml;
            }
        }
    }
}

// ggml: ggml_vec_dot_q2_K_q8_K_generic
/// Dot product of Q2_K weights with Q8_K activations in ggml's generic order: per block the
/// exact integer sums `Σ_j scale_j·Σ q8·q` and `Σ_j bsums_j·min_j`, then
/// `sumf += (y.d·d)·isum − (y.d·dmin)·summs`.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_q2_k_q8_k_ref(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(
        x.len(),
        y.len(),
        "vec_dot_q2_k_q8_k_ref: block count mismatch"
    );
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut summs = 0i32;
        for (&bs, &sc) in yb.bsums.iter().zip(&xb.scales) {
            summs += i32::from(bs) * i32::from(sc >> 4);
        }
        let dall = yb.d * xb.d.to_f32();
        let dmin = yb.d * xb.dmin.to_f32();
        let a = unpack_levels(xb);
        let mut isum = 0i32;
        for (j, (lv, q8)) in a.chunks_exact(16).zip(yb.qs.chunks_exact(16)).enumerate() {
            let mut isuml = 0i32;
            for (&q, &v) in lv.iter().zip(q8) {
                isuml += i32::from(v) * i32::from(q);
            }
            isum += i32::from(xb.scales[j] & 0xF) * isuml;
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
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

    fn round_trip(x: &[f32]) -> (Vec<BlockQ2K>, Vec<f32>) {
        let mut q = vec![BlockQ2K::default(); x.len() / QK_K];
        quantize_row_q2_k_ref(x, &mut q);
        let mut y = vec![0.0; x.len()];
        dequantize_row_q2_k(&q, &mut y);
        (q, y)
    }

    #[test]
    fn block_size_matches_ggml() {
        assert_eq!(
            std::mem::size_of::<BlockQ2K>(),
            crate::BlockFormat::Q2_K.type_size()
        );
        assert_eq!(std::mem::offset_of!(BlockQ2K, d), 80);
        assert_eq!(std::mem::offset_of!(BlockQ2K, dmin), 82);
    }

    #[test]
    fn gaussian_round_trip_error() {
        let mut rng = SplitMix64(42);
        for std in [1.0f32, 0.02, 300.0] {
            let x = rng.gaussian_vec(QK_K * 64, std);
            let (_, y) = round_trip(&x);
            let rel = relative_rmse(&x, &y);
            // Measured 0.296-0.300 on such data (scale-invariant up to f16 rounding).
            assert!(rel < 0.33, "std {std}: relative RMSE {rel}");
        }
    }

    #[test]
    fn adversarial_inputs() {
        for (name, x) in adversarial_blocks() {
            let (_, y) = round_trip(&x);
            let xmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if x.iter().all(|&v| v == 0.0) {
                assert!(y.iter().all(|&v| v == 0.0), "{name}: zeros stay zeros");
            } else if !(1e-20..=1e5).contains(&xmax) {
                // d = max_scale / 15 overflows f16 from |x| of about 3e5 on (`very large`
                // gives infinities, as in ggml), or the scales underflow to zero.
            } else {
                let rel = relative_rmse(&x, &y);
                assert!(y.iter().all(|v| v.is_finite()), "{name}: non-finite output");
                assert!(rel < 0.5, "{name}: relative RMSE {rel}");
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
            let got = f64::from(vec_dot_q2_k_q8_k_ref(&q, &a));
            assert!(
                (got - reference).abs() <= 1e-5 * norm,
                "nb {nb}: {got} vs {reference}"
            );
        }
    }

    #[test]
    fn imatrix_skewed_weights_reduce_weighted_error() {
        let mut rng = SplitMix64(23);
        let rows = 64;
        let (mut total_imx, mut total_ref) = (0.0f64, 0.0f64);
        let qw: Vec<f32> = (0..QK_K).map(|_| (rng.gaussian() * 1.5).exp()).collect();
        for _ in 0..rows {
            let x = rng.gaussian_vec(QK_K, 1.0);
            let (_, y_ref) = round_trip(&x);
            let mut q = [BlockQ2K::default()];
            quantize_row_q2_k_imatrix(&x, &mut q, &qw);
            let mut y = vec![0.0; QK_K];
            dequantize_row_q2_k(&q, &mut y);
            total_imx += weighted_sq_err(&x, &y, &qw);
            total_ref += weighted_sq_err(&x, &y_ref, &qw);
        }
        // A loose bound: the weighted search must clearly beat the unweighted one.
        assert!(
            total_imx < 0.8 * total_ref,
            "weighted error {total_imx} vs {total_ref}"
        );
    }
}
