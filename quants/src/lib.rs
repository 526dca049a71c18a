//! Block formats, reference quantizers and kernels for ggml's weight types.
//!
//! Layout: one file per block format under [`block`] (struct, scalar reference quantize /
//! dequantize / dot, tests beside it); SIMD bodies under [`simd`], chosen once at run time;
//! [`tensor`] is the checked, byte-level, row-parallel API that the converter and the forward
//! pass call. This crate does no file I/O.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod block;
mod error;
pub mod simd;
pub mod tensor;

pub use block::BlockFormat;
pub use error::QuantError;

/// Weights per K-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;
