//! Q4_K (stub: signatures fixed by the crate contract; bodies to be written).
use super::q8_k::BlockQ8K;

/// Q4_K block. TODO(layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {}

/// Mirrors ggml's `quantize_row_Q4_K_ref`: `x.len() == y.len() * QK_K`.
pub fn quantize_row_q4_k_ref(_x: &[f32], _y: &mut [BlockQ4K]) { todo!() }
/// Importance-weighted quantization (ggml's `quantize_row_Q4_K_impl` with quant_weights); `qw.len() == x.len()`.
pub fn quantize_row_q4_k_imatrix(_x: &[f32], _y: &mut [BlockQ4K], _qw: &[f32]) { todo!() }
/// Dequantize `x` into `y` (`y.len() == x.len() * QK_K`).
pub fn dequantize_row_q4_k(_x: &[BlockQ4K], _y: &mut [f32]) { todo!() }
/// Reference dot product against Q8_K activations (`x.len() == y.len()`).
pub fn vec_dot_q4_k_q8_k_ref(_x: &[BlockQ4K], _y: &[BlockQ8K]) -> f32 { todo!() }
