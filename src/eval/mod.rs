//! Evaluation of a model on text: [`perplexity`] with llama.cpp's method.
pub mod perplexity;
