//! Q6_K: 6-bit symmetric weights in super-blocks of 256 with 8-bit sub-block scales.
//!
//! Layout (ggml `block_q6_K`, 210 bytes per 256 weights = 6.5625 bits per weight):
//! ```text
//! offset  size  field
//!      0   128  ql      low 4 bits. For half h (weights 128h..128h+128) and l in 0..32:
//!                       byte 64h+l = w[l] | w[l+64] << 4, byte 64h+32+l = w[l+32] | w[l+96] << 4
//!    128    64  qh      high 2 bits: byte 32h+l = w[l] | w[l+32] << 2 | w[l+64] << 4 | w[l+96] << 6
//!    192    16  scales  i8 scale of each 16-weight sub-block
//!    208     2  d       f16 super-scale
//! ```
//! Weight `i` is `d · scales[i/16] · (q_i − 32)` with `q_i` in `0..64`.

// Indexed loops mirror ggml's C loops (several arrays share one index).
#![allow(clippy::needless_range_loop)]

use super::kquant_common::{make_qx_quants, GROUP_MAX_EPS};
use super::nearest_int;
use super::q8_k::BlockQ8K;
use crate::QK_K;
use half::f16;

/// One Q6_K super-block (ggml `block_q6_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    /// Low 4 bits of every level.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits of every level.
    pub qh: [u8; QK_K / 4],
    /// Per-16-weight scales, in units of `d`.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);

// SAFETY: `#[repr(C)]`, byte arrays followed by one f16 (a u16 bit pattern) at offset 208:
// 128 + 64 + 16 + 2 = 210 bytes with alignment 2, so no padding (size asserted above); any
// bits are valid.
unsafe impl super::Block for BlockQ6K {
    const BLOCK_SIZE: usize = QK_K;
}

impl Default for BlockQ6K {
    /// The all-zero block (dequantizes to zeros).
    fn default() -> Self {
        Self {
            ql: [0; QK_K / 2],
            qh: [0; QK_K / 4],
            scales: [0; QK_K / 16],
            d: f16::ZERO,
        }
    }
}

/// Shared body of ggml's `quantize_row_q6_K_ref` and `quantize_row_q6_K_impl` for one
/// super-block: per 16-weight sub-block a `make_qx_quants` fit (nmax 32, weighted by x² or by
/// the importance `qw`), sub-block scales quantized to i8 against the scale of largest
/// magnitude (which maps to -128), then every weight re-rounded against the stored scales.
fn quantize_block(x: &[f32], qw: Option<&[f32]>) -> BlockQ6K {
    let x = &x[..QK_K];
    let mut l = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for ib in 0..QK_K / 16 {
        let r = 16 * ib..16 * ib + 16;
        let w = qw.map(|q| &q[r.clone()]);
        let scale = make_qx_quants(32, &x[r.clone()], &mut l[r], 1, w);
        scales[ib] = scale;
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        return BlockQ6K::default();
    }

    let mut y = BlockQ6K::default();
    let iscale = -128.0f32 / max_scale;
    y.d = f16::from_f32(1.0 / iscale);
    for (s, &v) in y.scales.iter_mut().zip(&scales) {
        // int → int8_t in C keeps the low byte.
        *s = nearest_int(iscale * v).min(127) as i8;
    }
    let d_all = y.d.to_f32();
    for j in 0..QK_K / 16 {
        let d = d_all * f32::from(y.scales[j]);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = 31.min(nearest_int(x[16 * j + ii] / d)).max(-32);
            l[16 * j + ii] = (q + 32) as i8;
        }
    }

    for h in 0..2 {
        let lv = &l[128 * h..128 * h + 128];
        let ql = &mut y.ql[64 * h..64 * h + 64];
        let qh = &mut y.qh[32 * h..32 * h + 32];
        for i in 0..32 {
            let v = [lv[i], lv[i + 32], lv[i + 64], lv[i + 96]].map(i32::from);
            ql[i] = ((v[0] & 0xF) | ((v[2] & 0xF) << 4)) as u8;
            ql[i + 32] = ((v[1] & 0xF) | ((v[3] & 0xF) << 4)) as u8;
            qh[i] =
                ((v[0] >> 4) | ((v[1] >> 4) << 2) | ((v[2] >> 4) << 4) | ((v[3] >> 4) << 6)) as u8;
        }
    }
    y
}

// ggml: quantize_row_q6_K_ref
/// Quantizes `x` to Q6_K exactly as ggml's reference quantizer (also llama-quantize's path
/// without an importance matrix).
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q6_k_ref(x: &[f32], y: &mut [BlockQ6K]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q6_k_ref: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        *yb = quantize_block(xb, None);
    }
}

// ggml: quantize_row_q6_K_impl (quant_weights != NULL)
/// Importance-weighted quantization, as ggml's `quantize_q6_K` does when given an imatrix:
/// the sub-block fits weight each squared error by `qw` alone (ggml's Q6_K, unlike Q4_K and
/// Q5_K, does not mix in the magnitude of `x`). `qw` covers exactly `x`.
///
/// # Panics
/// If `x.len() != y.len() * QK_K` or `qw.len() != x.len()`.
pub fn quantize_row_q6_k_imatrix(x: &[f32], y: &mut [BlockQ6K], qw: &[f32]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q6_k_imatrix: length mismatch"
    );
    assert_eq!(
        qw.len(),
        x.len(),
        "quantize_row_q6_k_imatrix: importance length mismatch"
    );
    for ((xb, wb), yb) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(y.iter_mut())
    {
        *yb = quantize_block(xb, Some(wb));
    }
}

/// Unpack the levels of a block into weight order, minus the offset 32 (`-32..32`).
fn unpack_levels(xb: &BlockQ6K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for h in 0..2 {
        let ql = &xb.ql[64 * h..64 * h + 64];
        let qh = &xb.qh[32 * h..32 * h + 32];
        let out = &mut a[128 * h..128 * h + 128];
        for l in 0..32 {
            let hb = qh[l];
            out[l] = ((ql[l] & 0xF) | ((hb & 3) << 4)) as i8 - 32;
            out[l + 32] = ((ql[l + 32] & 0xF) | (((hb >> 2) & 3) << 4)) as i8 - 32;
            out[l + 64] = ((ql[l] >> 4) | (((hb >> 4) & 3) << 4)) as i8 - 32;
            out[l + 96] = ((ql[l + 32] >> 4) | (((hb >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

// ggml: dequantize_row_q6_K
/// Dequantizes Q6_K blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q6_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let a = unpack_levels(xb);
        for (j, (lv, out)) in a.chunks_exact(16).zip(yb.chunks_exact_mut(16)).enumerate() {
            // ggml evaluates `d * sc * q` left to right.
            let ds = d * f32::from(xb.scales[j]);
            for (o, &q) in out.iter_mut().zip(lv) {
                *o = ds * f32::from(q);
            }
        }
    }
}

// ggml: ggml_vec_dot_q6_K_q8_K_generic
/// Dot product of Q6_K weights with Q8_K activations, summed in the same order as ggml's
/// scalar kernel: per block eight interleaved integer lane sums (position `p` goes to lane
/// `p mod 8`), `sums[l] += (d·y.d) · lane[l]`, and the eight `sums` added in order at the end.
/// Unlike its Q4_K/Q5_K siblings, GCC does not contract this kernel's update into an FMA in
/// llama.cpp's `-march=native` build (it emits `vmulps` + `vaddps`), so neither do we.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_q6_k_q8_k_ref(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(
        x.len(),
        y.len(),
        "vec_dot_q6_k_q8_k_ref: block count mismatch"
    );
    let mut sums = [0.0f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let a = unpack_levels(xb);
        let mut lanes = [0i32; 8];
        for (p, (&av, &qv)) in a.iter().zip(&yb.qs).enumerate() {
            lanes[p % 8] += i32::from(xb.scales[p / 16]) * (i32::from(av) * i32::from(qv));
        }
        let d = xb.d.to_f32() * yb.d;
        for (s, &v) in sums.iter_mut().zip(&lanes) {
            *s += d * v as f32;
        }
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
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

    fn round_trip(x: &[f32]) -> (Vec<BlockQ6K>, Vec<f32>) {
        let mut q = vec![BlockQ6K::default(); x.len() / QK_K];
        quantize_row_q6_k_ref(x, &mut q);
        let mut y = vec![0.0; x.len()];
        dequantize_row_q6_k(&q, &mut y);
        (q, y)
    }

    #[test]
    fn block_size_matches_ggml() {
        assert_eq!(std::mem::size_of::<BlockQ6K>(), 210);
        assert_eq!(
            std::mem::size_of::<BlockQ6K>(),
            crate::BlockFormat::Q6_K.type_size()
        );
        assert_eq!(std::mem::offset_of!(BlockQ6K, d), 208);
    }

    #[test]
    fn gaussian_round_trip_error() {
        let mut rng = SplitMix64(42);
        for std in [1.0f32, 0.02, 300.0] {
            let x = rng.gaussian_vec(QK_K * 64, std);
            let (_, y) = round_trip(&x);
            let rel = relative_rmse(&x, &y);
            // Measured 0.0175-0.0178.
            assert!(rel < 0.020, "std {std}: relative RMSE {rel}");
        }
    }

    #[test]
    fn largest_scale_maps_to_minus_128() {
        let mut rng = SplitMix64(3);
        let x = rng.gaussian_vec(QK_K * 4, 1.0);
        let (q, _) = round_trip(&x);
        for b in &q {
            assert!(b.scales.contains(&-128));
        }
    }

    #[test]
    fn adversarial_inputs() {
        for (name, x) in adversarial_blocks() {
            let (q, y) = round_trip(&x);
            let xmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if x.iter().all(|&v| v == 0.0) {
                assert!(
                    y.iter().all(|&v| v == 0.0),
                    "{name}: zeros must stay exact zeros"
                );
            } else if xmax > 1e20 {
                // x² overflows f32 in make_qx_quants, every sub-block scale is NaN and is skipped,
                // so ggml (and we) emit an all-zero block.
                assert_eq!(q[0].d.to_f32(), 0.0, "{name}");
                assert!(y.iter().all(|&v| v == 0.0), "{name}");
            } else if xmax < 1e-20 {
                // Scales underflow f16: the block collapses to zeros, as in ggml.
                assert!(y.iter().all(|&v| v == 0.0), "{name}");
            } else {
                // Worst measured: the single Gaussian blocks, 0.018 (outlier blocks do better).
                let rel = relative_rmse(&x, &y);
                assert!(y.iter().all(|v| v.is_finite()), "{name}: non-finite output");
                assert!(rel < 0.023, "{name}: relative RMSE {rel}");
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
            let reference: f64 = dq
                .iter()
                .zip(&da)
                .map(|(&u, &v)| f64::from(u) * f64::from(v))
                .sum();
            let norm: f64 = dq
                .iter()
                .zip(&da)
                .map(|(&u, &v)| (f64::from(u) * f64::from(v)).abs())
                .sum();
            let got = f64::from(vec_dot_q6_k_q8_k_ref(&q, &a));
            assert!(
                (got - reference).abs() <= 1e-5 * norm,
                "nb {nb}: {got} vs {reference}"
            );
        }
    }

    #[test]
    fn imatrix_all_ones_round_trips() {
        let mut rng = SplitMix64(17);
        let x = rng.gaussian_vec(QK_K * 64, 1.0);
        let qw = vec![1.0f32; x.len()];
        let mut q = vec![BlockQ6K::default(); 64];
        quantize_row_q6_k_imatrix(&x, &mut q, &qw);
        let mut y = vec![0.0; x.len()];
        dequantize_row_q6_k(&q, &mut y);
        let rel = relative_rmse(&x, &y);
        assert!(rel < 0.020, "relative RMSE {rel}");
    }

    #[test]
    fn imatrix_skewed_weights_reduce_weighted_error() {
        let mut rng = SplitMix64(23);
        let rows = 64;
        let mut wins = 0;
        let (mut total_imx, mut total_ref) = (0.0f64, 0.0f64);
        let qw: Vec<f32> = (0..QK_K).map(|_| (rng.gaussian() * 1.5).exp()).collect();
        for _ in 0..rows {
            let x = rng.gaussian_vec(QK_K, 1.0);
            let (_, y_ref) = round_trip(&x);
            let mut q = [BlockQ6K::default()];
            quantize_row_q6_k_imatrix(&x, &mut q, &qw);
            let mut y = vec![0.0; QK_K];
            dequantize_row_q6_k(&q, &mut y);
            let (e_imx, e_ref) = (
                weighted_sq_err(&x, &y, &qw),
                weighted_sq_err(&x, &y_ref, &qw),
            );
            total_imx += e_imx;
            total_ref += e_ref;
            if e_imx <= e_ref {
                wins += 1;
            }
        }
        // Measured: better on 64/64 rows; total weighted error ratio 0.74.
        assert!(
            wins * 10 >= rows * 9,
            "imatrix better on only {wins}/{rows} rows"
        );
        assert!(
            total_imx < 0.85 * total_ref,
            "weighted error {total_imx} vs {total_ref}"
        );
    }
}
