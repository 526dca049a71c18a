//! Dot products for the forward pass, modelled on ggml's AVX2 kernels
//! (`ggml-cpu/arch/x86/quants.c`): integer products summed exactly with `maddubs`/`madd`
//! (every partial sum provably fits its lane: no saturation), then one FMA per block into
//! eight f32 lanes. Only the float accumulation order differs from the scalar reference.

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::rows::{q3_k_scales, q6_k_half_levels};
use crate::block::iq4_nl::{BlockIQ4NL, KVALUES_IQ4NL};
use crate::block::iq4_xs::BlockIQ4XS;
use crate::block::q2_k::BlockQ2K;
use crate::block::q3_k::BlockQ3K;
use crate::block::q4_0::BlockQ4_0;
use crate::block::q4_1::BlockQ4_1;
use crate::block::q4_k::BlockQ4K;
use crate::block::q5_0::BlockQ5_0;
use crate::block::q5_1::BlockQ5_1;
use crate::block::q5_k::BlockQ5K;
use crate::block::q6_k::BlockQ6K;
use crate::block::q8_0::BlockQ8_0;
use crate::block::q8_k::BlockQ8K;

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// F32 · F32: four 8-lane FMA accumulators, then a scalar tail.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let n32 = n / 32 * 32;
    // SAFETY: reads x[i..i+32], y[i..i+32] with i + 32 <= n32 <= both lengths; AVX2/FMA.
    let mut sum = unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..n32).step_by(32) {
            for (k, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(x.as_ptr().add(i + 8 * k));
                let yv = _mm256_loadu_ps(y.as_ptr().add(i + 8 * k));
                *a = _mm256_fmadd_ps(xv, yv, *a);
            }
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    };
    for i in n32..n {
        sum += x[i] * y[i];
    }
    sum
}

/// F16 · F32: weights widened exactly by F16C.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let n32 = n / 32 * 32;
    // SAFETY: reads x[i..i+32], y[i..i+32] with i + 32 <= n32; AVX2/FMA/F16C (caller).
    let mut sum = unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..n32).step_by(32) {
            for (k, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i + 8 * k).cast()));
                let yv = _mm256_loadu_ps(y.as_ptr().add(i + 8 * k));
                *a = _mm256_fmadd_ps(xv, yv, *a);
            }
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    };
    for i in n32..n {
        sum += x[i].to_f32() * y[i];
    }
    sum
}

/// BF16 · F32: weights widened exactly by a 16-bit shift.
///
/// # Safety
/// AVX2, FMA and F16C must be available.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_bf16_f32(x: &[bf16], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let n32 = n / 32 * 32;
    // SAFETY: reads x[i..i+32], y[i..i+32] with i + 32 <= n32; AVX2/FMA (caller).
    let mut sum = unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..n32).step_by(32) {
            for (k, a) in acc.iter_mut().enumerate() {
                let h = _mm_loadu_si128(x.as_ptr().add(i + 8 * k).cast());
                let xv = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)));
                let yv = _mm256_loadu_ps(y.as_ptr().add(i + 8 * k));
                *a = _mm256_fmadd_ps(xv, yv, *a);
            }
        }
        hsum(_mm256_add_ps(
            _mm256_add_ps(acc[0], acc[1]),
            _mm256_add_ps(acc[2], acc[3]),
        ))
    };
    for i in n32..n {
        sum += crate::block::float::bf16_to_f32(x[i]) * y[i];
    }
    sum
}

/// Exact Σ a·b over 32 signed bytes each, as 8 i32 lanes (widened to i16 first, so even
/// -128·-128 is exact, unlike ggml's sign trick).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_i8x32(a: __m256i, b: __m256i) -> __m256i {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let lo = _mm256_madd_epi16(
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(a)),
            _mm256_cvtepi8_epi16(_mm256_castsi256_si128(b)),
        );
        let hi = _mm256_madd_epi16(
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(a)),
            _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(b)),
        );
        _mm256_add_epi32(lo, hi)
    }
}

/// Q8_0 · Q8_0.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q8_0_q8_0: block count mismatch");
    // SAFETY: reads the 32 quants of each block; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let a = _mm256_loadu_si256(xb.qs.as_ptr().cast());
            let b = _mm256_loadu_si256(yb.qs.as_ptr().cast());
            let d = _mm256_set1_ps(xb.d.to_f32() * yb.d.to_f32());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(dot_i8x32(a, b)), acc);
        }
        hsum(acc)
    }
}

/// Σ u·y and Σ y over one legacy block, as 8 i32 lanes each: `codes` are unsigned (at most 31,
/// so `maddubs` pairs stay below 2·31·128 and never saturate), `y` signed.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn legacy_sums(codes: __m256i, y: &BlockQ8_0) -> (__m256i, __m256i) {
    // SAFETY: reads the 32 quants of `y`; AVX2 (caller).
    unsafe {
        let q8 = _mm256_loadu_si256(y.qs.as_ptr().cast());
        let ones16 = _mm256_set1_epi16(1);
        let sumi = _mm256_madd_epi16(_mm256_maddubs_epi16(codes, q8), ones16);
        let sumy = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q8), ones16);
        (sumi, sumy)
    }
}

/// 32 four-bit codes of a legacy block in weight order (low nibbles, then high nibbles).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: reads the 16 bytes of `qs`; AVX2 (caller).
    unsafe {
        let b = _mm_loadu_si128(qs.as_ptr().cast());
        let m4 = _mm_set1_epi8(0x0f);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16::<4>(b), m4),
            _mm_and_si128(b, m4),
        )
    }
}

/// Byte `j` = 0x10 when bit `j` of `qh` is set.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn fifth_bits(qh: [u8; 4]) -> __m256i {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let v = _mm256_set1_epi32(u32::from_le_bytes(qh) as i32);
        let idx = _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, idx), bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// Q4_0 · Q8_0: Σ (u − 8)·y = Σ u·y − 8·Σ y.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q4_0_q8_0: block count mismatch");
    // SAFETY: register work plus in-bounds block reads; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let (sumi, sumy) = legacy_sums(nibbles(&xb.qs), yb);
            let s = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<3>(sumy));
            let d = _mm256_set1_ps(xb.d.to_f32() * yb.d.to_f32());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
        }
        hsum(acc)
    }
}

/// Q5_0 · Q8_0: Σ (u − 16)·y.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q5_0_q8_0: block count mismatch");
    // SAFETY: register work plus in-bounds block reads; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let codes = _mm256_or_si256(nibbles(&xb.qs), fifth_bits(xb.qh));
            let (sumi, sumy) = legacy_sums(codes, yb);
            let s = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<4>(sumy));
            let d = _mm256_set1_ps(xb.d.to_f32() * yb.d.to_f32());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
        }
        hsum(acc)
    }
}

/// Q4_1 · Q8_0: d_x·d_y·Σ u·y + m_x·d_y·Σ y.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_1_q8_0(x: &[BlockQ4_1], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q4_1_q8_0: block count mismatch");
    // SAFETY: register work plus in-bounds block reads; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let (sumi, sumy) = legacy_sums(nibbles(&xb.qs), yb);
            let dy = yb.d.to_f32();
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(xb.d.to_f32() * dy),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(xb.m.to_f32() * dy),
                _mm256_cvtepi32_ps(sumy),
                acc,
            );
        }
        hsum(acc)
    }
}

/// Q5_1 · Q8_0: d_x·d_y·Σ u·y + m_x·d_y·Σ y.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q5_1_q8_0(x: &[BlockQ5_1], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q5_1_q8_0: block count mismatch");
    // SAFETY: register work plus in-bounds block reads; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let codes = _mm256_or_si256(nibbles(&xb.qs), fifth_bits(xb.qh));
            let (sumi, sumy) = legacy_sums(codes, yb);
            let dy = yb.d.to_f32();
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(xb.d.to_f32() * dy),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(xb.m.to_f32() * dy),
                _mm256_cvtepi32_ps(sumy),
                acc,
            );
        }
        hsum(acc)
    }
}

/// Unpacks the Q4_K/Q5_K 12-byte scale field into (8 six-bit scales, 8 six-bit mins), the
/// word-parallel form of `get_scale_min_k4`.
#[inline(always)]
fn unpack_scales_k4(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let w = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (w0, w1, w2) = (w(0), w(1), w(2));
    // Scales 0..4: low 6 bits of bytes 0..4; scales 4..8: low nibbles of bytes 8..12 with the
    // top two bits of bytes 0..4 above them. Mins likewise from bytes 4..8 and high nibbles.
    let sc_lo = w0 & 0x3f3f_3f3f;
    let sc_hi = (w2 & 0x0f0f_0f0f) | (((w0 >> 6) & 0x0303_0303) << 4);
    let mn_lo = w1 & 0x3f3f_3f3f;
    let mn_hi = ((w2 >> 4) & 0x0f0f_0f0f) | (((w1 >> 6) & 0x0303_0303) << 4);
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    sc[..4].copy_from_slice(&sc_lo.to_le_bytes());
    sc[4..].copy_from_slice(&sc_hi.to_le_bytes());
    mn[..4].copy_from_slice(&mn_lo.to_le_bytes());
    mn[4..].copy_from_slice(&mn_hi.to_le_bytes());
    (sc, mn)
}

/// The mins term of a Q4_K/Q5_K block: Σ_j min_j · (Σ of the 32 activations of sub-block j),
/// as 4 i32 lanes (bsums pairs are added to 32-wide sums first).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mins_dot(mn: &[u8; 8], y: &BlockQ8K) -> __m128i {
    // SAFETY: reads y.bsums (16 × i16 = 32 bytes); AVX2 (caller).
    unsafe {
        let bs = _mm256_loadu_si256(y.bsums.as_ptr().cast());
        // hadd of the two halves: lane j = bsums[2j] + bsums[2j+1] (|sum| ≤ 2·16·128 fits i16).
        let q8s = _mm_hadd_epi16(
            _mm256_castsi256_si128(bs),
            _mm256_extracti128_si256::<1>(bs),
        );
        let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr().cast()));
        _mm_madd_epi16(mins, q8s)
    }
}

/// Q4_K · Q8_K.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked. `y[i].bsums` must be the group
/// sums of `y[i].qs` (always true for blocks made by the Q8_K quantizer).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q4_k_q8_k: block count mismatch");
    // SAFETY: reads inside each block's fixed-size arrays; AVX2/FMA (caller).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let d = yb.d * xb.d.to_f32();
            let dmin = -yb.d * xb.dmin.to_f32();
            let (sc, mn) = unpack_scales_k4(&xb.scales);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mins_dot(&mn, yb)), acc_m);
            // Lane l of sumi: Σ over this block of scale·q4·q8 for the products that madd
            // lands in lane l (each lane sees every sub-block).
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let q4 = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * c).cast());
                let q8l = _mm256_loadu_si256(yb.qs.as_ptr().add(64 * c).cast());
                let q8h = _mm256_loadu_si256(yb.qs.as_ptr().add(64 * c + 32).cast());
                // 0..15 × i8, pairs: |sum| ≤ 2·15·128, no saturation.
                let pl = _mm256_maddubs_epi16(_mm256_and_si256(q4, m4), q8l);
                let ph =
                    _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(q4), m4), q8h);
                let pl = _mm256_madd_epi16(_mm256_set1_epi16(i16::from(sc[2 * c])), pl);
                let ph = _mm256_madd_epi16(_mm256_set1_epi16(i16::from(sc[2 * c + 1])), ph);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        hsum(acc) + _mm_cvtss_f32(m)
    }
}

/// Q5_K · Q8_K.
///
/// # Safety
/// As [`vec_dot_q4_k_q8_k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q5_k_q8_k: block count mismatch");
    // SAFETY: reads inside each block's fixed-size arrays; AVX2/FMA (caller).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let one = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let d = yb.d * xb.d.to_f32();
            let dmin = -yb.d * xb.dmin.to_f32();
            let (sc, mn) = unpack_scales_k4(&xb.scales);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(mins_dot(&mn, yb)), acc_m);
            let qh = _mm256_loadu_si256(xb.qh.as_ptr().cast());
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let q5 = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * c).cast());
                let (s_lo, s_hi) = (
                    _mm_cvtsi32_si128(2 * c as i32),
                    _mm_cvtsi32_si128(2 * c as i32 + 1),
                );
                // Fifth bit of byte l: bit 2c (low half) / 2c+1 (high half) of qh[l], as 16.
                let h_lo =
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(qh, s_lo), one));
                let h_hi =
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(qh, s_hi), one));
                let lo = _mm256_or_si256(_mm256_and_si256(q5, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q5), m4), h_hi);
                let q8l = _mm256_loadu_si256(yb.qs.as_ptr().add(64 * c).cast());
                let q8h = _mm256_loadu_si256(yb.qs.as_ptr().add(64 * c + 32).cast());
                // 0..31 × i8, pairs: |sum| ≤ 2·31·128, no saturation.
                let pl = _mm256_madd_epi16(
                    _mm256_set1_epi16(i16::from(sc[2 * c])),
                    _mm256_maddubs_epi16(lo, q8l),
                );
                let ph = _mm256_madd_epi16(
                    _mm256_set1_epi16(i16::from(sc[2 * c + 1])),
                    _mm256_maddubs_epi16(hi, q8h),
                );
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        let m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        hsum(acc) + _mm_cvtss_f32(m)
    }
}

/// Q6_K · Q8_K. The -32 offset is removed per pair of products with a second `maddubs`
/// (so the result does not depend on `bsums` being consistent).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q6_k_q8_k: block count mismatch");
    // SAFETY: reads inside each block's fixed-size arrays; AVX2/FMA (caller).
    unsafe {
        let m32 = _mm256_set1_epi8(32);
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let d = yb.d * xb.d.to_f32();
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let lv = q6_k_half_levels(xb.ql.as_ptr().add(64 * h), xb.qh.as_ptr().add(32 * h));
                for (k, u) in lv.into_iter().enumerate() {
                    let base = 128 * h + 32 * k;
                    let q8 = _mm256_loadu_si256(yb.qs.as_ptr().add(base).cast());
                    // Pairs of u·q8 (u in 0..64) minus pairs of 32·q8: |·| ≤ 2·63·128 and
                    // 2·32·128, difference ≤ 24320, all exact in i16.
                    let p = _mm256_sub_epi16(
                        _mm256_maddubs_epi16(u, q8),
                        _mm256_maddubs_epi16(m32, q8),
                    );
                    // i16 lanes 0..8 (low 128 bits) hold sub-block base/16, lanes 8..16 the next.
                    let scale = _mm256_setr_m128i(
                        _mm_set1_epi16(i16::from(xb.scales[base / 16])),
                        _mm_set1_epi16(i16::from(xb.scales[base / 16 + 1])),
                    );
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale));
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }
}

/// The 32 IQ4_NL levels of one 32-weight block in weight order (low nibbles, then high), looked
/// up in `KVALUES_IQ4NL` with one byte shuffle (the table sits in both 128-bit lanes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn iq4_levels(qs: &[u8; 16]) -> __m256i {
    // SAFETY: reads the 16 bytes of `qs` and of the level table; AVX2 (caller).
    unsafe {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()));
        _mm256_shuffle_epi8(table, nibbles(qs))
    }
}

/// IQ4_NL · Q8_0: per block `(d_y·d_x)·Σ level·y`, the integer sum exact.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq4_nl_q8_0(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(
        x.len(),
        y.len(),
        "vec_dot_iq4_nl_q8_0: block count mismatch"
    );
    // SAFETY: register work plus in-bounds block reads; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let q8 = _mm256_loadu_si256(yb.qs.as_ptr().cast());
            let s = dot_i8x32(iq4_levels(&xb.qs), q8);
            let d = _mm256_set1_ps(yb.d.to_f32() * xb.d.to_f32());
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc);
        }
        hsum(acc)
    }
}

/// IQ4_XS · Q8_K: per super-block `(d·y.d)·Σ_ib (scale_ib − 32)·Σ level·y`, the integer sums
/// exact (at most 8 · 63 · 32 · 127 · 128 < 2³¹).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    assert_eq!(
        x.len(),
        y.len(),
        "vec_dot_iq4_xs_q8_k: block count mismatch"
    );
    // SAFETY: register work plus in-bounds reads of 16-byte index and 32-byte activation groups
    // inside each block; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let mut sumi = _mm256_setzero_si256();
            for ib in 0..8 {
                let lo = (xb.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
                let hi = (xb.scales_h >> (2 * ib)) & 3;
                let ls = (i32::from(lo) | (i32::from(hi) << 4)) - 32;
                let qs: &[u8; 16] = &*xb.qs.as_ptr().add(16 * ib).cast();
                let q8 = _mm256_loadu_si256(yb.qs.as_ptr().add(32 * ib).cast());
                let s = dot_i8x32(iq4_levels(qs), q8);
                sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(s, _mm256_set1_epi32(ls)));
            }
            let d = _mm256_set1_ps(xb.d.to_f32() * yb.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(acc)
    }
}

/// The i16 scale vector for a 32-weight chunk that spans two 16-weight sub-blocks: `s0` in
/// the eight low lanes (the `maddubs` pairs of bytes 0..16), `s1` in the eight high ones.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn pair_scales(s0: i16, s1: i16) -> __m256i {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe { _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0)) }
}

/// Q2_K · Q8_K: per block `(y.d·d)·Σ_j scale_j·Σ q·y − (y.d·dmin)·Σ_j min_j·bsums_j`, the
/// integer sums exact (`maddubs` pairs are at most 2·3·128, the scaled sums at most
/// 256·15·3·128 < 2³¹).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked. `y[i].bsums` must be the group
/// sums of `y[i].qs` (always true for blocks made by the Q8_K quantizer).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q2_k_q8_k: block count mismatch");
    // SAFETY: reads inside each block's fixed-size arrays; AVX2/FMA (caller).
    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0x0f);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let dall = yb.d * xb.d.to_f32();
            let dmin = -yb.d * xb.dmin.to_f32();
            let sc8 = _mm_loadu_si128(xb.scales.as_ptr().cast());
            // Mins term: Σ_j bsums_j · (scale_j >> 4), in 8 i32 lanes.
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(sc8), m4));
            let bs = _mm256_loadu_si256(yb.bsums.as_ptr().cast());
            let summs = _mm256_madd_epi16(mins, bs);
            acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(summs), acc_m);
            let sc = |j: usize| i16::from(xb.scales[j] & 0xF);
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let q2 = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * h).cast());
                for s in 0..4 {
                    // Bit pair s of byte l: weight 128h + 32s + l, sub-blocks 8h + 2s and +1.
                    let codes =
                        _mm256_and_si256(_mm256_srl_epi16(q2, _mm_cvtsi32_si128(2 * s as i32)), m3);
                    let q8 = _mm256_loadu_si256(yb.qs.as_ptr().add(128 * h + 32 * s).cast());
                    let p = _mm256_maddubs_epi16(codes, q8);
                    let j = 8 * h + 2 * s;
                    sumi =
                        _mm256_add_epi32(sumi, _mm256_madd_epi16(p, pair_scales(sc(j), sc(j + 1))));
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum(_mm256_add_ps(acc, acc_m))
    }
}

/// Q3_K · Q8_K: with `u = q + 4` (0..8, unsigned for `maddubs`),
/// `Σ_j s_j·Σ q·y = Σ_j s_j·Σ u·y − 4·Σ_j s_j·bsums_j`; per block `(d·y.d)` times that exact
/// integer (pairs at most 2·7·128, totals below 256·32·7·128 < 2³¹).
///
/// # Safety
/// As [`vec_dot_q2_k_q8_k`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q3_k_q8_k: block count mismatch");
    // SAFETY: reads inside each block's fixed-size arrays; AVX2/FMA (caller).
    unsafe {
        let m3 = _mm256_set1_epi8(3);
        let one = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_ps();
        for (xb, yb) in x.iter().zip(y) {
            let sc = q3_k_scales(&xb.scales);
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(sc.as_ptr().cast()));
            let bs = _mm256_loadu_si256(yb.bsums.as_ptr().cast());
            let corr = _mm256_slli_epi32::<2>(_mm256_madd_epi16(sc16, bs));
            let hm = _mm256_loadu_si256(xb.hmask.as_ptr().cast());
            let s = |j: usize| i16::from(sc[j]);
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let q = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * h).cast());
                for t in 0..4 {
                    let low =
                        _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * t as i32)), m3);
                    let bit = _mm256_and_si256(
                        _mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * h + t) as i32)),
                        one,
                    );
                    let u = _mm256_or_si256(low, _mm256_slli_epi16::<2>(bit));
                    let q8 = _mm256_loadu_si256(yb.qs.as_ptr().add(128 * h + 32 * t).cast());
                    let p = _mm256_maddubs_epi16(u, q8);
                    let j = 8 * h + 2 * t;
                    sumi =
                        _mm256_add_epi32(sumi, _mm256_madd_epi16(p, pair_scales(s(j), s(j + 1))));
                }
            }
            let d = _mm256_set1_ps(xb.d.to_f32() * yb.d);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi, corr)), acc);
        }
        hsum(acc)
    }
}
