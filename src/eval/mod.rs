//! Evaluation of a model on text: [`perplexity`] with llama.cpp's method.
pub mod kld;
pub mod perplexity;
pub mod plot;
pub mod sweep;
