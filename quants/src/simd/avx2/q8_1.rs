//! Q4_1·Q8_1 and Q5_1·Q8_1 for AVX2, modelled on ggml's `ggml_vec_dot_q4_1_q8_1` (x86): the
//! unsigned codes times the signed activations are summed exactly per block with
//! `maddubs`/`madd` (codes ≤ 31, so a pair is at most 2·31·127 and never saturates), scaled by
//! `d_x·d_y` into eight f32 lanes; the min terms `m_x·s_y` are summed separately in scalar f32,
//! as ggml does.

use std::arch::x86_64::*;

use crate::block::q4_1::BlockQ4_1;
use crate::block::q5_1::BlockQ5_1;
use crate::block::q8_1::BlockQ8_1;

/// Sum of the 8 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum8(v: __m256) -> f32 {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// The 32 four-bit codes of a block in value order: low nibbles are values 0..16, high
/// nibbles values 16..32.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn low_codes(qs: &[u8; 16]) -> __m256i {
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

/// Byte `j` = 0x10 when bit `j` of the little-endian `qh` is set (Q5_1's fifth bits).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn high_bits(qh: [u8; 4]) -> __m256i {
    // SAFETY: register-only intrinsics; AVX2 (caller).
    unsafe {
        // Broadcast the 32 bits, give byte j the byte of qh holding bit j, then test bit j%8.
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

/// Σ codes·y over one block as 8 f32 lanes (exact integer sums, converted once).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn block_sum(codes: __m256i, y: &BlockQ8_1) -> __m256 {
    // SAFETY: reads the 32 quants of `y`; AVX2 (caller).
    unsafe {
        let q8 = _mm256_loadu_si256(y.qs.as_ptr().cast());
        let pairs = _mm256_maddubs_epi16(codes, q8);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

/// Q4_1 · Q8_1.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q4_1_q8_1: block count mismatch");
    // SAFETY: register work plus in-bounds block reads; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0.0f32;
        for (xb, yb) in x.iter().zip(y) {
            summs += xb.m.to_f32() * yb.s.to_f32();
            let dd = _mm256_set1_ps(xb.d.to_f32() * yb.d.to_f32());
            acc = _mm256_fmadd_ps(dd, block_sum(low_codes(&xb.qs), yb), acc);
        }
        hsum8(acc) + summs
    }
}

/// Q5_1 · Q8_1.
///
/// # Safety
/// AVX2, FMA and F16C must be available. Lengths are checked.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len(), "vec_dot_q5_1_q8_1: block count mismatch");
    // SAFETY: register work plus in-bounds block reads; AVX2/FMA (caller).
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0.0f32;
        for (xb, yb) in x.iter().zip(y) {
            summs += xb.m.to_f32() * yb.s.to_f32();
            let codes = _mm256_or_si256(low_codes(&xb.qs), high_bits(xb.qh));
            let dd = _mm256_set1_ps(xb.d.to_f32() * yb.d.to_f32());
            acc = _mm256_fmadd_ps(dd, block_sum(codes, yb), acc);
        }
        hsum8(acc) + summs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::q4_1::quantize_row_q4_1_ref;
    use crate::block::q5_1::quantize_row_q5_1_ref;
    use crate::block::q8_1::{quantize_row_q8_1, vec_dot_q4_1_q8_1_ref, vec_dot_q5_1_q8_1_ref};

    fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }

    fn data(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.3) * scale
            })
            .collect()
    }

    #[test]
    fn simd_matches_scalar_reference() {
        if !avx2() {
            return;
        }
        for (seed, scale) in [(1, 1.0), (2, 1e-4), (3, 300.0), (4, 0.0)] {
            for nb in [1usize, 3, 18, 64] {
                let w = data(nb * 32, seed, scale);
                let a = data(nb * 32, seed + 100, scale.max(1.0));
                let mut y = vec![BlockQ8_1::ZERO; nb];
                quantize_row_q8_1(&a, &mut y);
                let mut q4 = vec![BlockQ4_1::ZERO; nb];
                quantize_row_q4_1_ref(&w, &mut q4);
                let mut q5 = vec![BlockQ5_1::ZERO; nb];
                quantize_row_q5_1_ref(&w, &mut q5);
                let pairs = [
                    // SAFETY: AVX2, FMA and F16C detected above.
                    (
                        unsafe { vec_dot_q4_1_q8_1(&q4, &y) },
                        vec_dot_q4_1_q8_1_ref(&q4, &y),
                    ),
                    // SAFETY: as above.
                    (
                        unsafe { vec_dot_q5_1_q8_1(&q5, &y) },
                        vec_dot_q5_1_q8_1_ref(&q5, &y),
                    ),
                ];
                for (got, want) in pairs {
                    let mag: f32 = w.iter().zip(&a).map(|(p, q)| (p * q).abs()).sum();
                    assert!(
                        (got - want).abs() <= 1e-5 * mag + 1e-6,
                        "seed {seed} nb {nb}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
