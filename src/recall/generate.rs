//! Greedy generation: the prompt in one batch, then one token at a time, stopping at an
//! end-of-sequence/end-of-turn token or a length limit; and exact-match scoring of an answer.
//!
//! Generation runs against the small [`Decoder`] trait so that the strategy for keeping state is
//! interchangeable: [`Cached`] appends to the forward pass's K/V cache ([`Session`]), and
//! [`Recompute`] re-evaluates the whole sequence from a fresh state at every step with
//! [`Model::eval`] (slow, obviously correct: the reference the cached path is tested against).
use crate::formats::gguf::{Metadata, Value};
use crate::model::{EvalOptions, Model, ModelError, Session, SessionOptions};
use crate::tokenizer::GgufTokenizer;
use std::time::Instant;

pub use crate::model::Decoder;

/// A [`Decoder`] over a K/V-cached [`Session`]: the prompt is one batch, each later token costs
/// one position.
#[derive(Debug)]
pub struct Cached<'m, 'a> {
    session: Session<'m, 'a>,
}

impl<'m, 'a> Cached<'m, 'a> {
    /// An empty session on `model`.
    pub fn new(model: &'m Model<'a>, opts: EvalOptions) -> Self {
        Self {
            session: model.session(SessionOptions {
                cache_type_k: opts.cache_type_k,
                cache_type_v: opts.cache_type_v,
            }),
        }
    }
}

impl Decoder for Cached<'_, '_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::new();
        self.session
            .feed(tokens, &mut |_, logits| out = logits.to_vec())?;
        Ok(out)
    }

    fn len(&self) -> usize {
        self.session.len()
    }
}

/// A [`Decoder`] that keeps only the tokens and recomputes the whole sequence at every step.
#[derive(Debug)]
pub struct Recompute<'m, 'a> {
    model: &'m Model<'a>,
    opts: EvalOptions,
    tokens: Vec<u32>,
}

impl<'m, 'a> Recompute<'m, 'a> {
    /// An empty sequence on `model`.
    pub fn new(model: &'m Model<'a>, opts: EvalOptions) -> Self {
        Self {
            model,
            opts,
            tokens: Vec::new(),
        }
    }
}

impl Decoder for Recompute<'_, '_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Err(ModelError::EmptyInput);
        }
        self.tokens.extend_from_slice(tokens);
        let last = self.tokens.len() - 1;
        let mut out = Vec::new();
        let res = self
            .model
            .eval(&self.tokens, last, &self.opts, &mut |_, logits| {
                out = logits.to_vec()
            });
        if let Err(e) = res {
            // Leave the sequence as it was so the caller can retry or stop cleanly.
            self.tokens.truncate(self.tokens.len() - tokens.len());
            return Err(e);
        }
        Ok(out)
    }

    fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was generated (it is not included in the output).
    StopToken(u32),
    /// `max_new_tokens` tokens were generated.
    Length,
    /// The caller's `keep_going` check said the answer was decided.
    Decided,
}

/// The result of one greedy generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated tokens (without the stop token).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: StopReason,
    /// Prompt tokens evaluated.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt batch.
    pub prompt_seconds: f64,
    /// Tokens fed one at a time after the prompt (generated tokens minus the last one).
    pub decode_tokens: usize,
    /// Seconds spent on them.
    pub decode_seconds: f64,
}

/// Index of the largest logit (the first one on ties, as llama.cpp's greedy sampler does).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best as u32
}

/// Token ids that end a generated answer: `tokenizer.ggml.eos_token_id`,
/// `tokenizer.ggml.eot_token_id` and `eom_token_id` when present, and the control tokens
/// `<|im_end|>`, `<|eot_id|>`, `<|end_of_text|>`, `<|endoftext|>` when the vocabulary has them as
/// control tokens (type 3), as llama.cpp's vocabulary loader adds them to its end-of-generation set.
pub fn stop_tokens(md: &Metadata, tok: &GgufTokenizer) -> Vec<u32> {
    let mut out = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = md
            .get(key)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
        {
            if (id as usize) < tok.n_vocab() && !out.contains(&id) {
                out.push(id);
            }
        }
    }
    let tokens = md.get("tokenizer.ggml.tokens").and_then(Value::as_array);
    let types = md
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array);
    if let (Some(tokens), Some(types)) = (tokens, types) {
        for (id, (t, ty)) in tokens.values.iter().zip(&types.values).enumerate() {
            let is_control = ty.as_i64() == Some(3);
            let name = t.as_str().unwrap_or("");
            if is_control
                && matches!(
                    name,
                    "<|im_end|>"
                        | "<|eot_id|>"
                        | "<|end_of_text|>"
                        | "<|endoftext|>"
                        | "<|eom_id|>"
                )
            {
                if let Ok(id) = u32::try_from(id) {
                    if !out.contains(&id) {
                        out.push(id);
                    }
                }
            }
        }
    }
    out
}

/// Greedy decoding of up to `max_new_tokens` tokens after `prompt` (fed in one batch to a fresh
/// or continued `decoder`). After each generated token `keep_going(&generated)` is asked whether
/// to continue; returning `false` stops with [`StopReason::Decided`].
pub fn generate_greedy(
    decoder: &mut dyn Decoder,
    prompt: &[u32],
    max_new_tokens: usize,
    stop: &[u32],
    keep_going: &mut dyn FnMut(&[u32]) -> bool,
) -> Result<Generation, ModelError> {
    let t0 = Instant::now();
    let mut logits = decoder.feed(prompt)?;
    let prompt_seconds = t0.elapsed().as_secs_f64();
    let mut out = Vec::new();
    let mut decode_seconds = 0.0;
    let mut decode_tokens = 0;
    let stop_reason = loop {
        if out.len() >= max_new_tokens {
            break StopReason::Length;
        }
        let next = argmax(&logits);
        if stop.contains(&next) {
            break StopReason::StopToken(next);
        }
        out.push(next);
        if !keep_going(&out) {
            break StopReason::Decided;
        }
        if out.len() >= max_new_tokens {
            break StopReason::Length;
        }
        let t = Instant::now();
        logits = decoder.feed(&[next])?;
        decode_seconds += t.elapsed().as_secs_f64();
        decode_tokens += 1;
    };
    Ok(Generation {
        tokens: out,
        stop: stop_reason,
        prompt_tokens: prompt.len(),
        prompt_seconds,
        decode_tokens,
        decode_seconds,
    })
}

/// The answer with surrounding whitespace and quotes removed (models often answer `"value"`).
fn clean(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '`')
}

/// HELMET's json_kv metric (`substring_exact_match`, ProLong's evaluation): the answer is correct
/// when the generated text contains `value`. Models that restate the key before the value
/// ("The value of ... is ...") still count, as they do there.
pub fn is_correct(generated: &str, value: &str) -> bool {
    let v = clean(value);
    !v.is_empty() && generated.contains(v)
}

/// Whether the verdict on `generated` is already certain, so decoding can stop early without
/// changing any score: only a found value settles it (a wrong start can still be followed by
/// the value); otherwise decoding runs to EOS or the token limit.
pub fn is_decided(generated: &str, value: &str) -> bool {
    is_correct(generated, value)
}
