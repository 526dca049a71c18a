//! The portable table: every entry is the scalar reference from [`crate::block`].

use super::Kernels;
use crate::block::{
    float, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, q8_1, q8_k,
};

/// Scalar reference kernels. A SIMD table starts from this one with struct-update syntax
/// (`Kernels { name: "avx2", quantize_row_q8_0: ..., ..SCALAR }`) so an entry it does not
/// accelerate falls back to the reference.
pub const SCALAR: Kernels = Kernels {
    name: "scalar",

    f32_to_f16_row: float::f32_to_f16_row,
    f16_to_f32_row: float::f16_to_f32_row,
    f32_to_bf16_row: float::f32_to_bf16_row,
    bf16_to_f32_row: float::bf16_to_f32_row,
    vec_dot_f32: float::vec_dot_f32,
    vec_dot_f16_f32: float::vec_dot_f16_f32,
    vec_dot_bf16_f32: float::vec_dot_bf16_f32,

    quantize_row_q4_0: q4_0::quantize_row_q4_0_ref,
    quantize_row_q4_0_imatrix: q4_0::quantize_row_q4_0_imatrix,
    dequantize_row_q4_0: q4_0::dequantize_row_q4_0,
    vec_dot_q4_0_q8_0: q4_0::vec_dot_q4_0_q8_0_ref,

    quantize_row_q4_1: q4_1::quantize_row_q4_1_ref,
    quantize_row_q4_1_imatrix: q4_1::quantize_row_q4_1_imatrix,
    dequantize_row_q4_1: q4_1::dequantize_row_q4_1,
    vec_dot_q4_1_q8_0: q4_1::vec_dot_q4_1_q8_0_ref,

    quantize_row_q5_0: q5_0::quantize_row_q5_0_ref,
    quantize_row_q5_0_imatrix: q5_0::quantize_row_q5_0_imatrix,
    dequantize_row_q5_0: q5_0::dequantize_row_q5_0,
    vec_dot_q5_0_q8_0: q5_0::vec_dot_q5_0_q8_0_ref,

    quantize_row_q5_1: q5_1::quantize_row_q5_1_ref,
    quantize_row_q5_1_imatrix: q5_1::quantize_row_q5_1_imatrix,
    dequantize_row_q5_1: q5_1::dequantize_row_q5_1,
    vec_dot_q5_1_q8_0: q5_1::vec_dot_q5_1_q8_0_ref,

    quantize_row_q8_0: q8_0::quantize_row_q8_0_ref,
    dequantize_row_q8_0: q8_0::dequantize_row_q8_0,
    vec_dot_q8_0_q8_0: q8_0::vec_dot_q8_0_q8_0_ref,

    quantize_row_q8_1: q8_1::quantize_row_q8_1,
    vec_dot_q4_1_q8_1: q8_1::vec_dot_q4_1_q8_1_ref,
    vec_dot_q5_1_q8_1: q8_1::vec_dot_q5_1_q8_1_ref,

    quantize_row_q8_k: q8_k::quantize_row_q8_k_ref,
    dequantize_row_q8_k: q8_k::dequantize_row_q8_k,

    quantize_row_q2_k: q2_k::quantize_row_q2_k_ref,
    quantize_row_q2_k_imatrix: q2_k::quantize_row_q2_k_imatrix,
    dequantize_row_q2_k: q2_k::dequantize_row_q2_k,
    vec_dot_q2_k_q8_k: q2_k::vec_dot_q2_k_q8_k_ref,

    quantize_row_q3_k: q3_k::quantize_row_q3_k_ref,
    quantize_row_q3_k_imatrix: q3_k::quantize_row_q3_k_imatrix,
    dequantize_row_q3_k: q3_k::dequantize_row_q3_k,
    vec_dot_q3_k_q8_k: q3_k::vec_dot_q3_k_q8_k_ref,

    quantize_row_q4_k: q4_k::quantize_row_q4_k_ref,
    quantize_row_q4_k_imatrix: q4_k::quantize_row_q4_k_imatrix,
    dequantize_row_q4_k: q4_k::dequantize_row_q4_k,
    vec_dot_q4_k_q8_k: q4_k::vec_dot_q4_k_q8_k_ref,

    quantize_row_q5_k: q5_k::quantize_row_q5_k_ref,
    quantize_row_q5_k_imatrix: q5_k::quantize_row_q5_k_imatrix,
    dequantize_row_q5_k: q5_k::dequantize_row_q5_k,
    vec_dot_q5_k_q8_k: q5_k::vec_dot_q5_k_q8_k_ref,

    quantize_row_q6_k: q6_k::quantize_row_q6_k_ref,
    quantize_row_q6_k_imatrix: q6_k::quantize_row_q6_k_imatrix,
    dequantize_row_q6_k: q6_k::dequantize_row_q6_k,
    vec_dot_q6_k_q8_k: q6_k::vec_dot_q6_k_q8_k_ref,

    quantize_row_iq4_nl: iq4_nl::quantize_row_iq4_nl,
    quantize_row_iq4_nl_imatrix: iq4_nl::quantize_row_iq4_nl_imatrix,
    dequantize_row_iq4_nl: iq4_nl::dequantize_row_iq4_nl,
    vec_dot_iq4_nl_q8_0: iq4_nl::vec_dot_iq4_nl_q8_0_ref,

    quantize_row_iq4_xs: iq4_xs::quantize_row_iq4_xs_ref,
    quantize_row_iq4_xs_imatrix: iq4_xs::quantize_row_iq4_xs_imatrix,
    dequantize_row_iq4_xs: iq4_xs::dequantize_row_iq4_xs,
    vec_dot_iq4_xs_q8_k: iq4_xs::vec_dot_iq4_xs_q8_k_ref,
};
