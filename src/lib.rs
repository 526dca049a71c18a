//! longquant: Hugging Face Llama checkpoints to GGUF, quantized and validated.
pub use longquant_formats as formats;
pub use longquant_quants as quants;
