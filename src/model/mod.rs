//! Llama forward pass (to be written).
