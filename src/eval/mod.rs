//! Evaluation of a model on text: [`perplexity`] with llama.cpp's method, KL divergence
//! ([`kld`]), importance-matrix collection ([`imatrix_collect`]).
mod chunks;
pub mod imatrix_collect;
pub mod kld;
pub mod perplexity;
pub mod plot;
pub mod sweep;
