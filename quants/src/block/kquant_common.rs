//! Helpers shared by the K-quant quantizers, ported from `ggml/src/ggml-quants.c`.
//!
//! Every function here reproduces ggml's float arithmetic operation by operation: `f32` only,
//! the same evaluation order, no fused multiply-add (llama.cpp builds `ggml-quants.c` into
//! `ggml-base` without `-march`, so GCC has no FMA to contract into on x86-64), ggml's
//! `nearest_int` for rounding, and C's `MIN`/`MAX` macro semantics for comparisons (a NaN
//! operand makes the comparison false). Integer-to-byte stores truncate like C's implicit
//! conversions do, so even pathological inputs produce the same bytes as ggml.
//!
//! Slices passed in here are internal scratch buffers sized by the callers in this crate; the
//! helpers index them freely (a length bug is a programming error, not an input error).

// Indexed loops are kept where they mirror ggml's C loops line by line (several arrays are
// indexed by the same `i`, and reading the two side by side matters more than iterator style).
#![allow(clippy::needless_range_loop)]

use super::nearest_int;

/// ggml's `GROUP_MAX_EPS`: a group whose largest magnitude is below this is treated as all
/// zeros (no scale can be derived from it without overflowing `1/max`).
pub const GROUP_MAX_EPS: f32 = 1e-15;

/// C's `MAX(a, b)` macro: `a > b ? a : b`. Unlike `f32::max`, a NaN in either operand yields
/// `b` (the comparison is false), which is what ggml computes.
#[inline(always)]
pub(crate) fn c_max(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The importance weight `make_qx_quants` gives element `xi` when no weights are supplied,
/// selected by `rmse_type` (1: x², 2: 1, 3: |x|, otherwise √|x|).
#[inline(always)]
fn qx_default_weight(rmse_type: i32, xi: f32) -> f32 {
    match rmse_type {
        1 => xi * xi,
        2 => 1.0,
        3 => xi.abs(),
        _ => xi.abs().sqrt(),
    }
}

// ggml: make_qx_quants
/// Symmetric quantization of `x` to levels `-nmax..nmax-1` (stored offset by `nmax`, so in
/// `0..2*nmax`) into `l[..x.len()]`; returns the scale.
///
/// `rmse_type == 0` just rounds with `-nmax/max`; otherwise it fits the least-squares scale for
/// the rounded levels and then tries 18 nearby inverse scales, keeping the one with the best
/// weighted fit. Weights are `qw` when given, else chosen by `rmse_type` (1 = x², the K-quant
/// default). A negative `rmse_type` returns after the first fit (ggml's `return_early`).
pub fn make_qx_quants(
    nmax: i32,
    x: &[f32],
    l: &mut [i8],
    rmse_type: i32,
    qw: Option<&[f32]>,
) -> f32 {
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
    let nmax_f = nmax as f32;
    let mut iscale = -nmax_f / max;
    if rmse_type == 0 {
        for (li, &xi) in l.iter_mut().zip(x) {
            let q = nearest_int(iscale * xi);
            *li = (nmax + (nmax - 1).min(q).max(-nmax)) as i8;
        }
        return 1.0 / iscale;
    }
    let (rmse_type, return_early) = if rmse_type < 0 {
        (-rmse_type, true)
    } else {
        (rmse_type, false)
    };
    let weight = |i: usize| match qw {
        Some(w) => w[i],
        None => qx_default_weight(rmse_type, x[i]),
    };
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = (nmax - 1).min(nearest_int(iscale * x[i])).max(-nmax);
        l[i] = (q + nmax) as i8;
        let w = weight(i);
        let qf = q as f32;
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    // C tests `suml2 ?`, which is true for NaN as well as for non-zero values.
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let q = (nmax - 1).min(nearest_int(iscale * x[i])).max(-nmax);
            let w = weight(i);
            let qf = q as f32;
            sumlx += w * x[i] * qf;
            suml2 += w * qf * qf;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let q = nearest_int(iscale * x[i]);
                l[i] = (nmax + (nmax - 1).min(q).max(-nmax)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Scratch capacity for the `Laux` buffer of the `make_qkx*` searches (ggml uses 16 or 32).
const MAX_GROUP: usize = 256;

/// Shared body of `make_qkx2_quants` / `make_qkx3_quants`: asymmetric quantization
/// `x ≈ scale·L + min` with `L` in `0..=nmax` and `min <= 0`, refined by a grid search over
/// `nstep + 1` inverse scales `(nmax + rmin + rdelta·is) / (max - min)`, each followed by a
/// weighted least-squares fit of scale and min. Returns `(scale, -min)`.
///
/// The two ggml functions differ only in the all-equal test (`max == min` vs `max <= min`,
/// which differ when the data hold a NaN) and in whether weights may be absent.
#[allow(clippy::too_many_arguments)]
fn make_qkx_quants_impl(
    nmax: i32,
    x: &[f32],
    weight: impl Fn(usize) -> f32,
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    degenerate_if_le: bool,
) -> (f32, f32) {
    let n = x.len();
    assert!(
        (1..=MAX_GROUP).contains(&n),
        "group size {n} outside 1..={MAX_GROUP}"
    );
    let l = &mut l[..n];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weight(0);
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weight(i);
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    let degenerate = if degenerate_if_le {
        max <= min
    } else {
        max == min
    };
    if degenerate {
        l.fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min));
        l[i] = nmax.min(q).max(0) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        best_error += weight(i) * err(diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    let mut laux_buf = [0u8; MAX_GROUP];
    let laux = &mut laux_buf[..n];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let mut sum_l = 0.0f32;
        let mut sum_l2 = 0.0f32;
        let mut sum_xl = 0.0f32;
        for i in 0..n {
            let q = nmax.min(nearest_int(iscale * (x[i] - min))).max(0);
            laux[i] = q as u8;
            let w = weight(i);
            let qf = q as f32;
            sum_l += w * qf;
            sum_l2 += w * qf * qf;
            sum_xl += w * qf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weight(i) * err(diff);
            }
            if cur_error < best_error {
                l.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

// ggml: make_qkx2_quants
/// Asymmetric quantization of `x` (one group, at most 256 values) to `L` in `0..=nmax` with
/// per-element `weights`, written to `l[..x.len()]`. Returns `(scale, the_min)` where
/// `x ≈ scale·L - the_min` and `the_min >= 0`. See [`make_qkx3_quants`] for the search.
#[allow(clippy::too_many_arguments)]
pub fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    make_qkx_quants_impl(
        nmax,
        x,
        |i| weights[i],
        l,
        rmin,
        rdelta,
        nstep,
        use_mad,
        false,
    )
}

// ggml: make_qkx3_quants
/// Like [`make_qkx2_quants`] (used by ggml's importance-weighted `_impl` quantizers): when
/// `weights` is `None` each element is weighted by x². Starting from plain min/max rounding it
/// tries inverse scales `(nmax + rmin + rdelta·is)/(max - min)` for `is = 0..=nstep`, refits
/// scale and min by weighted least squares for each, and keeps the lowest weighted error
/// (squared, or absolute with `use_mad`).
#[allow(clippy::too_many_arguments)]
pub fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: Option<&[f32]>,
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    match weights {
        Some(w) => make_qkx_quants_impl(nmax, x, |i| w[i], l, rmin, rdelta, nstep, use_mad, true),
        None => make_qkx_quants_impl(
            nmax,
            x,
            |i| x[i] * x[i],
            l,
            rmin,
            rdelta,
            nstep,
            use_mad,
            true,
        ),
    }
}

// ggml: make_qp_quants
/// Quantizes non-negative values `x` (sub-block scales or mins) to `L` in `0..=nmax` with a
/// single positive scale, minimising the `quant_weights`-weighted squared error: a grid over 8
/// nearby inverse scales, then up to 5 rounds of coordinate descent on individual levels.
/// Writes `l[..x.len()]` and returns the scale.
///
/// Negative inputs round to negative levels, which are stored truncated to a byte exactly as
/// ggml's `uint8_t` array does (callers then see them as large values).
pub fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], quant_weights: &[f32]) -> f32 {
    let n = x.len();
    let l = &mut l[..n];
    let mut max = 0.0f32;
    for &xi in x {
        max = c_max(max, xi);
    }
    if max < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / max;
    for (li, &xi) in l.iter_mut().zip(x) {
        *li = nearest_int(iscale * xi) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..n {
        let diff = x[i] - scale * l[i] as f32;
        let w = quant_weights[i];
        best_mse += w * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax_f) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..n {
            let q = nmax.min(nearest_int(iscale_is * x[i]));
            let diff = x[i] - scale_is * q as f32;
            let w = quant_weights[i];
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0.0f32;
    let mut suml2 = 0.0f32;
    for i in 0..n {
        let q = nmax.min(nearest_int(iscale * x[i]));
        l[i] = q as u8;
        let w = quant_weights[i];
        let qf = q as f32;
        sumlx += w * x[i] * qf;
        suml2 += w * qf * qf;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for i in 0..n {
            let w = quant_weights[i];
            let li = l[i] as f32;
            let slx = sumlx - w * x[i] * li;
            let sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nmax.min(nearest_int(x[i] * sl2 / slx));
                if new_l != i32::from(l[i]) {
                    let nf = new_l as f32;
                    let slx = slx + w * x[i] * nf;
                    let sl2 = sl2 + w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
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
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

// ggml: get_scale_min_k4
/// Unpacks the 6-bit scale and 6-bit min of sub-block `j` (0..8) from the 12-byte Q4_K/Q5_K
/// `scales` field. Bytes 0..4 hold scales 0..3 and bytes 4..8 mins 0..3 in their low 6 bits;
/// sub-blocks 4..7 keep their low 4 bits in bytes 8..12 (scale low nibble, min high nibble)
/// and their top 2 bits in the spare top bits of bytes 0..8.
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Inverse of [`get_scale_min_k4`] for all eight sub-blocks (the packing loop that ggml
/// repeats inline in its Q4_K/Q5_K quantizers). Levels should be 6-bit; wider values are
/// stored with the same byte truncation as ggml (only the low 6 bits are ever read back).
pub fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            q[j] = ls[j];
            q[j + 4] = lm[j];
        } else {
            q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            // `(v >> 4) << 6` is an int in C; the `|=` into a byte keeps its low 8 bits.
            q[j - 4] |= (u32::from(ls[j] >> 4) << 6) as u8;
            q[j] |= (u32::from(lm[j] >> 4) << 6) as u8;
        }
    }
    q
}

/// Result of choosing the scales and levels of one Q4_K/Q5_K super-block.
pub(crate) struct ScaleMinBlock {
    /// Super-block scale for the 6-bit sub-block scales.
    pub d: half::f16,
    /// Super-block scale for the 6-bit sub-block mins.
    pub dmin: half::f16,
    /// Packed 6-bit scales and mins.
    pub scales: [u8; 12],
    /// Final level of every weight, in `0..=nmax`.
    pub l: [u8; 256],
}

/// Requantize every weight against the scales actually stored (f16 super-scales times 6-bit
/// sub-block levels), as the last step of ggml's Q4_K/Q5_K quantizers. Sub-blocks whose stored
/// scale is zero keep the levels chosen by the search.
fn requantize_scale_min(x: &[f32], nmax: i32, blk: &mut ScaleMinBlock) {
    let d_all = blk.d.to_f32();
    let dmin_all = blk.dmin.to_f32();
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &blk.scales);
        let d = d_all * f32::from(sc);
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * f32::from(m);
        for ii in 0..32 {
            let q = nearest_int((x[32 * j + ii] + dm) / d);
            blk.l[32 * j + ii] = nmax.min(q).max(0) as u8;
        }
    }
}

/// Body of ggml's `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` for one super-block of
/// 256 weights, up to (but excluding) the bit packing of the levels: per 32-weight sub-block a
/// `make_qkx2_quants` fit weighted by `rms(sub-block) + |x|`, then the sub-block scales and
/// mins quantized linearly to 6 bits against their maxima.
pub(crate) fn quantize_scale_min_block_ref(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ScaleMinBlock {
    let x = &x[..256];
    let mut l = [0u8; 256];
    let mut weights = [0.0f32; 32];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    // Sub-block scales are positive since the min is subtracted first.
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0.0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            xs,
            &weights,
            &mut l[32 * j..32 * j + 32],
            rmin,
            rdelta,
            nstep,
            false,
        );
        scales[j] = scale;
        mins[j] = min;
        if scale > max_scale {
            max_scale = scale;
        }
        if min > max_min {
            max_min = min;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // ggml stores nearest_int into a uint8_t (truncating) before clamping to 63.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let mut blk = ScaleMinBlock {
        d: half::f16::from_f32(max_scale / 63.0),
        dmin: half::f16::from_f32(max_min / 63.0),
        scales: pack_scale_min_k4(&ls, &lm),
        l,
    };
    requantize_scale_min(x, nmax, &mut blk);
    blk
}

/// Body of ggml's `quantize_row_q4_K_impl` / `quantize_row_q5_K_impl` with `quant_weights`
/// for one super-block, up to the bit packing. Each weight's importance is
/// `qw · sqrt(sigma2 + x²)` with `sigma2 = 2·mean(x²)` over the super-block; sub-blocks are
/// fitted with `make_qkx3_quants`, and the sub-block scales and mins are quantized to 6 bits
/// with `make_qp_quants` weighted by each sub-block's total importance.
///
/// `clamp_levels` reproduces the `MIN(63, ·)` that ggml applies to the 6-bit levels in the
/// Q5_K path but not in the Q4_K path (it only matters for levels that wrapped negative).
pub(crate) fn quantize_scale_min_block_imatrix(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp_levels: bool,
) -> ScaleMinBlock {
    let x = &x[..256];
    let qw = &qw[..256];
    let mut l = [0u8; 256];
    let mut weights = [0.0f32; 32];
    let mut sw = [0.0f32; 8];
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];

    let mut sum_x2 = 0.0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / 256.0;

    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let qws = &qw[32 * j..32 * j + 32];
        for ((w, &v), &q) in weights.iter_mut().zip(xs).zip(qws) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0.0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let (scale, min) = make_qkx3_quants(
            nmax,
            xs,
            Some(&weights),
            &mut l[32 * j..32 * j + 32],
            -0.9,
            0.05,
            36,
            false,
        );
        scales[j] = scale;
        mins[j] = min;
    }

    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp_levels {
        for v in ls.iter_mut().chain(lm.iter_mut()) {
            *v = (*v).min(63);
        }
    }
    let mut blk = ScaleMinBlock {
        d: half::f16::from_f32(d_block),
        dmin: half::f16::from_f32(m_block),
        scales: pack_scale_min_k4(&ls, &lm),
        l,
    };
    requantize_scale_min(x, nmax, &mut blk);
    blk
}

#[cfg(test)]
pub(crate) mod test_util {
    //! Deterministic data for the K-quant tests (no `rand` dependency).

    /// splitmix64: tiny, well-mixed, reproducible.
    pub struct SplitMix64(pub u64);

    impl SplitMix64 {
        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in [0, 1).
        pub fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        }

        /// Standard normal via Box–Muller.
        pub fn gaussian(&mut self) -> f32 {
            let u1 = 1.0 - self.uniform(); // (0, 1]
            let u2 = self.uniform();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        }

        pub fn gaussian_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
            (0..n).map(|_| self.gaussian() * std).collect()
        }
    }

    /// RMSE of `b` against `a`, divided by the RMS of `a`.
    pub fn relative_rmse(a: &[f32], b: &[f32]) -> f64 {
        let (mut se, mut ss) = (0.0f64, 0.0f64);
        for (&u, &v) in a.iter().zip(b) {
            se += (f64::from(u) - f64::from(v)).powi(2);
            ss += f64::from(u).powi(2);
        }
        (se / ss).sqrt()
    }

    /// Importance-weighted squared error Σ qw·(x − y)².
    pub fn weighted_sq_err(x: &[f32], y: &[f32], qw: &[f32]) -> f64 {
        x.iter()
            .zip(y)
            .zip(qw)
            .map(|((&a, &b), &w)| f64::from(w) * (f64::from(a) - f64::from(b)).powi(2))
            .sum()
    }

    /// Adversarial single-block inputs shared by the format tests: (name, 256 values).
    pub fn adversarial_blocks() -> Vec<(&'static str, Vec<f32>)> {
        let mut rng = SplitMix64(0xADD);
        let mut outlier = rng.gaussian_vec(256, 0.02);
        outlier[77] = 40.0;
        let mut neg_outlier = rng.gaussian_vec(256, 1.0);
        neg_outlier[200] = -500.0;
        let alternating: Vec<f32> = (0..256)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let ramp: Vec<f32> = (0..256).map(|i| i as f32 / 255.0 - 0.5).collect();
        let mut sparse = vec![0.0f32; 256];
        sparse[3] = 0.5;
        sparse[130] = -0.25;
        vec![
            ("zeros", vec![0.0; 256]),
            ("negative zeros", vec![-0.0; 256]),
            ("constant positive", vec![0.75; 256]),
            ("constant negative", vec![-3.0; 256]),
            ("tiny", rng.gaussian_vec(256, 1e-30)),
            ("tiny constant", vec![1e-30; 256]),
            ("huge", rng.gaussian_vec(256, 1e30)),
            ("large in f16 range", rng.gaussian_vec(256, 1e4)),
            ("very large", rng.gaussian_vec(256, 1e6)),
            ("outlier", outlier),
            ("negative outlier", neg_outlier),
            ("alternating", alternating),
            ("ramp", ramp),
            ("sparse", sparse),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_packing_round_trips_all_6_bit_values() {
        let mut rng = test_util::SplitMix64(7);
        for _ in 0..200 {
            let mut ls = [0u8; 8];
            let mut lm = [0u8; 8];
            for v in ls.iter_mut().chain(lm.iter_mut()) {
                *v = (rng.next_u64() % 64) as u8;
            }
            let packed = pack_scale_min_k4(&ls, &lm);
            for j in 0..8 {
                assert_eq!(
                    get_scale_min_k4(j, &packed),
                    (ls[j], lm[j]),
                    "sub-block {j}"
                );
            }
        }
    }

    #[test]
    fn make_qkx2_recovers_exact_grid() {
        // Values exactly on a grid scale·L - m with L in 0..=15 are reproduced exactly.
        let x: Vec<f32> = (0..32).map(|i| 0.5 * (i % 16) as f32 - 2.0).collect();
        let w = vec![1.0f32; 32];
        let mut l = [0u8; 32];
        let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, -1.0, 0.1, 20, false);
        for (i, &xi) in x.iter().enumerate() {
            assert!((scale * l[i] as f32 - min - xi).abs() < 1e-5, "i={i}");
        }
    }

    #[test]
    fn make_qx_quants_levels_in_range_and_fit() {
        let mut rng = test_util::SplitMix64(11);
        for _ in 0..100 {
            let x = rng.gaussian_vec(16, 1.0);
            let mut l = [0i8; 16];
            let scale = make_qx_quants(32, &x, &mut l, 1, None);
            let (mut se, mut ss) = (0.0f32, 0.0f32);
            for i in 0..16 {
                assert!((0..64).contains(&l[i]));
                se += (scale * (l[i] as f32 - 32.0) - x[i]).powi(2);
                ss += x[i] * x[i];
            }
            assert!(se / ss < 0.01, "relative squared error {}", se / ss);
        }
    }

    #[test]
    fn make_qp_quants_fits_nonnegative_values() {
        let x = [0.1f32, 0.5, 0.9, 0.3, 0.0, 0.7, 0.2, 0.45];
        let w = [1.0f32; 8];
        let mut l = [0u8; 8];
        let scale = make_qp_quants(63, &x, &mut l, &w);
        for i in 0..8 {
            assert!(l[i] <= 63);
            assert!(
                (scale * l[i] as f32 - x[i]).abs() <= 0.5 * 0.9 / 63.0 + 1e-6,
                "i={i}"
            );
        }
        assert_eq!(make_qp_quants(63, &[0.0; 8], &mut l, &w), 0.0);
        assert_eq!(l, [0; 8]);
    }

    #[test]
    fn c_max_follows_the_c_macro_with_nan() {
        assert_eq!(c_max(1.0, 2.0), 2.0);
        assert!(c_max(1.0, f32::NAN).is_nan());
        assert_eq!(c_max(f32::NAN, 1.0), 1.0);
    }
}
