//! Upper bounds applied to every count and length read from a file.
//!
//! The defaults follow ggml's own reader (`ggml/src/gguf.cpp`): strings up to 1 GiB, arrays up to 2^30
//! elements, at most 4 dimensions, tensor names shorter than `GGML_MAX_NAME` (64 bytes including the
//! terminating NUL). They exist so that a corrupt or hostile header is refused before we allocate
//! memory for it, not to constrain legitimate files.

/// Upper bounds for values read from GGUF and safetensors headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Longest string (key, value or tensor name) in bytes.
    pub max_string_len: u64,
    /// Most elements in one GGUF array.
    pub max_array_len: u64,
    /// Most dimensions of a GGUF tensor (ggml's `GGML_MAX_DIMS`).
    pub max_n_dims: u32,
    /// Longest GGUF tensor name in bytes (ggml's `GGML_MAX_NAME` minus the NUL terminator).
    pub max_tensor_name_len: usize,
    /// Deepest nesting of GGUF arrays (an array of scalars has depth 1).
    pub max_array_depth: u32,
    /// Largest safetensors JSON header in bytes (the `safetensors` crate uses the same bound).
    pub max_safetensors_header: u64,
    /// Most tensors in one file (GGUF) or one model (safetensors, all shards together).
    pub max_tensors: u64,
    /// Most metadata key/value pairs in one GGUF file.
    pub max_kv: u64,
    /// Largest product of the non-zero dimensions of a GGUF tensor that has a zero dimension (and
    /// so no data). A tensor with data is bounded by the file's length; one without is not, and a
    /// `[0, 2^62]` tensor would have 2^62 empty rows for any code that walks rows.
    pub max_empty_tensor_extent: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string_len: 1 << 30,
            max_array_len: 1 << 30,
            max_n_dims: 4,
            max_tensor_name_len: 63,
            max_array_depth: 8,
            max_safetensors_header: 100_000_000,
            // Far above any real model (Llama-3-405B has ~1,100 tensors, large MoE models tens of
            // thousands) but low enough that a bogus count is refused before any allocation.
            max_tensors: 1 << 24,
            max_kv: 1 << 20,
            // Above any real dimension (vocabularies are below 2^18 tokens, widths below 2^16).
            max_empty_tensor_extent: 1 << 24,
        }
    }
}
