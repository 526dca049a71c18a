//! Hugging Face Llama checkpoint → GGUF conversion.
//!
//! - [`config`]: `config.json` (transformers 4 and 5 spellings) → hyperparameters, rope scaling.
//! - [`names`]: HF ↔ GGUF tensor names and the q/k rope permutation.
//! - [`mix`]: per-tensor target types for a file type, as llama.cpp's llama-quantize picks them.
//! - [`tokenizer`]: `tokenizer.ggml.*` metadata as llama.cpp's converter derives it.
//! - [`pipeline`]: the streaming one-pass conversion ([`convert`]).

pub mod config;
pub mod mix;
pub mod names;
pub mod pipeline;
mod pre_hashes;
mod sha256;
pub mod tokenizer;

pub use mix::FileType;
pub use pipeline::{convert, ConvertError, ConvertOptions, ConvertReport, Progress, TypeChoice};
