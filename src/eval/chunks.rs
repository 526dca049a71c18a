//! The chunking rule shared by perplexity, KL divergence and importance-matrix collection
//! (llama.cpp's: the text is cut into whole chunks of `n_ctx` tokens, at least two of them, each
//! evaluated from a fresh state). Each caller maps [`ChunkError`] into its own error type.

/// Why a text and context cannot be cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkError {
    /// No tokens.
    EmptyText,
    /// `n_ctx` below the caller's minimum.
    ContextTooSmall(usize),
    /// `n_ctx` above the model's context length.
    ContextTooLong { requested: usize, max: usize },
    /// Fewer than two chunks of tokens.
    TooShort {
        tokens: usize,
        n_ctx: usize,
        needed: usize,
    },
}

/// Checks `n_ctx` against the text (`n_tokens`), the caller's minimum and the model's context
/// length; returns the number of chunks to evaluate (all whole chunks, or `max_chunks` clamped
/// to `1..=` that).
pub(crate) fn plan_chunks(
    n_tokens: usize,
    n_ctx: usize,
    min_ctx: usize,
    max_ctx: usize,
    max_chunks: Option<usize>,
) -> Result<usize, ChunkError> {
    if n_tokens == 0 {
        return Err(ChunkError::EmptyText);
    }
    if n_ctx < min_ctx {
        return Err(ChunkError::ContextTooSmall(n_ctx));
    }
    if n_ctx > max_ctx {
        return Err(ChunkError::ContextTooLong {
            requested: n_ctx,
            max: max_ctx,
        });
    }
    if n_tokens < 2 * n_ctx {
        return Err(ChunkError::TooShort {
            tokens: n_tokens,
            n_ctx,
            needed: 2 * n_ctx,
        });
    }
    let n_max = n_tokens / n_ctx;
    Ok(max_chunks.map_or(n_max, |c| c.clamp(1, n_max)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_and_refuses_as_llama_cpp() {
        assert_eq!(plan_chunks(0, 8, 4, 16, None), Err(ChunkError::EmptyText));
        assert_eq!(
            plan_chunks(100, 2, 4, 16, None),
            Err(ChunkError::ContextTooSmall(2))
        );
        assert_eq!(
            plan_chunks(100, 32, 4, 16, None),
            Err(ChunkError::ContextTooLong {
                requested: 32,
                max: 16
            })
        );
        assert_eq!(
            plan_chunks(15, 8, 4, 16, None),
            Err(ChunkError::TooShort {
                tokens: 15,
                n_ctx: 8,
                needed: 16
            })
        );
        assert_eq!(plan_chunks(100, 8, 4, 16, None), Ok(12));
        assert_eq!(plan_chunks(100, 8, 4, 16, Some(5)), Ok(5));
        assert_eq!(plan_chunks(100, 8, 4, 16, Some(0)), Ok(1));
        assert_eq!(plan_chunks(100, 8, 4, 16, Some(99)), Ok(12));
    }
}
