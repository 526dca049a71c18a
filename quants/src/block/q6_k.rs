//! Q6_K (stub: signatures fixed by the crate contract; bodies to be written).
use super::q8_k::BlockQ8K;

/// Q6_K block. TODO(layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {}

/// Mirrors ggml's `quantize_row_Q6_K_ref`: `x.len() == y.len() * QK_K`.
pub fn quantize_row_q6_k_ref(_x: &[f32], _y: &mut [BlockQ6K]) { todo!() }
/// Importance-weighted quantization (ggml's `quantize_row_Q6_K_impl` with quant_weights); `qw.len() == x.len()`.
pub fn quantize_row_q6_k_imatrix(_x: &[f32], _y: &mut [BlockQ6K], _qw: &[f32]) { todo!() }
/// Dequantize `x` into `y` (`y.len() == x.len() * QK_K`).
pub fn dequantize_row_q6_k(_x: &[BlockQ6K], _y: &mut [f32]) { todo!() }
/// Reference dot product against Q8_K activations (`x.len() == y.len()`).
pub fn vec_dot_q6_k_q8_k_ref(_x: &[BlockQ6K], _y: &[BlockQ8K]) -> f32 { todo!() }
