//! IQ4_NL and IQ4_XS row quantizers, bit-identical to `quantize_iq4_nl_block` in
//! `block/iq4_nl.rs` (ggml's `quantize_row_iq4_nl_impl`).
//!
//! The search fits one scale per 32-weight block; blocks are independent, so each gets one f32
//! lane of a transposed super-block (`xt[i]` lane `j` = weight `i` of block `j`): the eight
//! blocks of an IQ4_XS super-block, or eight consecutive IQ4_NL blocks (each with its own
//! σ², as in the reference where every IQ4_NL block is its own "super-block"). Every lane runs
//! the reference's operations in its order; the nearest-level search `best_index_int8` becomes
//! [`best_level`], a branch-free search that finds the same pair of table entries and then
//! applies the same f32 tie test.

// Indexed loops walk several lane arrays (values, weights, levels, groups) with one index.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use crate::block::iq4_nl::{self, BlockIQ4NL, IQ4_NTRY, KVALUES_IQ4NL};
use crate::block::iq4_xs::BlockIQ4XS;
use crate::block::kquant_common::GROUP_MAX_EPS;
use crate::QK_K;

use super::kquant::{abs_v, transpose_groups};
use super::lowbit::i32x16_to_u8;

/// The levels that the third and fourth search steps look up, as f32: `even[k]` = level
/// `4k + 2` (`k < 4`), `odd[k]` = level `2k + 1`.
#[derive(Clone, Copy)]
struct Levels {
    even: __m256,
    odd: __m256,
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn level_tables() -> Levels {
    let v = |i: usize| f32::from(KVALUES_IQ4NL[i]);
    let even = [v(2), v(6), v(10), v(14), 0.0, 0.0, 0.0, 0.0];
    let odd: [f32; 8] = std::array::from_fn(|k| v(2 * k + 1));
    // SAFETY: reads two 8-element local arrays; AVX2 (caller).
    unsafe {
        Levels {
            even: _mm256_loadu_ps(even.as_ptr()),
            odd: _mm256_loadu_ps(odd.as_ptr()),
        }
    }
}

/// Lane-wise `best_index_int8(KVALUES_IQ4NL, x)`: the index (as i32) and the level (as f32).
///
/// The reference bisects to the `mu` with `val[mu-1] <= x < val[mu]` and then keeps `mu - 1`
/// if `x - val[mu-1] < val[mu] - x` (in f32), else `mu`. Here a branch-free four-step search
/// over the ascending table finds `t = mu - 1`, the largest `k` with `!(x < val[k])` (steps of
/// 8, 4, 2, 1; `val[0]` is never compared, so `t = 0` below `val[1]`), keeping `a = val[t]`
/// (the value of the last step that passed, `val[0]` if none did) and `b = val[t + 1]` (the
/// value of the last step that failed, `val[15]` if none did); then the same tie test. The two
/// end cases need no branch: for `x <= val[0]` the test keeps `a = val[0]` (index 0), for
/// `x >= val[15]` (and for NaN, which passes every `!(x < v)`) `a = b = val[15]` (index 15),
/// which is what the reference returns.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn best_level(x: __m256, lv: Levels) -> (__m256i, __m256) {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let v = |i: usize| _mm256_set1_ps(f32::from(KVALUES_IQ4NL[i]));
        let ge = |c: __m256| _mm256_cmp_ps::<_CMP_NLT_UQ>(x, c);
        let step =
            |m: __m256, k: i32| _mm256_and_si256(_mm256_castps_si256(m), _mm256_set1_epi32(k));
        // Step 8.
        let c = ge(v(8));
        let mut t = step(c, 8);
        let mut a = _mm256_blendv_ps(v(0), v(8), c);
        let mut b = _mm256_blendv_ps(v(8), v(15), c);
        // Step 4: val[t + 4] is val[4] or val[12].
        let w = _mm256_blendv_ps(v(4), v(12), c);
        let c = ge(w);
        t = _mm256_add_epi32(t, step(c, 4));
        a = _mm256_blendv_ps(a, w, c);
        b = _mm256_blendv_ps(w, b, c);
        // Step 2: val[t + 2] = even[t / 4].
        let w = _mm256_permutevar8x32_ps(lv.even, _mm256_srli_epi32::<2>(t));
        let c = ge(w);
        t = _mm256_add_epi32(t, step(c, 2));
        a = _mm256_blendv_ps(a, w, c);
        b = _mm256_blendv_ps(w, b, c);
        // Step 1: val[t + 1] = odd[t / 2].
        let w = _mm256_permutevar8x32_ps(lv.odd, _mm256_srli_epi32::<1>(t));
        let c = ge(w);
        t = _mm256_add_epi32(t, step(c, 1));
        a = _mm256_blendv_ps(a, w, c);
        b = _mm256_blendv_ps(w, b, c);
        let take_below = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_sub_ps(x, a), _mm256_sub_ps(b, x));
        let q = _mm256_blendv_ps(b, a, take_below);
        // t + 1, or t where the lower entry is kept (the mask is −1); t + 1 = 16 only where
        // a = b = val[15].
        let up = _mm256_add_epi32(t, _mm256_set1_epi32(1));
        let idx = _mm256_add_epi32(up, _mm256_castps_si256(take_below));
        let idx = _mm256_min_epi32(idx, _mm256_set1_epi32(15));
        (idx, q)
    }
}

/// The scale search of `quantize_row_iq4_nl_impl` for eight 32-weight blocks, one per lane
/// (`xt[i]`/`wt[i]` lane `j`: weight `i` of block `j` and its importance). Returns the fitted
/// scale of each block (0 for a block whose largest magnitude is below `GROUP_MAX_EPS`).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn search_x8(xt: &[__m256; 32], wt: &[__m256; 32]) -> [f32; 8] {
    // SAFETY: register-only intrinsics apart from a store into a local array; AVX2 (caller).
    unsafe {
        let zero = _mm256_setzero_ps();
        let lv = level_tables();
        // Lane: the value of largest magnitude; the first one wins on ties (strict `>`).
        let mut amax = zero;
        let mut max = zero;
        for &x in xt {
            let ax = abs_v(x);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
            amax = _mm256_blendv_ps(amax, ax, gt);
            max = _mm256_blendv_ps(max, x, gt);
        }
        let live = _mm256_cmp_ps::<_CMP_NLT_UQ>(amax, _mm256_set1_ps(GROUP_MAX_EPS));
        // Σ w·q·x and Σ w·q² for inverse scale `id`, in element order.
        let sums = |id: __m256| {
            let mut sumqx = zero;
            let mut sumq2 = zero;
            for (&x, &w) in xt.iter().zip(wt) {
                let (_, q) = best_level(_mm256_mul_ps(id, x), lv);
                let wq = _mm256_mul_ps(w, q);
                sumqx = _mm256_add_ps(sumqx, _mm256_mul_ps(wq, x));
                sumq2 = _mm256_add_ps(sumq2, _mm256_mul_ps(wq, q));
            }
            (sumqx, sumq2)
        };
        let v0 = _mm256_set1_ps(f32::from(KVALUES_IQ4NL[0]));
        // d = -max / v0 (a sign flip, then the division), id = 1 / d.
        let d0 = _mm256_div_ps(_mm256_xor_ps(max, _mm256_set1_ps(-0.0)), v0);
        let id0 = _mm256_div_ps(_mm256_set1_ps(1.0), d0);
        let (sumqx, sumq2) = sums(id0);
        let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(sumq2, zero);
        let mut d = _mm256_and_ps(_mm256_div_ps(sumqx, sumq2), pos);
        let mut best = _mm256_mul_ps(d, sumqx);
        for itry in -IQ4_NTRY..=IQ4_NTRY {
            let num = _mm256_set1_ps((itry + i32::from(KVALUES_IQ4NL[0])) as f32);
            let id = _mm256_div_ps(num, max);
            let (sumqx, sumq2) = sums(id);
            let better = _mm256_and_ps(
                _mm256_cmp_ps::<_CMP_GT_OQ>(sumq2, zero),
                _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(sumqx, sumqx),
                    _mm256_mul_ps(best, sumq2),
                ),
            );
            let dn = _mm256_div_ps(sumqx, sumq2);
            d = _mm256_blendv_ps(d, dn, better);
            best = _mm256_blendv_ps(best, _mm256_mul_ps(dn, sumqx), better);
        }
        let mut out = [0.0f32; 8];
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_and_ps(d, live));
        out
    }
}

/// Search weights in the transposed layout: `qw·sqrt(σ² + x²)` with `sigma2[j]` the σ² of
/// lane `j`, or x² without importance.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn weights(xt: &[__m256; 32], qwt: Option<&[__m256; 32]>, sigma2: __m256) -> [__m256; 32] {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let mut wt = [_mm256_setzero_ps(); 32];
        match qwt {
            Some(qwt) => {
                for i in 0..32 {
                    let v = xt[i];
                    let r = _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(v, v)));
                    wt[i] = _mm256_mul_ps(qwt[i], r);
                }
            }
            None => {
                for i in 0..32 {
                    wt[i] = _mm256_mul_ps(xt[i], xt[i]);
                }
            }
        }
        wt
    }
}

/// Indices of the 32 weights of one block (`x[..32]`) against inverse scale `id`, packed as
/// IQ4 stores them (byte `j`: weight `j` low nibble, weight `16 + j` high nibble).
///
/// # Safety
/// AVX2 must be available and `x[..32]` readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_indices(x: *const f32, id: f32, lv: Levels) -> __m128i {
    // SAFETY: reads x[0..32] (caller); AVX2 (caller).
    unsafe {
        let vid = _mm256_set1_ps(id);
        let idx: [__m256i; 4] = std::array::from_fn(|k| {
            best_level(_mm256_mul_ps(vid, _mm256_loadu_ps(x.add(8 * k))), lv).0
        });
        let low = i32x16_to_u8([idx[0], idx[1]]);
        let high = i32x16_to_u8([idx[2], idx[3]]);
        // Indices are below 16: the 16-bit shift stays inside each byte.
        _mm_or_si128(low, _mm_slli_epi16::<4>(high))
    }
}

/// Eight IQ4_NL blocks (`x[..256]`, importance `qw[..256]`).
///
/// # Safety
/// AVX2 must be available; `x.len() >= 256`, `qw.len() >= 256` (checked), `y.len() >= 8`
/// (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_iq4_nl_x8(x: &[f32], qw: Option<&[f32]>, y: &mut [BlockIQ4NL]) {
    let x = &x[..256];
    let y = &mut y[..8];
    // SAFETY: raw reads stay inside x[..256] / qw[..256]; stores go to local arrays and the
    // blocks' fixed-size fields; AVX2 (caller).
    unsafe {
        let mut xt = [_mm256_setzero_ps(); 32];
        transpose_groups::<32>(x.as_ptr(), 32, &mut xt);
        // σ² of each block: Σ x² in element order, times 2/32.
        let mut s = _mm256_setzero_ps();
        for v in &xt {
            s = _mm256_add_ps(s, _mm256_mul_ps(*v, *v));
        }
        let sigma2 = _mm256_mul_ps(s, _mm256_set1_ps(2.0 / 32.0));
        let wt = match qw {
            Some(qw) => {
                let qw = &qw[..256];
                let mut qwt = [_mm256_setzero_ps(); 32];
                transpose_groups::<32>(qw.as_ptr(), 32, &mut qwt);
                weights(&xt, Some(&qwt), sigma2)
            }
            None => weights(&xt, None, sigma2),
        };
        let scales = search_x8(&xt, &wt);
        let lv = level_tables();
        for (j, yb) in y.iter_mut().enumerate() {
            let s = scales[j];
            yb.d = f16::from_f32(s);
            let id = if s != 0.0 { 1.0 / s } else { 0.0 };
            let q = block_indices(x.as_ptr().add(32 * j), id, lv);
            _mm_storeu_si128(yb.qs.as_mut_ptr().cast(), q);
        }
    }
}

/// Drives [`quantize_iq4_nl_x8`] over a row: whole groups of eight blocks, then the rest
/// zero-padded (a padded lane cannot influence the others).
///
/// # Safety
/// AVX2 must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_iq4_nl_any(x: &[f32], y: &mut [BlockIQ4NL], qw: Option<&[f32]>) {
    const QK: usize = iq4_nl::QK4_NL;
    assert_eq!(x.len(), y.len() * QK, "IQ4_NL quantizer: length mismatch");
    if let Some(qw) = qw {
        assert_eq!(
            qw.len(),
            x.len(),
            "IQ4_NL quantizer: importance length mismatch"
        );
    }
    let full = y.len() / 8;
    // SAFETY: AVX2 (caller); each call gets 256 values and 8 blocks.
    unsafe {
        for p in 0..full {
            let r = 256 * p..256 * (p + 1);
            quantize_iq4_nl_x8(&x[r.clone()], qw.map(|w| &w[r]), &mut y[8 * p..8 * p + 8]);
        }
        let rest = y.len() - 8 * full;
        if rest > 0 {
            let start = 256 * full;
            let mut xp = [0.0f32; 256];
            let mut wp = [0.0f32; 256];
            xp[..QK * rest].copy_from_slice(&x[start..]);
            if let Some(qw) = qw {
                wp[..QK * rest].copy_from_slice(&qw[start..]);
            }
            let mut yp = [BlockIQ4NL::default(); 8];
            quantize_iq4_nl_x8(&xp, qw.map(|_| &wp[..]), &mut yp);
            y[8 * full..].copy_from_slice(&yp[..rest]);
        }
    }
}

/// IQ4_NL quantizer (`quantize_row_iq4_nl`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_iq4_nl(x: &[f32], y: &mut [BlockIQ4NL]) {
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_iq4_nl_any(x, y, None) }
}

/// IQ4_NL importance-weighted quantizer (`quantize_row_iq4_nl_imatrix`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_iq4_nl_imatrix(x: &[f32], y: &mut [BlockIQ4NL], qw: &[f32]) {
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_iq4_nl_any(x, y, Some(qw)) }
}

/// One IQ4_XS super-block.
///
/// # Safety
/// AVX2 must be available; `x.len() >= 256` and `qw.len() >= 256` (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_iq4_xs_block(x: &[f32], qw: Option<&[f32]>, y: &mut BlockIQ4XS) {
    let x = &x[..QK_K];
    // SAFETY: raw reads stay inside x[..256] / qw[..256]; stores go to local arrays and the
    // block's fixed-size fields; AVX2 (caller).
    unsafe {
        let mut xt = [_mm256_setzero_ps(); 32];
        transpose_groups::<32>(x.as_ptr(), 32, &mut xt);
        let wt = match qw {
            Some(qw) => {
                let qw = &qw[..QK_K];
                // σ² over the whole super-block, summed in element order, times 2/256.
                let mut sigma2 = 0.0f32;
                for &v in x {
                    sigma2 += v * v;
                }
                sigma2 *= 2.0 / QK_K as f32;
                let mut qwt = [_mm256_setzero_ps(); 32];
                transpose_groups::<32>(qw.as_ptr(), 32, &mut qwt);
                weights(&xt, Some(&qwt), _mm256_set1_ps(sigma2))
            }
            None => weights(&xt, None, _mm256_setzero_ps()),
        };
        let scales = search_x8(&xt, &wt);
        let mut max_scale = 0.0f32;
        let mut amax_scale = 0.0f32;
        for &d in &scales {
            let abs_d = d.abs();
            if abs_d > amax_scale {
                amax_scale = abs_d;
                max_scale = d;
            }
        }
        let xs = iq4_nl::xs_block_scales(&scales, max_scale);
        y.d = xs.d;
        y.scales_h = xs.scales_h;
        y.scales_l = xs.scales_l;
        let lv = level_tables();
        for ib in 0..8 {
            let q = block_indices(x.as_ptr().add(32 * ib), xs.idl[ib], lv);
            _mm_storeu_si128(y.qs.as_mut_ptr().add(16 * ib).cast(), q);
        }
    }
}

/// IQ4_XS quantizer (`quantize_row_iq4_xs_ref`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_iq4_xs(x: &[f32], y: &mut [BlockIQ4XS]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_iq4_xs: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        // SAFETY: AVX2 (caller); xb holds one super-block.
        unsafe { quantize_iq4_xs_block(xb, None, yb) };
    }
}

/// IQ4_XS importance-weighted quantizer (`quantize_row_iq4_xs_imatrix`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_iq4_xs_imatrix(x: &[f32], y: &mut [BlockIQ4XS], qw: &[f32]) {
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
    for ((xb, wb), yb) in x
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(y.iter_mut())
    {
        // SAFETY: AVX2 (caller); xb and wb hold one super-block each.
        unsafe { quantize_iq4_xs_block(xb, Some(wb), yb) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::iq4_nl::best_index_int8;

    /// Every table entry, the midpoints between neighbours and the f32 values around them, a
    /// grid across and beyond the table, infinities and NaN: [`best_level`] must pick the
    /// entry `best_index_int8` picks.
    #[test]
    fn best_level_matches_best_index_int8() {
        if !crate::simd::cpu::features().avx2_fma_f16c() {
            eprintln!("note: no AVX2+FMA+F16C on this host; best_level not checked");
            return;
        }
        let mut xs: Vec<f32> = vec![f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -0.0, 0.0];
        for i in -4000..=4000 {
            xs.push(i as f32 * 0.0625);
        }
        for w in KVALUES_IQ4NL.windows(2) {
            let (a, b) = (f32::from(w[0]), f32::from(w[1]));
            for c in [a, b, 0.5 * (a + b)] {
                let mut lo = c;
                let mut hi = c;
                for _ in 0..8 {
                    xs.push(lo);
                    xs.push(hi);
                    lo = f32::from_bits(if lo > 0.0 {
                        lo.to_bits() - 1
                    } else {
                        lo.to_bits() + 1
                    });
                    hi = f32::from_bits(if hi >= 0.0 {
                        hi.to_bits() + 1
                    } else {
                        hi.to_bits() - 1
                    });
                }
            }
        }
        for chunk in xs.chunks(8) {
            let mut v = [0.0f32; 8];
            v[..chunk.len()].copy_from_slice(chunk);
            let mut idx = [0i32; 8];
            let mut q = [0.0f32; 8];
            // SAFETY: AVX2, FMA and F16C were detected above; stores go to 8-element arrays.
            unsafe {
                let (i, l) = best_level(_mm256_loadu_ps(v.as_ptr()), level_tables());
                _mm256_storeu_si256(idx.as_mut_ptr().cast(), i);
                _mm256_storeu_ps(q.as_mut_ptr(), l);
            }
            for j in 0..8 {
                let want = best_index_int8(&KVALUES_IQ4NL, v[j]);
                assert_eq!(
                    idx[j],
                    i32::from(want),
                    "x = {:e} ({:#x})",
                    v[j],
                    v[j].to_bits()
                );
                assert_eq!(
                    q[j],
                    f32::from(KVALUES_IQ4NL[usize::from(want)]),
                    "x = {:e}",
                    v[j]
                );
            }
        }
    }
}
