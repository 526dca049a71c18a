//! longquant: Hugging Face Llama checkpoints to GGUF, quantized and validated.
//!
//! The library behind the `longquant` command: [`convert`] (architecture mapping, mixes,
//! tokenizer metadata, the streaming conversion, requantization), [`export`] (GGUF back to a
//! Hugging Face folder), [`inspect`] (summaries of model files), [`model`] (the CPU forward
//! pass and the device-independent [`model::Evaluator`]), `cuda` (the GPU backend, feature
//! `cuda`), [`eval`] (perplexity, KLD, sweeps, imatrix collection), [`imatrix`] (the importance
//! matrix formats), [`recall`] (long-context retrieval), [`bench`] (llama-bench's speed tests), [`tokenizer`] and [`chat_template`].
pub use longquant_formats as formats;
pub use longquant_quants as quants;

pub mod bench;
pub mod chat_template;
pub mod convert;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod eval;
pub mod export;
pub mod imatrix;
pub mod inspect;
pub mod interrupt;
pub mod model;
pub mod recall;
pub mod tokenizer;

/// An operation refused for safety: the output exists and `--force` was not given, the output
/// would overwrite the input, or the checkpoint is a pickle. Distinct from invalid input so the
/// CLI can give it its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);
