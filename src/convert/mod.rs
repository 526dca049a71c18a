//! Hugging Face Llama checkpoint → GGUF conversion, and GGUF → GGUF requantization.
//!
//! - [`config`]: `config.json` (transformers 4 and 5 spellings) → hyperparameters, rope scaling.
//! - [`names`]: HF ↔ GGUF tensor names and the q/k rope permutation.
//! - [`mix`]: per-tensor target types for a file type, as llama.cpp's llama-quantize picks them.
//! - [`tokenizer`]: `tokenizer.ggml.*` metadata as llama.cpp's converter derives it.
//! - [`pipeline`]: the streaming one-pass conversion ([`convert`]).
//! - [`quantize`]: GGUF → GGUF with the same mixes ([`quantize()`](quantize::quantize)).
//! - [`stream`]: the tensor-streaming core both share, over a [`stream::TensorSource`].
//! - [`importance`]: importance matrices (`--imatrix`) as llama-quantize applies them.
//! - [`split`]: llama.cpp's split layout (`-00001-of-0000N.gguf`).

pub mod config;
pub mod controls;
pub mod importance;
pub mod mix;
pub mod names;
pub mod pipeline;
mod pre_hashes;
pub mod quantize;
pub mod sha256;
pub mod split;
pub mod stream;
pub mod tokenizer;

pub use mix::FileType;
pub use pipeline::{convert, ConvertError, ConvertOptions, ConvertReport, Progress, TypeChoice};
