//! Q8_1: the activation format ggml multiplies Q4_1 and Q5_1 weights with (9 bits per value).
//!
//! Layout (ggml-common.h `block_q8_1`, 36 bytes): `d: f16`, `s: f16`, `qs: [i8; 32]`; value `i`
//! is `qs[i] * d`, and `s` caches `d · Σ qs` so that the weight's min term `m · Σ y` costs one
//! multiply per block. ggml rounds `s` to f16 from the *unrounded* f32 scale, so `s` is not
//! `f16(d) · Σ qs`; the weights' min term and code term nearly cancel, which makes that rounding
//! visible in a model's logits (~1e-2 on SmolLM2). Matching it is the reason this type exists:
//! a Q8_0 activation gives a slightly different (not worse) answer than llama.cpp.
//!
//! Q8_1 is never stored in files. Its quantizer follows the one llama.cpp's CPU backend runs on
//! x86 (`quantize_row_q8_1` in `ggml-cpu/arch/x86/quants.c`): multiplier `127 / amax`, rounding
//! half to even. (The portable `quantize_row_q8_1_ref` uses `1 / d` and `roundf`; the two
//! differ only on exact ties.)

use half::f16;

use super::float::{f16_to_f32, f32_to_f16};
use super::q4_1::BlockQ4_1;
use super::q5_1::BlockQ5_1;
use super::{nearest_int, Block};

/// Values per Q8_1 block (ggml's `QK8_1`).
pub const QK8_1: usize = 32;

/// One Q8_1 block, byte-for-byte ggml's `block_q8_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_1 {
    /// Scale: value = `qs[i] * d`.
    pub d: f16,
    /// `d · Σ qs`, computed with the f32 scale and rounded to f16.
    pub s: f16,
    /// Quantized values.
    pub qs: [i8; QK8_1],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 4 + QK8_1);

// SAFETY: repr(C), two f16 (2 bytes each, align 2) followed by 32 bytes: no padding, size 36,
// and every bit pattern is valid for every field.
unsafe impl Block for BlockQ8_1 {
    const BLOCK_SIZE: usize = QK8_1;
}

impl BlockQ8_1 {
    /// An all-zero block.
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        s: f16::ZERO,
        qs: [0; QK8_1],
    };
}

/// Mirrors the x86 `quantize_row_q8_1` of ggml's CPU backend (see the module comment).
/// `x.len() == y.len() * 32`; `x` must be finite.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    debug_assert_eq!(x.len(), y.len() * QK8_1);
    for (xb, yb) in x.chunks_exact(QK8_1).zip(y.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            // |v · id| ≤ 127 up to one ulp, which still rounds to ±127.
            // nearest_int rounds half to even, like _mm256_round_ps(_MM_ROUND_NEAREST).
            let r = nearest_int(v * id);
            *q = r.clamp(-127, 127) as i8;
            sum += r.clamp(-127, 127);
        }
        yb.d = f32_to_f16(d);
        yb.s = f32_to_f16(d * sum as f32);
    }
}

/// Mirrors ggml's `ggml_vec_dot_q4_1_q8_1_generic`: Σ d_x·d_y·Σ u·y + m_x·s_y.
pub fn vec_dot_q4_1_q8_1_ref(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for (j, &q) in xb.qs.iter().enumerate() {
            sumi += (q & 0x0f) as i32 * yb.qs[j] as i32;
            sumi += (q >> 4) as i32 * yb.qs[j + QK8_1 / 2] as i32;
        }
        sumf +=
            f16_to_f32(xb.d) * f16_to_f32(yb.d) * sumi as f32 + f16_to_f32(xb.m) * f16_to_f32(yb.s);
    }
    sumf
}

/// Mirrors ggml's `ggml_vec_dot_q5_1_q8_1_generic`: Σ d_x·d_y·Σ u·y + m_x·s_y, `u` the 5-bit code.
pub fn vec_dot_q5_1_q8_1_ref(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(xb.qh);
        let mut sumi = 0i32;
        for (j, &q) in xb.qs.iter().enumerate() {
            let lo = (q & 0x0f) as i32 | ((((qh >> j) & 1) << 4) as i32);
            let hi = (q >> 4) as i32 | ((((qh >> (j + 16)) & 1) << 4) as i32);
            sumi += lo * yb.qs[j] as i32 + hi * yb.qs[j + QK8_1 / 2] as i32;
        }
        sumf +=
            f16_to_f32(xb.d) * f16_to_f32(yb.d) * sumi as f32 + f16_to_f32(xb.m) * f16_to_f32(yb.s);
    }
    sumf
}

#[cfg(test)]
mod tests {
    use super::super::q4_1::{dequantize_row_q4_1, quantize_row_q4_1_ref};
    use super::super::q5_1::{dequantize_row_q5_1, quantize_row_q5_1_ref};
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn quantize_keeps_values_and_block_sum() {
        let x = data(256, 7);
        let mut y = vec![BlockQ8_1::ZERO; 8];
        quantize_row_q8_1(&x, &mut y);
        for (xb, yb) in x.chunks(32).zip(&y) {
            let d = f16_to_f32(yb.d);
            let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(yb.qs.iter().any(|&q| q.abs() == 127));
            for (&v, &q) in xb.iter().zip(&yb.qs) {
                assert!((v - q as f32 * d).abs() <= amax / 127.0 * 0.5 + 1e-3 * amax);
            }
            let sum: i32 = yb.qs.iter().map(|&q| q as i32).sum();
            // s is rounded from the f32 scale, so it is within f16 rounding of amax/127·Σq.
            let exact = amax / 127.0 * sum as f32;
            assert!((f16_to_f32(yb.s) - exact).abs() <= exact.abs() * 1e-3 + 1e-6);
        }
    }

    #[test]
    fn zero_block_is_all_zero() {
        let mut y = vec![BlockQ8_1::ZERO; 1];
        y[0].qs[0] = 5;
        quantize_row_q8_1(&[0.0; 32], &mut y);
        assert_eq!(y[0], BlockQ8_1::ZERO);
    }

    #[test]
    fn dots_match_dequantized_products() {
        let w = data(512, 3);
        let a = data(512, 9);
        let mut y = vec![BlockQ8_1::ZERO; 16];
        quantize_row_q8_1(&a, &mut y);
        let ya: Vec<f32> = y
            .iter()
            .flat_map(|b| b.qs.iter().map(move |&q| q as f32 * f16_to_f32(b.d)))
            .collect();

        let mut q4 = vec![BlockQ4_1::ZERO; 16];
        quantize_row_q4_1_ref(&w, &mut q4);
        let mut w4 = vec![0.0; 512];
        dequantize_row_q4_1(&q4, &mut w4);
        let want: f32 = w4.iter().zip(&ya).map(|(a, b)| a * b).sum();
        let got = vec_dot_q4_1_q8_1_ref(&q4, &y);
        assert!((got - want).abs() < 0.05, "{got} vs {want}");

        let mut q5 = vec![BlockQ5_1::ZERO; 16];
        quantize_row_q5_1_ref(&w, &mut q5);
        let mut w5 = vec![0.0; 512];
        dequantize_row_q5_1(&q5, &mut w5);
        let want: f32 = w5.iter().zip(&ya).map(|(a, b)| a * b).sum();
        let got = vec_dot_q5_1_q8_1_ref(&q5, &y);
        assert!((got - want).abs() < 0.05, "{got} vs {want}");
    }
}
