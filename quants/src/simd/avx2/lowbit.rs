//! Q2_K and Q3_K row quantizers, bit-identical to the scalar references in `block/q2_k.rs` and
//! `block/q3_k.rs`.
//!
//! Both formats cut a super-block into 16 sub-blocks of 16 weights. As in [`super::kquant`],
//! each sub-block gets one f32 lane: the super-block is transposed into two groups of eight
//! sub-blocks (`xt[g][i]` lane `j` = element `i` of sub-block `8h + j` of super-block `b`,
//! `g = 2b + h`), and every lane runs the scalar search's operations in the scalar order
//! (separate multiply and add, the same rounding trick, comparisons turned into blends).
//! Two super-blocks go through one search together, so four independent add chains hide the
//! latency of the sequential per-lane sums.
//!
//! - Q2_K: `make_qkx2_quants` (absolute error, weights `|x|`) or, with an importance matrix,
//!   `make_qkx3_quants`; the shared lane search is [`super::kquant::make_qkx_quants_x8`].
//! - Q3_K: `make_q3_quants` (x²-weighted fit, then up to five rounds of coordinate descent on
//!   single levels, [`make_q3_quants_x8`]) or, with an importance matrix, `make_qx_quants`
//!   ([`super::kquant::make_qx_quants_x16`]).
//!
//! The short per-super-block steps (sixteen scales to 4 or 6 bits, f16 conversions,
//! `make_qp_quants`/`make_qx_quants` over the scales) call the scalar helpers that the
//! references use.

// Indexed loops walk several lane arrays (values, weights, levels, groups) with one index.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::block::kquant_common::GROUP_MAX_EPS;
use crate::block::q2_k::{self, BlockQ2K};
use crate::block::q3_k::{self, BlockQ3K};
use crate::QK_K;

use super::kquant::{
    abs_v, clamp_i32, make_qkx_quants_x8, make_qx_quants_x16, nearest_int_v, transpose_groups,
    QkxLanes,
};

/// Super-blocks searched together.
const WIDE: usize = 2;

/// Converts two vectors of 8 small i32 (values in `0..=255`) into 16 bytes in order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn i32x16_to_u8(v: [__m256i; 2]) -> __m128i {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        // packs works within 128-bit halves (a0..3 b0..3 | a4..7 b4..7): restore the order.
        let w16 = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(v[0], v[1]));
        _mm_packus_epi16(
            _mm256_castsi256_si128(w16),
            _mm256_extracti128_si256::<1>(w16),
        )
    }
}

/// Packs 256 levels (each `0..4`) into the 2-bit planes of Q2_K/Q3_K: byte `32h + l` holds
/// levels `128h + l`, `+32`, `+64`, `+96` in bit pairs 0-1, 2-3, 4-5, 6-7.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8; QK_K / 4]) {
    // SAFETY: reads l[128h + 32k ..][..32] and writes qs[32h..][..32] (h < 2, k < 4), inside
    // both arrays; AVX2 (caller).
    unsafe {
        for h in 0..2 {
            let a = |k: usize| _mm256_loadu_si256(l.as_ptr().add(128 * h + 32 * k).cast());
            // Levels are below 4: the 16-bit shifts never carry into the neighbouring byte.
            let v = _mm256_or_si256(
                _mm256_or_si256(a(0), _mm256_slli_epi16::<2>(a(1))),
                _mm256_or_si256(_mm256_slli_epi16::<4>(a(2)), _mm256_slli_epi16::<6>(a(3))),
            );
            _mm256_storeu_si256(qs.as_mut_ptr().add(32 * h).cast(), v);
        }
    }
}

/// Transposes the two halves of a super-block: `out[h][i]` lane `j` = `x[128h + 16j + i]`.
///
/// # Safety
/// AVX2 must be available; `x.len() >= 256` (checked).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn transpose_halves(x: &[f32], out: &mut [[__m256; 16]]) {
    let x = &x[..QK_K];
    // SAFETY: reads x[128h ..][..128] inside x[..256]; AVX2 (caller).
    unsafe {
        for (h, o) in out.iter_mut().take(2).enumerate() {
            transpose_groups::<16>(x.as_ptr().add(128 * h), 16, o);
        }
    }
}

/// The final levels (`0..=3`) of one Q2_K sub-block (`x` points at its first weight), as 16
/// bytes: re-rounded against the stored scale `d` and offset `dm` when `d != 0` (the
/// reference's last pass), otherwise the levels the search kept (zeros for a degenerate
/// lane).
///
/// # Safety
/// AVX2 must be available and `x[..16]` readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q2_k_sub_block_levels(
    x: *const f32,
    d: f32,
    dm: f32,
    lanes: &QkxLanes,
    j: usize,
) -> __m128i {
    // SAFETY: reads x[0..16] (caller); AVX2 (caller).
    unsafe {
        let load = |k: usize| _mm256_loadu_ps(x.add(8 * k));
        let mut q = [_mm256_setzero_si256(); 2];
        if d != 0.0 {
            let (vd, vdm) = (_mm256_set1_ps(d), _mm256_set1_ps(dm));
            for (k, qk) in q.iter_mut().enumerate() {
                let v = _mm256_div_ps(_mm256_add_ps(load(k), vdm), vd);
                *qk = clamp_i32(nearest_int_v(v), 0, 3);
            }
        } else if !lanes.degenerate[j] {
            let vi = _mm256_set1_ps(lanes.best_iscale[j]);
            let vm = _mm256_set1_ps(lanes.best_min_used[j]);
            for (k, qk) in q.iter_mut().enumerate() {
                let v = _mm256_mul_ps(vi, _mm256_sub_ps(load(k), vm));
                *qk = clamp_i32(nearest_int_v(v), 0, 3);
            }
        }
        i32x16_to_u8(q)
    }
}

/// `W` Q2_K super-blocks (`G == 2·W` lane groups) through one interleaved search; with `qw`
/// the importance-weighted variant (`quantize_row_q2_K_impl`), else `quantize_row_q2_K_ref`.
///
/// # Safety
/// AVX2 must be available; every `x[b]` (and `qw[b]`) holds at least 256 values (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q2_k_blocks<const W: usize, const G: usize>(
    x: [&[f32]; W],
    qw: Option<[&[f32]; W]>,
    y: &mut [BlockQ2K],
) {
    debug_assert_eq!(G, 2 * W);
    let y = &mut y[..W];
    // SAFETY: raw reads stay inside x[b][..256] / qw[b][..256]; stores go to local arrays and
    // the blocks' fixed-size fields; AVX2 (caller).
    unsafe {
        let zero = _mm256_setzero_ps();
        let mut xt = [[zero; 16]; G];
        let mut wt = [[zero; 16]; G];
        for b in 0..W {
            transpose_halves(x[b], &mut xt[2 * b..2 * b + 2]);
            match qw {
                None => {
                    for g in 2 * b..2 * b + 2 {
                        for i in 0..16 {
                            wt[g][i] = abs_v(xt[g][i]);
                        }
                    }
                }
                Some(qw) => {
                    // σ² is the mean square of the whole super-block, summed in element order.
                    let mut sumx2 = 0.0f32;
                    for &v in &x[b][..QK_K] {
                        sumx2 += v * v;
                    }
                    let sigma2 = _mm256_set1_ps(sumx2 / QK_K as f32);
                    let mut qt = [[zero; 16]; 2];
                    transpose_halves(qw[b], &mut qt);
                    for h in 0..2 {
                        let g = 2 * b + h;
                        for i in 0..16 {
                            let v = xt[g][i];
                            let r = _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(v, v)));
                            wt[g][i] = _mm256_mul_ps(qt[h][i], r);
                        }
                    }
                }
            }
        }
        let lanes = match qw {
            None => make_qkx_quants_x8::<G, 16, true>(&xt, &wt, 3, -0.5, 0.1, 15, false),
            Some(_) => make_qkx_quants_x8::<G, 16, false>(&xt, &wt, 3, -0.9, 0.05, 36, true),
        };
        for b in 0..W {
            let (lo, hi) = (&lanes[2 * b], &lanes[2 * b + 1]);
            let mut scales = [0.0f32; 16];
            let mut mins = [0.0f32; 16];
            scales[..8].copy_from_slice(&lo.scale);
            scales[8..].copy_from_slice(&hi.scale);
            mins[..8].copy_from_slice(&lo.the_min);
            mins[8..].copy_from_slice(&hi.the_min);
            let mut out = if qw.is_some() {
                // Σ weights of each sub-block, in element order from 0.
                let mut sw = [0.0f32; 16];
                for h in 0..2 {
                    let mut s = zero;
                    for w in &wt[2 * b + h] {
                        s = _mm256_add_ps(s, *w);
                    }
                    _mm256_storeu_ps(sw.as_mut_ptr().add(8 * h), s);
                }
                q2_k::scales_imatrix(&scales, &mins, &sw)
            } else {
                q2_k::scales_ref(&scales, &mins)
            };
            let d_all = out.d.to_f32();
            let m_all = out.dmin.to_f32();
            let xb = &x[b][..QK_K];
            let mut l = [0u8; QK_K];
            for j in 0..16 {
                let sc = out.scales[j];
                let d = d_all * f32::from(sc & 0xF);
                let dm = m_all * f32::from(sc >> 4);
                let v = q2_k_sub_block_levels(
                    xb.as_ptr().add(16 * j),
                    d,
                    dm,
                    &lanes[2 * b + j / 8],
                    j % 8,
                );
                _mm_storeu_si128(l.as_mut_ptr().add(16 * j).cast(), v);
            }
            pack_2bit(&l, &mut out.qs);
            y[b] = out;
        }
    }
}

/// Drives [`quantize_q2_k_blocks`] over a row, [`WIDE`] super-blocks at a time.
///
/// # Safety
/// AVX2 must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_q2_k_any(x: &[f32], y: &mut [BlockQ2K], qw: Option<&[f32]>) {
    assert_eq!(x.len(), y.len() * QK_K, "Q2_K quantizer: length mismatch");
    if let Some(qw) = qw {
        assert_eq!(
            qw.len(),
            x.len(),
            "Q2_K quantizer: importance length mismatch"
        );
    }
    let block = |i: usize| &x[QK_K * i..QK_K * (i + 1)];
    let groups = y.len() / WIDE;
    // SAFETY: AVX2 (caller); every slice passed holds exactly one super-block.
    unsafe {
        for p in 0..groups {
            let xs: [&[f32]; WIDE] = std::array::from_fn(|g| block(WIDE * p + g));
            let ws = qw.map(|w| -> [&[f32]; WIDE] {
                std::array::from_fn(|g| &w[QK_K * (WIDE * p + g)..QK_K * (WIDE * p + g + 1)])
            });
            quantize_q2_k_blocks::<WIDE, { 2 * WIDE }>(xs, ws, &mut y[WIDE * p..]);
        }
        for i in WIDE * groups..y.len() {
            let ws = qw.map(|w| [&w[QK_K * i..QK_K * (i + 1)]]);
            quantize_q2_k_blocks::<1, 2>([block(i)], ws, &mut y[i..]);
        }
    }
}

/// Q2_K row quantizer (`quantize_row_q2_k_ref`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q2_k(x: &[f32], y: &mut [BlockQ2K]) {
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_q2_k_any(x, y, None) }
}

/// Q2_K importance-weighted quantizer (`quantize_row_q2_k_imatrix`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q2_k_imatrix(x: &[f32], y: &mut [BlockQ2K], qw: &[f32]) {
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_q2_k_any(x, y, Some(qw)) }
}

/// Per-lane outcome of [`make_q3_quants_x8`] (one lane per 16-weight sub-block).
struct Q3Lanes {
    /// The fitted scale (0 for an all-zero sub-block).
    scale: [f32; 8],
    /// `levels[i][j]`: level (`-4..=3`, offset not added) of element `i` of lane `j`.
    levels: [[f32; 8]; 16],
    /// Largest magnitude below `GROUP_MAX_EPS`: the levels are all 0 (not the mid-level 4).
    zero: [bool; 8],
}

/// Lane-parallel `make_q3_quants(4, x, L)` for `G` groups of eight 16-weight sub-blocks:
/// lane `j` of `xt[g][i]` is element `i` of sub-block `j` of group `g`.
///
/// The coordinate descent visits the elements in order and updates a lane's sums only where
/// the scalar code would (a blend under the acceptance mask). A round in which a lane changes
/// nothing leaves its state as it was, so a further round cannot change it either: running
/// the rounds until no lane of any group changes (at most five) gives every lane exactly the
/// state at which its scalar loop stopped.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn make_q3_quants_x8<const G: usize>(xt: &[[__m256; 16]; G]) -> [Q3Lanes; G] {
    const NMAX: i32 = 4;
    // SAFETY: register-only intrinsics apart from stores into local arrays; AVX2 (caller).
    unsafe {
        let zero = _mm256_setzero_ps();
        // Lane: the value of largest magnitude; the first one wins on ties (strict `>`).
        let mut amax = [zero; G];
        let mut max = [zero; G];
        for i in 0..16 {
            for g in 0..G {
                let ax = abs_v(xt[g][i]);
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax[g]);
                amax[g] = _mm256_blendv_ps(amax[g], ax, gt);
                max[g] = _mm256_blendv_ps(max[g], xt[g][i], gt);
            }
        }
        let eps = _mm256_set1_ps(GROUP_MAX_EPS);
        let mut live = [zero; G];
        for g in 0..G {
            live[g] = _mm256_cmp_ps::<_CMP_NLT_UQ>(amax[g], eps);
        }
        let neg_nmax = _mm256_set1_ps((-NMAX) as f32);
        let mut iscale = [zero; G];
        for g in 0..G {
            iscale[g] = _mm256_div_ps(neg_nmax, max[g]);
        }
        // Levels as f32 (exact small integers), and the x²-weighted sums Σw·x·l, Σw·l².
        let mut lf = [[zero; 16]; G];
        let mut sumlx = [zero; G];
        let mut suml2 = [zero; G];
        for i in 0..16 {
            for g in 0..G {
                let x = xt[g][i];
                let q = clamp_i32(nearest_int_v(_mm256_mul_ps(iscale[g], x)), -NMAX, NMAX - 1);
                let qf = _mm256_cvtepi32_ps(q);
                lf[g][i] = qf;
                let w = _mm256_mul_ps(x, x);
                sumlx[g] = _mm256_add_ps(sumlx[g], _mm256_mul_ps(_mm256_mul_ps(w, x), qf));
                suml2[g] = _mm256_add_ps(suml2[g], _mm256_mul_ps(_mm256_mul_ps(w, qf), qf));
            }
        }
        for _ in 0..5 {
            let mut changed = 0;
            for i in 0..16 {
                for g in 0..G {
                    let x = xt[g][i];
                    let w = _mm256_mul_ps(x, x);
                    let wx = _mm256_mul_ps(w, x);
                    let li = lf[g][i];
                    let slx = _mm256_sub_ps(sumlx[g], _mm256_mul_ps(wx, li));
                    let sl2 = _mm256_sub_ps(suml2[g], _mm256_mul_ps(_mm256_mul_ps(w, li), li));
                    let q = nearest_int_v(_mm256_div_ps(_mm256_mul_ps(x, sl2), slx));
                    let nf = _mm256_cvtepi32_ps(clamp_i32(q, -NMAX, NMAX - 1));
                    let slx_new = _mm256_add_ps(slx, _mm256_mul_ps(wx, nf));
                    let sl2_new = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w, nf), nf));
                    // slx > 0, new level differs, sl2' > 0, slx'²·suml2 > sumlx²·sl2'.
                    let gain = _mm256_cmp_ps::<_CMP_GT_OQ>(
                        _mm256_mul_ps(_mm256_mul_ps(slx_new, slx_new), suml2[g]),
                        _mm256_mul_ps(_mm256_mul_ps(sumlx[g], sumlx[g]), sl2_new),
                    );
                    let accept = _mm256_and_ps(
                        _mm256_and_ps(
                            _mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero),
                            _mm256_cmp_ps::<_CMP_NEQ_OQ>(nf, li),
                        ),
                        _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(sl2_new, zero), gain),
                    );
                    lf[g][i] = _mm256_blendv_ps(li, nf, accept);
                    sumlx[g] = _mm256_blendv_ps(sumlx[g], slx_new, accept);
                    suml2[g] = _mm256_blendv_ps(suml2[g], sl2_new, accept);
                    // All-zero lanes compute garbage that is discarded below; they must not
                    // keep the rounds going.
                    changed |= _mm256_movemask_ps(_mm256_and_ps(accept, live[g]));
                }
            }
            if changed == 0 {
                break;
            }
        }
        std::array::from_fn(|g| {
            let mut out = Q3Lanes {
                scale: [0.0; 8],
                levels: [[0.0; 8]; 16],
                zero: [false; 8],
            };
            let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[g], zero);
            let s = _mm256_and_ps(
                _mm256_div_ps(sumlx[g], suml2[g]),
                _mm256_and_ps(pos, live[g]),
            );
            _mm256_storeu_ps(out.scale.as_mut_ptr(), s);
            for i in 0..16 {
                _mm256_storeu_ps(out.levels[i].as_mut_ptr(), lf[g][i]);
            }
            let lmask = _mm256_movemask_ps(live[g]);
            for (j, z) in out.zero.iter_mut().enumerate() {
                *z = lmask & (1 << j) == 0;
            }
            out
        })
    }
}

/// The 16 re-rounded levels (`0..8`) of one Q3_K sub-block against its stored scale `d != 0`:
/// `clamp(nearest_int(x / d), -4, 3) + 4`.
///
/// # Safety
/// AVX2 must be available and `x[..16]` readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn q3_k_requantized(x: *const f32, d: f32) -> __m128i {
    // SAFETY: reads x[0..16] (caller); AVX2 (caller).
    unsafe {
        let vd = _mm256_set1_ps(d);
        let four = _mm256_set1_epi32(4);
        let q: [__m256i; 2] = std::array::from_fn(|k| {
            let v = _mm256_div_ps(_mm256_loadu_ps(x.add(8 * k)), vd);
            _mm256_add_epi32(clamp_i32(nearest_int_v(v), -4, 3), four)
        });
        i32x16_to_u8(q)
    }
}

/// Splits 256 levels (`0..8`) into Q3_K's high-bit mask and 2-bit planes and stores them.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pack_q3_k(l: &[u8; QK_K], y: &mut BlockQ3K) {
    // SAFETY: reads l[32k..][..32] (k < 8) and writes y.hmask[..32]; AVX2 (caller).
    unsafe {
        let one = _mm256_set1_epi8(1);
        let m3 = _mm256_set1_epi8(3);
        let mut hmask = _mm256_setzero_si256();
        let mut low = [0u8; QK_K];
        for k in 0..8 {
            let a = _mm256_loadu_si256(l.as_ptr().add(32 * k).cast());
            // Level >= 4 (bit 2, levels are below 8) sets bit k of hmask[l]; the bit moves at
            // most 7 places inside its own byte.
            let hi = _mm256_and_si256(_mm256_srli_epi16::<2>(a), one);
            hmask = _mm256_or_si256(hmask, _mm256_sll_epi16(hi, _mm_cvtsi32_si128(k as i32)));
            _mm256_storeu_si256(low.as_mut_ptr().add(32 * k).cast(), _mm256_and_si256(a, m3));
        }
        _mm256_storeu_si256(y.hmask.as_mut_ptr().cast(), hmask);
        pack_2bit(&low, &mut y.qs);
    }
}

/// `W` Q3_K super-blocks (`G == 2·W` lane groups) through `quantize_row_q3_K_ref`.
///
/// # Safety
/// AVX2 must be available; every `x[b]` holds at least 256 values (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q3_k_blocks<const W: usize, const G: usize>(x: [&[f32]; W], y: &mut [BlockQ3K]) {
    debug_assert_eq!(G, 2 * W);
    let y = &mut y[..W];
    // SAFETY: raw reads stay inside x[b][..256]; stores go to local arrays and the blocks'
    // fixed-size fields; AVX2 (caller).
    unsafe {
        let mut xt = [[_mm256_setzero_ps(); 16]; G];
        for b in 0..W {
            transpose_halves(x[b], &mut xt[2 * b..2 * b + 2]);
        }
        let lanes = make_q3_quants_x8::<G>(&xt);
        for b in 0..W {
            let mut scales = [0.0f32; 16];
            scales[..8].copy_from_slice(&lanes[2 * b].scale);
            scales[8..].copy_from_slice(&lanes[2 * b + 1].scale);
            let mut out = q3_k::scales_ref(&scales);
            let d_all = out.d.to_f32();
            let sc = q3_k::unpack_scales(&out.scales);
            let xb = &x[b][..QK_K];
            let mut l = [0u8; QK_K];
            for j in 0..16 {
                let d = d_all * f32::from(sc[j]);
                if d != 0.0 {
                    let v = q3_k_requantized(xb.as_ptr().add(16 * j), d);
                    _mm_storeu_si128(l.as_mut_ptr().add(16 * j).cast(), v);
                } else {
                    let ln = &lanes[2 * b + j / 8];
                    if !ln.zero[j % 8] {
                        for i in 0..16 {
                            l[16 * j + i] = (ln.levels[i][j % 8] as i32 + 4) as u8;
                        }
                    }
                }
            }
            pack_q3_k(&l, &mut out);
            y[b] = out;
        }
    }
}

/// One Q3_K super-block through `quantize_row_q3_K_impl` with importance `qw`.
///
/// # Safety
/// AVX2 must be available; `x.len() >= 256` and `qw.len() >= 256` (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q3_k_block_imatrix(x: &[f32], qw: &[f32], y: &mut BlockQ3K) {
    let x = &x[..QK_K];
    let qw = &qw[..QK_K];
    // SAFETY: raw reads stay inside x[..256] / qw[..256]; stores go to local arrays and the
    // block's fixed-size fields; AVX2 (caller).
    unsafe {
        let zero = _mm256_setzero_ps();
        let mut xh = [[zero; 16]; 2];
        let mut qh = [[zero; 16]; 2];
        transpose_halves(x, &mut xh);
        transpose_halves(qw, &mut qh);
        let mut sumx2 = 0.0f32;
        for &v in x {
            sumx2 += v * v;
        }
        let sigma2 = _mm256_set1_ps(2.0 * sumx2 / QK_K as f32);
        // make_qx_quants_x16's layout: xt[i][h] lane j = element i of sub-block 8h + j.
        let mut xt = [[zero; 2]; 16];
        let mut wt = [[zero; 2]; 16];
        let mut sw = [0.0f32; 16];
        for h in 0..2 {
            let mut s = zero;
            for i in 0..16 {
                let v = xh[h][i];
                let r = _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(v, v)));
                let w = _mm256_mul_ps(qh[h][i], r);
                xt[i][h] = v;
                wt[i][h] = w;
                s = _mm256_add_ps(s, w);
            }
            _mm256_storeu_ps(sw.as_mut_ptr().add(8 * h), s);
        }
        let lanes = make_qx_quants_x16::<4>(&xt, &wt);
        let mut out = q3_k::scales_imatrix(&lanes.scale, &sw);
        let d_all = out.d.to_f32();
        let sc = q3_k::unpack_scales(&out.scales);
        let mut l = [0u8; QK_K];
        for j in 0..16 {
            let xs = x.as_ptr().add(16 * j);
            let d = d_all * f32::from(sc[j]);
            let v = if d != 0.0 {
                q3_k_requantized(xs, d)
            } else if lanes.zero[j] {
                _mm_setzero_si128()
            } else {
                // The search's levels: 4 + clamp(nearest_int(iscale·x), -4, 3).
                let vi = _mm256_set1_ps(lanes.best_iscale[j]);
                let four = _mm256_set1_epi32(4);
                let q: [__m256i; 2] = std::array::from_fn(|k| {
                    let v = _mm256_mul_ps(vi, _mm256_loadu_ps(xs.add(8 * k)));
                    _mm256_add_epi32(clamp_i32(nearest_int_v(v), -4, 3), four)
                });
                i32x16_to_u8(q)
            };
            _mm_storeu_si128(l.as_mut_ptr().add(16 * j).cast(), v);
        }
        pack_q3_k(&l, &mut out);
        *y = out;
    }
}

/// Q3_K row quantizer (`quantize_row_q3_k_ref`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3K]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q3_k: length mismatch"
    );
    let block = |i: usize| &x[QK_K * i..QK_K * (i + 1)];
    let groups = y.len() / WIDE;
    // SAFETY: AVX2 (caller); every slice passed holds exactly one super-block.
    unsafe {
        for p in 0..groups {
            let xs: [&[f32]; WIDE] = std::array::from_fn(|g| block(WIDE * p + g));
            quantize_q3_k_blocks::<WIDE, { 2 * WIDE }>(xs, &mut y[WIDE * p..]);
        }
        for i in WIDE * groups..y.len() {
            quantize_q3_k_blocks::<1, 2>([block(i)], &mut y[i..]);
        }
    }
}

/// Q3_K importance-weighted quantizer (`quantize_row_q3_k_imatrix`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q3_k_imatrix(x: &[f32], y: &mut [BlockQ3K], qw: &[f32]) {
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
        // SAFETY: AVX2 (caller); xb and wb hold one super-block each.
        unsafe { quantize_q3_k_block_imatrix(xb, wb, yb) };
    }
}
