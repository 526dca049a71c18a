//! Q8_0: 32 weights per block, one f16 scale and 32 signed bytes (8.5 bits per weight).
//!
//! Layout (ggml-common.h `block_q8_0`, 34 bytes): `d: f16` then `qs: [i8; 32]`; weight
//! `i` is `qs[i] * d`. Q8_0 is both a weight type and the activation type the legacy formats
//! are multiplied against ([`crate::tensor::vec_dot_type`]). ggml ignores importance weights for
//! Q8_0, and so do we.

use half::f16;

use super::float::f16_to_f32;
use super::Block;

/// Weights per Q8_0 block (ggml's `QK8_0`).
pub const QK8_0: usize = 32;

/// One Q8_0 block, byte-for-byte ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale: weight = `qs[i] * d`.
    pub d: f16,
    /// Quantized weights.
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 2 + QK8_0);

// SAFETY: repr(C), an f16 (2 bytes, align 2) followed by 32 bytes: no padding, size 34, and
// every bit pattern is valid for both fields.
unsafe impl Block for BlockQ8_0 {
    const BLOCK_SIZE: usize = QK8_0;
}

impl BlockQ8_0 {
    /// An all-zero block (scale 0).
    pub const ZERO: Self = Self {
        d: f16::ZERO,
        qs: [0; QK8_0],
    };
}

/// Mirrors ggml's `quantize_row_q8_0_ref`: scale = absmax / 127, each weight rounded half away
/// from zero (`roundf`). `x.len() == y.len() * 32`.
pub fn quantize_row_q8_0_ref(x: &[f32], y: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), y.len() * QK8_0);
    for (xb, yb) in x.chunks_exact(QK8_0).zip(y.iter_mut()) {
        let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        yb.d = super::float::f32_to_f16(d);
        for (q, &v) in yb.qs.iter_mut().zip(xb) {
            // |v * id| <= 127 (up to one ulp) unless id overflowed to inf; see c_float_to_byte.
            *q = c_float_to_byte((v * id).round()) as i8;
        }
    }
}

/// C's float → `int8_t` / `uint8_t` conversion as GCC compiles it on x86-64 (`cvttss2si` into a
/// 32-bit register, then the low byte): truncation toward zero, wrapping modulo 256, and 0 for
/// anything out of i32 range (±inf, NaN, |v| ≥ 2^31 give the "integer indefinite" 0x8000_0000,
/// whose low byte is 0). Rust's saturating `as i8` differs only there, which the legacy
/// quantizers reach when a block's scale is so small that `1/d` overflows to inf (|x| below
/// ~4e-37): the f16 scale is then 0 and every code dequantizes to 0 either way, but llama.cpp's
/// files hold code 0 (Q8_0) / the truncated offset, so we write the same bytes.
#[inline(always)]
pub(crate) fn c_float_to_byte(v: f32) -> u8 {
    if v.abs() < 2_147_483_648.0 {
        (v as i32) as u8
    } else {
        0 // also NaN: the comparison above is false
    }
}

/// Activation quantizer used before a Q8_0 dot product: the same as the reference (ggml's
/// `quantize_row_q8_0` differs only in SIMD rounding details on some targets).
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    quantize_row_q8_0_ref(x, y);
}

/// Mirrors ggml's `dequantize_row_q8_0`. `y.len() == x.len() * 32`.
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    debug_assert_eq!(y.len(), x.len() * QK8_0);
    for (xb, yb) in x.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = f16_to_f32(xb.d);
        for (o, &q) in yb.iter_mut().zip(&xb.qs) {
            *o = q as f32 * d;
        }
    }
}

/// Mirrors ggml's `ggml_vec_dot_q8_0_q8_0_generic`: exact integer sums per block, then one f32
/// accumulator over blocks. `x.len() == y.len()`.
pub fn vec_dot_q8_0_q8_0_ref(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    debug_assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sumi: i32 = xb
            .qs
            .iter()
            .zip(&yb.qs)
            .map(|(&a, &b)| a as i32 * b as i32)
            .sum();
        sumf += sumi as f32 * (f16_to_f32(xb.d) * f16_to_f32(yb.d));
    }
    sumf
}

/// Deterministic test data shared by the legacy-format tests.
#[cfg(test)]
pub(crate) mod testutil {
    /// xorshift64 PRNG (deterministic, no `rand`).
    pub struct Rng(pub u64);

    impl Rng {
        /// Next 32 random bits.
        pub fn next_u32(&mut self) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 32) as u32
        }
        /// Uniform in [0, 1).
        pub fn unit(&mut self) -> f32 {
            (self.next_u32() >> 8) as f32 / (1u32 << 24) as f32
        }
        /// Standard normal (Box-Muller).
        pub fn gauss(&mut self) -> f32 {
            let u1 = (self.unit() as f64).max(1e-12);
            let u2 = self.unit() as f64;
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        }
    }

    /// Named inputs every format is checked on: gaussian, zeros, constants, tiny and huge
    /// magnitudes, sparse outliers, and all-negative / all-positive rows.
    pub fn cases(n: usize) -> Vec<(&'static str, Vec<f32>)> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut out = Vec::new();
        out.push(("gaussian", (0..n).map(|_| rng.gauss()).collect()));
        out.push(("zeros", vec![0.0; n]));
        out.push(("constant", vec![0.75; n]));
        out.push(("negative constant", vec![-3.5; n]));
        out.push(("tiny", (0..n).map(|_| rng.gauss() * 1e-6).collect()));
        // Large, but the scales and Q4_1/Q5_1 minima still fit in f16 (max 65504).
        out.push(("huge", (0..n).map(|_| rng.gauss() * 8.0e3).collect()));
        out.push((
            "outliers",
            (0..n)
                .map(|i| {
                    if i % 37 == 5 {
                        40.0 * rng.gauss()
                    } else {
                        0.01 * rng.gauss()
                    }
                })
                .collect(),
        ));
        out.push(("positive", (0..n).map(|_| rng.unit() + 0.5).collect()));
        out.push(("negative", (0..n).map(|_| -rng.unit() - 0.5).collect()));
        out
    }

    /// Max |x| over one block.
    pub fn amax(x: &[f32]) -> f32 {
        x.iter().fold(0.0f32, |m, &v| m.max(v.abs()))
    }

    /// Exact dot product of two f32 vectors in f64, and the sum of |terms| used to scale the
    /// tolerance (relative error of an f32 sum is bounded relative to that, not to the result).
    pub fn dot_f64(a: &[f32], b: &[f32]) -> (f64, f64) {
        let exact = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
        let scale = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 * y as f64).abs())
            .sum();
        (exact, scale)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn layout() {
        assert_eq!(std::mem::size_of::<BlockQ8_0>(), 34);
        assert_eq!(std::mem::align_of::<BlockQ8_0>(), 2);
        assert_eq!(crate::BlockFormat::Q8_0.type_size(), 34);
    }

    #[test]
    fn round_trip_error_bounds() {
        let n = 32 * 64;
        for (name, x) in cases(n) {
            let mut q = vec![BlockQ8_0::ZERO; n / QK8_0];
            quantize_row_q8_0_ref(&x, &mut q);
            let mut y = vec![0.0; n];
            dequantize_row_q8_0(&q, &mut y);
            for (b, (xb, yb)) in x.chunks(QK8_0).zip(y.chunks(QK8_0)).enumerate() {
                let am = amax(xb);
                let d = am / 127.0;
                let d16 = q[b].d.to_f32();
                // Half a step of rounding plus the f16 rounding of the scale times |q| <= 127.
                let bound = d / 2.0 + 127.0 * (d - d16).abs() + am * 1e-6;
                for (i, (&a, &b2)) in xb.iter().zip(yb).enumerate() {
                    assert!(
                        (a - b2).abs() <= bound,
                        "{name} block {b} elem {i}: {a} vs {b2}"
                    );
                }
                if am > 0.0 && d16 > 0.0 {
                    // The largest magnitude maps to ±127.
                    assert_eq!(
                        q[b].qs.iter().map(|v| v.unsigned_abs()).max(),
                        Some(127),
                        "{name}"
                    );
                }
            }
        }
    }

    #[test]
    fn zeros_and_constants_exact() {
        let x = vec![0.0; 64];
        let mut q = vec![BlockQ8_0::ZERO; 2];
        quantize_row_q8_0_ref(&x, &mut q);
        assert!(q.iter().all(|b| b.d.to_bits() == 0 && b.qs == [0; 32]));
        // A constant row: every weight is ±127 * d, where d is f16(c / 127).
        let x = vec![-2.0; 32];
        quantize_row_q8_0_ref(&x, &mut q[..1]);
        assert!(q[0].qs.iter().all(|&v| v == -127));
        assert_eq!(q[0].d, half::f16::from_f32(2.0 / 127.0));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        // amax 127 gives d = 1 exactly, so x*id == x and roundf decides: 2.5 → 3, -2.5 → -3.
        let mut x = vec![0.0; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.5;
        let mut q = [BlockQ8_0::ZERO];
        quantize_row_q8_0_ref(&x, &mut q);
        assert_eq!(&q[0].qs[..4], &[127, 3, -3, 1]);
    }

    #[test]
    fn c_conversion_semantics() {
        assert_eq!(c_float_to_byte(7.9), 7);
        assert_eq!(c_float_to_byte(-1.5), 0xff); // truncates to -1, low byte
        assert_eq!(c_float_to_byte(200.0), 200); // wraps instead of saturating
        assert_eq!(c_float_to_byte(f32::INFINITY), 0);
        assert_eq!(c_float_to_byte(f32::NEG_INFINITY), 0);
        assert_eq!(c_float_to_byte(f32::NAN), 0);
        assert_eq!(c_float_to_byte(3.0e9), 0);
    }

    #[test]
    fn overflowing_inverse_scale_writes_llama_cpp_bytes() {
        // amax 1e-38: d = amax/127 is subnormal and 1/d overflows to inf, so x*id is ±inf (or
        // NaN for exact zeros). llama.cpp (GCC, x86-64) stores code 0 and scale 0 there.
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.5) * 1e-38 / 16.5).collect();
        let mut q = [BlockQ8_0::ZERO];
        quantize_row_q8_0_ref(&x, &mut q);
        assert_eq!(q[0].d.to_bits(), 0);
        assert!(q[0].qs.iter().all(|&v| v == 0));
    }

    #[test]
    fn dot_matches_dequantized_f64() {
        let n = 32 * 128;
        let mut rng = Rng(5);
        for (name, w) in cases(n) {
            let a: Vec<f32> = (0..n).map(|_| rng.gauss()).collect();
            let mut qw = vec![BlockQ8_0::ZERO; n / 32];
            let mut qa = vec![BlockQ8_0::ZERO; n / 32];
            quantize_row_q8_0_ref(&w, &mut qw);
            quantize_row_q8_0(&a, &mut qa);
            let (mut dw, mut da) = (vec![0.0; n], vec![0.0; n]);
            dequantize_row_q8_0(&qw, &mut dw);
            dequantize_row_q8_0(&qa, &mut da);
            let (exact, scale) = dot_f64(&dw, &da);
            let got = vec_dot_q8_0_q8_0_ref(&qw, &qa) as f64;
            assert!(
                (got - exact).abs() <= 1e-5 * scale + 1e-30,
                "{name}: {got} vs {exact}"
            );
        }
    }
}
