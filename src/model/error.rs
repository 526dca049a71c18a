//! Why a model could not be loaded or evaluated.
use longquant_formats::GgmlType;

/// Errors of the forward pass: bad or unsupported model files, and bad inputs.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `general.architecture` is not one we can run.
    #[error("unsupported architecture `{0}` (supported: llama)")]
    UnsupportedArchitecture(String),
    /// A required hyperparameter is absent or has the wrong type.
    #[error("metadata key `{key}` is missing or not a {expected}")]
    MissingKey {
        /// The GGUF key.
        key: String,
        /// What type was expected.
        expected: &'static str,
    },
    /// Hyperparameters that cannot describe a working model (zero sizes, heads not dividing the width, ...).
    #[error("invalid hyperparameters: {0}")]
    InvalidConfig(String),
    /// A hyperparameter beyond what any model uses (the limits of
    /// [`crate::convert::config::limits`]), refused before anything is sized by it.
    #[error(
        "metadata key `{key}` = {value} exceeds the limit {limit} (no real model is this large)"
    )]
    TooLarge {
        /// The GGUF key.
        key: String,
        /// The value in the file.
        value: u64,
        /// The largest accepted value.
        limit: u64,
    },
    /// A feature named in the metadata that this forward pass does not implement.
    #[error("unsupported model feature: {0}")]
    UnsupportedFeature(String),
    /// A tensor the architecture needs is absent.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the hyperparameters.
    #[error("tensor `{tensor}` has shape {got:?} but the metadata implies {expected:?} (innermost first)")]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Shape implied by the metadata.
        expected: Vec<u64>,
        /// Shape in the file.
        got: Vec<u64>,
    },
    /// A tensor is stored in a type the forward pass cannot compute with.
    #[error("tensor `{tensor}` has type {ty:?}, which the forward pass does not support")]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// Its ggml type.
        ty: GgmlType,
    },
    /// Tensor data is not aligned for its block type (GGUF aligns data to 32 bytes, so this
    /// means an unusual `general.alignment`).
    #[error("tensor `{0}` data is misaligned for its block type")]
    Misaligned(String),
    /// A token id is not in the vocabulary.
    #[error("token id {id} at position {pos} is outside the vocabulary of {n_vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Its position in the input.
        pos: usize,
        /// Vocabulary size.
        n_vocab: usize,
    },
    /// No tokens to evaluate.
    #[error("no tokens to evaluate")]
    EmptyInput,
    /// A sequence longer than the model's trained context.
    #[error("sequence of {requested} tokens is longer than the model's context length {max}")]
    ContextTooLong {
        /// Tokens requested.
        requested: usize,
        /// `{arch}.context_length`.
        max: usize,
    },
    /// The device backend (GPU) failed.
    #[error("{0}")]
    Device(String),
}
