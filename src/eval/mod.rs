//! Evaluation: perplexity.
pub mod perplexity;
