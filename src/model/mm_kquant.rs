//! Matrix products of K-quant weights (Q4_K, Q5_K, Q6_K) times Q8_K activations.
//!
//! Entry points called by `kernels::matmul`: `out[t * rows + r] = w[r] · a[t]`. Each currently
//! uses the generic row-by-row driver [`mm`]; a register-tiled multi-token kernel replaces it
//! where one exists (checked against the row-by-row dot products in this file's tests).
use super::kernels::mm;
use longquant_quants::block::{q4_k::BlockQ4K, q5_k::BlockQ5K, q6_k::BlockQ6K, q8_k::BlockQ8K};
use longquant_quants::simd::Kernels;

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ4K weights (bpr blocks per row).
pub(crate) fn matmul_q4k(
    k: &Kernels,
    w: &[BlockQ4K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, bpr, n_tok, rows, out, |wr, t| {
        (k.vec_dot_q4_k_q8_k)(wr, &a[t * bpr..(t + 1) * bpr])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ5K weights (bpr blocks per row).
pub(crate) fn matmul_q5k(
    k: &Kernels,
    w: &[BlockQ5K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, bpr, n_tok, rows, out, |wr, t| {
        (k.vec_dot_q5_k_q8_k)(wr, &a[t * bpr..(t + 1) * bpr])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for BlockQ6K weights (bpr blocks per row).
pub(crate) fn matmul_q6k(
    k: &Kernels,
    w: &[BlockQ6K],
    bpr: usize,
    a: &[BlockQ8K],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, bpr, n_tok, rows, out, |wr, t| {
        (k.vec_dot_q6_k_q8_k)(wr, &a[t * bpr..(t + 1) * bpr])
    })
}
