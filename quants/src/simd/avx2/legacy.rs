//! Reference quantizers of the legacy 32-weight formats (Q4_0, Q4_1, Q5_0, Q5_1) with AVX2.
//!
//! Bit-identical to `quantize_row_q*_ref` in `crate::block`: per block the extreme values are
//! found with vector max/min and then taken from the *first* element equal to them (the scalar
//! loops keep the first of equal candidates, which decides the sign of a zero extreme); the
//! scale, its inverse and the f16 stores are the scalar code's own statements; every code lane
//! does the reference's separate multiply and add (never an FMA), truncates toward zero like
//! C's float → int cast (`cvttps` yields `0x80000000` out of range, whose low byte is the 0 that
//! `c_float_to_byte` returns), and keeps the low byte with the reference's signed or unsigned
//! clamp. The bit packing is the scalar formats' own.

use std::arch::x86_64::*;

use crate::block::float::f32_to_f16;
use crate::block::q4_0::BlockQ4_0;
use crate::block::q4_1::BlockQ4_1;
use crate::block::q5_0::{pack5, BlockQ5_0};
use crate::block::q5_1::BlockQ5_1;

/// The four vectors of one 32-weight block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_block(xb: &[f32]) -> [__m256; 4] {
    debug_assert!(xb.len() >= 32);
    // SAFETY: four unaligned 8-float loads inside `xb` (length ≥ 32, asserted by callers).
    unsafe { std::array::from_fn(|k| _mm256_loadu_ps(xb.as_ptr().add(8 * k))) }
}

/// Horizontal max of 8 non-NaN lanes.
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

/// Horizontal min of 8 non-NaN lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hmin(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = _mm_min_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_min_ss(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }
}

/// The first element of `xb` (as the vectors `v` hold it) whose key equals `key` under `==`
/// (so ±0 match each other); `key` is always present.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn first_equal(xb: &[f32], keys: &[__m256; 4], key: f32) -> f32 {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let k = _mm256_set1_ps(key);
        for (i, &v) in keys.iter().enumerate() {
            let m = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, k));
            if m != 0 {
                return xb[8 * i + m.trailing_zeros() as usize];
            }
        }
    }
    // Unreachable for finite input (the key is one of the lanes); the scalar default.
    0.0
}

/// `signed_absmax`: the first value of largest magnitude, or +0 for an all-zero block.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn signed_absmax(xb: &[f32], v: &[__m256; 4]) -> f32 {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let a: [__m256; 4] = std::array::from_fn(|k| _mm256_andnot_ps(sign, v[k]));
        let amax = hmax(_mm256_max_ps(
            _mm256_max_ps(a[0], a[1]),
            _mm256_max_ps(a[2], a[3]),
        ));
        if amax == 0.0 {
            // The scalar loop never replaces its initial `max = 0.0`.
            return 0.0;
        }
        first_equal(xb, &a, amax)
    }
}

/// `min_max`: the first minimum and the first maximum, as the scalar loop picks them.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn min_max(xb: &[f32], v: &[__m256; 4]) -> (f32, f32) {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let mn = hmin(_mm256_min_ps(
            _mm256_min_ps(v[0], v[1]),
            _mm256_min_ps(v[2], v[3]),
        ));
        let mx = hmax(_mm256_max_ps(
            _mm256_max_ps(v[0], v[1]),
            _mm256_max_ps(v[2], v[3]),
        ));
        (first_equal(xb, v, mn), first_equal(xb, v, mx))
    }
}

/// Codes of one block: `trunc((x − sub)·id + add)` per lane, kept as C keeps it (the low byte),
/// then `min(byte as i8, clamp)` when `clamp` is given (the `(int8_t)` + `MIN` of Q4_0/Q4_1/
/// Q5_0), else the byte as is (Q5_1's `uint8_t`).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn codes(
    v: &[__m256; 4],
    sub: Option<f32>,
    id: f32,
    add: f32,
    clamp: Option<i32>,
) -> [u8; 32] {
    let mut out = [0u8; 32];
    // SAFETY: register work, then 8-lane stores into a local array of 8 i32.
    unsafe {
        let idv = _mm256_set1_ps(id);
        let addv = _mm256_set1_ps(add);
        for (k, &x) in v.iter().enumerate() {
            let x = match sub {
                Some(m) => _mm256_sub_ps(x, _mm256_set1_ps(m)),
                None => x,
            };
            let t = _mm256_add_ps(_mm256_mul_ps(x, idv), addv);
            let mut q = _mm256_cvttps_epi32(t);
            if let Some(c) = clamp {
                // Sign-extend the low byte, then the signed MIN.
                q = _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(q));
                q = _mm256_min_epi32(q, _mm256_set1_epi32(c));
            }
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr().cast(), q);
            for (o, l) in out[8 * k..8 * k + 8].iter_mut().zip(lanes) {
                *o = l as u8;
            }
        }
    }
    out
}

/// Weights j and j + 16 share byte j: low and high nibble.
#[inline]
fn pack4(c: &[u8; 32], qs: &mut [u8; 16]) {
    for (j, q) in qs.iter_mut().enumerate() {
        *q = c[j] | (c[j + 16] << 4);
    }
}

/// `quantize_row_q4_0_ref` with AVX2.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]) {
    assert_eq!(x.len(), y.len() * 32, "quantize_row_q4_0: length mismatch");
    // SAFETY: AVX2/FMA/F16C (caller); blocks are whole 32-float chunks.
    unsafe {
        for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
            let v = load_block(xb);
            let max = signed_absmax(xb, &v);
            let d = max / -8.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb.d = f32_to_f16(d);
            pack4(&codes(&v, None, id, 8.5, Some(15)), &mut yb.qs);
        }
    }
}

/// `quantize_row_q4_1_ref` with AVX2.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]) {
    assert_eq!(x.len(), y.len() * 32, "quantize_row_q4_1: length mismatch");
    // SAFETY: as above.
    unsafe {
        for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
            let v = load_block(xb);
            let (min, max) = min_max(xb, &v);
            let d = (max - min) / 15.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb.d = f32_to_f16(d);
            yb.m = f32_to_f16(min);
            pack4(&codes(&v, Some(min), id, 0.5, Some(15)), &mut yb.qs);
        }
    }
}

/// `quantize_row_q5_0_ref` with AVX2.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]) {
    assert_eq!(x.len(), y.len() * 32, "quantize_row_q5_0: length mismatch");
    // SAFETY: as above.
    unsafe {
        for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
            let v = load_block(xb);
            let max = signed_absmax(xb, &v);
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb.d = f32_to_f16(d);
            pack5(&codes(&v, None, id, 16.5, Some(31)), &mut yb.qs, &mut yb.qh);
        }
    }
}

/// `quantize_row_q5_1_ref` with AVX2.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]) {
    assert_eq!(x.len(), y.len() * 32, "quantize_row_q5_1: length mismatch");
    // SAFETY: as above.
    unsafe {
        for (xb, yb) in x.chunks_exact(32).zip(y.iter_mut()) {
            let v = load_block(xb);
            let (min, max) = min_max(xb, &v);
            let d = (max - min) / 31.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            yb.d = f32_to_f16(d);
            yb.m = f32_to_f16(min);
            pack5(&codes(&v, Some(min), id, 0.5, None), &mut yb.qs, &mut yb.qh);
        }
    }
}
