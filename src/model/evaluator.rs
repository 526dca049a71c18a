//! What evaluation asks of a forward pass, whatever device runs it.
//!
//! `eval/` (perplexity, KLD, sweeps) and the `logits` command talk to an [`Evaluator`]; the
//! CPU [`Model`] and the CUDA backend (`crate::cuda`, feature `cuda`) both implement it.
use super::{EvalOptions, LlamaConfig, Model, ModelError};

/// A model that can evaluate a token chunk from an empty state.
pub trait Evaluator: Sync {
    /// The hyperparameters.
    fn config(&self) -> &LlamaConfig;

    /// Evaluates `tokens` at positions `0..n` from an empty state and calls
    /// `on_logits(pos, logits)` in order for every `pos >= logits_from` with that position's
    /// `n_vocab` logits (see [`Model::eval`]).
    fn eval(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), ModelError>;

    /// Evaluates `tokens` as [`Evaluator::eval`] does and calls `on_nll(pos, nll)` for the
    /// positions `logits_from .. logits_from + targets.len()`, where `nll` is the negative
    /// log-likelihood of `targets[pos - logits_from]` under position `pos`'s logits, computed
    /// as [`crate::eval::perplexity::nll`] does (f32 max, f64 sum of `exp`). A device backend
    /// computes it where the logits are, so only one number per position comes back.
    fn eval_nll(
        &self,
        tokens: &[u32],
        logits_from: usize,
        targets: &[u32],
        opts: &EvalOptions,
        on_nll: &mut dyn FnMut(usize, f64),
    ) -> Result<(), ModelError> {
        let end = logits_from + targets.len();
        self.eval(tokens, logits_from, opts, &mut |pos, logits| {
            if pos < end {
                on_nll(pos, nll(logits, targets[pos - logits_from] as usize));
            }
        })
    }

    /// A short name of the device, for reports (`cpu`, `cuda:0 (NVIDIA H200)`).
    fn device_name(&self) -> String {
        "cpu".to_string()
    }
}

/// Negative log-likelihood of `target` under `logits`, computed as llama.cpp's `log_softmax`:
/// the max in f32, the sum of `exp(v - max)` in f64.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum_exp: f64 = logits.iter().map(|&v| (v - max).exp() as f64).sum();
    let lt = logits.get(target).copied().unwrap_or(f32::NEG_INFINITY);
    sum_exp.ln() - (lt - max) as f64
}

impl Evaluator for Model<'_> {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn eval(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
    ) -> Result<(), ModelError> {
        Model::eval(self, tokens, logits_from, opts, on_logits)
    }
}
