//! Long-context recall: JSON key-value retrieval prompts ([`prompt`]), greedy generation
//! ([`generate`]) and the SVG heat map of the results ([`heatmap`]).
pub mod generate;
pub mod heatmap;
pub mod prompt;

use crate::formats::gguf::Metadata;
use crate::model::{EvalOptions, Evaluator, ModelError};
use crate::tokenizer::GgufTokenizer;
use generate::{generate_greedy, is_correct, is_decided, stop_tokens};
use prompt::{build_kv_prompt, cell_seed, PromptError, PromptFormat};

/// Why a recall run failed.
#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    /// A requested length exceeds the model's trained context.
    #[error("length {length} exceeds the model's context length {context_length}")]
    LengthAboveContext {
        /// The requested prompt length.
        length: usize,
        /// `llama.context_length`.
        context_length: usize,
    },
    /// Bad sweep settings (no lengths, no depths, zero samples).
    #[error("invalid recall settings: {0}")]
    Settings(String),
    /// Prompt building failed.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// The forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Decoding generated tokens failed.
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct RecallSettings {
    /// Prompt lengths in tokens.
    pub lengths: Vec<usize>,
    /// Depths of the queried key in [0, 1].
    pub depths: Vec<f64>,
    /// Samples per cell.
    pub samples: usize,
    /// Base seed; every (length, depth, sample) derives its own.
    pub seed: u64,
    /// Generation limit per answer.
    pub max_new_tokens: usize,
    /// K/V precision.
    pub eval: EvalOptions,
}

/// One prompt's outcome.
#[derive(Debug, Clone)]
pub struct SampleResult {
    /// Requested length.
    pub length: usize,
    /// Depth.
    pub depth: f64,
    /// Sample index within the cell.
    pub sample: usize,
    /// Actual prompt tokens.
    pub prompt_tokens: usize,
    /// Expected value.
    pub expected: String,
    /// The model's answer (decoding stops once the verdict is certain).
    pub answer: String,
    /// Exact match.
    pub correct: bool,
    /// The base model's verdict, with a base model.
    pub base_correct: Option<bool>,
}

/// Aggregate of one length × depth cell.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Requested length.
    pub length: usize,
    /// Depth.
    pub depth: f64,
    /// Fraction correct.
    pub accuracy: f64,
    /// Samples.
    pub samples: usize,
    /// The base model's accuracy.
    pub base_accuracy: Option<f64>,
    /// Fraction of samples where both models got the same verdict.
    pub agreement: Option<f64>,
}

/// A finished sweep.
#[derive(Debug, Clone, Default)]
pub struct RecallReport {
    /// Every sample, in sweep order.
    pub samples: Vec<SampleResult>,
    /// Cells, lengths outer, depths inner.
    pub cells: Vec<Cell>,
    /// Prompt tokens evaluated (all models).
    pub prompt_tokens: usize,
    /// Seconds spent on prompts.
    pub prompt_seconds: f64,
    /// Tokens decoded one at a time (all models).
    pub decode_tokens: usize,
    /// Seconds spent on them.
    pub decode_seconds: f64,
}

impl RecallReport {
    /// Overall accuracy of the model.
    pub fn accuracy(&self) -> f64 {
        frac(self.samples.iter().map(|s| s.correct))
    }

    /// Overall accuracy of the base model, if there was one.
    pub fn base_accuracy(&self) -> Option<f64> {
        let v: Option<Vec<bool>> = self.samples.iter().map(|s| s.base_correct).collect();
        v.map(|v| frac(v.into_iter()))
    }

    /// Prompt tokens per second.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_seconds)
    }

    /// Decode tokens per second.
    pub fn decode_tokens_per_second(&self) -> f64 {
        rate(self.decode_tokens, self.decode_seconds)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

fn frac(it: impl Iterator<Item = bool>) -> f64 {
    let (mut n, mut k) = (0usize, 0usize);
    for b in it {
        n += 1;
        k += usize::from(b);
    }
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

/// A model to query: the forward pass, its tokenizer, its end tokens and its prompt format.
pub struct Subject<'m> {
    /// The model, on whichever device evaluates it.
    pub model: &'m dyn Evaluator,
    /// Its tokenizer.
    pub tokenizer: &'m GgufTokenizer,
    /// Chat template or plain prompts.
    pub format: PromptFormat,
    /// Tokens that end an answer.
    pub stop: Vec<u32>,
}

impl<'m> Subject<'m> {
    /// A subject from a model and the metadata of its file (chat template if it has one).
    pub fn new(model: &'m dyn Evaluator, tokenizer: &'m GgufTokenizer, md: &Metadata) -> Self {
        let format = match crate::chat_template::ChatTemplate::from_metadata(md) {
            Some(t) => PromptFormat::Chat(t),
            None => PromptFormat::Plain,
        };
        Self {
            model,
            tokenizer,
            format,
            stop: stop_tokens(md, tokenizer),
        }
    }
}

/// Answers one prompt; returns (answer text, correct) and adds to the report's timings.
fn answer(
    s: &Subject<'_>,
    tokens: &[u32],
    value: &str,
    settings: &RecallSettings,
    report: &mut RecallReport,
) -> Result<(String, bool), RecallError> {
    let mut dec = s.model.decoder(&settings.eval)?;
    let tok = s.tokenizer;
    let g = generate_greedy(
        dec.as_mut(),
        tokens,
        settings.max_new_tokens,
        &s.stop,
        &mut |ids| !tok.decode(ids).is_ok_and(|t| is_decided(&t, value)),
    )?;
    report.prompt_tokens += g.prompt_tokens;
    report.prompt_seconds += g.prompt_seconds;
    report.decode_tokens += g.decode_tokens;
    report.decode_seconds += g.decode_seconds;
    let text = tok.decode(&g.tokens)?;
    let ok = is_correct(&text, value);
    Ok((text, ok))
}

/// Runs the sweep: for every length × depth × sample, builds a prompt with the model's own
/// tokenizer and template, answers it greedily, and scores it; with `base`, the base model
/// answers the same task (same seed, so the same JSON object; its own tokenizer and template).
/// `progress(done, total)` is called after each sample.
pub fn run_recall(
    model: &Subject<'_>,
    base: Option<&Subject<'_>>,
    settings: &RecallSettings,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RecallReport, RecallError> {
    if settings.lengths.is_empty() || settings.depths.is_empty() || settings.samples == 0 {
        return Err(RecallError::Settings(
            "need at least one length, one depth and one sample".into(),
        ));
    }
    for s in std::iter::once(model).chain(base) {
        let ctx = s.model.config().context_length;
        if let Some(&length) = settings.lengths.iter().find(|&&l| l > ctx) {
            return Err(RecallError::LengthAboveContext {
                length,
                context_length: ctx,
            });
        }
    }
    let total = settings.lengths.len() * settings.depths.len() * settings.samples;
    let mut report = RecallReport::default();
    let mut done = 0;
    for &length in &settings.lengths {
        for (di, &depth) in settings.depths.iter().enumerate() {
            let first = report.samples.len();
            for sample in 0..settings.samples {
                let seed = cell_seed(settings.seed, length, di, sample);
                let p = build_kv_prompt(model.tokenizer, &model.format, length, depth, seed)?;
                let (ans, correct) = answer(model, &p.tokens, &p.value, settings, &mut report)?;
                let base_correct = match base {
                    Some(b) => {
                        let bp = build_kv_prompt(b.tokenizer, &b.format, length, depth, seed)?;
                        Some(answer(b, &bp.tokens, &bp.value, settings, &mut report)?.1)
                    }
                    None => None,
                };
                report.samples.push(SampleResult {
                    length,
                    depth,
                    sample,
                    prompt_tokens: p.tokens.len(),
                    expected: p.value,
                    answer: ans,
                    correct,
                    base_correct,
                });
                done += 1;
                progress(done, total);
            }
            let cell = &report.samples[first..];
            let base_accuracy =
                base.map(|_| frac(cell.iter().map(|s| s.base_correct == Some(true))));
            let agreement =
                base.map(|_| frac(cell.iter().map(|s| s.base_correct == Some(s.correct))));
            report.cells.push(Cell {
                length,
                depth,
                accuracy: frac(cell.iter().map(|s| s.correct)),
                samples: cell.len(),
                base_accuracy,
                agreement,
            });
        }
    }
    Ok(report)
}
