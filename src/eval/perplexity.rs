//! Perplexity with llama.cpp's method (`tools/perplexity/perplexity.cpp`, `perplexity()`), so the
//! numbers can be set beside `llama-perplexity`'s:
//!
//! - the text is tokenized once, with BOS only if the model's `tokenizer.ggml.add_bos_token` asks;
//! - it is cut into `n_ctx`-token chunks (a partial last chunk is dropped), each evaluated from an
//!   empty state; when the model wants BOS, the first token of every chunk is replaced by BOS for
//!   evaluation (the scored targets are the original tokens);
//! - only the second half is scored: logits at positions `first = n_ctx/2 ..= n_ctx-2` predict
//!   tokens `first+1 ..= n_ctx-1` (`n_ctx - first - 1` tokens per chunk);
//! - NLL per token from a log-softmax with an f32 max and an f64 sum of `expf`; PPL = exp(mean
//!   NLL); the error is `sqrt(var(NLL)/(count-1)) · PPL` with `var = mean(NLL²) − mean(NLL)²`.
use super::chunks::plan_chunks;
use crate::model::{EvalOptions, Evaluator, ModelError};
use crate::tokenizer::{GgufTokenizer, TokenizerError};
use std::time::Instant;

/// Why perplexity could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    /// The forward pass failed (bad model, context too long, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The text has no tokens.
    #[error("the text is empty")]
    EmptyText,
    /// Fewer than two chunks' worth of tokens (llama.cpp's requirement).
    #[error("the text has {tokens} tokens; perplexity at context {n_ctx} needs at least {needed}")]
    TooShort {
        /// Tokens in the text.
        tokens: usize,
        /// Requested context.
        n_ctx: usize,
        /// Minimum (2 · n_ctx).
        needed: usize,
    },
    /// The context is too small to score anything.
    #[error("context {0} is too small (minimum 4)")]
    ContextTooSmall(usize),
    /// The context is longer than the model's trained context.
    #[error("context {requested} is longer than the model's context length {max}")]
    ContextTooLong {
        /// Requested context.
        requested: usize,
        /// The model's `context_length`.
        max: usize,
    },
}

/// Settings for [`perplexity`].
#[derive(Clone, Copy, Debug)]
pub struct PerplexityOptions {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Evaluate at most this many chunks (`None`: all whole chunks).
    pub max_chunks: Option<usize>,
    /// Forward-pass options (KV type).
    pub eval: EvalOptions,
}

/// Perplexity of the tokens whose position in the chunk falls in `[start, end)`.
#[derive(Clone, Debug, PartialEq)]
pub struct PositionBucket {
    /// First position (of the predicted token, within its chunk).
    pub start: usize,
    /// One past the last position.
    pub end: usize,
    /// Tokens scored in the bucket.
    pub n_tokens: usize,
    /// exp(mean NLL) over them.
    pub ppl: f64,
}

/// The result of a perplexity run.
#[derive(Clone, Debug)]
pub struct PerplexityResult {
    /// exp(mean NLL).
    pub ppl: f64,
    /// Standard error of the PPL estimate, as llama.cpp reports it.
    pub ppl_stderr: f64,
    /// Tokens scored.
    pub n_tokens_scored: usize,
    /// Tokens evaluated (chunks · n_ctx).
    pub n_tokens_evaluated: usize,
    /// Tokens in the whole text.
    pub n_tokens_text: usize,
    /// Context per chunk.
    pub n_ctx: usize,
    /// Wall-clock seconds spent evaluating.
    pub seconds: f64,
    /// Evaluated tokens per second (prompt throughput).
    pub tokens_per_second: f64,
    /// Mean NLL of each chunk's scored tokens.
    pub chunks: Vec<f64>,
    /// Perplexity by position bucket (non-empty buckets of [0,1K), [1K,4K), [4K,16K), [16K,64K), [64K,∞)).
    pub by_position: Vec<PositionBucket>,
}

const BUCKETS: [(usize, usize); 5] = [
    (0, 1024),
    (1024, 4096),
    (4096, 16384),
    (16384, 65536),
    (65536, usize::MAX),
];

pub use crate::model::evaluator::nll;

/// Tokenizes `text` as llama-perplexity does (BOS per the model, special tokens not parsed) and
/// runs [`perplexity_tokens`].
pub fn perplexity(
    model: &dyn Evaluator,
    tokenizer: &GgufTokenizer,
    text: &str,
    opts: &PerplexityOptions,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityResult, PerplexityError> {
    let tokens = tokenizer.encode(text, true, false)?;
    let bos = if tokenizer.add_bos() {
        tokenizer.bos()
    } else {
        None
    };
    perplexity_tokens(model, &tokens, bos, opts, progress)
}

impl From<super::chunks::ChunkError> for PerplexityError {
    fn from(e: super::chunks::ChunkError) -> Self {
        use super::chunks::ChunkError as C;
        match e {
            C::EmptyText => PerplexityError::EmptyText,
            C::ContextTooSmall(n) => PerplexityError::ContextTooSmall(n),
            C::ContextTooLong { requested, max } => {
                PerplexityError::ContextTooLong { requested, max }
            }
            C::TooShort {
                tokens,
                n_ctx,
                needed,
            } => PerplexityError::TooShort {
                tokens,
                n_ctx,
                needed,
            },
        }
    }
}

/// Perplexity of a tokenized text. `bos`: when `Some`, the first token of every chunk is
/// replaced by it for evaluation. `progress(done, total, running_ppl)` is called after each chunk.
pub fn perplexity_tokens(
    model: &dyn Evaluator,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &PerplexityOptions,
    progress: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityResult, PerplexityError> {
    let n_ctx = opts.n_ctx;
    let n_chunk = plan_chunks(
        tokens.len(),
        n_ctx,
        4,
        model.config().context_length,
        opts.max_chunks,
    )?;
    let first = n_ctx / 2;

    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut chunks = Vec::with_capacity(n_chunk);
    let mut bucket_sum = [0.0f64; BUCKETS.len()];
    let mut bucket_n = [0usize; BUCKETS.len()];
    let start = Instant::now();
    let mut chunk_tokens = vec![0u32; n_ctx];
    for c in 0..n_chunk {
        let orig = &tokens[c * n_ctx..(c + 1) * n_ctx];
        chunk_tokens.copy_from_slice(orig);
        if let Some(b) = bos {
            chunk_tokens[0] = b;
        }
        let (mut cs, mut cn) = (0.0f64, 0usize);
        // The last position has no target inside the chunk.
        model.eval_nll(
            &chunk_tokens,
            first,
            &orig[first + 1..],
            &opts.eval,
            &mut |pos, v| {
                cs += v;
                cn += 1;
                sum2 += v * v;
                let p = pos + 1;
                if let Some(i) = BUCKETS.iter().position(|&(a, b)| p >= a && p < b) {
                    bucket_sum[i] += v;
                    bucket_n[i] += 1;
                }
            },
        )?;
        sum += cs;
        count += cn;
        chunks.push(if cn > 0 { cs / cn as f64 } else { f64::NAN });
        progress(c + 1, n_chunk, (sum / count.max(1) as f64).exp());
    }
    let seconds = start.elapsed().as_secs_f64();
    let mean = sum / count as f64;
    let ppl = mean.exp();
    let var = sum2 / count as f64 - mean * mean;
    let ppl_stderr = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    let by_position = BUCKETS
        .iter()
        .zip(bucket_sum.iter().zip(&bucket_n))
        .filter(|(_, (_, &n))| n > 0)
        .map(|(&(a, b), (&s, &n))| PositionBucket {
            start: a,
            end: b,
            n_tokens: n,
            ppl: (s / n as f64).exp(),
        })
        .collect();
    let n_eval = n_chunk * n_ctx;
    Ok(PerplexityResult {
        ppl,
        ppl_stderr,
        n_tokens_scored: count,
        n_tokens_evaluated: n_eval,
        n_tokens_text: tokens.len(),
        n_ctx,
        seconds,
        tokens_per_second: if seconds > 0.0 {
            n_eval as f64 / seconds
        } else {
            0.0
        },
        chunks,
        by_position,
    })
}
