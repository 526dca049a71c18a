//! AVX2 + FMA + F16C kernels (x86-64), selected at run time by [`super::kernels`].
//!
//! Layout: [`kquant`] holds the K-quant row quantizers (the lane-per-sub-block scale search),
//! [`rows`] the Q8_0/Q8_K quantizers, the dequantizers and the f16/bf16 row conversions, [`dot`]
//! the dot products, [`legacy`] the Q4_0/Q4_1/Q5_0/Q5_1 reference quantizers, [`lowbit`] the
//! Q2_K/Q3_K quantizers and [`iq4`] the IQ4_NL/IQ4_XS quantizers. Their functions are `unsafe`
//! `#[target_feature]` functions; this file wraps each in a safe function and collects them in
//! [`KERNELS`]. Entries not listed there (the legacy importance-weighted quantizers) fall back
//! to the scalar reference.
//!
//! Soundness: the wrappers are private and reachable only through [`KERNELS`], which
//! `super::x86_64_avx2` hands out only after `is_x86_feature_detected!` has confirmed AVX2, FMA
//! and F16C. A NEON table would sit beside this file with the same shape.
//!
//! Contract (checked by `tests/simd_vs_scalar.rs`): quantizers and dequantizers are
//! bit-identical to [`super::scalar::SCALAR`]; dot products differ only by f32 rounding.
// Each kernel body is one `unsafe` block covering its pointer loads and stores. Since Rust 1.87
// the register-only intrinsics are safe inside `#[target_feature]` functions, so the small
// helpers' blocks (kept uniform, each with its SAFETY line) would otherwise warn as unneeded.
#![allow(unused_unsafe)]

mod dot;
mod iq4;
mod kquant;
mod legacy;
mod lowbit;
mod q8_1;
mod rows;

use half::{bf16, f16};

use super::scalar::SCALAR;
use super::Kernels;
use crate::block::iq4_nl::BlockIQ4NL;
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
use crate::block::q8_1::BlockQ8_1;
use crate::block::q8_k::BlockQ8K;

/// The AVX2 table. Only `super::x86_64_avx2` may hand it out, and only after detecting AVX2,
/// FMA and F16C: every entry below relies on that.
pub(super) static KERNELS: Kernels = Kernels {
    name: "avx2",
    f32_to_f16_row,
    f16_to_f32_row,
    f32_to_bf16_row,
    bf16_to_f32_row,
    vec_dot_f32,
    vec_dot_f16_f32,
    vec_dot_bf16_f32,
    quantize_row_q4_0,
    quantize_row_q4_1,
    quantize_row_q5_0,
    quantize_row_q5_1,
    dequantize_row_q4_0,
    vec_dot_q4_0_q8_0,
    dequantize_row_q4_1,
    vec_dot_q4_1_q8_0,
    dequantize_row_q5_0,
    vec_dot_q5_0_q8_0,
    dequantize_row_q5_1,
    vec_dot_q5_1_q8_0,
    quantize_row_q8_0,
    dequantize_row_q8_0,
    vec_dot_q8_0_q8_0,
    vec_dot_q4_1_q8_1,
    vec_dot_q5_1_q8_1,
    quantize_row_q8_k,
    dequantize_row_q8_k,
    quantize_row_q2_k,
    quantize_row_q2_k_imatrix,
    dequantize_row_q2_k,
    vec_dot_q2_k_q8_k,
    quantize_row_q3_k,
    quantize_row_q3_k_imatrix,
    dequantize_row_q3_k,
    vec_dot_q3_k_q8_k,
    quantize_row_q4_k,
    quantize_row_q4_k_imatrix,
    dequantize_row_q4_k,
    vec_dot_q4_k_q8_k,
    quantize_row_q5_k,
    quantize_row_q5_k_imatrix,
    dequantize_row_q5_k,
    vec_dot_q5_k_q8_k,
    quantize_row_q6_k,
    quantize_row_q6_k_imatrix,
    dequantize_row_q6_k,
    vec_dot_q6_k_q8_k,
    quantize_row_iq4_nl,
    quantize_row_iq4_nl_imatrix,
    dequantize_row_iq4_nl,
    vec_dot_iq4_nl_q8_0,
    quantize_row_iq4_xs,
    quantize_row_iq4_xs_imatrix,
    dequantize_row_iq4_xs,
    vec_dot_iq4_xs_q8_k,
    ..SCALAR
};

/// Defines safe wrappers around `#[target_feature]` kernels.
macro_rules! wrap {
    ($($name:ident = $module:ident :: $target:ident ( $($arg:ident : $ty:ty),* ) $(-> $ret:ty)?;)*) => {$(
        fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: reachable only through `KERNELS`, which is handed out only after
            // AVX2, FMA and F16C were detected (`super::x86_64_avx2`); the kernel checks
            // its slice lengths itself.
            unsafe { $module::$target($($arg),*) }
        }
    )*};
}

wrap! {
    f32_to_f16_row = rows::f32_to_f16_row(x: &[f32], y: &mut [f16]);
    f16_to_f32_row = rows::f16_to_f32_row(x: &[f16], y: &mut [f32]);
    f32_to_bf16_row = rows::f32_to_bf16_row(x: &[f32], y: &mut [bf16]);
    bf16_to_f32_row = rows::bf16_to_f32_row(x: &[bf16], y: &mut [f32]);
    vec_dot_f32 = dot::vec_dot_f32(x: &[f32], y: &[f32]) -> f32;
    vec_dot_f16_f32 = dot::vec_dot_f16_f32(x: &[f16], y: &[f32]) -> f32;
    vec_dot_bf16_f32 = dot::vec_dot_bf16_f32(x: &[bf16], y: &[f32]) -> f32;
    quantize_row_q4_0 = legacy::quantize_row_q4_0(x: &[f32], y: &mut [BlockQ4_0]);
    quantize_row_q4_1 = legacy::quantize_row_q4_1(x: &[f32], y: &mut [BlockQ4_1]);
    quantize_row_q5_0 = legacy::quantize_row_q5_0(x: &[f32], y: &mut [BlockQ5_0]);
    quantize_row_q5_1 = legacy::quantize_row_q5_1(x: &[f32], y: &mut [BlockQ5_1]);
    dequantize_row_q4_0 = rows::dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]);
    vec_dot_q4_0_q8_0 = dot::vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32;
    dequantize_row_q4_1 = rows::dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]);
    vec_dot_q4_1_q8_0 = dot::vec_dot_q4_1_q8_0(x: &[BlockQ4_1], y: &[BlockQ8_0]) -> f32;
    dequantize_row_q5_0 = rows::dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]);
    vec_dot_q5_0_q8_0 = dot::vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32;
    dequantize_row_q5_1 = rows::dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]);
    vec_dot_q5_1_q8_0 = dot::vec_dot_q5_1_q8_0(x: &[BlockQ5_1], y: &[BlockQ8_0]) -> f32;
    quantize_row_q8_0 = rows::quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]);
    dequantize_row_q8_0 = rows::dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]);
    vec_dot_q8_0_q8_0 = dot::vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32;
    vec_dot_q4_1_q8_1 = q8_1::vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32;
    vec_dot_q5_1_q8_1 = q8_1::vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32;
    quantize_row_q8_k = rows::quantize_row_q8_k(x: &[f32], y: &mut [BlockQ8K]);
    dequantize_row_q8_k = rows::dequantize_row_q8_k(x: &[BlockQ8K], y: &mut [f32]);
    quantize_row_q2_k = lowbit::quantize_row_q2_k(x: &[f32], y: &mut [BlockQ2K]);
    quantize_row_q2_k_imatrix = lowbit::quantize_row_q2_k_imatrix(x: &[f32], y: &mut [BlockQ2K], qw: &[f32]);
    dequantize_row_q2_k = rows::dequantize_row_q2_k(x: &[BlockQ2K], y: &mut [f32]);
    vec_dot_q2_k_q8_k = dot::vec_dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32;
    quantize_row_q3_k = lowbit::quantize_row_q3_k(x: &[f32], y: &mut [BlockQ3K]);
    quantize_row_q3_k_imatrix = lowbit::quantize_row_q3_k_imatrix(x: &[f32], y: &mut [BlockQ3K], qw: &[f32]);
    dequantize_row_q3_k = rows::dequantize_row_q3_k(x: &[BlockQ3K], y: &mut [f32]);
    vec_dot_q3_k_q8_k = dot::vec_dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32;
    quantize_row_q4_k = kquant::quantize_row_q4_k(x: &[f32], y: &mut [BlockQ4K]);
    quantize_row_q4_k_imatrix = kquant::quantize_row_q4_k_imatrix(x: &[f32], y: &mut [BlockQ4K], qw: &[f32]);
    dequantize_row_q4_k = rows::dequantize_row_q4_k(x: &[BlockQ4K], y: &mut [f32]);
    vec_dot_q4_k_q8_k = dot::vec_dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32;
    quantize_row_q5_k = kquant::quantize_row_q5_k(x: &[f32], y: &mut [BlockQ5K]);
    quantize_row_q5_k_imatrix = kquant::quantize_row_q5_k_imatrix(x: &[f32], y: &mut [BlockQ5K], qw: &[f32]);
    dequantize_row_q5_k = rows::dequantize_row_q5_k(x: &[BlockQ5K], y: &mut [f32]);
    vec_dot_q5_k_q8_k = dot::vec_dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32;
    quantize_row_q6_k = kquant::quantize_row_q6_k(x: &[f32], y: &mut [BlockQ6K]);
    quantize_row_q6_k_imatrix = kquant::quantize_row_q6_k_imatrix(x: &[f32], y: &mut [BlockQ6K], qw: &[f32]);
    dequantize_row_q6_k = rows::dequantize_row_q6_k(x: &[BlockQ6K], y: &mut [f32]);
    vec_dot_q6_k_q8_k = dot::vec_dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32;
    quantize_row_iq4_nl = iq4::quantize_row_iq4_nl(x: &[f32], y: &mut [BlockIQ4NL]);
    quantize_row_iq4_nl_imatrix = iq4::quantize_row_iq4_nl_imatrix(x: &[f32], y: &mut [BlockIQ4NL], qw: &[f32]);
    dequantize_row_iq4_nl = rows::dequantize_row_iq4_nl(x: &[BlockIQ4NL], y: &mut [f32]);
    vec_dot_iq4_nl_q8_0 = dot::vec_dot_iq4_nl_q8_0(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32;
    quantize_row_iq4_xs = iq4::quantize_row_iq4_xs(x: &[f32], y: &mut [BlockIQ4XS]);
    quantize_row_iq4_xs_imatrix = iq4::quantize_row_iq4_xs_imatrix(x: &[f32], y: &mut [BlockIQ4XS], qw: &[f32]);
    dequantize_row_iq4_xs = rows::dequantize_row_iq4_xs(x: &[BlockIQ4XS], y: &mut [f32]);
    vec_dot_iq4_xs_q8_k = dot::vec_dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32;
}
