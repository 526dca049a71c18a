//! Collecting an importance matrix with llama-imatrix's method (llama.cpp
//! `tools/imatrix/imatrix.cpp`: `compute_imatrix` and `IMatrixCollector::collect_imatrix`):
//!
//! - the text is tokenized once as for perplexity (BOS only where `tokenizer.ggml.add_bos_token`
//!   asks, special tokens not parsed) and cut into `n_ctx`-token chunks, a partial last chunk
//!   dropped; at least two chunks' worth of tokens are required;
//! - each chunk is evaluated from an empty state, its first token replaced by BOS when the model
//!   wants one;
//! - every matrix product of a transformer block (`blk.N.{attn_q,attn_k,attn_v,attn_output,
//!   ffn_gate,ffn_up,ffn_down}.weight`) adds, per input column, the squares of the activations it
//!   is fed, and one to its count per token; `output.weight` is collected only when asked
//!   (`--process-output`) and only when the model has its own output matrix (with tied
//!   embeddings llama.cpp's head is `token_embd.weight`, which it never collects); the output
//!   head then sees every position, as llama-imatrix requests logits for all tokens;
//! - the running perplexity is computed as llama-imatrix prints it (second half of each chunk);
//! - the file records the dataset (the text's path as given), `chunk_count` (chunks evaluated)
//!   and `chunk_size` (`n_ctx`).
//!
//! One difference by design: llama.cpp ignores matrix products of fewer than 16 rows (a tail of
//! a micro-batch); our hook shows whole chunks, so no token is skipped. Contexts below 16 tokens
//! (where llama.cpp would collect nothing) are refused.
use super::chunks::plan_chunks;
use super::perplexity::nll;
use crate::imatrix::{Imatrix, ImatrixAccumulator, ImatrixError};
use crate::model::{EvalOptions, Evaluator, InputSink, ModelError};
use crate::tokenizer::{GgufTokenizer, TokenizerError};
use std::time::Instant;

/// Smallest context accepted (llama.cpp skips products of fewer rows).
pub const MIN_CTX: usize = 16;

/// Why an importance matrix could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum ImatrixCollectError {
    /// The forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Accumulating failed (non-finite activations, inconsistent widths).
    #[error(transparent)]
    Imatrix(#[from] ImatrixError),
    /// The text has no tokens.
    #[error("the calibration text is empty")]
    EmptyText,
    /// Fewer than two chunks' worth of tokens (llama-imatrix's requirement).
    #[error("the calibration text has {tokens} tokens; context {n_ctx} needs at least {needed}")]
    TooShort {
        /// Tokens in the text.
        tokens: usize,
        /// Requested context.
        n_ctx: usize,
        /// Minimum (2 · n_ctx).
        needed: usize,
    },
    /// The context is too small to collect anything.
    #[error("context {0} is too small (minimum {MIN_CTX}: llama.cpp ignores shorter batches)")]
    ContextTooSmall(usize),
    /// The context is longer than the model's trained context.
    #[error("context {requested} is longer than the model's context length {max}")]
    ContextTooLong {
        /// Requested context.
        requested: usize,
        /// The model's `context_length`.
        max: usize,
    },
    /// A chunk count or size does not fit the file's u32 fields.
    #[error("{0} does not fit in 32 bits")]
    TooLarge(&'static str),
}

/// Settings for [`collect_imatrix`].
#[derive(Clone, Debug)]
pub struct ImatrixOptions {
    /// Tokens per chunk (llama-imatrix's `-c`).
    pub n_ctx: usize,
    /// Evaluate at most this many chunks (`None`: every whole chunk).
    pub max_chunks: Option<usize>,
    /// Also collect `output.weight` (llama-imatrix `--process-output`).
    pub process_output: bool,
    /// Compute the running perplexity (llama-imatrix's default; `--no-ppl` turns it off).
    pub compute_ppl: bool,
    /// Forward-pass options (KV type).
    pub eval: EvalOptions,
    /// Calibration dataset names to record (llama-imatrix records the text's path as given).
    pub datasets: Vec<String>,
}

/// Progress after one chunk.
#[derive(Clone, Copy, Debug)]
pub struct ImatrixProgress {
    /// Chunks done.
    pub done: usize,
    /// Chunks in all.
    pub total: usize,
    /// Running perplexity over the chunks done (`None` without `compute_ppl`).
    pub ppl: Option<f64>,
}

/// The result of a collection run.
#[derive(Clone, Debug)]
pub struct ImatrixRun {
    /// The matrix (GGUF terms: raw sums and token counts).
    pub imatrix: Imatrix,
    /// Context per chunk.
    pub n_ctx: usize,
    /// Chunks evaluated.
    pub n_chunks: usize,
    /// Tokens evaluated (chunks · n_ctx): the count of every collected weight.
    pub n_tokens_evaluated: usize,
    /// Tokens in the whole text.
    pub n_tokens_text: usize,
    /// Running perplexity after each chunk, as llama-imatrix prints `[i]ppl` (empty without
    /// `compute_ppl`).
    pub running_ppl: Vec<f64>,
    /// Final perplexity and its standard error (llama-imatrix's "Final estimate").
    pub ppl: Option<(f64, f64)>,
    /// Wall-clock seconds spent evaluating and collecting.
    pub seconds: f64,
    /// Evaluated tokens per second.
    pub tokens_per_second: f64,
}

/// The weights collected from `model`, with their input widths: every block's seven matrices,
/// plus `output.weight` when asked for and the model has its own (untied) output matrix.
pub fn collected_weights(model: &dyn Evaluator, process_output: bool) -> Vec<(String, usize)> {
    let cfg = model.config();
    let mut v = Vec::with_capacity(cfg.n_layer * 7 + 1);
    let q_width = cfg.n_head * cfg.head_dim;
    for il in 0..cfg.n_layer {
        for (name, cols) in [
            ("attn_q", cfg.n_embd),
            ("attn_k", cfg.n_embd),
            ("attn_v", cfg.n_embd),
            ("attn_output", q_width),
            ("ffn_gate", cfg.n_embd),
            ("ffn_up", cfg.n_embd),
            ("ffn_down", cfg.n_ff),
        ] {
            v.push((format!("blk.{il}.{name}.weight"), cols));
        }
    }
    if process_output && !model.tied_output() {
        v.push(("output.weight".to_string(), cfg.n_embd));
    }
    v
}

/// Feeds an [`ImatrixAccumulator`], keeping the first error (the hooks cannot return one).
struct Sink<'x> {
    acc: &'x mut ImatrixAccumulator,
    failed: Option<ImatrixError>,
}

impl InputSink for Sink<'_> {
    fn rows(&mut self, tensor: &str, acts: &[f32]) {
        if self.failed.is_none() {
            if let Err(e) = self.acc.add_rows(tensor, acts) {
                self.failed = Some(e);
            }
        }
    }

    fn sums(&mut self, tensor: &str, sums: &[f64], n_rows: u64) {
        if self.failed.is_none() {
            if let Err(e) = self.acc.add_sums(tensor, sums, n_rows) {
                self.failed = Some(e);
            }
        }
    }
}

/// Tokenizes `text` as llama-imatrix does and runs [`collect_imatrix_tokens`].
pub fn collect_imatrix(
    model: &dyn Evaluator,
    tokenizer: &GgufTokenizer,
    text: &str,
    opts: &ImatrixOptions,
    progress: &mut dyn FnMut(ImatrixProgress),
) -> Result<ImatrixRun, ImatrixCollectError> {
    let tokens = tokenizer.encode(text, true, false)?;
    let bos = if tokenizer.add_bos() {
        tokenizer.bos()
    } else {
        None
    };
    collect_imatrix_tokens(model, &tokens, bos, opts, progress)
}

impl From<super::chunks::ChunkError> for ImatrixCollectError {
    fn from(e: super::chunks::ChunkError) -> Self {
        use super::chunks::ChunkError as C;
        match e {
            C::EmptyText => ImatrixCollectError::EmptyText,
            C::ContextTooSmall(n) => ImatrixCollectError::ContextTooSmall(n),
            C::ContextTooLong { requested, max } => {
                ImatrixCollectError::ContextTooLong { requested, max }
            }
            C::TooShort {
                tokens,
                n_ctx,
                needed,
            } => ImatrixCollectError::TooShort {
                tokens,
                n_ctx,
                needed,
            },
        }
    }
}

/// Collects the importance matrix of a tokenized text. `bos`: when `Some`, the first token of
/// every chunk is replaced by it for evaluation. `progress` is called after each chunk.
pub fn collect_imatrix_tokens(
    model: &dyn Evaluator,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &ImatrixOptions,
    progress: &mut dyn FnMut(ImatrixProgress),
) -> Result<ImatrixRun, ImatrixCollectError> {
    let n_ctx = opts.n_ctx;
    let n_chunk = plan_chunks(
        tokens.len(),
        n_ctx,
        MIN_CTX,
        model.config().context_length,
        opts.max_chunks,
    )?;
    let chunk_count =
        u32::try_from(n_chunk).map_err(|_| ImatrixCollectError::TooLarge("chunks"))?;
    let chunk_size = u32::try_from(n_ctx).map_err(|_| ImatrixCollectError::TooLarge("n_ctx"))?;

    let mut acc = ImatrixAccumulator::new();
    let collected = collected_weights(model, opts.process_output);
    let output_collected = collected.iter().any(|(n, _)| n == "output.weight");
    for (name, cols) in &collected {
        acc.register(name, *cols)?;
    }
    // The output head runs on every position when its input is collected (llama-imatrix asks
    // for all logits), else on the scored half only, or not at all.
    let first = n_ctx / 2;
    let logits_from = if output_collected {
        0
    } else if opts.compute_ppl {
        first
    } else {
        n_ctx
    };

    let (mut sum, mut sum2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut running_ppl = Vec::new();
    let start = Instant::now();
    let mut chunk_tokens = vec![0u32; n_ctx];
    for c in 0..n_chunk {
        let orig = &tokens[c * n_ctx..(c + 1) * n_ctx];
        chunk_tokens.copy_from_slice(orig);
        if let Some(b) = bos {
            chunk_tokens[0] = b;
        }
        let (mut cs, mut cs2, mut cn) = (0.0f64, 0.0f64, 0usize);
        let mut sink = Sink {
            acc: &mut acc,
            failed: None,
        };
        model.eval_observed(
            &chunk_tokens,
            logits_from,
            &opts.eval,
            &mut |pos, logits| {
                // llama-imatrix scores positions first ..= n_ctx-2 (the last has no target).
                if !opts.compute_ppl || pos < first || pos + 1 >= n_ctx {
                    return;
                }
                let v = nll(logits, orig[pos + 1] as usize);
                cs += v;
                cs2 += v * v;
                cn += 1;
            },
            &mut sink,
        )?;
        if let Some(e) = sink.failed {
            return Err(e.into());
        }
        let mut ppl = None;
        if opts.compute_ppl {
            sum += cs;
            sum2 += cs2;
            count += cn;
            let p = (sum / count.max(1) as f64).exp();
            running_ppl.push(p);
            ppl = Some(p);
        }
        progress(ImatrixProgress {
            done: c + 1,
            total: n_chunk,
            ppl,
        });
    }
    let seconds = start.elapsed().as_secs_f64();
    let ppl = (opts.compute_ppl && count > 0).then(|| {
        let mean = sum / count as f64;
        let ppl = mean.exp();
        let var = sum2 / count as f64 - mean * mean;
        let se = if var > 0.0 && count > 1 {
            (var / (count - 1) as f64).sqrt() * ppl
        } else {
            0.0
        };
        (ppl, se)
    });
    let n_eval = n_chunk * n_ctx;
    Ok(ImatrixRun {
        imatrix: acc.to_imatrix(opts.datasets.clone(), chunk_count, chunk_size),
        n_ctx,
        n_chunks: n_chunk,
        n_tokens_evaluated: n_eval,
        n_tokens_text: tokens.len(),
        running_ppl,
        ppl,
        seconds,
        tokens_per_second: if seconds > 0.0 {
            n_eval as f64 / seconds
        } else {
            0.0
        },
    })
}
