//! Matrix products of the 32-wide legacy formats: Q4_0/Q5_0 times Q8_0 activations, Q4_1/Q5_1 times Q8_1.
//!
//! Entry points called by `kernels::matmul`: `out[t * rows + r] = w[r] · a[t]`. Each currently
//! uses the generic row-by-row driver [`mm`]; a register-tiled multi-token kernel replaces it
//! where one exists (checked against the row-by-row dot products in this file's tests).
use super::kernels::mm;
use longquant_quants::block::{
    q4_0::BlockQ4_0, q4_1::BlockQ4_1, q5_0::BlockQ5_0, q5_1::BlockQ5_1, q8_0::BlockQ8_0,
    q8_1::BlockQ8_1,
};
use longquant_quants::simd::Kernels;

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ4_0 weights (bpr blocks per row).
pub(crate) fn matmul_q4_0(
    k: &Kernels,
    w: &[BlockQ4_0],
    bpr: usize,
    a: &[BlockQ8_0],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, bpr, n_tok, rows, out, |wr, t| {
        (k.vec_dot_q4_0_q8_0)(wr, &a[t * bpr..(t + 1) * bpr])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ5_0 weights (bpr blocks per row).
pub(crate) fn matmul_q5_0(
    k: &Kernels,
    w: &[BlockQ5_0],
    bpr: usize,
    a: &[BlockQ8_0],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, bpr, n_tok, rows, out, |wr, t| {
        (k.vec_dot_q5_0_q8_0)(wr, &a[t * bpr..(t + 1) * bpr])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ4_1 weights (bpr blocks per row).
pub(crate) fn matmul_q4_1(
    k: &Kernels,
    w: &[BlockQ4_1],
    bpr: usize,
    a: &[BlockQ8_1],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, bpr, n_tok, rows, out, |wr, t| {
        (k.vec_dot_q4_1_q8_1)(wr, &a[t * bpr..(t + 1) * bpr])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ5_1 weights (bpr blocks per row).
pub(crate) fn matmul_q5_1(
    k: &Kernels,
    w: &[BlockQ5_1],
    bpr: usize,
    a: &[BlockQ8_1],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, bpr, n_tok, rows, out, |wr, t| {
        (k.vec_dot_q5_1_q8_1)(wr, &a[t * bpr..(t + 1) * bpr])
    })
}
