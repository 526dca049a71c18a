//! Q4_K, Q5_K and Q6_K row quantizers, bit-identical to the scalar references.
//!
//! The expensive part of a K-quant is the per-sub-block scale search (`make_qkx2_quants`,
//! `make_qkx3_quants`, `make_qx_quants`): for every trial scale it rounds all weights of the
//! sub-block and accumulates least-squares sums. The sub-blocks of one super-block are
//! independent, so each gets one f32 lane: Q4_K/Q5_K have 8 sub-blocks of 32 (one `__m256`),
//! Q6_K has 16 sub-blocks of 16 (two `__m256`). The super-block is first transposed so that
//! vector `xt[i]` holds element `i` of every sub-block; a lane then executes exactly the scalar
//! algorithm's operations in exactly its order (element 0, 1, 2, ... into the same running
//! sums, separate multiply and add, the same `nearest_int` bit trick, the same comparisons,
//! with `blendv` standing in for the scalar `if`). IEEE arithmetic is deterministic per
//! operation, so every lane produces the same bits as the scalar code.
//!
//! Instead of copying the trial levels into the result whenever a lane improves (32 blends per
//! trial), the search remembers, per lane, the inverse scale and offset that produced its best
//! levels, and recomputes those levels once at the end: the rounding is a pure function of
//! them, so the recomputed levels are the ones the scalar code kept.
//!
//! The short per-super-block steps (8 or 16 scales to 6/8 bits, f16 conversions,
//! `make_qp_quants`) stay scalar and call the reference helpers.

use std::arch::x86_64::*;

use half::f16;

use crate::block::kquant_common::{
    get_scale_min_k4, make_qp_quants, pack_scale_min_k4, GROUP_MAX_EPS,
};
use crate::block::nearest_int;
use crate::block::q4_k::BlockQ4K;
use crate::block::q5_k::BlockQ5K;
use crate::block::q6_k::BlockQ6K;
use crate::QK_K;

/// `1.5 · 2^23`: adding it to an f32 of magnitude below 2^22 leaves the rounded integer in the
/// low mantissa bits (ggml's `nearest_int`).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// Lane-wise [`nearest_int`]: the same add, mask and subtract, so the same bits for every input
/// (including the garbage that out-of-range or NaN inputs produce).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn nearest_int_v(v: __m256) -> __m256i {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        let t = _mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(ROUND_MAGIC)));
        _mm256_sub_epi32(
            _mm256_and_si256(t, _mm256_set1_epi32(0x007f_ffff)),
            _mm256_set1_epi32(0x0040_0000),
        )
    }
}

/// Lane-wise `|v|` (clears the sign bit, exactly like `f32::abs`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn abs_v(v: __m256) -> __m256 {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe { _mm256_and_ps(v, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff))) }
}

/// Lane-wise `lo.max(q).min(hi)` on i32 (the scalar `nmax.min(q).max(0)` and friends; for
/// `lo <= hi` the order of the two clamps does not matter).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn clamp_i32(q: __m256i, lo: i32, hi: i32) -> __m256i {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        _mm256_max_epi32(
            _mm256_min_epi32(q, _mm256_set1_epi32(hi)),
            _mm256_set1_epi32(lo),
        )
    }
}

/// Transposes an 8×8 block of f32: on return `r[k]` lane `j` is the input `r[j]` lane `k`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn transpose8(r: &mut [__m256; 8]) {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        r[0] = _mm256_permute2f128_ps::<0x20>(s0, s4);
        r[1] = _mm256_permute2f128_ps::<0x20>(s1, s5);
        r[2] = _mm256_permute2f128_ps::<0x20>(s2, s6);
        r[3] = _mm256_permute2f128_ps::<0x20>(s3, s7);
        r[4] = _mm256_permute2f128_ps::<0x31>(s0, s4);
        r[5] = _mm256_permute2f128_ps::<0x31>(s1, s5);
        r[6] = _mm256_permute2f128_ps::<0x31>(s2, s6);
        r[7] = _mm256_permute2f128_ps::<0x31>(s3, s7);
    }
}

/// Transposes 8 groups of `N` consecutive floats starting at `x + stride·j` (j = 0..8) into
/// `out[i]` whose lane `j` is element `i` of group `j`. `N` is a multiple of 8.
///
/// # Safety
/// AVX2 must be available and `x[stride·7 + N - 1]` must be readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn transpose_groups<const N: usize>(
    x: *const f32,
    stride: usize,
    out: &mut [__m256; N],
) {
    for c in 0..N / 8 {
        // SAFETY: rows j = 0..8 read x[stride·j + 8c .. +8], inside the caller's bound.
        let mut r: [__m256; 8] =
            std::array::from_fn(|j| unsafe { _mm256_loadu_ps(x.add(stride * j + 8 * c)) });
        // SAFETY: AVX2 is available (caller).
        unsafe { transpose8(&mut r) };
        out[8 * c..8 * c + 8].copy_from_slice(&r);
    }
}

/// Converts four vectors of 8 small non-negative i32 (values in `0..=255`) into 32 bytes in
/// order.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn i32x32_to_u8(v: [__m256i; 4]) -> __m256i {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        // packs works within 128-bit halves: bytes come out as a0..3 b0..3 c0..3 d0..3 |
        // a4..7 b4..7 c4..7 d4..7; the dword permute restores a0..7 b0..7 c0..7 d0..7.
        let ab = _mm256_packs_epi32(v[0], v[1]);
        let cd = _mm256_packs_epi32(v[2], v[3]);
        let abcd = _mm256_packus_epi16(ab, cd);
        _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The error measure of the `make_qkx*` searches: `|d|` with `MAD` (ggml's `use_mad`), else
/// `d·d`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn err_v<const MAD: bool>(d: __m256) -> __m256 {
    // SAFETY: register-only intrinsics; the caller guarantees AVX2.
    unsafe {
        if MAD {
            abs_v(d)
        } else {
            _mm256_mul_ps(d, d)
        }
    }
}

/// Per-lane outcome of [`make_qkx_quants_x8`] (one lane per sub-block).
pub(super) struct QkxLanes {
    /// The fitted scale (0 for a degenerate lane).
    pub(super) scale: [f32; 8],
    /// `-min`, the non-negative offset the block stores.
    pub(super) the_min: [f32; 8],
    /// Inverse scale that produced the kept levels.
    pub(super) best_iscale: [f32; 8],
    /// `min` that was subtracted when the kept levels were rounded.
    pub(super) best_min_used: [f32; 8],
    /// All values equal (or, for qkx3, not ordered): levels are all zero.
    pub(super) degenerate: [bool; 8],
}

/// Lane-parallel `make_qkx2_quants` / `make_qkx3_quants` (the scalar `make_qkx_quants_impl`
/// with `N` elements per group; `MAD` is its `use_mad`: absolute instead of squared error) for
/// `G` groups of eight sub-blocks at once: lane `j` of `xt[g][i]` / `wt[g][i]` is element `i`
/// of sub-block `j` of group `g`, and its weight. The `G` groups are independent (Q4_K/Q5_K:
/// one per super-block; Q2_K: two per super-block); interleaving them gives the CPU
/// independent add chains (each lane's sums must stay sequential to match the scalar order, so
/// a single group is bound by add latency, not throughput).
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn make_qkx_quants_x8<const G: usize, const N: usize, const MAD: bool>(
    xt: &[[__m256; N]; G],
    wt: &[[__m256; N]; G],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    degenerate_if_le: bool,
) -> [QkxLanes; G] {
    // SAFETY: register-only intrinsics apart from stores into local arrays; AVX2 (caller).
    unsafe {
        let zero = _mm256_setzero_ps();
        // Per lane: running min/max of the sub-block, Σw and Σw·x, in element order. The sums
        // start from element 0 itself, as the scalar code does (not from 0.0 + w0·x0).
        let mut min: [__m256; G] = std::array::from_fn(|g| xt[g][0]);
        let mut max = min;
        let mut sum_w: [__m256; G] = std::array::from_fn(|g| wt[g][0]);
        let mut sum_x: [__m256; G] = std::array::from_fn(|g| _mm256_mul_ps(wt[g][0], xt[g][0]));
        for i in 1..N {
            for g in 0..G {
                // min_ps(a, b) is `a < b ? a : b`: `if x < min { min = x }` (NaN keeps min).
                min[g] = _mm256_min_ps(xt[g][i], min[g]);
                max[g] = _mm256_max_ps(xt[g][i], max[g]);
                sum_w[g] = _mm256_add_ps(sum_w[g], wt[g][i]);
                sum_x[g] = _mm256_add_ps(sum_x[g], _mm256_mul_ps(wt[g][i], xt[g][i]));
            }
        }
        let mut degenerate = [zero; G];
        for g in 0..G {
            // `if min > 0 { min = 0 }`
            min[g] = _mm256_blendv_ps(min[g], zero, _mm256_cmp_ps::<_CMP_GT_OQ>(min[g], zero));
            degenerate[g] = if degenerate_if_le {
                _mm256_cmp_ps::<_CMP_LE_OQ>(max[g], min[g])
            } else {
                _mm256_cmp_ps::<_CMP_EQ_OQ>(max[g], min[g])
            };
        }

        let nmax_f = nmax as f32;
        let vnmax = _mm256_set1_ps(nmax_f);
        let iscale: [__m256; G] =
            std::array::from_fn(|g| _mm256_div_ps(vnmax, _mm256_sub_ps(max[g], min[g])));
        let mut scale: [__m256; G] =
            std::array::from_fn(|g| _mm256_div_ps(_mm256_set1_ps(1.0), iscale[g]));
        let mut best_iscale = iscale;
        let mut best_min_used = min;

        // Error of the plain min/max rounding.
        let mut best_error = [zero; G];
        for i in 0..N {
            for g in 0..G {
                let x = xt[g][i];
                let v = _mm256_mul_ps(iscale[g], _mm256_sub_ps(x, min[g]));
                let qf = _mm256_cvtepi32_ps(clamp_i32(nearest_int_v(v), 0, nmax));
                // diff = scale·L + min − x, evaluated left to right.
                let diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale[g], qf), min[g]), x);
                let e = _mm256_mul_ps(wt[g][i], err_v::<MAD>(diff));
                best_error[g] = _mm256_add_ps(best_error[g], e);
            }
        }

        if nstep >= 1 {
            // Trial levels of the current step, as f32 (lane j: level of element i of
            // sub-block j).
            let mut laux = [[zero; N]; G];
            for is in 0..=nstep {
                // Scalar order: ((rmin + rdelta·is) + nmax) / (max − min); the numerator is
                // the same for every lane.
                let num = _mm256_set1_ps(rmin + rdelta * is as f32 + nmax_f);
                let iscale: [__m256; G] =
                    std::array::from_fn(|g| _mm256_div_ps(num, _mm256_sub_ps(max[g], min[g])));
                let mut sum_l = [zero; G];
                let mut sum_l2 = [zero; G];
                let mut sum_xl = [zero; G];
                for i in 0..N {
                    for g in 0..G {
                        let x = xt[g][i];
                        let v = _mm256_mul_ps(iscale[g], _mm256_sub_ps(x, min[g]));
                        let qf = _mm256_cvtepi32_ps(clamp_i32(nearest_int_v(v), 0, nmax));
                        laux[g][i] = qf;
                        let wq = _mm256_mul_ps(wt[g][i], qf);
                        sum_l[g] = _mm256_add_ps(sum_l[g], wq);
                        sum_l2[g] = _mm256_add_ps(sum_l2[g], _mm256_mul_ps(wq, qf));
                        sum_xl[g] = _mm256_add_ps(sum_xl[g], _mm256_mul_ps(wq, x));
                    }
                }
                let mut has_fit = [zero; G];
                let mut this_scale = [zero; G];
                let mut this_min = [zero; G];
                let mut any_fit = 0;
                for g in 0..G {
                    let d = _mm256_sub_ps(
                        _mm256_mul_ps(sum_w[g], sum_l2[g]),
                        _mm256_mul_ps(sum_l[g], sum_l[g]),
                    );
                    has_fit[g] = _mm256_cmp_ps::<_CMP_GT_OQ>(d, zero);
                    any_fit |= _mm256_movemask_ps(has_fit[g]);
                    let s = _mm256_div_ps(
                        _mm256_sub_ps(
                            _mm256_mul_ps(sum_w[g], sum_xl[g]),
                            _mm256_mul_ps(sum_x[g], sum_l[g]),
                        ),
                        d,
                    );
                    let m = _mm256_div_ps(
                        _mm256_sub_ps(
                            _mm256_mul_ps(sum_l2[g], sum_x[g]),
                            _mm256_mul_ps(sum_l[g], sum_xl[g]),
                        ),
                        d,
                    );
                    // A positive min is not representable: pin it to 0 and refit the scale.
                    let pos_min = _mm256_cmp_ps::<_CMP_GT_OQ>(m, zero);
                    this_min[g] = _mm256_blendv_ps(m, zero, pos_min);
                    this_scale[g] =
                        _mm256_blendv_ps(s, _mm256_div_ps(sum_xl[g], sum_l2[g]), pos_min);
                }
                if any_fit == 0 {
                    continue;
                }
                let mut cur_error = [zero; G];
                for i in 0..N {
                    for g in 0..G {
                        let diff = _mm256_sub_ps(
                            _mm256_add_ps(_mm256_mul_ps(this_scale[g], laux[g][i]), this_min[g]),
                            xt[g][i],
                        );
                        let e = _mm256_mul_ps(wt[g][i], err_v::<MAD>(diff));
                        cur_error[g] = _mm256_add_ps(cur_error[g], e);
                    }
                }
                for g in 0..G {
                    let better = _mm256_and_ps(
                        has_fit[g],
                        _mm256_cmp_ps::<_CMP_LT_OQ>(cur_error[g], best_error[g]),
                    );
                    best_error[g] = _mm256_blendv_ps(best_error[g], cur_error[g], better);
                    scale[g] = _mm256_blendv_ps(scale[g], this_scale[g], better);
                    best_iscale[g] = _mm256_blendv_ps(best_iscale[g], iscale[g], better);
                    best_min_used[g] = _mm256_blendv_ps(best_min_used[g], min[g], better);
                    // The scalar code updates `min` here: later trials use the refitted offset.
                    min[g] = _mm256_blendv_ps(min[g], this_min[g], better);
                }
            }
        }

        std::array::from_fn(|g| {
            let mut out = QkxLanes {
                scale: [0.0; 8],
                the_min: [0.0; 8],
                best_iscale: [0.0; 8],
                best_min_used: [0.0; 8],
                degenerate: [false; 8],
            };
            let s = _mm256_blendv_ps(scale[g], zero, degenerate[g]);
            _mm256_storeu_ps(out.scale.as_mut_ptr(), s);
            // `-min` as a negation (sign flip), like the scalar `-min`.
            let neg_min = _mm256_xor_ps(min[g], _mm256_set1_ps(-0.0));
            _mm256_storeu_ps(out.the_min.as_mut_ptr(), neg_min);
            _mm256_storeu_ps(out.best_iscale.as_mut_ptr(), best_iscale[g]);
            _mm256_storeu_ps(out.best_min_used.as_mut_ptr(), best_min_used[g]);
            let dmask = _mm256_movemask_ps(degenerate[g]);
            for (j, d) in out.degenerate.iter_mut().enumerate() {
                *d = dmask & (1 << j) != 0;
            }
            out
        })
    }
}

/// The levels of one 32-weight sub-block (`x` points at its first weight), as 32 bytes, for
/// Q4_K/Q5_K: re-rounded against the stored scale `d`/offset `dm` when `d != 0` (ggml's last
/// pass), otherwise the levels the search kept (zeros for a degenerate lane).
///
/// # Safety
/// AVX2 must be available and `x[..32]` readable.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sub_block_levels(
    x: *const f32,
    nmax: i32,
    d: f32,
    dm: f32,
    lanes: &QkxLanes,
    j: usize,
) -> __m256i {
    // SAFETY: reads x[0..32] (caller); AVX2 (caller).
    unsafe {
        let load = |k: usize| _mm256_loadu_ps(x.add(8 * k));
        let q: [__m256i; 4] = if d != 0.0 {
            let (vd, vdm) = (_mm256_set1_ps(d), _mm256_set1_ps(dm));
            std::array::from_fn(|k| {
                clamp_i32(
                    nearest_int_v(_mm256_div_ps(_mm256_add_ps(load(k), vdm), vd)),
                    0,
                    nmax,
                )
            })
        } else if lanes.degenerate[j] {
            [_mm256_setzero_si256(); 4]
        } else {
            let (vi, vm) = (
                _mm256_set1_ps(lanes.best_iscale[j]),
                _mm256_set1_ps(lanes.best_min_used[j]),
            );
            std::array::from_fn(|k| {
                clamp_i32(
                    nearest_int_v(_mm256_mul_ps(vi, _mm256_sub_ps(load(k), vm))),
                    0,
                    nmax,
                )
            })
        };
        i32x32_to_u8(q)
    }
}

/// Scales and levels of one Q4_K/Q5_K super-block: `levels[j]` holds the 32 levels of
/// sub-block `j` in order.
struct ScaleMinOut {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    levels: [__m256i; 8],
}

/// The two scale-quantization schemes of ggml's Q4_K/Q5_K quantizers.
#[derive(Clone, Copy)]
enum ScaleMode {
    /// `quantize_row_q4_K_ref` / `q5_K_ref`: `make_qkx2_quants` with weights `rms + |x|`, the
    /// 6-bit levels linear in the largest scale/min.
    Ref { rmin: f32, rdelta: f32, nstep: i32 },
    /// `quantize_row_q4_K_impl` / `q5_K_impl` with an importance row `qw`: `make_qkx3_quants`
    /// weighted by `qw·sqrt(σ² + x²)`, 6-bit levels by `make_qp_quants`.
    Imatrix { clamp_levels: bool },
}

/// Transposes one super-block (`xt[i]` lane `j` = `x[32j + i]`) and computes the search
/// weights `wt` in the same layout: `rms(sub-block) + |x|`, or with importance `qw`
/// `qw·sqrt(σ² + x²)`.
///
/// # Safety
/// AVX2 must be available; `x.len() >= 256` and `qw.len() >= 256` (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prepare_scale_min(
    x: &[f32],
    qw: Option<&[f32]>,
    xt: &mut [__m256; 32],
    wt: &mut [__m256; 32],
) {
    let x = &x[..QK_K];
    // SAFETY: raw reads stay inside x[..256] / qw[..256]; AVX2 (caller).
    unsafe {
        transpose_groups::<32>(x.as_ptr(), 32, xt);
        match qw {
            None => {
                // Lane j: Σ x² over sub-block j, in element order, then rms = sqrt(Σ/32).
                let mut sum_x2 = _mm256_setzero_ps();
                for v in xt.iter() {
                    sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(*v, *v));
                }
                let av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.0)));
                for (w, v) in wt.iter_mut().zip(xt.iter()) {
                    *w = _mm256_add_ps(av_x, abs_v(*v));
                }
            }
            Some(qw) => {
                let qw = &qw[..QK_K];
                // σ² uses the whole super-block, summed in element order like the reference.
                let mut sum_x2 = 0.0f32;
                for &v in x {
                    sum_x2 += v * v;
                }
                let sigma2 = _mm256_set1_ps(2.0 * sum_x2 / 256.0);
                let mut qwt = [_mm256_setzero_ps(); 32];
                transpose_groups::<32>(qw.as_ptr(), 32, &mut qwt);
                for ((w, v), q) in wt.iter_mut().zip(xt.iter()).zip(&qwt) {
                    let r = _mm256_sqrt_ps(_mm256_add_ps(sigma2, _mm256_mul_ps(*v, *v)));
                    *w = _mm256_mul_ps(*q, r);
                }
            }
        }
    }
}

/// Quantizes the 8 sub-block scales and mins to 6 bits and computes the final levels of one
/// super-block, given the search result `lanes` (mirrors the tail of
/// `quantize_scale_min_block_ref` / `_imatrix` in `kquant_common`).
///
/// # Safety
/// AVX2 must be available; `x.len() >= 256` (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn finish_scale_min(
    x: &[f32],
    wt: &[__m256; 32],
    nmax: i32,
    mode: ScaleMode,
    lanes: &QkxLanes,
) -> ScaleMinOut {
    let x = &x[..QK_K];
    // SAFETY: raw reads stay inside x[..256]; AVX2 (caller).
    unsafe {
        let (d, dmin, scales) = match mode {
            ScaleMode::Ref { .. } => {
                let mut max_scale = 0.0f32;
                let mut max_min = 0.0f32;
                for j in 0..8 {
                    if lanes.scale[j] > max_scale {
                        max_scale = lanes.scale[j];
                    }
                    if lanes.the_min[j] > max_min {
                        max_min = lanes.the_min[j];
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
                    // nearest_int lands in a uint8_t (truncating) before the clamp, as in ggml.
                    ls[j] = (nearest_int(inv_scale * lanes.scale[j]) as u8).min(63);
                    lm[j] = (nearest_int(inv_min * lanes.the_min[j]) as u8).min(63);
                }
                (
                    f16::from_f32(max_scale / 63.0),
                    f16::from_f32(max_min / 63.0),
                    pack_scale_min_k4(&ls, &lm),
                )
            }
            ScaleMode::Imatrix { clamp_levels } => {
                // Σ weights of each sub-block, in element order (the importance of its scale).
                let mut sw_v = _mm256_setzero_ps();
                for w in wt {
                    sw_v = _mm256_add_ps(sw_v, *w);
                }
                let mut sw = [0.0f32; 8];
                _mm256_storeu_ps(sw.as_mut_ptr(), sw_v);
                let mut ls = [0u8; 8];
                let mut lm = [0u8; 8];
                let d_block = make_qp_quants(63, &lanes.scale, &mut ls, &sw);
                let m_block = make_qp_quants(63, &lanes.the_min, &mut lm, &sw);
                if clamp_levels {
                    for v in ls.iter_mut().chain(lm.iter_mut()) {
                        *v = (*v).min(63);
                    }
                }
                (
                    f16::from_f32(d_block),
                    f16::from_f32(m_block),
                    pack_scale_min_k4(&ls, &lm),
                )
            }
        };

        let d_all = d.to_f32();
        let dmin_all = dmin.to_f32();
        let levels: [__m256i; 8] = std::array::from_fn(|j| {
            let (sc, m) = get_scale_min_k4(j, &scales);
            let dj = d_all * f32::from(sc);
            let dm = dmin_all * f32::from(m);
            sub_block_levels(x.as_ptr().add(32 * j), nmax, dj, dm, lanes, j)
        });
        ScaleMinOut {
            d,
            dmin,
            scales,
            levels,
        }
    }
}

/// `G` Q4_K/Q5_K super-blocks through one interleaved scale search.
///
/// # Safety
/// AVX2 must be available; every `x[g]` (and `qw[g]`) has at least 256 values (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_scale_min_blocks<const G: usize>(
    x: [&[f32]; G],
    qw: [Option<&[f32]>; G],
    nmax: i32,
    mode: ScaleMode,
) -> [ScaleMinOut; G] {
    // SAFETY: AVX2 (caller); the callees check their slice lengths.
    unsafe {
        let mut xt = [[_mm256_setzero_ps(); 32]; G];
        let mut wt = [[_mm256_setzero_ps(); 32]; G];
        for g in 0..G {
            prepare_scale_min(x[g], qw[g], &mut xt[g], &mut wt[g]);
        }
        let lanes = match mode {
            ScaleMode::Ref {
                rmin,
                rdelta,
                nstep,
            } => make_qkx_quants_x8::<G, 32, false>(&xt, &wt, nmax, rmin, rdelta, nstep, false),
            ScaleMode::Imatrix { .. } => {
                make_qkx_quants_x8::<G, 32, false>(&xt, &wt, nmax, -0.9, 0.05, 36, true)
            }
        };
        std::array::from_fn(|g| finish_scale_min(x[g], &wt[g], nmax, mode, &lanes[g]))
    }
}

/// Super-blocks searched together by [`quantize_row_scale_min`].
const WIDE: usize = 2;

/// Quantizes a row of Q4_K/Q5_K super-blocks, [`WIDE`] at a time (the rest one by one),
/// handing each result to `pack`.
///
/// # Safety
/// AVX2 must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_scale_min<B>(
    x: &[f32],
    qw: Option<&[f32]>,
    y: &mut [B],
    nmax: i32,
    mode: ScaleMode,
    mut pack: impl FnMut(&ScaleMinOut, &mut B),
) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "K-quant quantizer: length mismatch"
    );
    if let Some(qw) = qw {
        assert_eq!(
            qw.len(),
            x.len(),
            "K-quant quantizer: importance length mismatch"
        );
    }
    let block = |i: usize| &x[QK_K * i..QK_K * (i + 1)];
    let imp = |i: usize| qw.map(|w| &w[QK_K * i..QK_K * (i + 1)]);
    let groups = y.len() / WIDE;
    // SAFETY: AVX2 (caller); every slice passed holds exactly one super-block.
    unsafe {
        for p in 0..groups {
            let outs = quantize_scale_min_blocks::<WIDE>(
                std::array::from_fn(|g| block(WIDE * p + g)),
                std::array::from_fn(|g| imp(WIDE * p + g)),
                nmax,
                mode,
            );
            for (g, out) in outs.iter().enumerate() {
                pack(out, &mut y[WIDE * p + g]);
            }
        }
        for (last, yb) in y.iter_mut().enumerate().skip(WIDE * groups) {
            let [out] = quantize_scale_min_blocks::<1>([block(last)], [imp(last)], nmax, mode);
            pack(&out, yb);
        }
    }
}

/// Packs Q4_K levels (0..=15): byte `32c + l` = level `64c + l` | level `64c + 32 + l` << 4.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_q4_k(out: &ScaleMinOut, y: &mut BlockQ4K) {
    // SAFETY: stores 32 bytes at y.qs[32c..32c+32], c < 4, inside the 128-byte array; AVX2.
    unsafe {
        for c in 0..4 {
            // Levels are at most 15, so the 16-bit shift cannot carry into the next byte.
            let v = _mm256_or_si256(
                out.levels[2 * c],
                _mm256_slli_epi16::<4>(out.levels[2 * c + 1]),
            );
            _mm256_storeu_si256(y.qs.as_mut_ptr().add(32 * c).cast(), v);
        }
        y.d = out.d;
        y.dmin = out.dmin;
        y.scales = out.scales;
    }
}

/// Packs Q5_K levels (0..=31): low nibbles as Q4_K, bit 4 of level `64c + l` (`64c + 32 + l`)
/// into bit `2c` (`2c + 1`) of `qh[l]`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_q5_k(out: &ScaleMinOut, y: &mut BlockQ5K) {
    // SAFETY: stores 32 bytes into y.qs[32c..] (c < 4) and y.qh[0..32]; AVX2 (caller).
    unsafe {
        let m15 = _mm256_set1_epi8(15);
        let one = _mm256_set1_epi8(1);
        let mut qh = _mm256_setzero_si256();
        for c in 0..4 {
            let (lo, hi) = (out.levels[2 * c], out.levels[2 * c + 1]);
            let v = _mm256_or_si256(
                _mm256_and_si256(lo, m15),
                _mm256_slli_epi16::<4>(_mm256_and_si256(hi, m15)),
            );
            _mm256_storeu_si256(y.qs.as_mut_ptr().add(32 * c).cast(), v);
            // Per byte: (level >> 4) & 1, moved to its bit; a byte's bit never crosses into
            // its neighbour because the value is 0 or 1 and the shift at most 7.
            let bit_lo = _mm256_and_si256(_mm256_srli_epi16::<4>(lo), one);
            let bit_hi = _mm256_and_si256(_mm256_srli_epi16::<4>(hi), one);
            let (s_lo, s_hi) = (
                _mm_cvtsi32_si128(2 * c as i32),
                _mm_cvtsi32_si128(2 * c as i32 + 1),
            );
            qh = _mm256_or_si256(qh, _mm256_sll_epi16(bit_lo, s_lo));
            qh = _mm256_or_si256(qh, _mm256_sll_epi16(bit_hi, s_hi));
        }
        _mm256_storeu_si256(y.qh.as_mut_ptr().cast(), qh);
        y.d = out.d;
        y.dmin = out.dmin;
        y.scales = out.scales;
    }
}

/// Q4_K row quantizer (`quantize_row_q4_k_ref`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]) {
    let mode = ScaleMode::Ref {
        rmin: -1.0,
        rdelta: 0.1,
        nstep: 20,
    };
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_scale_min(x, None, y, 15, mode, |o, b| pack_q4_k(o, b)) }
}

/// Q4_K importance-weighted quantizer (`quantize_row_q4_k_imatrix`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q4_k_imatrix(x: &[f32], y: &mut [BlockQ4K], qw: &[f32]) {
    let mode = ScaleMode::Imatrix {
        clamp_levels: false,
    };
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_scale_min(x, Some(qw), y, 15, mode, |o, b| pack_q4_k(o, b)) }
}

/// Q5_K row quantizer (`quantize_row_q5_k_ref`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]) {
    let mode = ScaleMode::Ref {
        rmin: -0.5,
        rdelta: 0.1,
        nstep: 15,
    };
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_scale_min(x, None, y, 31, mode, |o, b| pack_q5_k(o, b)) }
}

/// Q5_K importance-weighted quantizer (`quantize_row_q5_k_imatrix`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q5_k_imatrix(x: &[f32], y: &mut [BlockQ5K], qw: &[f32]) {
    let mode = ScaleMode::Imatrix { clamp_levels: true };
    // SAFETY: AVX2 (caller); the driver checks lengths.
    unsafe { quantize_row_scale_min(x, Some(qw), y, 31, mode, |o, b| pack_q5_k(o, b)) }
}

/// Per-lane outcome of [`make_qx_quants_x16`]: lane `j` of vector `g` is sub-block `8g + j`.
pub(super) struct QxLanes {
    /// The fitted scale (0 for an all-zero sub-block).
    pub(super) scale: [f32; 16],
    /// Inverse scale that produced the kept levels.
    pub(super) best_iscale: [f32; 16],
    /// Largest magnitude below `GROUP_MAX_EPS`: levels are all zero (not the mid-level).
    pub(super) zero: [bool; 16],
}

/// Lane-parallel `make_qx_quants(NMAX, x, L, 1, qw)` over the 16 sub-blocks of 16 weights of a
/// Q6_K (`NMAX` 32) or Q3_K (`NMAX` 4) super-block: lane `j` of `xt[i][g]` is element `i` of
/// sub-block `8g + j`, `wt` its weight (x² without an importance matrix, else `qw`).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn make_qx_quants_x16<const NMAX: i32>(
    xt: &[[__m256; 2]; 16],
    wt: &[[__m256; 2]; 16],
) -> QxLanes {
    let nmax_f = NMAX as f32;
    // SAFETY: register-only intrinsics apart from stores into local arrays; AVX2 (caller).
    unsafe {
        let zero = _mm256_setzero_ps();
        // Both vectors (sub-blocks 0..8 and 8..16) advance together so that their sequential
        // per-lane sums form two independent dependency chains.
        // Lane: the value of largest magnitude; the first one wins on ties (strict `>`).
        let mut amax = [zero; 2];
        let mut max = [zero; 2];
        for row in xt {
            for g in 0..2 {
                let ax = abs_v(row[g]);
                let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax[g]);
                amax[g] = _mm256_blendv_ps(amax[g], ax, gt);
                max[g] = _mm256_blendv_ps(max[g], row[g], gt);
            }
        }
        let eps = _mm256_set1_ps(GROUP_MAX_EPS);
        let is_zero: [__m256; 2] =
            std::array::from_fn(|g| _mm256_cmp_ps::<_CMP_LT_OQ>(amax[g], eps));

        // Sums Σ w·x·q and Σ w·q² for inverse scales `iscale`, in element order.
        let sums = |iscale: [__m256; 2]| {
            let mut sumlx = [zero; 2];
            let mut suml2 = [zero; 2];
            for i in 0..16 {
                for g in 0..2 {
                    let (x, w) = (xt[i][g], wt[i][g]);
                    let q = clamp_i32(nearest_int_v(_mm256_mul_ps(iscale[g], x)), -NMAX, NMAX - 1);
                    let qf = _mm256_cvtepi32_ps(q);
                    sumlx[g] = _mm256_add_ps(sumlx[g], _mm256_mul_ps(_mm256_mul_ps(w, x), qf));
                    suml2[g] = _mm256_add_ps(suml2[g], _mm256_mul_ps(_mm256_mul_ps(w, qf), qf));
                }
            }
            (sumlx, suml2)
        };

        let neg_nmax = _mm256_set1_ps(-nmax_f);
        let iscale: [__m256; 2] = std::array::from_fn(|g| _mm256_div_ps(neg_nmax, max[g]));
        let (sumlx, suml2) = sums(iscale);
        let mut scale = [zero; 2];
        let mut best = [zero; 2];
        for g in 0..2 {
            // `suml2 != 0` is also true for NaN, hence the unordered compare.
            let nonzero = _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2[g], zero);
            scale[g] = _mm256_and_ps(_mm256_div_ps(sumlx[g], suml2[g]), nonzero);
            best[g] = _mm256_mul_ps(scale[g], sumlx[g]);
        }
        let mut best_iscale = iscale;
        for is in -9i32..=9 {
            if is == 0 {
                continue;
            }
            let num = _mm256_set1_ps(-(nmax_f + 0.1 * is as f32));
            let iscale: [__m256; 2] = std::array::from_fn(|g| _mm256_div_ps(num, max[g]));
            let (sumlx, suml2) = sums(iscale);
            for g in 0..2 {
                let better = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[g], zero),
                    _mm256_cmp_ps::<_CMP_GT_OQ>(
                        _mm256_mul_ps(sumlx[g], sumlx[g]),
                        _mm256_mul_ps(best[g], suml2[g]),
                    ),
                );
                let new_scale = _mm256_div_ps(sumlx[g], suml2[g]);
                scale[g] = _mm256_blendv_ps(scale[g], new_scale, better);
                best[g] = _mm256_blendv_ps(best[g], _mm256_mul_ps(new_scale, sumlx[g]), better);
                best_iscale[g] = _mm256_blendv_ps(best_iscale[g], iscale[g], better);
            }
        }
        let mut out = QxLanes {
            scale: [0.0; 16],
            best_iscale: [0.0; 16],
            zero: [false; 16],
        };
        for g in 0..2 {
            let s = _mm256_blendv_ps(scale[g], zero, is_zero[g]);
            _mm256_storeu_ps(out.scale.as_mut_ptr().add(8 * g), s);
            _mm256_storeu_ps(out.best_iscale.as_mut_ptr().add(8 * g), best_iscale[g]);
            let zmask = _mm256_movemask_ps(is_zero[g]);
            for j in 0..8 {
                out.zero[8 * g + j] = zmask & (1 << j) != 0;
            }
        }
        out
    }
}

/// One Q6_K super-block (mirrors `quantize_block` in `block/q6_k.rs`).
///
/// # Safety
/// AVX2 must be available; `x.len() >= 256` and `qw` (if any) `>= 256` (checked).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_q6_k_block(x: &[f32], qw: Option<&[f32]>, y: &mut BlockQ6K) {
    let x = &x[..QK_K];
    // SAFETY: raw reads stay inside x[..256] / qw[..256]; stores go to local arrays and the
    // block's fixed-size fields; AVX2 (caller).
    unsafe {
        // xt[i][g] lane j = element i of sub-block 8g + j.
        let mut xt = [[_mm256_setzero_ps(); 2]; 16];
        let mut wt = [[_mm256_setzero_ps(); 2]; 16];
        for g in 0..2 {
            let mut col = [_mm256_setzero_ps(); 16];
            transpose_groups::<16>(x.as_ptr().add(128 * g), 16, &mut col);
            for i in 0..16 {
                xt[i][g] = col[i];
            }
            match qw {
                Some(qw) => {
                    let qw = &qw[..QK_K];
                    transpose_groups::<16>(qw.as_ptr().add(128 * g), 16, &mut col);
                    for i in 0..16 {
                        wt[i][g] = col[i];
                    }
                }
                None => {
                    for i in 0..16 {
                        wt[i][g] = _mm256_mul_ps(xt[i][g], xt[i][g]);
                    }
                }
            }
        }
        let lanes = make_qx_quants_x16::<32>(&xt, &wt);

        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for &scale in &lanes.scale {
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *y = BlockQ6K::default();
            return;
        }
        let iscale = -128.0f32 / max_scale;
        y.d = f16::from_f32(1.0 / iscale);
        for (s, &v) in y.scales.iter_mut().zip(&lanes.scale) {
            // int → int8_t keeps the low byte, as in the reference.
            *s = nearest_int(iscale * v).min(127) as i8;
        }
        let d_all = y.d.to_f32();

        // Final levels (0..64) in weight order.
        let mut l = [0u8; QK_K];
        for j in 0..16 {
            let d = d_all * f32::from(y.scales[j]);
            let xs = x.as_ptr().add(16 * j);
            let q: [__m256i; 2] = if d != 0.0 {
                let vd = _mm256_set1_ps(d);
                std::array::from_fn(|k| {
                    clamp_i32(
                        nearest_int_v(_mm256_div_ps(_mm256_loadu_ps(xs.add(8 * k)), vd)),
                        -32,
                        31,
                    )
                })
            } else if lanes.zero[j] {
                // make_qx_quants fills an all-zero group with level 0 (i.e. -32 once offset).
                [_mm256_set1_epi32(-32); 2]
            } else {
                let vi = _mm256_set1_ps(lanes.best_iscale[j]);
                std::array::from_fn(|k| {
                    clamp_i32(
                        nearest_int_v(_mm256_mul_ps(vi, _mm256_loadu_ps(xs.add(8 * k)))),
                        -32,
                        31,
                    )
                })
            };
            let off = _mm256_set1_epi32(32);
            let w16 = _mm256_packs_epi32(_mm256_add_epi32(q[0], off), _mm256_add_epi32(q[1], off));
            // packs interleaves 128-bit halves (a0..3 b0..3 | a4..7 b4..7): restore order.
            let w16 = _mm256_permute4x64_epi64::<0xD8>(w16);
            let bytes = _mm_packus_epi16(
                _mm256_castsi256_si128(w16),
                _mm256_extracti128_si256::<1>(w16),
            );
            _mm_storeu_si128(l.as_mut_ptr().add(16 * j).cast(), bytes);
        }

        let m15 = _mm256_set1_epi8(15);
        let m3 = _mm256_set1_epi8(3);
        for h in 0..2 {
            let lv =
                |k: usize| _mm256_loadu_si256(l.as_ptr().add(128 * h + 32 * k).cast::<__m256i>());
            let (a0, a1, a2, a3) = (lv(0), lv(1), lv(2), lv(3));
            // Levels are < 64: nibble shifts by 4 stay within each byte.
            let ql0 = _mm256_or_si256(
                _mm256_and_si256(a0, m15),
                _mm256_slli_epi16::<4>(_mm256_and_si256(a2, m15)),
            );
            let ql1 = _mm256_or_si256(
                _mm256_and_si256(a1, m15),
                _mm256_slli_epi16::<4>(_mm256_and_si256(a3, m15)),
            );
            let top = |a: __m256i| _mm256_and_si256(_mm256_srli_epi16::<4>(a), m3);
            let qh = _mm256_or_si256(
                _mm256_or_si256(top(a0), _mm256_slli_epi16::<2>(top(a1))),
                _mm256_or_si256(
                    _mm256_slli_epi16::<4>(top(a2)),
                    _mm256_slli_epi16::<6>(top(a3)),
                ),
            );
            _mm256_storeu_si256(y.ql.as_mut_ptr().add(64 * h).cast(), ql0);
            _mm256_storeu_si256(y.ql.as_mut_ptr().add(64 * h + 32).cast(), ql1);
            _mm256_storeu_si256(y.qh.as_mut_ptr().add(32 * h).cast(), qh);
        }
    }
}

/// Q6_K row quantizer (`quantize_row_q6_k_ref`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q6_k: length mismatch"
    );
    for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        // SAFETY: AVX2 (caller); xb has 256 elements.
        unsafe { quantize_q6_k_block(xb, None, yb) };
    }
}

/// Q6_K importance-weighted quantizer (`quantize_row_q6_k_imatrix`).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q6_k_imatrix(x: &[f32], y: &mut [BlockQ6K], qw: &[f32]) {
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
        // SAFETY: AVX2 (caller); xb and wb have 256 elements.
        unsafe { quantize_q6_k_block(xb, Some(wb), yb) };
    }
}
