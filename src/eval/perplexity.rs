//! Perplexity (to be written).
