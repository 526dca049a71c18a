//! The CUDA backend (feature `cuda`): the forward pass and scoring on one NVIDIA GPU
//! (compute capability 8.0 or later), behind [`crate::model::Evaluator`].
//!
//! cudarc loads the driver, NVRTC and cuBLAS at run time, so a build with `--features cuda`
//! needs no CUDA toolkit; the kernels ([`kernels.cu`](gpu)) are compiled by NVRTC for the GPU
//! present when a model is loaded. [`gpu`] is the device (context, stream, buffers, kernels,
//! cuBLAS); [`model`] the Llama forward pass on it.
pub mod gpu;
pub mod model;

pub use gpu::CudaError;
pub use model::CudaModel;
