use crate::BlockFormat;

/// Why a quantization or kernel call was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    /// The row length is not a whole number of the format's blocks.
    #[error("row length {len} is not a multiple of the {format:?} block size {block}")]
    RowNotBlockMultiple {
        /// Format requested.
        format: BlockFormat,
        /// Weights in the row.
        len: usize,
        /// Block size of the format.
        block: usize,
    },
    /// An input or output buffer has the wrong length.
    #[error("buffer length mismatch: expected {expected} {what}, got {got}")]
    LengthMismatch {
        /// What the buffer holds ("weights", "bytes", "importance weights").
        what: &'static str,
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// A NaN or infinity in the input; quantizing it would silently corrupt the block.
    #[error("non-finite value {value} at index {index}")]
    NonFinite {
        /// Flat index of the first offending value.
        index: usize,
        /// The value (NaN or ±inf).
        value: f32,
    },
    /// A NaN, infinity or negative value in an importance matrix (ggml's weighting assumes
    /// finite, non-negative importances).
    #[error("invalid importance weight {value} at index {index}")]
    BadImportance {
        /// Index into the importance vector.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The operation is not defined for this format (e.g. quantizing *to* Q8_K with an importance matrix).
    #[error("{op} is not supported for {format:?}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The format.
        format: BlockFormat,
    },
    /// A byte buffer is not aligned for the block type.
    #[error("buffer is not aligned for {format:?} blocks")]
    Misaligned {
        /// The format.
        format: BlockFormat,
    },
}
