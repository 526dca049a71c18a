//! Simple row kernels: Q8_0 and Q8_K quantizers, every dequantizer, and the f16/bf16 row
//! conversions. All bit-identical to the scalar references: each output lane performs the
//! reference's operations in the reference's order (a separate multiply and add where the
//! reference has `a * b + c`, never an FMA).

use std::arch::x86_64::*;

use half::{bf16, f16};

use super::kquant::{i32x32_to_u8, nearest_int_v};
use crate::block::iq4_nl::{BlockIQ4NL, KVALUES_IQ4NL};
use crate::block::iq4_xs::BlockIQ4XS;
use crate::block::kquant_common::get_scale_min_k4;
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
use crate::QK_K;

/// f32 → f16 bits with F16C, round to nearest even (the reference's rule for every non-NaN
/// input, including overflow to infinity and subnormal results). Callers never pass NaN.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_bits_of(v: f32) -> u16 {
    // SAFETY: register-only intrinsics; F16C (caller).
    unsafe {
        _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(v))) as u16
    }
}

/// Horizontal max of 8 non-NaN lanes (max is exact and order-independent without NaN).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hmax(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }
}

/// Q8_0 quantizer (`quantize_row_q8_0_ref`): d = absmax/127 and `roundf(x/d)`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(x.len(), y.len() * 32, "quantize_row_q8_0: length mismatch");
    // SAFETY: each iteration reads xb[0..32] and writes yb.qs[0..32]; AVX2/F16C (caller).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let half = _mm256_set1_ps(0.5);
        let one = _mm256_set1_ps(1.0);
        for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
            let v: [__m256; 4] = std::array::from_fn(|k| _mm256_loadu_ps(xb.as_ptr().add(8 * k)));
            // max_ps(|v|, acc) keeps acc when |v| is NaN, like `f32::max(acc, |v|)`.
            let mut amax = _mm256_setzero_ps();
            for vk in &v {
                amax = _mm256_max_ps(_mm256_andnot_ps(sign, *vk), amax);
            }
            let amax = hmax(amax);
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            // amax is never NaN, so d is not either and F16C rounds it like the reference.
            yb.d = f16::from_bits(f16_bits_of(d));
            let vid = _mm256_set1_ps(id);
            let q: [__m256i; 4] = std::array::from_fn(|k| {
                let r = _mm256_mul_ps(v[k], vid);
                // roundf: truncate, then step away from zero when the dropped fraction is at
                // least one half (r − trunc(r) is exact).
                let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(r);
                let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(r, t));
                let step = _mm256_and_ps(
                    _mm256_cmp_ps::<_CMP_GE_OQ>(frac, half),
                    _mm256_or_ps(one, _mm256_and_ps(r, sign)),
                );
                let rounded = _mm256_add_ps(t, step);
                // `as i8` saturates and maps NaN to 0.
                let c = _mm256_min_ps(
                    _mm256_max_ps(rounded, _mm256_set1_ps(-128.0)),
                    _mm256_set1_ps(127.0),
                );
                let c = _mm256_and_ps(c, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
                _mm256_cvttps_epi32(c)
            });
            // Values are in -128..=127: the saturating packs are exact.
            let ab = _mm256_packs_epi32(q[0], q[1]);
            let cd = _mm256_packs_epi32(q[2], q[3]);
            let bytes = _mm256_permutevar8x32_epi32(
                _mm256_packs_epi16(ab, cd),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
            );
            _mm256_storeu_si256(yb.qs.as_mut_ptr().cast(), bytes);
        }
    }
}

/// Q8_K quantizer (`quantize_row_q8_k_ref`): scale from the value of largest magnitude (first
/// one on ties), `nearest_int`, and 16-value group sums.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]) {
    assert_eq!(
        x.len(),
        y.len() * QK_K,
        "quantize_row_q8_k: length mismatch"
    );
    // SAFETY: each iteration reads xb[0..256] and writes inside yb's arrays; AVX2 (caller).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        for (xb, yb) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
            let p = xb.as_ptr();
            let mut amax_v = _mm256_setzero_ps();
            for k in 0..32 {
                amax_v = _mm256_max_ps(
                    _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))),
                    amax_v,
                );
            }
            let amax = hmax(amax_v);
            if amax == 0.0 {
                *yb = BlockQ8K::default();
                continue;
            }
            // The reference keeps the first value whose magnitude is the maximum.
            let va = _mm256_set1_ps(amax);
            let mut max = 0.0f32;
            for k in 0..32 {
                let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(
                    _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * k))),
                    va,
                );
                let m = _mm256_movemask_ps(eq);
                if m != 0 {
                    max = xb[8 * k + m.trailing_zeros() as usize];
                    break;
                }
            }
            let iscale = -127.0f32 / max;
            let vis = _mm256_set1_ps(iscale);
            let lowbyte = _mm256_set1_epi32(0xff);
            let ones8 = _mm256_set1_epi8(1);
            let ones16 = _mm256_set1_epi16(1);
            for c in 0..8 {
                let q: [__m256i; 4] = std::array::from_fn(|k| {
                    let n = _mm256_min_epi32(
                        nearest_int_v(_mm256_mul_ps(vis, _mm256_loadu_ps(p.add(32 * c + 8 * k)))),
                        _mm256_set1_epi32(127),
                    );
                    // `as i8` keeps the low byte.
                    _mm256_and_si256(n, lowbyte)
                });
                let bytes = i32x32_to_u8(q);
                _mm256_storeu_si256(yb.qs.as_mut_ptr().add(32 * c).cast(), bytes);
                // i32 lane k: sum of bytes 4k..4k+4 of this chunk (as i8); lanes 0..4 cover
                // group 2c, lanes 4..8 group 2c+1.
                let sums4 = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, bytes), ones16);
                let mut s = [0i32; 8];
                _mm256_storeu_si256(s.as_mut_ptr().cast(), sums4);
                yb.bsums[2 * c] = (s[0] + s[1] + s[2] + s[3]) as i16;
                yb.bsums[2 * c + 1] = (s[4] + s[5] + s[6] + s[7]) as i16;
            }
            yb.d = 1.0 / iscale;
        }
    }
}

/// Writes `q · d`, or `q · d + m` (separate multiply and add), for 32 byte codes (signed or
/// unsigned as `signed` says) to `out[0..32]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store_scaled_i8(
    codes: __m256i,
    signed: bool,
    d: __m256,
    m: Option<__m256>,
    out: *mut f32,
) {
    // SAFETY: writes out[0..32] (caller guarantees room); AVX2 (caller).
    unsafe {
        let lo = _mm256_castsi256_si128(codes);
        let hi = _mm256_extracti128_si256::<1>(codes);
        for (k, part) in [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
            .into_iter()
            .enumerate()
        {
            let w = if signed {
                _mm256_cvtepi8_epi32(part)
            } else {
                _mm256_cvtepu8_epi32(part)
            };
            let mut f = _mm256_mul_ps(_mm256_cvtepi32_ps(w), d);
            if let Some(m) = m {
                f = _mm256_add_ps(f, m);
            }
            _mm256_storeu_ps(out.add(8 * k), f);
        }
    }
}

/// Q8_0 dequantizer: `q · d`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * 32,
        "dequantize_row_q8_0: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        // SAFETY: reads the 32 quants of xb, writes yb[0..32]; AVX2 (caller).
        unsafe {
            let q = _mm256_loadu_si256(xb.qs.as_ptr().cast());
            store_scaled_i8(
                q,
                true,
                _mm256_set1_ps(xb.d.to_f32()),
                None,
                yb.as_mut_ptr(),
            );
        }
    }
}

/// Q8_K dequantizer: `d · q`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q8_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        // SAFETY: reads xb.qs[32c..32c+32] and writes yb[32c..32c+32], c < 8; AVX2 (caller).
        unsafe {
            let d = _mm256_set1_ps(xb.d);
            for c in 0..8 {
                let q = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * c).cast());
                store_scaled_i8(q, true, d, None, yb.as_mut_ptr().add(32 * c));
            }
        }
    }
}

/// The 32 four-bit codes of a legacy block in weight order: low nibbles (weights 0..16) in the
/// low 128 bits, high nibbles (weights 16..32) in the high 128 bits.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn legacy_nibbles(qs: &[u8; 16]) -> __m256i {
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

/// Byte `j` = 0x10 if bit `j` of `qh` is set, else 0 (the fifth bit of legacy 5-bit codes).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn legacy_high_bits(qh: u32) -> __m256i {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        // Byte j takes byte j/8 of qh, then tests bit j%8.
        let v = _mm256_set1_epi32(qh as i32);
        let idx = _mm256_setr_epi64x(
            0,
            0x0101_0101_0101_0101,
            0x0202_0202_0202_0202,
            0x0303_0303_0303_0303,
        );
        let bytes = _mm256_shuffle_epi8(v, idx);
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }
}

/// Q4_0 dequantizer: `(q − 8) · d`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * 32,
        "dequantize_row_q4_0: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        // SAFETY: writes yb[0..32]; AVX2 (caller).
        unsafe {
            let q = _mm256_sub_epi8(legacy_nibbles(&xb.qs), _mm256_set1_epi8(8));
            store_scaled_i8(
                q,
                true,
                _mm256_set1_ps(xb.d.to_f32()),
                None,
                yb.as_mut_ptr(),
            );
        }
    }
}

/// Q4_1 dequantizer: `q · d + m`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * 32,
        "dequantize_row_q4_1: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        // SAFETY: writes yb[0..32]; AVX2 (caller).
        unsafe {
            let q = legacy_nibbles(&xb.qs);
            let (d, m) = (_mm256_set1_ps(xb.d.to_f32()), _mm256_set1_ps(xb.m.to_f32()));
            store_scaled_i8(q, false, d, Some(m), yb.as_mut_ptr());
        }
    }
}

/// Q5_0 dequantizer: `(q − 16) · d`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * 32,
        "dequantize_row_q5_0: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        // SAFETY: writes yb[0..32]; AVX2 (caller).
        unsafe {
            let codes = _mm256_or_si256(
                legacy_nibbles(&xb.qs),
                legacy_high_bits(u32::from_le_bytes(xb.qh)),
            );
            let q = _mm256_sub_epi8(codes, _mm256_set1_epi8(16));
            store_scaled_i8(
                q,
                true,
                _mm256_set1_ps(xb.d.to_f32()),
                None,
                yb.as_mut_ptr(),
            );
        }
    }
}

/// Q5_1 dequantizer: `q · d + m`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * 32,
        "dequantize_row_q5_1: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        // SAFETY: writes yb[0..32]; AVX2 (caller).
        unsafe {
            let codes = _mm256_or_si256(
                legacy_nibbles(&xb.qs),
                legacy_high_bits(u32::from_le_bytes(xb.qh)),
            );
            let (d, m) = (_mm256_set1_ps(xb.d.to_f32()), _mm256_set1_ps(xb.m.to_f32()));
            store_scaled_i8(codes, false, d, Some(m), yb.as_mut_ptr());
        }
    }
}

/// Writes `d · q − m` (multiply, then subtract) for the 32 unsigned codes in `codes` to
/// `out[0..32]`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store_scale_min(codes: __m256i, d: f32, m: f32, out: *mut f32) {
    // SAFETY: writes out[0..32] (caller); AVX2 (caller).
    unsafe {
        let (vd, vm) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
        let lo = _mm256_castsi256_si128(codes);
        let hi = _mm256_extracti128_si256::<1>(codes);
        for (k, part) in [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
            .into_iter()
            .enumerate()
        {
            let f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
            _mm256_storeu_ps(out.add(8 * k), _mm256_sub_ps(_mm256_mul_ps(vd, f), vm));
        }
    }
}

/// Q4_K dequantizer: `d·sc · q − dmin·m` per 32-weight sub-block.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q4_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let min = xb.dmin.to_f32();
        // SAFETY: reads xb.qs[32c..32c+32] and writes yb[64c..64c+64], c < 4; AVX2 (caller).
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            for c in 0..4 {
                let q = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * c).cast());
                let (sc, m) = get_scale_min_k4(2 * c, &xb.scales);
                store_scale_min(
                    _mm256_and_si256(q, m4),
                    d * f32::from(sc),
                    min * f32::from(m),
                    yb.as_mut_ptr().add(64 * c),
                );
                let (sc, m) = get_scale_min_k4(2 * c + 1, &xb.scales);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                store_scale_min(
                    hi,
                    d * f32::from(sc),
                    min * f32::from(m),
                    yb.as_mut_ptr().add(64 * c + 32),
                );
            }
        }
    }
}

/// Q5_K dequantizer: as Q4_K with the fifth bit from `qh`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q5_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let min = xb.dmin.to_f32();
        // SAFETY: reads xb.qs[32c..], xb.qh[0..32], writes yb[64c..64c+64], c < 4; AVX2.
        unsafe {
            let m4 = _mm256_set1_epi8(0x0f);
            let one = _mm256_set1_epi8(1);
            let qh = _mm256_loadu_si256(xb.qh.as_ptr().cast());
            for c in 0..4 {
                let q = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * c).cast());
                let (s_lo, s_hi) = (
                    _mm_cvtsi32_si128(2 * c as i32),
                    _mm_cvtsi32_si128(2 * c as i32 + 1),
                );
                // Byte l: bit 2c (2c+1) of qh[l], moved to bit 4 (value 16).
                let h_lo =
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(qh, s_lo), one));
                let h_hi =
                    _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(qh, s_hi), one));
                let lo = _mm256_or_si256(_mm256_and_si256(q, m4), h_lo);
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), m4), h_hi);
                let (sc, m) = get_scale_min_k4(2 * c, &xb.scales);
                store_scale_min(
                    lo,
                    d * f32::from(sc),
                    min * f32::from(m),
                    yb.as_mut_ptr().add(64 * c),
                );
                let (sc, m) = get_scale_min_k4(2 * c + 1, &xb.scales);
                store_scale_min(
                    hi,
                    d * f32::from(sc),
                    min * f32::from(m),
                    yb.as_mut_ptr().add(64 * c + 32),
                );
            }
        }
    }
}

/// Q6_K levels (0..64, offset not removed) of one 128-weight half as four vectors of 32
/// bytes, vector `k` holding weights `32k..32k+32` of the half.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn q6_k_half_levels(ql: *const u8, qh: *const u8) -> [__m256i; 4] {
    // SAFETY: reads ql[0..64] and qh[0..32] (caller); AVX2 (caller).
    unsafe {
        let m4 = _mm256_set1_epi8(0x0f);
        let m3 = _mm256_set1_epi8(3);
        let l0 = _mm256_loadu_si256(ql.cast());
        let l1 = _mm256_loadu_si256(ql.add(32).cast());
        let h = _mm256_loadu_si256(qh.cast());
        // Two high bits of weight l + 32k sit at bits 2k..2k+2 of qh[l]; move them to bits 4..6.
        let hb = |k: i32| {
            let s = _mm_cvtsi32_si128(2 * k);
            _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srl_epi16(h, s), m3))
        };
        [
            _mm256_or_si256(_mm256_and_si256(l0, m4), hb(0)),
            _mm256_or_si256(_mm256_and_si256(l1, m4), hb(1)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), hb(2)),
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), hb(3)),
        ]
    }
}

/// Q6_K dequantizer: `(d·sc) · (q − 32)` per 16-weight sub-block.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q6_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        // SAFETY: reads xb.ql[64h..64h+64], xb.qh[32h..32h+32], writes yb[128h..128h+128],
        // h < 2; AVX2 (caller).
        unsafe {
            for h in 0..2 {
                let lv = q6_k_half_levels(xb.ql.as_ptr().add(64 * h), xb.qh.as_ptr().add(32 * h));
                for (k, u) in lv.into_iter().enumerate() {
                    let base = 128 * h + 32 * k;
                    let v = _mm256_sub_epi8(u, _mm256_set1_epi8(32));
                    // Each 32-weight vector spans sub-blocks base/16 and base/16 + 1.
                    let ds0 = _mm256_set1_ps(d * f32::from(xb.scales[base / 16]));
                    let ds1 = _mm256_set1_ps(d * f32::from(xb.scales[base / 16 + 1]));
                    let lo = _mm256_castsi256_si128(v);
                    let hi = _mm256_extracti128_si256::<1>(v);
                    let parts = [
                        (lo, ds0),
                        (_mm_srli_si128::<8>(lo), ds0),
                        (hi, ds1),
                        (_mm_srli_si128::<8>(hi), ds1),
                    ];
                    for (p, (part, ds)) in parts.into_iter().enumerate() {
                        let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
                        _mm256_storeu_ps(yb.as_mut_ptr().add(base + 8 * p), _mm256_mul_ps(ds, f));
                    }
                }
            }
        }
    }
}

/// f32 → f16 row with F16C (round to nearest even); NaN lanes are rewritten to the reference's
/// quiet NaN `sign | 0x7E00` (F16C would keep payload bits).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f32_to_f16_row(x: &[f32], y: &mut [f16]) {
    assert_eq!(x.len(), y.len(), "f32_to_f16_row: length mismatch");
    let n8 = x.len() / 8 * 8;
    // SAFETY: reads x[i..i+8] and writes y[i..i+8] for i + 8 <= n8 <= len; AVX2/F16C (caller).
    unsafe {
        for i in (0..n8).step_by(8) {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let mut h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v);
            if _mm256_movemask_ps(nan) != 0 {
                let bits = _mm256_castps_si256(v);
                let repl = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi32::<16>(bits), _mm256_set1_epi32(0x8000)),
                    _mm256_set1_epi32(0x7E00),
                );
                let repl16 = _mm_packus_epi32(
                    _mm256_castsi256_si128(repl),
                    _mm256_extracti128_si256::<1>(repl),
                );
                let nan_i = _mm256_castps_si256(nan);
                let mask16 = _mm_packs_epi32(
                    _mm256_castsi256_si128(nan_i),
                    _mm256_extracti128_si256::<1>(nan_i),
                );
                h = _mm_blendv_epi8(h, repl16, mask16);
            }
            _mm_storeu_si128(y.as_mut_ptr().add(i).cast(), h);
        }
    }
    crate::block::float::f32_to_f16_row(&x[n8..], &mut y[n8..]);
}

/// f16 → f32 row with F16C (exact; NaNs keep their payload with the quiet bit set, as the
/// reference's conversion does).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_to_f32_row(x: &[f16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "f16_to_f32_row: length mismatch");
    let n8 = x.len() / 8 * 8;
    // SAFETY: reads x[i..i+8], writes y[i..i+8] for i + 8 <= n8; AVX2/F16C (caller).
    unsafe {
        for i in (0..n8).step_by(8) {
            let h = _mm_loadu_si128(x.as_ptr().add(i).cast());
            _mm256_storeu_ps(y.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    crate::block::float::f16_to_f32_row(&x[n8..], &mut y[n8..]);
}

/// f32 → bf16 row: ggml's round-to-nearest-even by adding `0x7fff + lsb`, NaN → upper half
/// with the quiet bit.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f32_to_bf16_row(x: &[f32], y: &mut [bf16]) {
    assert_eq!(x.len(), y.len(), "f32_to_bf16_row: length mismatch");
    let n8 = x.len() / 8 * 8;
    // SAFETY: reads x[i..i+8], writes y[i..i+8] for i + 8 <= n8; AVX2 (caller).
    unsafe {
        for i in (0..n8).step_by(8) {
            let bits = _mm256_loadu_si256(x.as_ptr().add(i).cast());
            let upper = _mm256_srli_epi32::<16>(bits);
            let lsb = _mm256_and_si256(upper, _mm256_set1_epi32(1));
            let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
                bits,
                _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb),
            ));
            // |x| bits above the infinity pattern: NaN (both sides positive as i32).
            let nan = _mm256_cmpgt_epi32(
                _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff_ffff)),
                _mm256_set1_epi32(0x7f80_0000),
            );
            let quiet = _mm256_or_si256(upper, _mm256_set1_epi32(0x40));
            let r = _mm256_blendv_epi8(rounded, quiet, nan);
            // All lanes are in 0..=0xffff, so the unsigned-saturating pack is exact.
            let r16 = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256::<1>(r));
            _mm_storeu_si128(y.as_mut_ptr().add(i).cast(), r16);
        }
    }
    crate::block::float::f32_to_bf16_row(&x[n8..], &mut y[n8..]);
}

/// bf16 → f32 row: a 16-bit shift (exact, payloads preserved).
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bf16_to_f32_row(x: &[bf16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "bf16_to_f32_row: length mismatch");
    let n8 = x.len() / 8 * 8;
    // SAFETY: reads x[i..i+8], writes y[i..i+8] for i + 8 <= n8; AVX2 (caller).
    unsafe {
        for i in (0..n8).step_by(8) {
            let h = _mm_loadu_si128(x.as_ptr().add(i).cast());
            let v = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
            _mm256_storeu_si256(y.as_mut_ptr().add(i).cast(), v);
        }
    }
    crate::block::float::bf16_to_f32_row(&x[n8..], &mut y[n8..]);
}

/// Writes `d · q` (signed codes) or `d · q − m` (unsigned codes, with `m`) for 16 byte codes
/// to `out[0..16]`, multiply then subtract as in the references.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn store_16(codes: __m128i, signed: bool, d: f32, m: Option<f32>, out: *mut f32) {
    // SAFETY: writes out[0..16] (caller guarantees room); AVX2 (caller).
    unsafe {
        let vd = _mm256_set1_ps(d);
        for (k, part) in [codes, _mm_srli_si128::<8>(codes)].into_iter().enumerate() {
            let w = if signed {
                _mm256_cvtepi8_epi32(part)
            } else {
                _mm256_cvtepu8_epi32(part)
            };
            let mut f = _mm256_mul_ps(vd, _mm256_cvtepi32_ps(w));
            if let Some(m) = m {
                f = _mm256_sub_ps(f, _mm256_set1_ps(m));
            }
            _mm256_storeu_ps(out.add(8 * k), f);
        }
    }
}

/// Q2_K dequantizer: `d·(sc & 15) · q − dmin·(sc >> 4)` per 16-weight sub-block.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q2_k(x: &[BlockQ2K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q2_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        let min = xb.dmin.to_f32();
        // SAFETY: reads xb.qs[32h..32h+32] and writes yb[128h + 32s ..][..32], h < 2, s < 4;
        // AVX2 (caller).
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            for h in 0..2 {
                let q = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * h).cast());
                for s in 0..4 {
                    // Bit pair s of byte l: weight 128h + 32s + l (sub-blocks 8h+2s, +1).
                    let shift = _mm_cvtsi32_si128(2 * s as i32);
                    let codes = _mm256_and_si256(_mm256_srl_epi16(q, shift), m3);
                    let halves = [
                        _mm256_castsi256_si128(codes),
                        _mm256_extracti128_si256::<1>(codes),
                    ];
                    for (t, part) in halves.into_iter().enumerate() {
                        let j = 8 * h + 2 * s + t;
                        let sc = xb.scales[j];
                        store_16(
                            part,
                            false,
                            d * f32::from(sc & 0xF),
                            Some(min * f32::from(sc >> 4)),
                            yb.as_mut_ptr().add(16 * j),
                        );
                    }
                }
            }
        }
    }
}

/// Q3_K's sixteen 6-bit scales, unbiased (`-32..32`), as i8 lanes in sub-block order (the
/// vector form of `unpack_scales` in `block/q3_k.rs`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(s);
    let mut out = [0i8; 16];
    // SAFETY: reads and writes 16-byte local arrays; AVX2 (caller).
    unsafe {
        let v = _mm_loadu_si128(b.as_ptr().cast());
        let m4 = _mm_set1_epi8(0x0f);
        // Low nibbles: scales 0..8 from the low halves of bytes 0..8, 8..16 from the high halves.
        let lo = _mm_unpacklo_epi64(
            _mm_and_si128(v, m4),
            _mm_and_si128(_mm_srli_epi16::<4>(v), m4),
        );
        // Top two bits of scale j: bits 2(j/4).. of byte 8 + j%4. Every lane gets its byte,
        // then each group of four lanes takes the copy shifted by its 2(j/4) (a 16-bit shift
        // by at most 6 brings no bits from the neighbouring byte into the two kept ones).
        let h = _mm_shuffle_epi8(
            v,
            _mm_setr_epi8(8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11, 8, 9, 10, 11),
        );
        let h = _mm_blend_epi32::<0b0010>(h, _mm_srli_epi16::<2>(h));
        let h = _mm_blend_epi32::<0b0100>(h, _mm_srli_epi16::<4>(h));
        let h = _mm_blend_epi32::<0b1000>(h, _mm_srli_epi16::<6>(h));
        let hi = _mm_and_si128(h, _mm_set1_epi8(3));
        let sc = _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16::<4>(hi)), _mm_set1_epi8(32));
        _mm_storeu_si128(out.as_mut_ptr().cast(), sc);
    }
    out
}

/// Q3_K dequantizer: `d·(sc − 32) · (q − 4)` per 16-weight sub-block.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_q3_k(x: &[BlockQ3K], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_q3_k: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = xb.d.to_f32();
        // SAFETY: AVX2 (caller).
        let sc = unsafe { q3_k_scales(&xb.scales) };
        // SAFETY: reads xb.qs[32h..][..32], xb.hmask[..32], writes yb[128h + 32s ..][..32],
        // h < 2, s < 4; AVX2 (caller).
        unsafe {
            let m3 = _mm256_set1_epi8(3);
            let one = _mm256_set1_epi8(1);
            let four = _mm256_set1_epi8(4);
            let hm = _mm256_loadu_si256(xb.hmask.as_ptr().cast());
            for h in 0..2 {
                let q = _mm256_loadu_si256(xb.qs.as_ptr().add(32 * h).cast());
                for s in 0..4 {
                    let low =
                        _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * s as i32)), m3);
                    // High bit 4h + s of hmask[l]: set means the level is `low`, clear means
                    // `low − 4`.
                    let bit = _mm256_and_si256(
                        _mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * h + s) as i32)),
                        one,
                    );
                    let v =
                        _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16::<2>(bit)), four);
                    let halves = [_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)];
                    for (t, part) in halves.into_iter().enumerate() {
                        let j = 8 * h + 2 * s + t;
                        store_16(
                            part,
                            true,
                            d_all * f32::from(sc[j]),
                            None,
                            yb.as_mut_ptr().add(16 * j),
                        );
                    }
                }
            }
        }
    }
}

/// The 32 IQ4 levels of one 16-byte block of indices, as signed bytes in weight order (low
/// nibbles then high nibbles).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn iq4_levels_i8(qs: *const u8) -> (__m128i, __m128i) {
    // SAFETY: reads qs[0..16] (caller) and the 16-byte level table; AVX2 (caller).
    unsafe {
        let table = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast());
        let q = _mm_loadu_si128(qs.cast());
        let m4 = _mm_set1_epi8(0x0f);
        (
            _mm_shuffle_epi8(table, _mm_and_si128(q, m4)),
            _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(q), m4)),
        )
    }
}

/// IQ4_NL dequantizer: `d · level`.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_iq4_nl(x: &[BlockIQ4NL], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * 32,
        "dequantize_row_iq4_nl: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(32)) {
        let d = xb.d.to_f32();
        // SAFETY: reads xb.qs[..16], writes yb[..32]; AVX2 (caller).
        unsafe {
            let (lo, hi) = iq4_levels_i8(xb.qs.as_ptr());
            store_16(lo, true, d, None, yb.as_mut_ptr());
            store_16(hi, true, d, None, yb.as_mut_ptr().add(16));
        }
    }
}

/// IQ4_XS dequantizer: `d·(scale − 32) · level` per 32-weight block.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequantize_row_iq4_xs(x: &[BlockIQ4XS], y: &mut [f32]) {
    assert_eq!(
        y.len(),
        x.len() * QK_K,
        "dequantize_row_iq4_xs: length mismatch"
    );
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = xb.d.to_f32();
        for ib in 0..8 {
            let lo = (xb.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
            let hi = (xb.scales_h >> (2 * ib)) & 3;
            let ls = (i32::from(lo) | (i32::from(hi) << 4)) - 32;
            let dl = d * ls as f32;
            // SAFETY: reads xb.qs[16ib..][..16], writes yb[32ib..][..32], ib < 8; AVX2.
            unsafe {
                let (a, b) = iq4_levels_i8(xb.qs.as_ptr().add(16 * ib));
                store_16(a, true, dl, None, yb.as_mut_ptr().add(32 * ib));
                store_16(b, true, dl, None, yb.as_mut_ptr().add(32 * ib + 16));
            }
        }
    }
}
