//! Q3_K: 3-bit symmetric weights in super-blocks of 256 with 6-bit sub-block scales.
//!
//! Layout (ggml `block_q3_K`, 110 bytes per 256 weights = 3.4375 bits per weight):
//! ```text
//! offset  size  field
//!      0    32  hmask   high bit of each level: weight p sets bit p/32 of byte p%32
//!                       when its level is >= 4 (then stored as level - 4 below)
//!     32    64  qs      low 2 bits, in Q2_K's order (byte 32h+l: weights 128h+l, +32, +64, +96)
//!     96    12  scales  sixteen 6-bit scales biased by 32: the low nibbles of 0..8 in bytes
//!                       0..8 (low half), of 8..16 in bytes 0..8 (high half); the top two
//!                       bits of scale j in bits 2(j/4) of byte 8 + j%4
//!    108     2  d       f16 super-scale
//! ```
//! Weight `i` is `d · (scale_{i/16} − 32) · (q_i − 4)` with `q_i` in `0..8`.

// Indexed loops mirror ggml's C loops (several arrays share one index).
#![allow(clippy::needless_range_loop)]

use super::kquant_common::{make_qx_quants, GROUP_MAX_EPS};
use super::nearest_int;
use super::q2_k::pack_levels_2bit;
use super::q8_k::BlockQ8K;
use crate::QK_K;
use half::f16;

/// One Q3_K super-block (ggml `block_q3_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ3K {
    /// High bit of every level.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits of every level.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales, packed.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);

// SAFETY: `#[repr(C)]`, byte arrays (108 bytes) then one f16 at offset 108: 110 bytes with
// alignment 2, no padding (size asserted above); any bits are valid.
unsafe impl super::Block for BlockQ3K {
    const BLOCK_SIZE: usize = QK_K;
}

impl Default for BlockQ3K {
    /// The all-zero block (dequantizes to zeros).
    fn default() -> Self {
        Self {
            hmask: [0; QK_K / 8],
            qs: [0; QK_K / 4],
            scales: [0; 12],
            d: f16::ZERO,
        }
    }
}

// ggml: make_q3_quants
/// Symmetric quantization of `x` to levels `-nmax..nmax` with the x²-weighted least-squares
/// scale, refined by up to 5 rounds of coordinate descent on single levels (ggml's `do_rmse`
/// path, the only one Q3_K uses). Levels are written offset by `nmax` (so `0..2·nmax`) into
/// `l[..x.len()]`; returns the scale.
pub fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len();
    let l = &mut l[..n];
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &xi in x {
        let ax = xi.abs();
        if ax > amax {
            amax = ax;
            max = xi;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let iscale = (-nmax) as f32 / max;
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = (nmax - 1).min(nearest_int(iscale * x[i])).max(-nmax);
        l[i] = q as i8;
        let w = x[i] * x[i];
        let qf = q as f32;
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = f32::from(l[i]);
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = (nmax - 1).min(nearest_int(x[i] * sl2 / slx)).max(-nmax);
                if new_l != i32::from(l[i]) {
                    let nf = new_l as f32;
                    slx += w * x[i] * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for v in l.iter_mut() {
        *v = (i32::from(*v) + nmax) as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Packs sixteen biased 6-bit scale levels into the 12-byte `scales` field (the loop ggml
/// repeats inline in both Q3_K quantizers; bits beyond 6 are truncated as in C).
fn pack_scales(ls: &[i32; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..16 {
        let l = ls[j];
        if j < 8 {
            s[j] = (l & 0xF) as u8;
        } else {
            s[j - 8] |= ((l & 0xF) << 4) as u8;
        }
        let hi = l >> 4;
        s[j % 4 + 8] |= hi.wrapping_shl(2 * (j as u32 / 4)) as u8;
    }
    s
}

/// The sixteen scales of a block, unbiased (`-32..32`).
pub(crate) fn unpack_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for j in 0..16 {
        let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (lo | (hi << 4)) as i8 - 32;
    }
    out
}

/// The tail shared by ggml's two Q3_K quantizers: re-round every weight against the stored
/// scales, split the levels into the high-bit mask and the 2-bit planes.
fn requantize_and_pack(x: &[f32], l: &mut [i8; QK_K], y: &mut BlockQ3K) {
    let d_all = y.d.to_f32();
    let sc = unpack_scales(&y.scales);
    for j in 0..16 {
        let d = d_all * f32::from(sc[j]);
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            let q = 3.min(nearest_int(x[16 * j + ii] / d)).max(-4);
            l[16 * j + ii] = (q + 4) as i8;
        }
    }
    y.hmask = [0; QK_K / 8];
    let mut low = [0u8; QK_K];
    for j in 0..QK_K {
        let mut v = l[j];
        if v > 3 {
            y.hmask[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        low[j] = v as u8;
    }
    pack_levels_2bit(&low, &mut y.qs);
}

// ggml: quantize_row_q3_K_ref
/// Quantizes `x` to Q3_K exactly as ggml's reference quantizer (llama-quantize's path without
/// an importance matrix): per 16-weight sub-block a `make_q3_quants` fit (nmax 4), the
/// sub-block scales quantized to 6 bits against the scale of largest magnitude (which maps to
/// −32), then every weight re-rounded against the stored scales.
///
/// # Panics
/// If `x.len() != y.len() * QK_K`.
pub fn quantize_row_q3_k_ref(x: &[f32], y: &mut [BlockQ3K]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q3_k_ref: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        for j in 0..16 {
            scales[j] = make_q3_quants(4, &xb[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        }
        let mut out = scales_ref(&scales);
        requantize_and_pack(xb, &mut l, &mut out);
        *yb = out;
    }
}

/// The scale step of `quantize_row_q3_K_ref`: the sixteen sub-block scales to 6 bits against
/// the one of largest magnitude (mapped to −32). Returns a block with `scales` and `d` set
/// (levels zero). Shared with the SIMD quantizers.
pub(crate) fn scales_ref(scales: &[f32; 16]) -> BlockQ3K {
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for &s in scales {
        let scale = s.abs();
        if scale > amax {
            amax = scale;
            max_scale = s;
        }
    }
    let mut out = BlockQ3K::default();
    // C's `if (max_scale)`: true for NaN as well as for non-zero values.
    if max_scale != 0.0 {
        let iscale = -32.0f32 / max_scale;
        let mut ls = [0i32; 16];
        for j in 0..16 {
            // ggml stores nearest_int into an int8_t before clamping.
            let v = i32::from(nearest_int(iscale * scales[j]) as i8);
            ls[j] = i32::from((v.clamp(-32, 31) + 32) as i8);
        }
        out.scales = pack_scales(&ls);
        out.d = f16::from_f32(1.0 / iscale);
    }
    out
}

/// The scale step of `quantize_row_q3_K_impl`: the sixteen scales fitted with
/// `make_qx_quants` (nmax 32) weighted by each sub-block's total importance `sw`. Returns a
/// block with `scales` and `d` set (levels zero). Shared with the SIMD quantizers.
pub(crate) fn scales_imatrix(scales: &[f32; 16], sw: &[f32; 16]) -> BlockQ3K {
    let mut lsq = [0i8; 16];
    let d_block = make_qx_quants(32, scales, &mut lsq, 1, Some(sw));
    let ls = lsq.map(i32::from);
    BlockQ3K {
        scales: pack_scales(&ls),
        d: f16::from_f32(d_block),
        ..BlockQ3K::default()
    }
}

// ggml: quantize_row_q3_K_impl (quant_weights != NULL)
/// Importance-weighted quantization, as ggml's `quantize_q3_K` does with an imatrix: each
/// weight's importance is `qw · sqrt(sigma2 + x²)` with `sigma2 = 2·mean(x²)` over the
/// super-block; sub-blocks are fitted with `make_qx_quants` (nmax 4), and the sixteen scales
/// themselves with `make_qx_quants` (nmax 32) weighted by each sub-block's total importance.
///
/// # Panics
/// If `x.len() != y.len() * QK_K` or `qw.len() != x.len()`.
pub fn quantize_row_q3_k_imatrix(x: &[f32], y: &mut [BlockQ3K], qw: &[f32]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q3_k_imatrix: length mismatch"
    );
    assert_eq!(
        qw.len(),
        x.len(),
        "quantize_row_q3_k_imatrix: importance length mismatch"
    );
    for ((xb, wb), yb) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(y.iter_mut())
    {
        let mut l = [0i8; QK_K];
        let mut scales = [0.0f32; 16];
        let mut weight = [0.0f32; 16];
        let mut sw = [0.0f32; 16];
        let mut sumx2 = 0.0f32;
        for &v in xb {
            sumx2 += v * v;
        }
        let sigma2 = 2.0 * sumx2 / QK_K as f32;
        for j in 0..16 {
            let xs = &xb[16 * j..16 * j + 16];
            let qws = &wb[16 * j..16 * j + 16];
            for ((w, &v), &q) in weight.iter_mut().zip(xs).zip(qws) {
                *w = q * (sigma2 + v * v).sqrt();
            }
            let mut sumw = 0.0f32;
            for &w in &weight {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(4, xs, &mut l[16 * j..16 * j + 16], 1, Some(&weight));
        }
        let mut out = scales_imatrix(&scales, &sw);
        requantize_and_pack(xb, &mut l, &mut out);
        *yb = out;
    }
}

/// Unpacks the levels of a block into weight order, minus the offset 4 (`-4..4`).
fn unpack_levels(xb: &BlockQ3K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for h in 0..2 {
        let q = &xb.qs[32 * h..32 * h + 32];
        for s in 0..4 {
            let bit = 4 * h + s;
            for l in 0..32 {
                let low = ((q[l] >> (2 * s)) & 3) as i8;
                let high = if xb.hmask[l] & (1 << bit) != 0 { 0 } else { 4 };
                a[128 * h + 32 * s + l] = low - high;
            }
        }
    }
    a
}

// ggml: dequantize_row_q3_K
/// Dequantizes Q3_K blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * QK_K`.
pub fn dequantize_row_q3_k(x: &[BlockQ3K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q3_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = xb.d.to_f32();
        let sc = unpack_scales(&xb.scales);
        let a = unpack_levels(xb);
        for (j, (lv, out)) in a.chunks_exact(16).zip(yb.chunks_exact_mut(16)).enumerate() {
            let dl = d_all * f32::from(sc[j]);
            for (o, &q) in out.iter_mut().zip(lv) {
                *o = dl * f32::from(q);
            }
        }
    }
}

// ggml: ggml_vec_dot_q3_K_q8_K_generic
/// Dot product of Q3_K weights with Q8_K activations in ggml's generic order: per block eight
/// interleaved integer lanes (position `p` to lane `p mod 8`, each product scaled by its
/// sub-block scale), `sums[l] += (d·y.d)·lane[l]`, the eight sums added in order at the end.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_q3_k_q8_k_ref(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(
        x.len(),
        y.len(),
        "vec_dot_q3_k_q8_k_ref: block count mismatch"
    );
    let mut sums = [0.0f32; 8];
    for (xb, yb) in x.iter().zip(y) {
        let a = unpack_levels(xb);
        let sc = unpack_scales(&xb.scales);
        let mut lanes = [0i32; 8];
        for (p, (&av, &qv)) in a.iter().zip(&yb.qs).enumerate() {
            lanes[p % 8] += i32::from(sc[p / 16]) * (i32::from(av) * i32::from(qv));
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

    fn round_trip(x: &[f32]) -> (Vec<BlockQ3K>, Vec<f32>) {
        let mut q = vec![BlockQ3K::default(); x.len() / QK_K];
        quantize_row_q3_k_ref(x, &mut q);
        let mut y = vec![0.0; x.len()];
        dequantize_row_q3_k(&q, &mut y);
        (q, y)
    }

    #[test]
    fn block_size_matches_ggml() {
        assert_eq!(
            std::mem::size_of::<BlockQ3K>(),
            crate::BlockFormat::Q3_K.type_size()
        );
        assert_eq!(std::mem::offset_of!(BlockQ3K, d), 108);
    }

    #[test]
    fn scale_packing_round_trips_all_6_bit_values() {
        let mut rng = SplitMix64(7);
        for _ in 0..200 {
            let mut ls = [0i32; 16];
            for v in ls.iter_mut() {
                *v = (rng.next_u64() % 64) as i32;
            }
            let un = unpack_scales(&pack_scales(&ls));
            for j in 0..16 {
                assert_eq!(i32::from(un[j]) + 32, ls[j], "scale {j}");
            }
        }
    }

    #[test]
    fn gaussian_round_trip_error() {
        let mut rng = SplitMix64(42);
        for std in [1.0f32, 0.02, 300.0] {
            let x = rng.gaussian_vec(QK_K * 64, std);
            let (_, y) = round_trip(&x);
            let rel = relative_rmse(&x, &y);
            // Measured 0.150-0.151 on such data (scale-invariant up to f16 rounding).
            assert!(rel < 0.165, "std {std}: relative RMSE {rel}");
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
                // x² overflows or underflows f32 in make_q3_quants, as in ggml.
            } else {
                let rel = relative_rmse(&x, &y);
                assert!(y.iter().all(|v| v.is_finite()), "{name}: non-finite output");
                assert!(rel < 0.3, "{name}: relative RMSE {rel}");
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
            let got = f64::from(vec_dot_q3_k_q8_k_ref(&q, &a));
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
            let mut q = [BlockQ3K::default()];
            quantize_row_q3_k_imatrix(&x, &mut q, &qw);
            let mut y = vec![0.0; QK_K];
            dequantize_row_q3_k(&q, &mut y);
            total_imx += weighted_sq_err(&x, &y, &qw);
            total_ref += weighted_sq_err(&x, &y_ref, &qw);
        }
        assert!(
            total_imx < 0.8 * total_ref,
            "weighted error {total_imx} vs {total_ref}"
        );
    }
}
