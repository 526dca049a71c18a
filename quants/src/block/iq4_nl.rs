//! IQ4_NL: 4-bit non-linear weights, 32 per block, one f16 scale.
//!
//! Layout (ggml `block_iq4_nl`, 18 bytes per 32 weights = 4.5 bits per weight): `d: f16`,
//! `qs: [u8; 16]`; byte `j` holds the index of weight `j` in its low nibble and of weight
//! `j + 16` in its high nibble. Weight = `d · KVALUES_IQ4NL[index]`: the sixteen levels are
//! ggml's non-uniform grid (denser near zero, as trained weights are).
//!
//! The search ([`quantize_iq4_nl_block`], ggml's `quantize_row_iq4_nl_impl`) is shared with
//! IQ4_XS, which groups eight such blocks under one f16 scale with 6-bit block scales.

// Indexed loops mirror ggml's C loops (several arrays share one index).
#![allow(clippy::needless_range_loop)]

use super::kquant_common::GROUP_MAX_EPS;
use super::nearest_int;
use super::q8_0::BlockQ8_0;
use super::Block;
use half::f16;

/// Weights per IQ4_NL block (ggml's `QK4_NL`).
pub const QK4_NL: usize = 32;

/// ggml's `kvalues_iq4nl`: the sixteen levels of IQ4_NL and IQ4_XS, ascending.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// One IQ4_NL block (ggml `block_iq4_nl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIQ4NL {
    /// Scale: weight = `KVALUES_IQ4NL[index] · d`.
    pub d: f16,
    /// Level indices: low nibbles weights 0..16, high nibbles 16..32.
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);

// SAFETY: repr(C), f16 (align 2) followed by 16 bytes: no padding, size 18; any bits valid.
unsafe impl Block for BlockIQ4NL {
    const BLOCK_SIZE: usize = QK4_NL;
}

impl Default for BlockIQ4NL {
    /// The all-zero block (index 0 scaled by 0: dequantizes to zeros).
    fn default() -> Self {
        Self {
            d: f16::ZERO,
            qs: [0; QK4_NL / 2],
        }
    }
}

// ggml: best_index_int8
/// Index of the entry of the ascending table `val` nearest to `x` (the upper one on a tie),
/// by bisection exactly as ggml computes it (comparisons in f32).
#[inline]
pub(crate) fn best_index_int8(val: &[i8; 16], x: f32) -> u8 {
    if x <= f32::from(val[0]) {
        return 0;
    }
    if x >= f32::from(val[15]) {
        return 15;
    }
    let (mut ml, mut mu) = (0usize, 15usize);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < f32::from(val[mav]) {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - f32::from(val[mu - 1]) < f32::from(val[mu]) - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// What [`quantize_iq4_nl_block`] produces for one super-block of `n` weights (32 for IQ4_NL,
/// 256 for IQ4_XS).
pub(crate) struct Iq4Block<const N: usize> {
    /// The f16 super-scale.
    pub d: f16,
    /// IQ4_XS only: the high two bits of the eight biased 6-bit block scales.
    pub scales_h: u16,
    /// IQ4_XS only: the low four bits of the eight block scales, two per byte.
    pub scales_l: [u8; 4],
    /// Packed level indices, `N / 2` bytes used.
    pub qs: [u8; 128],
}

// ggml: quantize_row_iq4_nl_impl
/// ggml's search for IQ4_NL and IQ4_XS over one super-block `x` of `N` weights in blocks of
/// 32. Per block: importance `qw · sqrt(sigma2 + x²)` (`sigma2 = 2·mean(x²)` over the
/// super-block) or x² without `qw`; a first scale mapping the value of largest magnitude onto
/// the level −127, its least-squares refit, then `2·ntry + 1` trial inverse scales
/// `(itry − 127)/max`, keeping the best weighted fit. With several blocks (IQ4_XS) the block
/// scales are quantized to 6 bits against the largest (mapped to −32) and every weight is
/// re-indexed against the stored scale; with one block (IQ4_NL) the scale is stored as f16 and,
/// when `ntry > 0`, the weights re-indexed against the unrounded scale.
///
/// `ntry <= 0` (ggml's `quantize_row_iq4_nl_ref`, `ntry = -1`) is not offered: for an all-zero
/// block ggml then keeps indices left over from the previous block in its scratch buffer.
pub(crate) fn quantize_iq4_nl_block<const N: usize>(
    x: &[f32],
    qw: Option<&[f32]>,
    ntry: i32,
) -> Iq4Block<N> {
    debug_assert!(ntry > 0);
    let values = &KVALUES_IQ4NL;
    let x = &x[..N];
    let nblocks = N / 32;
    let mut sigma2 = 0.0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0 / N as f32;

    let mut l = [0u8; 256];
    let mut scales = [0.0f32; 8];
    let mut weight = [0.0f32; 32];
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    let v0 = f32::from(values[0]);
    for ib in 0..nblocks {
        let xb = &x[32 * ib..32 * ib + 32];
        let lb = &mut l[32 * ib..32 * ib + 32];
        match qw {
            Some(q) => {
                let qb = &q[32 * ib..32 * ib + 32];
                for j in 0..32 {
                    weight[j] = qb[j] * (sigma2 + xb[j] * xb[j]).sqrt();
                }
            }
            None => {
                for j in 0..32 {
                    weight[j] = xb[j] * xb[j];
                }
            }
        }
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = -max / v0;
        let mut id = 1.0 / d;
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        for j in 0..32 {
            let al = id * xb[j];
            let li = best_index_int8(values, al);
            lb[j] = li;
            let q = f32::from(values[li as usize]);
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + i32::from(values[0])) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..32 {
                let al = id * xb[j];
                let li = best_index_int8(values, al);
                let q = f32::from(values[li as usize]);
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    let mut out = Iq4Block {
        d: f16::ZERO,
        scales_h: 0,
        scales_l: [0; 4],
        qs: [0; 128],
    };
    if nblocks > 1 {
        let xs = xs_block_scales(&scales, max_scale);
        out.d = xs.d;
        out.scales_h = xs.scales_h;
        out.scales_l = xs.scales_l;
        for ib in 0..nblocks {
            let xb = &x[32 * ib..32 * ib + 32];
            for j in 0..32 {
                l[32 * ib + j] = best_index_int8(values, xs.idl[ib] * xb[j]);
            }
        }
    } else {
        out.d = f16::from_f32(scales[0]);
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for j in 0..N {
            l[j] = best_index_int8(values, id * x[j]);
        }
    }
    for i in 0..N / 32 {
        for j in 0..16 {
            out.qs[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
    out
}

/// The IQ4_XS block scales of one super-block (the multi-block tail of
/// `quantize_row_iq4_nl_impl`).
pub(crate) struct XsScales {
    /// The f16 super-scale.
    pub d: f16,
    /// High two bits of the eight biased 6-bit block scales.
    pub scales_h: u16,
    /// Low four bits of the eight block scales, two per byte.
    pub scales_l: [u8; 4],
    /// Inverse of each block's dequantization scale (0 where that scale is 0), against which
    /// the weights are re-indexed.
    pub idl: [f32; 8],
}

/// Quantizes the eight fitted block scales of an IQ4_XS super-block to 6 bits against
/// `max_scale`, the one of largest magnitude (mapped to −32). Shared with the SIMD quantizers.
pub(crate) fn xs_block_scales(scales: &[f32; 8], max_scale: f32) -> XsScales {
    let d = -max_scale / 32.0;
    let mut out = XsScales {
        d: f16::from_f32(d),
        scales_h: 0,
        scales_l: [0; 4],
        idl: [0.0; 8],
    };
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for ib in 0..8 {
        let mut ls = nearest_int(id * scales[ib]);
        ls = ls.clamp(-32, 31);
        let dl = d * ls as f32;
        out.idl[ib] = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let ls = (ls + 32) as u8;
        let (lo, hi) = (ls & 0xF, ls >> 4);
        if ib % 2 == 0 {
            out.scales_l[ib / 2] = lo;
        } else {
            out.scales_l[ib / 2] |= lo << 4;
        }
        out.scales_h |= u16::from(hi) << (2 * (ib % 8));
    }
    out
}

/// Number of trial scales on each side that llama-quantize's `quantize_iq4_nl` and
/// `quantize_iq4_xs` use (with and without an importance matrix).
pub(crate) const IQ4_NTRY: i32 = 7;

fn quantize_rows(x: &[f32], y: &mut [BlockIQ4NL], qw: Option<&[f32]>) {
    for (ib, (xb, yb)) in x.chunks_exact(QK4_NL).zip(y.iter_mut()).enumerate() {
        let w = qw.map(|q| &q[QK4_NL * ib..QK4_NL * ib + QK4_NL]);
        let r = quantize_iq4_nl_block::<QK4_NL>(xb, w, IQ4_NTRY);
        yb.d = r.d;
        yb.qs.copy_from_slice(&r.qs[..QK4_NL / 2]);
    }
}

// ggml: quantize_iq4_nl (quant_weights == NULL)
/// Quantizes `x` to IQ4_NL as llama-quantize does without an importance matrix (ggml's
/// `quantize_iq4_nl`, 15 trial scales per block, weights x²).
///
/// # Panics
/// If `x.len() != y.len() * 32`.
pub fn quantize_row_iq4_nl(x: &[f32], y: &mut [BlockIQ4NL]) {
    assert_eq!(
        x.len(),
        y.len() * QK4_NL,
        "quantize_row_iq4_nl: length mismatch"
    );
    quantize_rows(x, y, None);
}

// ggml: quantize_row_iq4_nl_ref
/// ggml's `quantize_row_iq4_nl_ref`, what its CPU `set_rows` writes into an IQ4_NL KV cache:
/// the search of [`quantize_row_iq4_nl`] with no trial scales (`ntry = -1`): per block, weights
/// x², a first scale `max / −127` (the value of largest magnitude onto the level −127), the
/// indices against it, and the least-squares refit `Σw·q·x / Σw·q²` stored as f16 without
/// re-indexing. A block below the group epsilon gets scale 0; its indices are 0 here (ggml keeps
/// whatever its scratch buffer held; they decode to 0 either way).
///
/// # Panics
/// If `x.len() != y.len() * 32`.
pub fn quantize_row_iq4_nl_ref(x: &[f32], y: &mut [BlockIQ4NL]) {
    assert_eq!(
        x.len(),
        y.len() * QK4_NL,
        "quantize_row_iq4_nl_ref: length mismatch"
    );
    let values = &KVALUES_IQ4NL;
    for (xb, yb) in x.chunks_exact(QK4_NL).zip(y.iter_mut()) {
        let mut l = [0u8; QK4_NL];
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut d = 0.0f32;
        if amax >= GROUP_MAX_EPS {
            let id = 1.0 / (max / f32::from(values[0]));
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for (j, &v) in xb.iter().enumerate() {
                let li = best_index_int8(values, id * v);
                l[j] = li;
                let q = f32::from(values[li as usize]);
                let w = v * v;
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
            d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        }
        yb.d = f16::from_f32(d);
        for j in 0..QK4_NL / 2 {
            yb.qs[j] = l[j] | (l[QK4_NL / 2 + j] << 4);
        }
    }
}

// ggml: quantize_iq4_nl (quant_weights != NULL)
/// Importance-weighted IQ4_NL quantization (`qw` covers exactly `x`).
///
/// # Panics
/// If `x.len() != y.len() * 32` or `qw.len() != x.len()`.
pub fn quantize_row_iq4_nl_imatrix(x: &[f32], y: &mut [BlockIQ4NL], qw: &[f32]) {
    assert_eq!(
        x.len(),
        y.len() * QK4_NL,
        "quantize_row_iq4_nl_imatrix: length mismatch"
    );
    assert_eq!(
        qw.len(),
        x.len(),
        "quantize_row_iq4_nl_imatrix: importance length mismatch"
    );
    quantize_rows(x, y, Some(qw));
}

// ggml: dequantize_row_iq4_nl
/// Dequantizes IQ4_NL blocks into `y`.
///
/// # Panics
/// If `y.len() != x.len() * 32`.
pub fn dequantize_row_iq4_nl(x: &[BlockIQ4NL], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK4_NL,
        "dequantize_row_iq4_nl: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK4_NL)) {
        let d = xb.d.to_f32();
        let (lo, hi) = yb.split_at_mut(QK4_NL / 2);
        for ((&q, a), b) in xb.qs.iter().zip(lo).zip(hi) {
            *a = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
            *b = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

// ggml: ggml_vec_dot_iq4_nl_q8_0_generic
/// Dot product of IQ4_NL weights with Q8_0 activations in ggml's generic order: per block the
/// exact integer sum of level × activation, `sumf += (d_y·d_x)·sum`.
///
/// # Panics
/// If `x.len() != y.len()`.
pub fn vec_dot_iq4_nl_q8_0_ref(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(
        x.len(),
        y.len(),
        "vec_dot_iq4_nl_q8_0_ref: block count mismatch"
    );
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d.to_f32() * xb.d.to_f32();
        let (mut s1, mut s2) = (0i32, 0i32);
        for j in 0..QK4_NL / 2 {
            let q = xb.qs[j];
            s1 += i32::from(yb.qs[j]) * i32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
            s2 += i32::from(yb.qs[j + 16]) * i32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
        sumf += d * (s1 + s2) as f32;
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::super::kquant_common::test_util::{relative_rmse, weighted_sq_err, SplitMix64};
    use super::super::q8_0::{dequantize_row_q8_0, quantize_row_q8_0_ref};
    use super::*;

    fn round_trip(x: &[f32]) -> (Vec<BlockIQ4NL>, Vec<f32>) {
        let mut q = vec![BlockIQ4NL::default(); x.len() / QK4_NL];
        quantize_row_iq4_nl(x, &mut q);
        let mut y = vec![0.0; x.len()];
        dequantize_row_iq4_nl(&q, &mut y);
        (q, y)
    }

    #[test]
    fn block_size_matches_ggml() {
        assert_eq!(
            std::mem::size_of::<BlockIQ4NL>(),
            crate::BlockFormat::IQ4_NL.type_size()
        );
    }

    #[test]
    fn best_index_is_the_nearest_level() {
        let mut rng = SplitMix64(1);
        for _ in 0..10_000 {
            let x = (rng.uniform() as f32 - 0.5) * 300.0;
            let i = usize::from(best_index_int8(&KVALUES_IQ4NL, x));
            let di = (x - f32::from(KVALUES_IQ4NL[i])).abs();
            for v in KVALUES_IQ4NL {
                assert!(di <= (x - f32::from(v)).abs(), "x {x}: index {i}");
            }
        }
        // Exactly half-way between -10 and 1: the upper one (ggml's strict `<`).
        assert_eq!(best_index_int8(&KVALUES_IQ4NL, -4.5), 8);
    }

    #[test]
    fn gaussian_round_trip_error_and_zero_blocks() {
        let mut rng = SplitMix64(42);
        for std in [1.0f32, 0.02, 300.0] {
            let x = rng.gaussian_vec(QK4_NL * 512, std);
            let (_, y) = round_trip(&x);
            let rel = relative_rmse(&x, &y);
            // Measured 0.076 on such data (Q4_0: 0.086).
            assert!(rel < 0.085, "std {std}: relative RMSE {rel}");
        }
        let (q, y) = round_trip(&[0.0; 32]);
        assert!(y.iter().all(|&v| v == 0.0));
        // ggml re-indexes a zero block against scale 0: every index is the one nearest 0.
        assert!(q[0].qs.iter().all(|&b| b == 0x88));
    }

    #[test]
    fn dot_matches_dequantized_dot() {
        let mut rng = SplitMix64(5);
        for nb in [1usize, 3, 64] {
            let xw = rng.gaussian_vec(QK4_NL * nb, 0.5);
            let xa = rng.gaussian_vec(QK4_NL * nb, 2.0);
            let (q, dq) = round_trip(&xw);
            let mut a = vec![BlockQ8_0::ZERO; nb];
            quantize_row_q8_0_ref(&xa, &mut a);
            let mut da = vec![0.0; xa.len()];
            dequantize_row_q8_0(&a, &mut da);
            let (reference, norm) =
                dq.iter()
                    .zip(&da)
                    .fold((0.0f64, 0.0f64), |(s, n), (&u, &v)| {
                        let p = f64::from(u) * f64::from(v);
                        (s + p, n + p.abs())
                    });
            let got = f64::from(vec_dot_iq4_nl_q8_0_ref(&q, &a));
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
        let qw: Vec<f32> = (0..QK4_NL * 8)
            .map(|_| (rng.gaussian() * 1.5).exp())
            .collect();
        for _ in 0..64 {
            let x = rng.gaussian_vec(qw.len(), 1.0);
            let (_, y_ref) = round_trip(&x);
            let mut q = vec![BlockIQ4NL::default(); 8];
            quantize_row_iq4_nl_imatrix(&x, &mut q, &qw);
            let mut y = vec![0.0; x.len()];
            dequantize_row_iq4_nl(&q, &mut y);
            total_imx += weighted_sq_err(&x, &y, &qw);
            total_ref += weighted_sq_err(&x, &y_ref, &qw);
        }
        assert!(
            total_imx < 0.9 * total_ref,
            "weighted error {total_imx} vs {total_ref}"
        );
    }
}
