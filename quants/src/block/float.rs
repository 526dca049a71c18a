//! Plain float storage: F32, F16 (IEEE binary16) and BF16 (bfloat16).
//!
//! Conversions follow ggml (`ggml-impl.h`): f32 → f16 and f32 → bf16 round to nearest, ties to
//! even; a NaN becomes a quiet NaN that keeps its sign; bf16 → f32 is an exact 16-bit shift.
//!
//! The dot products here are the *reference*: one f32 accumulator, summed left to right. They
//! are the simplest thing to reason about, not the most accurate; a SIMD kernel that keeps
//! several f32 lanes will differ from them by rounding only (tests compare with a tolerance,
//! and against an f64 sum). The forward pass calls these through [`crate::simd::kernels`].

use half::{bf16, f16};

use super::Block;

// SAFETY: f32 is 4 bytes, no padding, and every bit pattern is a valid f32.
unsafe impl Block for f32 {
    const BLOCK_SIZE: usize = 1;
}

// SAFETY: `half::f16` is `#[repr(transparent)]` over `u16`; every bit pattern is valid.
unsafe impl Block for f16 {
    const BLOCK_SIZE: usize = 1;
}

// SAFETY: `half::bf16` is `#[repr(transparent)]` over `u16`; every bit pattern is valid.
unsafe impl Block for bf16 {
    const BLOCK_SIZE: usize = 1;
}

/// f32 → f16 as ggml's `ggml_compute_fp32_to_fp16`: round to nearest even, overflow to ±inf,
/// NaN to the quiet NaN `0x7E00` with the input's sign.
#[inline]
pub fn f32_to_f16(x: f32) -> f16 {
    if x.is_nan() {
        // ggml drops the payload and keeps only the sign; `half` would keep payload bits.
        let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
        return f16::from_bits(sign | 0x7E00);
    }
    f16::from_f32(x)
}

/// f16 → f32 (exact).
#[inline]
pub fn f16_to_f32(x: f16) -> f32 {
    x.to_f32()
}

/// f32 → bf16 as ggml's `ggml_compute_fp32_to_bf16`: round to nearest even by adding
/// `0x7fff + lsb` before truncating; a NaN keeps its upper 16 bits with the quiet bit forced.
#[inline]
pub fn f32_to_bf16(x: f32) -> bf16 {
    let bits = x.to_bits();
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return bf16::from_bits(((bits >> 16) | 0x40) as u16);
    }
    // Ties go to the even neighbour: the added bias is one larger when the kept lsb is odd.
    // Cannot overflow u32: the largest finite/inf input 0xff80_0000 plus 0x8000 fits.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    bf16::from_bits((rounded >> 16) as u16)
}

/// bf16 → f32: the 16 bits become the top half of the f32 (exact; NaN payloads preserved, as
/// in ggml, unlike `half::bf16::to_f32` which sets the quiet bit).
#[inline]
pub fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// Converts a row to f16 (ggml's `ggml_fp32_to_fp16_row`). `x.len() == y.len()`.
pub fn f32_to_f16_row(x: &[f32], y: &mut [f16]) {
    debug_assert_eq!(x.len(), y.len());
    for (d, &s) in y.iter_mut().zip(x) {
        *d = f32_to_f16(s);
    }
}

/// Converts an f16 row to f32 (ggml's `ggml_fp16_to_fp32_row`). `x.len() == y.len()`.
pub fn f16_to_f32_row(x: &[f16], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (d, &s) in y.iter_mut().zip(x) {
        *d = f16_to_f32(s);
    }
}

/// Converts a row to bf16 (ggml's `ggml_fp32_to_bf16_row_ref`). `x.len() == y.len()`.
pub fn f32_to_bf16_row(x: &[f32], y: &mut [bf16]) {
    debug_assert_eq!(x.len(), y.len());
    for (d, &s) in y.iter_mut().zip(x) {
        *d = f32_to_bf16(s);
    }
}

/// Converts a bf16 row to f32 (ggml's `ggml_bf16_to_fp32_row`). `x.len() == y.len()`.
pub fn bf16_to_f32_row(x: &[bf16], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (d, &s) in y.iter_mut().zip(x) {
        *d = bf16_to_f32(s);
    }
}

/// Copies an f32 row (the "quantizer" for F32 targets). `x.len() == y.len()`.
pub fn f32_copy_row(x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(x);
}

/// Reference dot product of two f32 rows: one f32 accumulator, in order.
/// Extra elements of the longer slice are ignored (callers pass equal lengths).
pub fn vec_dot_f32(x: &[f32], y: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (&a, &b) in x.iter().zip(y) {
        sum += a * b;
    }
    sum
}

/// Reference dot product of an f16 weight row with f32 activations (each weight widened
/// exactly to f32, one f32 accumulator). ggml converts the activations to f16 instead; we keep
/// them in f32, which is at least as accurate.
pub fn vec_dot_f16_f32(x: &[f16], y: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (&a, &b) in x.iter().zip(y) {
        sum += f16_to_f32(a) * b;
    }
    sum
}

/// Reference dot product of a bf16 weight row with f32 activations (exact widening, one f32
/// accumulator).
pub fn vec_dot_bf16_f32(x: &[bf16], y: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for (&a, &b) in x.iter().zip(y) {
        sum += bf16_to_f32(a) * b;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tiny xorshift PRNG so tests are deterministic without `rand`.
    struct Rng(u64);
    impl Rng {
        fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        fn uniform(&mut self) -> f32 {
            (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        }
    }

    #[test]
    fn bf16_matches_half_on_random_bit_patterns() {
        // `half` implements the same RNE rule for non-NaN values; compare on raw bit patterns so
        // subnormals, infinities and the rounding boundary all get exercised.
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for _ in 0..200_000 {
            let x = f32::from_bits(rng.next_u32());
            if x.is_nan() {
                continue;
            }
            assert_eq!(
                f32_to_bf16(x).to_bits(),
                bf16::from_f32(x).to_bits(),
                "{x:e}"
            );
        }
    }

    #[test]
    fn bf16_rounding_ties_to_even() {
        // 1.0 + 2^-8 is exactly halfway between bf16 1.0 and 1.0078125: ties to the even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0).to_bits(), 0x3f80);
        // 1.0078125 + 2^-8 is halfway between an odd and an even mantissa: goes up to even.
        assert_eq!(f32_to_bf16(1.0078125 + 1.0 / 256.0).to_bits(), 0x3f82);
        // Just above the halfway point rounds up.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)).to_bits(), 0x3f81);
        // The largest finite f32 rounds to infinity, as ggml does.
        assert_eq!(f32_to_bf16(f32::MAX).to_bits(), 0x7f80);
        assert_eq!(f32_to_bf16(-0.0).to_bits(), 0x8000);
    }

    #[test]
    fn bf16_nan_is_quiet_and_keeps_sign() {
        let signalling = f32::from_bits(0xff80_0001);
        let b = f32_to_bf16(signalling);
        assert_eq!(b.to_bits(), 0xffc0);
        assert!(bf16_to_f32(b).is_nan());
        // bf16 → f32 is a pure shift.
        assert_eq!(bf16_to_f32(bf16::from_bits(0x7f81)).to_bits(), 0x7f81_0000);
    }

    #[test]
    fn f16_round_trip_and_specials() {
        let mut rng = Rng(42);
        for _ in 0..100_000 {
            let x = rng.uniform() * 60000.0;
            let h = f32_to_f16(x);
            let back = f16_to_f32(h);
            // f16 has 11 significant bits: relative error at most 2^-11 for normal values.
            assert!(
                (back - x).abs() <= x.abs() * (1.0 / 2048.0) + 6e-8,
                "{x} -> {back}"
            );
            assert_eq!(h.to_bits(), f16::from_f32(x).to_bits());
        }
        assert_eq!(
            f32_to_f16(65520.0).to_bits(),
            0x7c00,
            "overflow rounds to inf"
        );
        assert_eq!(f32_to_f16(f32::NAN).to_bits(), 0x7e00);
        assert_eq!(f32_to_f16(-f32::NAN).to_bits(), 0xfe00);
        // Smallest f16 subnormal survives; half of it ties to even (zero).
        assert_eq!(f32_to_f16(2f32.powi(-24)).to_bits(), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-25)).to_bits(), 0x0000);
    }

    #[test]
    fn row_converters_agree_with_scalar() {
        let mut rng = Rng(7);
        let x: Vec<f32> = (0..1000).map(|_| rng.uniform() * 10.0).collect();
        let mut h = vec![f16::ZERO; x.len()];
        let mut b = vec![bf16::ZERO; x.len()];
        f32_to_f16_row(&x, &mut h);
        f32_to_bf16_row(&x, &mut b);
        let mut xh = vec![0.0; x.len()];
        let mut xb = vec![0.0; x.len()];
        f16_to_f32_row(&h, &mut xh);
        bf16_to_f32_row(&b, &mut xb);
        for i in 0..x.len() {
            assert_eq!(xh[i], f32_to_f16(x[i]).to_f32());
            assert_eq!(xb[i], bf16_to_f32(f32_to_bf16(x[i])));
            // bf16 keeps 8 significant bits.
            assert!((xb[i] - x[i]).abs() <= x[i].abs() / 256.0);
        }
        let mut c = vec![0.0; x.len()];
        f32_copy_row(&x, &mut c);
        assert_eq!(c, x);
    }

    #[test]
    fn dots_match_f64_reference() {
        let mut rng = Rng(99);
        for &n in &[1usize, 7, 32, 1000, 4096] {
            let w: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
            let a: Vec<f32> = (0..n).map(|_| rng.uniform() * 3.0).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f32_to_f16(v)).collect();
            let wb: Vec<bf16> = w.iter().map(|&v| f32_to_bf16(v)).collect();
            let check = |got: f32, widened: &dyn Fn(usize) -> f64| {
                let exact: f64 = (0..n).map(|i| widened(i) * a[i] as f64).sum();
                let scale: f64 = (0..n).map(|i| (widened(i) * a[i] as f64).abs()).sum();
                assert!(
                    (got as f64 - exact).abs() <= 1e-5 * scale.max(1e-30),
                    "n={n} got {got} exact {exact}"
                );
            };
            check(vec_dot_f32(&w, &a), &|i| w[i] as f64);
            check(vec_dot_f16_f32(&wh, &a), &|i| wh[i].to_f64());
            check(vec_dot_bf16_f32(&wb, &a), &|i| bf16_to_f32(wb[i]) as f64);
        }
        assert_eq!(vec_dot_f32(&[], &[]), 0.0);
    }
}
