//! Matrix products of float weights (F32, F16, BF16) with f32 activations (rounded through the
//! weight's type by `kernels::quantize_acts` for F16/BF16, as ggml converts them).
//!
//! Entry points called by `kernels::matmul`: `out[t * rows + r] = w[r] · a[t]`. Each currently
//! uses the generic row-by-row driver [`mm`]; a register-tiled multi-token kernel replaces it
//! where one exists.
use super::kernels::mm;
use half::{bf16, f16};
use longquant_quants::simd::Kernels;

/// `out[t * rows + r] = w[r] · a[t]` for f32 weights of `cols` values per row.
pub(crate) fn matmul_f32(
    k: &Kernels,
    w: &[f32],
    cols: usize,
    a: &[f32],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, cols, n_tok, rows, out, |wr, t| {
        (k.vec_dot_f32)(wr, &a[t * cols..(t + 1) * cols])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for f16 weights of `cols` values per row.
pub(crate) fn matmul_f16(
    k: &Kernels,
    w: &[f16],
    cols: usize,
    a: &[f32],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, cols, n_tok, rows, out, |wr, t| {
        (k.vec_dot_f16_f32)(wr, &a[t * cols..(t + 1) * cols])
    })
}

/// `out[t * rows + r] = w[r] · a[t]` for bf16 weights of `cols` values per row.
pub(crate) fn matmul_bf16(
    k: &Kernels,
    w: &[bf16],
    cols: usize,
    a: &[f32],
    n_tok: usize,
    rows: usize,
    out: &mut [f32],
) {
    mm(w, cols, n_tok, rows, out, |wr, t| {
        (k.vec_dot_bf16_f32)(wr, &a[t * cols..(t + 1) * cols])
    })
}
