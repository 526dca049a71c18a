//! Q8_K (stub).
/// Q8_K activation block.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {}
/// Mirrors ggml's `quantize_row_q8_K_ref`.
pub fn quantize_row_q8_k_ref(_x: &[f32], _y: &mut [BlockQ8K]) { todo!() }
/// Dequantize.
pub fn dequantize_row_q8_k(_x: &[BlockQ8K], _y: &mut [f32]) { todo!() }
