//! The embedded Llama forward pass: hyperparameters from GGUF metadata ([`config`]), tensors
//! borrowed from the memory map in their stored type ([`weights`]), and batched evaluation of a
//! token chunk ([`forward`]) with llama.cpp's numerics.
pub mod config;
mod error;
pub mod evaluator;
pub mod forward;
mod kernels;
mod kv_cache;
mod mm_float;
mod mm_kquant;
#[cfg(target_arch = "x86_64")]
mod mm_kquant_avx2;
mod mm_legacy;
mod schedule;
pub mod weights;

pub use config::LlamaConfig;
pub use error::ModelError;
pub use evaluator::{
    load_on, BaseRecord, Decoder, Device, DeviceScore, Evaluator, InputSink, SavedScore,
};
pub use forward::{EvalOptions, KvType, Model, Session, SessionOptions};
pub use weights::DequantizedTensors;

/// K-quant matmul entry points with an explicit kernel variant, for `benches/kquant_matmul.rs`
/// only: not part of the supported API.
#[doc(hidden)]
pub use mm_kquant::bench as mm_kquant_bench;
