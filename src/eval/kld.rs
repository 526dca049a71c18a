//! KL divergence of a model against a base (reference) model, with the method and statistics of
//! llama.cpp's `tools/perplexity/perplexity.cpp` (`kl_divergence`, its `log_softmax` overload
//! and `kl_divergence_result`), so our numbers can be set beside `llama-perplexity
//! --kl-divergence`'s:
//!
//! - tokens: the base model's tokenizer, BOS per its `add_bos_token`; `n_ctx`-token chunks,
//!   the first token of each replaced by BOS for evaluation; the second half of each chunk is
//!   scored (positions `n_ctx/2 ..= n_ctx-2` predicting the next token), as in
//!   [`super::perplexity`];
//! - per scored position: `KL(base ‖ model) = Σ p_base (ln p_base − ln p_model)`, whether the two
//!   argmaxes agree ("same top p"), `Δp = p_model(target) − p_base(target)`, and both NLLs;
//! - summaries: llama.cpp's `mean_and_uncertainty` (standard error `sqrt(var/(n−1))`, reported
//!   as 0 for n ≤ 10), the covariance term in the error of ln(PPL(Q)/PPL(base)), its
//!   interpolated percentiles, and RMS Δp with its delta-method error.
//!
//! Differences from llama.cpp, on purpose: the base's log-probabilities are used in f32 instead
//! of being rounded to 16-bit steps of `range/65535`, and no term with `ln p_base < −16` is
//! dropped; the KLD is therefore the exact one of the two f32 logit vectors.
//!
//! Memory: llama.cpp writes the base's log-probs for every token of the text to a file
//! (n_tokens × n_vocab × 2 bytes: 10 GB at 10K context with a 128K vocabulary) and holds a chunk
//! of the model's logits. Here the two models run in lockstep ([`compare_models`]): the base's
//! forward pass runs on its own thread and hands each scored position's log-probs to the model's
//! thread through a bounded channel, so at most [`LOCKSTEP_DEPTH`] vocab-sized vectors exist at a
//! time, whatever the context. Per-position KLD and Δp values (one f32 each) are kept for the
//! percentiles.
//!
//! The base's results can be saved compactly ([`BaseResultsWriter`], `--save-base`) and reused
//! ([`compare_with_saved`], `--base-results`): per scored position the target's log-prob, the
//! top-k log-probs, the remaining ("tail") mass `r` and the tail's `Σ p ln p`. Against such a
//! file, same-top-p, Δp and PPL(base) stay exact; the KLD is exact over the top k and estimated
//! over the tail: `KL = Σ_top p ln(p/q) + Σ_tail p ln p − Σ_tail p ln q`, where the middle term
//! is stored and the last is estimated as `(r/s) Σ_tail q ln q` (the base taken proportional to
//! the model inside the tail; `r`, `s` the base's and the model's tail masses). Its error is
//! `(r/s) Σ_tail q ε ln q` for the relative tail disagreement ε, small when the models are close
//! (measured in `tests/compare_smollm2.rs`). Rigorous bounds go with it ([`ApproxInfo`]): the
//! log-sum inequality gives `KL ≥ Σ_top p ln(p/q) + r ln(r/s)` (the coarsened distributions), and
//! `KL ≤ Σ_top p ln(p/q) + Σ_tail p ln p − r ln q_min` (`q_min` the model's smallest tail
//! probability; loose).
use crate::formats::atomic::AtomicFile;
use crate::formats::gguf::{GgufFile, Metadata, Value};
use crate::model::{EvalOptions, Evaluator, ModelError};
use crate::tokenizer::{GgufTokenizer, TokenizerError};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// Scored positions that may be in flight between the base's thread and the model's thread.
pub const LOCKSTEP_DEPTH: usize = 64;

/// Default number of top log-probs kept per position in a saved base file.
pub const DEFAULT_TOP_K: usize = 32;

/// Position buckets (of the predicted token within its chunk), the same as
/// [`super::perplexity`]'s by-position PPL buckets.
pub const BUCKETS: [(usize, usize); 5] = [
    (0, 1024),
    (1024, 4096),
    (4096, 16384),
    (16384, 65536),
    (65536, usize::MAX),
];

const MAGIC: &[u8; 8] = b"LQKLBASE";
const VERSION: u32 = 1;
/// Caps applied when reading a saved base file (far above real use, far below overflow).
const MAX_CTX: u32 = 1 << 24;
const MAX_TOP_K: u32 = 4096;
const MAX_VOCAB: u32 = 1 << 24;

/// Why a saved base-results file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum BaseFileError {
    /// The file does not start with `LQKLBASE`.
    #[error("not a longquant base-results file (bad magic)")]
    BadMagic,
    /// A version this build cannot read.
    #[error("unsupported base-results version {0} (supported: {VERSION})")]
    UnsupportedVersion(u32),
    /// A header field outside its valid range.
    #[error("header field `{field}` = {value} is out of range (limit {limit})")]
    HeaderField {
        /// Field name.
        field: &'static str,
        /// Declared value.
        value: u64,
        /// The limit it broke.
        limit: u64,
    },
    /// The file's length disagrees with its header.
    #[error("file is {actual} bytes but its header implies {expected}")]
    SizeMismatch {
        /// Bytes implied by the header.
        expected: u64,
        /// Bytes on disk.
        actual: u64,
    },
    /// A stored token id is outside the vocabulary.
    #[error("token {index} has id {id}, outside the vocabulary of {n_vocab}")]
    TokenOutOfRange {
        /// Index in the token list.
        index: usize,
        /// The id.
        id: u32,
        /// Vocabulary size.
        n_vocab: u32,
    },
    /// A per-position record is inconsistent.
    #[error("chunk {chunk}, position {pos}: {what}")]
    BadRecord {
        /// Chunk index.
        chunk: usize,
        /// Position in the chunk.
        pos: usize,
        /// What is wrong.
        what: &'static str,
    },
}

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KldError {
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Tokenization failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The two models do not share a vocabulary.
    #[error("the vocabularies differ: {0}")]
    VocabMismatch(String),
    /// The text has no tokens.
    #[error("the text is empty")]
    EmptyText,
    /// Fewer than two chunks' worth of tokens (llama.cpp's requirement).
    #[error("the text has {tokens} tokens; context {n_ctx} needs at least {needed}")]
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
    /// The context exceeds a model's trained context.
    #[error("context {requested} is longer than the model's context length {max}")]
    ContextTooLong {
        /// Requested context.
        requested: usize,
        /// The model's context length.
        max: usize,
    },
    /// Options that contradict a saved base file.
    #[error("{0}")]
    Options(String),
    /// Reading or writing a base-results file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A base-results file is corrupt or not one.
    #[error("{path}: {source}")]
    BaseFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: BaseFileError,
    },
    /// The base model's thread panicked.
    #[error("the base model's evaluation thread panicked")]
    ThreadPanicked,
    /// The two forward passes did not deliver the same positions (a forward-pass bug).
    #[error("lockstep lost: base delivered position {base:?}, model position {model}")]
    Desync {
        /// Position from the base (None: the base stopped early).
        base: Option<usize>,
        /// Position from the model.
        model: usize,
    },
}

/// Settings for a comparison.
#[derive(Clone, Copy, Debug)]
pub struct CompareOptions {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Evaluate at most this many chunks (`None`: all whole chunks).
    pub max_chunks: Option<usize>,
    /// Forward-pass options.
    pub eval: EvalOptions,
}

/// KLD percentiles, as llama.cpp prints them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Percentiles {
    /// Largest value.
    pub max: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// 99th.
    pub p99: f64,
    /// 95th.
    pub p95: f64,
    /// 90th.
    pub p90: f64,
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// 10th.
    pub p10: f64,
    /// 5th.
    pub p5: f64,
    /// 1st.
    pub p1: f64,
    /// 0.1th.
    pub p0_1: f64,
    /// Smallest value.
    pub min: f64,
}

/// A value and its standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Estimate {
    /// The value.
    pub value: f64,
    /// Its standard error (0 when there are too few samples, as in llama.cpp).
    pub stderr: f64,
}

/// KLD and agreement by position bucket.
#[derive(Clone, Debug, PartialEq)]
pub struct KldBucket {
    /// First position (of the predicted token) in the bucket.
    pub start: usize,
    /// One past the last (`usize::MAX`: unbounded).
    pub end: usize,
    /// Scored tokens.
    pub n_tokens: usize,
    /// Mean KLD ± error.
    pub kld: Estimate,
    /// Same top p, percent.
    pub same_top_p: f64,
    /// PPL of the model over the bucket.
    pub ppl_model: f64,
    /// PPL of the base over the bucket.
    pub ppl_base: f64,
}

/// How good the KLD is when computed against saved top-k results.
#[derive(Clone, Debug, PartialEq)]
pub struct ApproxInfo {
    /// Top log-probs kept per position.
    pub top_k: usize,
    /// Mean base mass outside the top k.
    pub tail_mass_mean: f64,
    /// Mean of the per-position lower bounds of the exact KLD (coarsened distributions).
    pub kld_lower_mean: f64,
    /// Standard error that sampling the tail adds to the mean KLD.
    pub kld_sampling_stderr: f64,
    /// Mean of the per-position upper bounds of the exact KLD (loose: it charges the whole tail
    /// mass at the model's smallest probability).
    pub kld_upper_mean: f64,
}

/// Everything a comparison measures.
#[derive(Clone, Debug)]
pub struct KldReport {
    /// Tokens per chunk.
    pub n_ctx: usize,
    /// Chunks evaluated.
    pub n_chunks: usize,
    /// Positions scored.
    pub n_tokens_scored: usize,
    /// PPL of the model.
    pub ppl_model: Estimate,
    /// PPL of the base.
    pub ppl_base: Estimate,
    /// Correlation of the two models' per-token NLLs' means (llama.cpp's Cor(ln PPL(Q), ln PPL(base))).
    pub ln_ppl_correlation: f64,
    /// ln(PPL(Q)/PPL(base)), with the covariance term in its error.
    pub ln_ppl_ratio: Estimate,
    /// PPL(Q)/PPL(base).
    pub ppl_ratio: Estimate,
    /// PPL(Q) − PPL(base).
    pub ppl_diff: Estimate,
    /// Mean KLD.
    pub kld: Estimate,
    /// KLD percentiles.
    pub kld_percentiles: Percentiles,
    /// Same top p, percent.
    pub same_top_p: Estimate,
    /// Mean Δp, percent.
    pub mean_dp: Estimate,
    /// RMS Δp, percent.
    pub rms_dp: Estimate,
    /// Largest |Δp|, percent.
    pub max_abs_dp: f64,
    /// Δp percentiles, percent.
    pub dp_percentiles: Percentiles,
    /// By position bucket (non-empty buckets only).
    pub by_position: Vec<KldBucket>,
    /// Mean KLD of each chunk.
    pub chunk_kld: Vec<f64>,
    /// Set when the base came from a saved top-k file.
    pub approx: Option<ApproxInfo>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl KldReport {
    /// The JSON document of a comparison (`compare --json`, and each row of `sweep --json`):
    /// `ppl_model`, `ppl_base`, `kld_mean`, `kld_stderr`, `kld_p99`, `same_top_p` (percent),
    /// `rms_dp` (percent), `by_position`, and the rest of the report.
    pub fn to_json(&self) -> serde_json::Value {
        let r = self;
        serde_json::json!({
            "n_ctx": r.n_ctx,
            "n_chunks": r.n_chunks,
            "n_tokens_scored": r.n_tokens_scored,
            "ppl_model": r.ppl_model.value,
            "ppl_model_stderr": r.ppl_model.stderr,
            "ppl_base": r.ppl_base.value,
            "ppl_base_stderr": r.ppl_base.stderr,
            "ln_ppl_correlation": r.ln_ppl_correlation,
            "ln_ppl_ratio": est_json(&r.ln_ppl_ratio),
            "ppl_ratio": est_json(&r.ppl_ratio),
            "ppl_diff": est_json(&r.ppl_diff),
            "kld_mean": r.kld.value,
            "kld_stderr": r.kld.stderr,
            "kld_p99": r.kld_percentiles.p99,
            "kld_percentiles": pct_json(&r.kld_percentiles),
            "same_top_p": r.same_top_p.value,
            "same_top_p_stderr": r.same_top_p.stderr,
            "mean_dp": r.mean_dp.value,
            "mean_dp_stderr": r.mean_dp.stderr,
            "rms_dp": r.rms_dp.value,
            "rms_dp_stderr": r.rms_dp.stderr,
            "max_abs_dp": r.max_abs_dp,
            "dp_percentiles": pct_json(&r.dp_percentiles),
            "by_position": r.by_position.iter().map(|b| serde_json::json!({
                "start": b.start,
                "end": if b.end == usize::MAX { serde_json::Value::Null } else { serde_json::json!(b.end) },
                "n_tokens": b.n_tokens,
                "kld_mean": b.kld.value,
                "kld_stderr": b.kld.stderr,
                "same_top_p": b.same_top_p,
                "ppl_model": b.ppl_model,
                "ppl_base": b.ppl_base,
            })).collect::<Vec<_>>(),
            "chunk_kld": r.chunk_kld,
            "approximate": r.approx.as_ref().map(|a| serde_json::json!({
                "top_k": a.top_k,
                "tail_mass_mean": a.tail_mass_mean,
                "kld_lower_mean": a.kld_lower_mean,
                "kld_upper_mean": a.kld_upper_mean,
                "kld_sampling_stderr": a.kld_sampling_stderr,
                "note": "KLD exact over the top k; the tail's share is an unbiased estimate from k tokens sampled from the base's tail (error kld_sampling_stderr); the exact mean KLD lies in [kld_lower_mean, kld_upper_mean]",
            })),
            "seconds": r.seconds,
        })
    }
}

fn est_json(e: &Estimate) -> serde_json::Value {
    serde_json::json!({ "value": e.value, "stderr": e.stderr })
}

fn pct_json(p: &Percentiles) -> serde_json::Value {
    serde_json::json!({
        "max": p.max, "p99_9": p.p99_9, "p99": p.p99, "p95": p.p95, "p90": p.p90,
        "median": p.median, "p10": p.p10, "p5": p.p5, "p1": p.p1, "p0_1": p.p0_1, "min": p.min,
    })
}

// ---------------------------------------------------------------------------------------------
// Accumulation (llama.cpp's kl_divergence_result and its summaries).

#[derive(Clone, Copy, Default)]
struct Sums {
    nll: f64,
    nll2: f64,
    nll_base: f64,
    nll_base2: f64,
    nll_nll_base: f64,
    kld: f64,
    kld2: f64,
    same_top: usize,
    count: usize,
}

impl Sums {
    fn add(&mut self, s: &PositionScore) {
        self.nll += s.nll;
        self.nll2 += s.nll * s.nll;
        self.nll_base += s.nll_base;
        self.nll_base2 += s.nll_base * s.nll_base;
        self.nll_nll_base += s.nll * s.nll_base;
        self.kld += s.kld;
        self.kld2 += s.kld * s.kld;
        self.same_top += usize::from(s.same_top);
        self.count += 1;
    }
}

/// One scored position.
#[derive(Clone, Copy, Debug)]
struct PositionScore {
    nll: f64,
    nll_base: f64,
    kld: f64,
    same_top: bool,
    p_diff: f64,
    /// Saved-base mode only: lower and upper bounds of the exact KLD, and the tail mass.
    kld_lower: f64,
    kld_upper: f64,
    tail_mass: f64,
    /// Saved-base mode only: sampling variance of this position's tail estimate.
    tail_var: f64,
}

#[derive(Default)]
struct Accumulator {
    all: Sums,
    p_diff: f64,
    p_diff2: f64,
    p_diff4: f64,
    max_p_diff: f64,
    kld_lower: f64,
    kld_upper: f64,
    tail_mass: f64,
    tail_var: f64,
    buckets: [Sums; BUCKETS.len()],
    kld_values: Vec<f32>,
    p_diff_values: Vec<f32>,
    chunk_kld: Vec<f64>,
    chunk_sum: f64,
    chunk_n: usize,
}

impl Accumulator {
    fn add(&mut self, predicted_pos: usize, s: &PositionScore) {
        self.all.add(s);
        self.p_diff += s.p_diff;
        let d2 = s.p_diff * s.p_diff;
        self.p_diff2 += d2;
        self.p_diff4 += d2 * d2;
        self.max_p_diff = self.max_p_diff.max(s.p_diff.abs());
        self.kld_lower += s.kld_lower;
        self.kld_upper += s.kld_upper;
        self.tail_mass += s.tail_mass;
        self.tail_var += s.tail_var;
        if let Some(i) = BUCKETS
            .iter()
            .position(|&(a, b)| predicted_pos >= a && predicted_pos < b)
        {
            self.buckets[i].add(s);
        }
        self.kld_values.push(s.kld as f32);
        self.p_diff_values.push(s.p_diff as f32);
        self.chunk_sum += s.kld;
        self.chunk_n += 1;
    }

    fn end_chunk(&mut self) {
        self.chunk_kld.push(if self.chunk_n > 0 {
            self.chunk_sum / self.chunk_n as f64
        } else {
            f64::NAN
        });
        self.chunk_sum = 0.0;
        self.chunk_n = 0;
    }

    fn finish(
        mut self,
        n_ctx: usize,
        n_chunks: usize,
        top_k: Option<usize>,
        seconds: f64,
    ) -> KldReport {
        let a = self.all;
        let n = a.count;
        let log_ppl = mean_and_uncertainty(a.nll, a.nll2, n);
        let log_ppl_base = mean_and_uncertainty(a.nll_base, a.nll_base2, n);
        let cov = covariance(a.nll, a.nll_base, a.nll_nll_base, n);
        let ppl = exp_estimate(log_ppl);
        let ppl_base = exp_estimate(log_ppl_base);
        let ln_ratio = Estimate {
            value: log_ppl.value - log_ppl_base.value,
            stderr: (log_ppl.stderr.powi(2) + log_ppl_base.stderr.powi(2) - 2.0 * cov)
                .max(0.0)
                .sqrt(),
        };
        let ppl_cov = ppl.value * ppl_base.value * cov;
        let ppl_diff = Estimate {
            value: ppl.value - ppl_base.value,
            stderr: (ppl.stderr.powi(2) + ppl_base.stderr.powi(2) - 2.0 * ppl_cov)
                .max(0.0)
                .sqrt(),
        };
        let cor = if log_ppl.stderr > 0.0 && log_ppl_base.stderr > 0.0 {
            cov / (log_ppl.stderr * log_ppl_base.stderr)
        } else {
            0.0
        };
        let kld = mean_and_uncertainty(a.kld, a.kld2, n);
        let p_top = if n > 0 {
            a.same_top as f64 / n as f64
        } else {
            0.0
        };
        let p_top_err = if n > 1 {
            (p_top * (1.0 - p_top) / (n - 1) as f64).max(0.0).sqrt()
        } else {
            0.0
        };
        let dp = mean_and_uncertainty(self.p_diff, self.p_diff2, n);
        let mse = mean_and_uncertainty(self.p_diff2, self.p_diff4, n);
        let rms = mse.value.max(0.0).sqrt();
        let rms_err = if rms > 0.0 {
            0.5 / rms * mse.stderr
        } else {
            0.0
        };
        self.kld_values.sort_by(f32::total_cmp);
        self.p_diff_values.sort_by(f32::total_cmp);
        let pct = |v: f64| 100.0 * v;
        let dpp = percentiles(&self.p_diff_values);
        let by_position = BUCKETS
            .iter()
            .zip(&self.buckets)
            .filter(|(_, s)| s.count > 0)
            .map(|(&(start, end), s)| KldBucket {
                start,
                end,
                n_tokens: s.count,
                kld: mean_and_uncertainty(s.kld, s.kld2, s.count),
                same_top_p: 100.0 * s.same_top as f64 / s.count as f64,
                ppl_model: (s.nll / s.count as f64).exp(),
                ppl_base: (s.nll_base / s.count as f64).exp(),
            })
            .collect();
        KldReport {
            n_ctx,
            n_chunks,
            n_tokens_scored: n,
            ppl_model: ppl,
            ppl_base,
            ln_ppl_correlation: cor,
            ln_ppl_ratio: ln_ratio,
            ppl_ratio: Estimate {
                value: ln_ratio.value.exp(),
                stderr: ln_ratio.value.exp() * ln_ratio.stderr,
            },
            ppl_diff,
            kld,
            kld_percentiles: percentiles(&self.kld_values),
            same_top_p: Estimate {
                value: pct(p_top),
                stderr: pct(p_top_err),
            },
            mean_dp: Estimate {
                value: pct(dp.value),
                stderr: pct(dp.stderr),
            },
            rms_dp: Estimate {
                value: pct(rms),
                stderr: pct(rms_err),
            },
            max_abs_dp: pct(self.max_p_diff),
            dp_percentiles: Percentiles {
                max: pct(dpp.max),
                p99_9: pct(dpp.p99_9),
                p99: pct(dpp.p99),
                p95: pct(dpp.p95),
                p90: pct(dpp.p90),
                median: pct(dpp.median),
                p10: pct(dpp.p10),
                p5: pct(dpp.p5),
                p1: pct(dpp.p1),
                p0_1: pct(dpp.p0_1),
                min: pct(dpp.min),
            },
            by_position,
            chunk_kld: self.chunk_kld,
            approx: top_k.map(|k| ApproxInfo {
                top_k: k,
                tail_mass_mean: self.tail_mass / n.max(1) as f64,
                kld_lower_mean: self.kld_lower / n.max(1) as f64,
                kld_sampling_stderr: self.tail_var.sqrt() / n.max(1) as f64,
                kld_upper_mean: self.kld_upper / n.max(1) as f64,
            }),
            seconds,
        }
    }
}

/// llama.cpp's `mean_and_uncertainty`: mean, and `sqrt(var/(n−1))` when n > 10 and var > 0.
fn mean_and_uncertainty(sum: f64, sum2: f64, count: usize) -> Estimate {
    if count < 1 {
        return Estimate::default();
    }
    let f = sum / count as f64;
    let var = sum2 / count as f64 - f * f;
    let stderr = if var > 0.0 && count > 10 {
        (var / (count - 1) as f64).sqrt()
    } else {
        0.0
    };
    Estimate { value: f, stderr }
}

/// llama.cpp's `covariance` of the two mean NLLs (0 below 10 samples).
fn covariance(suma: f64, sumb: f64, sumab: f64, count: usize) -> f64 {
    if count < 10 {
        return 0.0;
    }
    let n = count as f64;
    (sumab / n - (suma / n) * (sumb / n)) / (n - 1.0)
}

fn exp_estimate(log: Estimate) -> Estimate {
    let v = log.value.exp();
    Estimate {
        value: v,
        stderr: v * log.stderr,
    }
}

/// llama.cpp's percentile: linear interpolation at `fraction · (n − 1)` in sorted values.
fn percentile(sorted: &[f32], fraction: f32) -> f64 {
    let (Some(&first), Some(&last)) = (sorted.first(), sorted.last()) else {
        return f64::NAN;
    };
    if fraction <= 0.0 {
        return first as f64;
    }
    if fraction >= 1.0 {
        return last as f64;
    }
    let mut p = fraction * (sorted.len() - 1) as f32;
    let ip = p as usize;
    p -= ip as f32;
    let lo = sorted.get(ip).copied().unwrap_or(last);
    let hi = sorted.get(ip + 1).copied().unwrap_or(last);
    ((1.0 - p) * lo + p * hi) as f64
}

fn percentiles(sorted: &[f32]) -> Percentiles {
    let n = sorted.len();
    let median = match n {
        0 => f64::NAN,
        _ if n.is_multiple_of(2) => 0.5 * (sorted[n / 2] as f64 + sorted[n / 2 - 1] as f64),
        _ => sorted[n / 2] as f64,
    };
    Percentiles {
        max: sorted.last().map_or(f64::NAN, |&v| v as f64),
        p99_9: percentile(sorted, 0.999),
        p99: percentile(sorted, 0.99),
        p95: percentile(sorted, 0.95),
        p90: percentile(sorted, 0.90),
        median,
        p10: percentile(sorted, 0.10),
        p5: percentile(sorted, 0.05),
        p1: percentile(sorted, 0.01),
        p0_1: percentile(sorted, 0.001),
        min: sorted.first().map_or(f64::NAN, |&v| v as f64),
    }
}

// ---------------------------------------------------------------------------------------------
// Per-position math.

/// Max, index of the first max, and `ln Σ exp(l − max)` (f32 exps summed in f64, as llama.cpp).
fn softmax_stats(logits: &[f32]) -> (f32, usize, f64) {
    let mut max = f32::NEG_INFINITY;
    let mut imax = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > max {
            max = v;
            imax = i;
        }
    }
    let sum: f64 = logits.iter().map(|&v| (v - max).exp() as f64).sum();
    (max, imax, sum.ln())
}

/// Writes `ln softmax(logits)` into `out`; returns the argmax.
pub fn log_softmax_into(logits: &[f32], out: &mut Vec<f32>) -> usize {
    let (max, imax, lse) = softmax_stats(logits);
    out.clear();
    out.extend(logits.iter().map(|&v| ((v - max) as f64 - lse) as f32));
    imax
}

impl PositionScore {
    /// A position scored by the device both models live on (exact mode).
    fn from_device(s: &crate::model::DeviceScore) -> PositionScore {
        PositionScore {
            nll: s.nll,
            nll_base: s.nll_base,
            kld: s.kld,
            same_top: s.same_top,
            p_diff: (-s.nll).exp() - (-s.nll_base).exp(),
            kld_lower: s.kld,
            kld_upper: s.kld,
            tail_mass: 0.0,
            tail_var: 0.0,
        }
    }
}

impl PositionScore {
    /// A position scored against a saved base by the device the model lives on.
    fn from_saved(s: &crate::model::SavedScore) -> PositionScore {
        PositionScore {
            nll: s.nll,
            nll_base: s.nll_base,
            kld: s.kld,
            same_top: s.same_top,
            p_diff: (-s.nll).exp() - (-s.nll_base).exp(),
            kld_lower: s.kld_lower,
            kld_upper: s.kld_upper,
            tail_mass: s.tail_mass,
            tail_var: s.tail_var,
        }
    }
}

/// Scores one position against the base's full log-probs (exact mode).
fn score_exact(
    base_lp: &[f32],
    base_argmax: usize,
    logits: &[f32],
    target: usize,
) -> PositionScore {
    let (max, imax, lse) = softmax_stats(logits);
    let off = max as f64 + lse;
    let mut kld = 0.0f64;
    for (&lb, &l) in base_lp.iter().zip(logits) {
        let pb = (lb as f64).exp();
        if pb > 0.0 {
            kld += pb * (lb as f64 - (l as f64 - off));
        }
    }
    let nll = off - logits.get(target).map_or(f64::NEG_INFINITY, |&v| v as f64);
    let nll_base = -base_lp.get(target).map_or(f64::NEG_INFINITY, |&v| v as f64);
    PositionScore {
        nll,
        nll_base,
        kld,
        same_top: imax == base_argmax,
        p_diff: (-nll).exp() - (-nll_base).exp(),
        kld_lower: kld,
        kld_upper: kld,
        tail_mass: 0.0,
        tail_var: 0.0,
    }
}

pub use crate::model::BaseRecord;

impl BaseRecord {
    /// Builds the record of one position from the base's full log-probs; `seed` picks the
    /// sampling offset (any value; deterministic output for a given seed).
    pub fn from_log_probs(lp: &[f32], target: usize, k: usize, seed: u64) -> BaseRecord {
        let k = k.min(lp.len());
        // Keep the k largest in a small ascending-sorted buffer; most values fail the first test.
        let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
        for (i, &v) in lp.iter().enumerate() {
            if top.len() == k {
                match top.first() {
                    Some(&(_, m)) if v > m => {}
                    _ => continue,
                }
                top.remove(0);
            }
            let at = top.partition_point(|&(_, x)| x < v);
            top.insert(at, (i as u32, v));
        }
        top.reverse();
        let mut in_top = top.iter().map(|&(i, _)| i as usize).collect::<Vec<_>>();
        in_top.sort_unstable();
        let (mut mass, mut plogp) = (0.0f64, 0.0f64);
        let mut next = in_top.iter().peekable();
        for (i, &v) in lp.iter().enumerate() {
            if next.peek() == Some(&&i) {
                next.next();
                continue;
            }
            let p = (v as f64).exp();
            if p > 0.0 {
                mass += p;
                plogp += p * v as f64;
            }
        }
        // Systematic sampling: thresholds (j + u)/k of the tail mass, one walk over the tail.
        let mut samples = Vec::with_capacity(k);
        if mass > 0.0 && k > 0 {
            let u = (splitmix64(seed) >> 11) as f64 / (1u64 << 53) as f64;
            let mut cum = 0.0f64;
            let mut last = None;
            let mut next = in_top.iter().peekable();
            for (i, &v) in lp.iter().enumerate() {
                if next.peek() == Some(&&i) {
                    next.next();
                    continue;
                }
                let p = (v as f64).exp();
                if p <= 0.0 {
                    continue;
                }
                cum += p;
                last = Some((i as u32, v));
                while samples.len() < k && (samples.len() as f64 + u) / k as f64 * mass < cum {
                    samples.push((i as u32, v));
                }
                if samples.len() == k {
                    break;
                }
            }
            // Rounding can leave the last threshold just past the sum: it belongs to the last token.
            while let (true, Some(l)) = (samples.len() < k, last) {
                samples.push(l);
            }
        }
        BaseRecord {
            target_logp: lp.get(target).copied().unwrap_or(f32::NEG_INFINITY),
            tail_mass: mass as f32,
            tail_plogp: plogp as f32,
            top,
            samples,
        }
    }
}

/// SplitMix64: a fixed, well-mixed hash of the sampling seed.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Scores one position against a saved top-k record (see the module docs for the bounds).
fn score_saved(
    rec: &BaseRecord,
    logits: &[f32],
    target: usize,
    in_top: &mut Vec<usize>,
) -> PositionScore {
    let (max, imax, lse) = softmax_stats(logits);
    let off = max as f64 + lse;
    let lq = |i: usize| logits.get(i).map_or(f64::NEG_INFINITY, |&v| v as f64 - off);
    let mut head = 0.0f64;
    for &(id, lb) in &rec.top {
        let pb = (lb as f64).exp();
        if pb > 0.0 {
            head += pb * (lb as f64 - lq(id as usize));
        }
    }
    in_top.clear();
    in_top.extend(rec.top.iter().map(|&(i, _)| i as usize));
    in_top.sort_unstable();
    let (mut s, mut s_qlogq, mut lq_min) = (0.0f64, 0.0f64, f64::INFINITY);
    let mut next = in_top.iter().peekable();
    for (i, &v) in logits.iter().enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            continue;
        }
        let l = v as f64 - off;
        let q = l.exp();
        s += q;
        if q > 0.0 {
            s_qlogq += q * l;
        }
        lq_min = lq_min.min(l);
    }
    let r = rec.tail_mass as f64;
    let mut tail_var = 0.0f64;
    let (lower_tail, est_tail, upper_tail) = if r > 0.0 && s > 0.0 {
        let lower = r * (r.ln() - s.ln());
        let est = if rec.samples.is_empty() {
            // Σ_tail p ln q with p taken ∝ q inside the tail: (r/s) Σ_tail q ln q.
            (rec.tail_plogp as f64 - r / s * s_qlogq).max(lower)
        } else {
            let m = rec.samples.len() as f64;
            let (mut sum, mut sum2) = (0.0f64, 0.0f64);
            for &(id, lb) in &rec.samples {
                let v = lb as f64 - lq(id as usize);
                sum += v;
                sum2 += v * v;
            }
            // Variance of the estimate as if the samples were independent (systematic sampling
            // does at least as well on smooth tails): r² · var / m.
            let var = (sum2 / m - (sum / m).powi(2)).max(0.0);
            tail_var = r * r * var / m;
            r / m * sum
        };
        let upper = (rec.tail_plogp as f64 - r * lq_min).max(lower);
        // The exact tail term lies in [lower, upper], so clamping a sampled estimate into it can
        // only bring it closer (and keeps every position's KLD ≥ 0).
        (lower, est.clamp(lower, upper), upper)
    } else {
        (0.0, 0.0, 0.0)
    };
    let nll = off - logits.get(target).map_or(f64::NEG_INFINITY, |&v| v as f64);
    let nll_base = -(rec.target_logp as f64);
    let base_argmax = rec.top.first().map_or(usize::MAX, |&(i, _)| i as usize);
    PositionScore {
        nll,
        nll_base,
        kld: head + est_tail,
        same_top: imax == base_argmax,
        p_diff: (-nll).exp() - (-nll_base).exp(),
        kld_lower: head + lower_tail,
        kld_upper: head + upper_tail,
        tail_mass: r,
        tail_var,
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens, chunks and vocabularies.

/// A 64-bit FNV-1a fingerprint of `tokenizer.ggml.tokens` (None when absent), used to refuse
/// comparisons between models with different vocabularies.
pub fn vocab_fingerprint(md: &Metadata) -> Option<u64> {
    let arr = md.get("tokenizer.ggml.tokens").and_then(Value::as_array)?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    for v in &arr.values {
        for &b in v.as_str()?.as_bytes() {
            eat(b);
        }
        eat(0xff); // separator: not a valid UTF-8 byte, so token boundaries cannot alias
    }
    Some(h)
}

/// Refuses two files whose models do not share one vocabulary.
pub fn check_same_vocab(base: &GgufFile, model: &GgufFile) -> Result<(), KldError> {
    let fb = vocab_fingerprint(base.metadata());
    let fm = vocab_fingerprint(model.metadata());
    match (fb, fm) {
        (Some(a), Some(b)) if a == b => Ok(()),
        (Some(_), Some(_)) => Err(KldError::VocabMismatch(
            "tokenizer.ggml.tokens differ".into(),
        )),
        _ => Err(KldError::VocabMismatch(
            "a file has no tokenizer.ggml.tokens".into(),
        )),
    }
}

/// The text's tokens as llama-perplexity makes them, plus the BOS to put first in every chunk.
pub fn tokenize(tok: &GgufTokenizer, text: &str) -> Result<(Vec<u32>, Option<u32>), KldError> {
    let tokens = tok.encode(text, true, false)?;
    let bos = if tok.add_bos() { tok.bos() } else { None };
    Ok((tokens, bos))
}

/// Checks the context against the text and the models; returns the number of chunks.
fn plan_chunks(n_tokens: usize, opts: &CompareOptions, max_ctx: usize) -> Result<usize, KldError> {
    Ok(super::chunks::plan_chunks(
        n_tokens,
        opts.n_ctx,
        4,
        max_ctx,
        opts.max_chunks,
    )?)
}

impl From<super::chunks::ChunkError> for KldError {
    fn from(e: super::chunks::ChunkError) -> Self {
        use super::chunks::ChunkError as C;
        match e {
            C::EmptyText => KldError::EmptyText,
            C::ContextTooSmall(n) => KldError::ContextTooSmall(n),
            C::ContextTooLong { requested, max } => KldError::ContextTooLong { requested, max },
            C::TooShort {
                tokens,
                n_ctx,
                needed,
            } => KldError::TooShort {
                tokens,
                n_ctx,
                needed,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lockstep evaluation.

/// `sink(pos, base_log_probs, base_argmax, model_logits)`, run on the model's thread.
type LockstepSink<'a> = dyn FnMut(usize, &[f32], usize, &[f32]) + Send + 'a;

/// Runs `base` and `model` on the same chunk in lockstep; `sink(pos, base_log_probs,
/// base_argmax, model_logits)` sees every position `>= first` in order.
///
/// Both forward passes run on plain threads (never rayon workers, which must not block); their
/// parallel kernels use rayon's global pool. The base's thread blocks when [`LOCKSTEP_DEPTH`]
/// positions wait for the model, which bounds memory to that many vocab-sized vectors.
fn lockstep_chunk(
    base: &dyn Evaluator,
    model: &dyn Evaluator,
    chunk: &[u32],
    first: usize,
    eval: &EvalOptions,
    sink: &mut LockstepSink<'_>,
) -> Result<(), KldError> {
    type Item = (usize, usize, Vec<f32>);
    let (tx, rx) = mpsc::sync_channel::<Item>(LOCKSTEP_DEPTH);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<f32>>();
    std::thread::scope(|scope| {
        let base_thread = scope.spawn(move || {
            let mut stopped = false;
            base.eval(chunk, first, eval, &mut |pos, logits| {
                if stopped {
                    return;
                }
                let mut buf = recycle_rx.try_recv().unwrap_or_default();
                let imax = log_softmax_into(logits, &mut buf);
                // A closed channel means the model's side failed; finish quietly.
                stopped = tx.send((pos, imax, buf)).is_err();
            })
        });
        let model_thread = scope.spawn(move || {
            let mut desync: Option<KldError> = None;
            let res = model.eval(chunk, first, eval, &mut |pos, logits| {
                if desync.is_some() {
                    return;
                }
                match rx.recv() {
                    Ok((bpos, imax, buf)) if bpos == pos => {
                        sink(pos, &buf, imax, logits);
                        let _ = recycle_tx.send(buf);
                    }
                    Ok((bpos, _, _)) => {
                        desync = Some(KldError::Desync {
                            base: Some(bpos),
                            model: pos,
                        })
                    }
                    Err(_) => {
                        desync = Some(KldError::Desync {
                            base: None,
                            model: pos,
                        })
                    }
                }
            });
            // Dropping rx here unblocks a base thread waiting to send.
            drop(rx);
            (res, desync)
        });
        let (model_res, desync) = model_thread.join().map_err(|_| KldError::ThreadPanicked)?;
        let base_res = base_thread.join().map_err(|_| KldError::ThreadPanicked)?;
        base_res?;
        model_res?;
        match desync {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// Compares `model` against `base` on `tokens` (already tokenized with the base's tokenizer;
/// `bos` replaces the first token of every chunk). When `save` is given, the base's compact
/// per-position results are written to it as well.
pub fn compare_models(
    base: &dyn Evaluator,
    model: &dyn Evaluator,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &CompareOptions,
    mut save: Option<&mut BaseResultsWriter>,
    progress: &mut dyn FnMut(usize, usize, &KldSnapshot),
) -> Result<KldReport, KldError> {
    if base.config().n_vocab != model.config().n_vocab {
        return Err(KldError::VocabMismatch(format!(
            "{} vs {} tokens",
            base.config().n_vocab,
            model.config().n_vocab
        )));
    }
    let max_ctx = base
        .config()
        .context_length
        .min(model.config().context_length);
    let n_chunk = plan_chunks(tokens.len(), opts, max_ctx)?;
    let n_ctx = opts.n_ctx;
    let first = n_ctx / 2;
    if let Some(w) = save.as_deref_mut() {
        w.write_header(
            n_ctx,
            base.config().n_vocab,
            n_chunk,
            bos,
            &tokens[..n_chunk * n_ctx],
        )?;
    }
    let start = Instant::now();
    let mut acc = Accumulator::default();
    let mut chunk_tokens = vec![0u32; n_ctx];
    for c in 0..n_chunk {
        let orig = &tokens[c * n_ctx..(c + 1) * n_ctx];
        chunk_tokens.copy_from_slice(orig);
        if let Some(b) = bos {
            chunk_tokens[0] = b;
        }
        if save.is_none() {
            // Both models on one GPU: scored there, only per-position numbers come back.
            let targets = &orig[first + 1..];
            let on_device = model.compare_on_device(
                base,
                &chunk_tokens,
                first,
                targets,
                &opts.eval,
                &mut |pos, s| acc.add(pos + 1, &PositionScore::from_device(&s)),
            )?;
            if on_device {
                acc.end_chunk();
                progress(c + 1, n_chunk, &KldSnapshot::of(&acc));
                continue;
            }
        }
        let mut write_err: Option<KldError> = None;
        {
            let acc = &mut acc;
            let save = &mut save;
            let write_err = &mut write_err;
            lockstep_chunk(
                base,
                model,
                &chunk_tokens,
                first,
                &opts.eval,
                &mut |pos, base_lp, base_argmax, logits| {
                    let Some(&target) = orig.get(pos + 1) else {
                        return; // the last position has no target inside the chunk
                    };
                    let target = target as usize;
                    acc.add(pos + 1, &score_exact(base_lp, base_argmax, logits, target));
                    if let Some(w) = save.as_deref_mut() {
                        if write_err.is_none() {
                            let seed = (c * n_ctx + pos) as u64;
                            let rec = BaseRecord::from_log_probs(base_lp, target, w.top_k, seed);
                            if let Err(e) = w.write_record(&rec) {
                                *write_err = Some(e);
                            }
                        }
                    }
                },
            )?;
        }
        if let Some(e) = write_err {
            return Err(e);
        }
        acc.end_chunk();
        progress(c + 1, n_chunk, &KldSnapshot::of(&acc));
    }
    if let Some(w) = save {
        w.finish()?;
    }
    Ok(acc.finish(n_ctx, n_chunk, None, start.elapsed().as_secs_f64()))
}

/// Running figures for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct KldSnapshot {
    /// PPL of the model so far.
    pub ppl_model: f64,
    /// Mean KLD so far.
    pub kld: f64,
    /// Same top p so far, percent.
    pub same_top_p: f64,
}

impl KldSnapshot {
    fn of(acc: &Accumulator) -> KldSnapshot {
        let n = acc.all.count.max(1) as f64;
        KldSnapshot {
            ppl_model: (acc.all.nll / n).exp(),
            kld: acc.all.kld / n,
            same_top_p: 100.0 * acc.all.same_top as f64 / n,
        }
    }
}

/// Evaluates only the base and writes its compact results (what `--save-base` stores), e.g. once
/// for a sweep's reference.
pub fn save_base_results(
    base: &dyn Evaluator,
    tokens: &[u32],
    bos: Option<u32>,
    opts: &CompareOptions,
    out: &mut BaseResultsWriter,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), KldError> {
    let n_chunk = plan_chunks(tokens.len(), opts, base.config().context_length)?;
    let n_ctx = opts.n_ctx;
    let first = n_ctx / 2;
    out.write_header(
        n_ctx,
        base.config().n_vocab,
        n_chunk,
        bos,
        &tokens[..n_chunk * n_ctx],
    )?;
    let mut chunk_tokens = vec![0u32; n_ctx];
    let mut lp = Vec::new();
    for c in 0..n_chunk {
        let orig = &tokens[c * n_ctx..(c + 1) * n_ctx];
        chunk_tokens.copy_from_slice(orig);
        if let Some(b) = bos {
            chunk_tokens[0] = b;
        }
        let mut err: Option<KldError> = None;
        base.eval(&chunk_tokens, first, &opts.eval, &mut |pos, logits| {
            let Some(&target) = orig.get(pos + 1) else {
                return;
            };
            if err.is_some() {
                return;
            }
            log_softmax_into(logits, &mut lp);
            let seed = (c * n_ctx + pos) as u64;
            let rec = BaseRecord::from_log_probs(&lp, target as usize, out.top_k, seed);
            if let Err(e) = out.write_record(&rec) {
                err = Some(e);
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        progress(c + 1, n_chunk);
    }
    out.finish()
}

/// Compares `model` against saved base results. The tokens, context and BOS come from the file;
/// `opts.n_ctx` must equal the file's, and `opts.max_chunks` may evaluate fewer chunks.
pub fn compare_with_saved(
    saved: &mut BaseResultsReader,
    model: &dyn Evaluator,
    model_vocab: Option<u64>,
    opts: &CompareOptions,
    progress: &mut dyn FnMut(usize, usize, &KldSnapshot),
) -> Result<KldReport, KldError> {
    let h = saved.header.clone();
    if h.n_vocab as usize != model.config().n_vocab {
        return Err(KldError::VocabMismatch(format!(
            "base results have {} tokens, the model {}",
            h.n_vocab,
            model.config().n_vocab
        )));
    }
    if let Some(v) = model_vocab {
        if v != h.vocab_fingerprint {
            return Err(KldError::VocabMismatch(
                "tokenizer.ggml.tokens differ from the base results' vocabulary".into(),
            ));
        }
    }
    let n_ctx = h.n_ctx as usize;
    if opts.n_ctx != n_ctx {
        return Err(KldError::Options(format!(
            "the base results were made at context {n_ctx}, not {}",
            opts.n_ctx
        )));
    }
    if n_ctx > model.config().context_length {
        return Err(KldError::ContextTooLong {
            requested: n_ctx,
            max: model.config().context_length,
        });
    }
    let n_chunk = opts
        .max_chunks
        .map_or(h.n_chunk as usize, |c| c.clamp(1, h.n_chunk as usize));
    let first = n_ctx / 2;
    let start = Instant::now();
    let mut acc = Accumulator::default();
    let mut chunk_tokens = vec![0u32; n_ctx];
    let mut rec = BaseRecord::default();
    let mut scratch = Vec::new();
    for c in 0..n_chunk {
        let orig = &saved.tokens[c * n_ctx..(c + 1) * n_ctx];
        chunk_tokens.copy_from_slice(orig);
        if let Some(b) = h.bos {
            chunk_tokens[0] = b;
        }
        let mut err: Option<KldError> = None;
        let reader = &mut saved.records;
        // On a GPU the records go to the logits: per-position results come back.
        let on_device = {
            let acc = &mut acc;
            let err = &mut err;
            model.compare_saved_on_device(
                &chunk_tokens,
                first,
                &orig[first + 1..],
                &opts.eval,
                &mut |pos, rec| match reader.next_into(c, pos, rec) {
                    Ok(()) => true,
                    Err(e) => {
                        *err = Some(e);
                        false
                    }
                },
                &mut |pos, sc| acc.add(pos + 1, &PositionScore::from_saved(&sc)),
            )
        };
        let on_device = match (on_device, err.take()) {
            (_, Some(e)) => return Err(e),
            (r, None) => r?,
        };
        if on_device {
            acc.end_chunk();
            progress(c + 1, n_chunk, &KldSnapshot::of(&acc));
            continue;
        }
        model.eval(&chunk_tokens, first, &opts.eval, &mut |pos, logits| {
            let Some(&target) = orig.get(pos + 1) else {
                return;
            };
            if err.is_some() {
                return;
            }
            if let Err(e) = reader.next_into(c, pos, &mut rec) {
                err = Some(e);
                return;
            }
            acc.add(
                pos + 1,
                &score_saved(&rec, logits, target as usize, &mut scratch),
            );
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        acc.end_chunk();
        progress(c + 1, n_chunk, &KldSnapshot::of(&acc));
    }
    Ok(acc.finish(
        n_ctx,
        n_chunk,
        Some(h.top_k as usize),
        start.elapsed().as_secs_f64(),
    ))
}

// ---------------------------------------------------------------------------------------------
// The base-results file.
//
// Little-endian: magic "LQKLBASE", u32 version, u32 n_ctx, u32 n_vocab, u32 n_chunk, u32 top_k,
// u32 bos (u32::MAX: none), u64 vocabulary fingerprint; u32 tokens[n_chunk · n_ctx]; then for
// each chunk, for each scored position (n_ctx − 1 − n_ctx/2 of them): f32 target log-prob,
// f32 tail mass, f32 tail Σ p ln p, top_k × (u32 id, f32 log-prob), most probable first, then
// top_k × (u32 id, f32 log-prob) sampled from the tail (systematic sampling ∝ p).

/// Header of a base-results file.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseHeader {
    /// Tokens per chunk.
    pub n_ctx: u32,
    /// Vocabulary size.
    pub n_vocab: u32,
    /// Chunks stored.
    pub n_chunk: u32,
    /// Top log-probs per position.
    pub top_k: u32,
    /// BOS put first in every chunk.
    pub bos: Option<u32>,
    /// [`vocab_fingerprint`] of the base.
    pub vocab_fingerprint: u64,
}

const HEADER_BYTES: u64 = 8 + 4 * 6 + 8;

fn record_bytes(top_k: u64) -> u64 {
    12 + 16 * top_k
}

/// Writes a base-results file to a temporary beside `PATH`, moved over `PATH` by
/// [`BaseResultsWriter::finish`] (through [`longquant_formats::atomic::AtomicFile`]).
pub struct BaseResultsWriter {
    path: PathBuf,
    atomic: Option<AtomicFile>,
    out: Option<BufWriter<File>>,
    /// Top log-probs kept per position.
    pub top_k: usize,
    vocab_fingerprint: u64,
    header_written: bool,
}

impl std::fmt::Debug for BaseResultsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaseResultsWriter")
            .field("path", &self.path)
            .field("top_k", &self.top_k)
            .finish()
    }
}

impl BaseResultsWriter {
    /// Starts a file for a base with the given vocabulary fingerprint.
    pub fn create(path: &Path, top_k: usize, vocab_fingerprint: u64) -> Result<Self, KldError> {
        if top_k == 0 || top_k > MAX_TOP_K as usize {
            return Err(KldError::Options(format!(
                "top-k must be in 1..={MAX_TOP_K}, not {top_k}"
            )));
        }
        let atomic = AtomicFile::create(path, true).map_err(kld_io)?;
        let f = atomic.try_clone_file().map_err(kld_io)?;
        Ok(BaseResultsWriter {
            path: path.to_path_buf(),
            atomic: Some(atomic),
            out: Some(BufWriter::new(f)),
            top_k,
            vocab_fingerprint,
            header_written: false,
        })
    }

    fn io<T>(&self, r: std::io::Result<T>) -> Result<T, KldError> {
        r.map_err(|source| KldError::Io {
            path: self.path.clone(),
            source,
        })
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), KldError> {
        let r = match self.out.as_mut() {
            Some(o) => o.write_all(bytes),
            None => Err(std::io::Error::other("writer already finished")),
        };
        self.io(r)
    }

    fn write_header(
        &mut self,
        n_ctx: usize,
        n_vocab: usize,
        n_chunk: usize,
        bos: Option<u32>,
        tokens: &[u32],
    ) -> Result<(), KldError> {
        if self.header_written {
            return Err(KldError::Options(
                "base results header written twice".into(),
            ));
        }
        let to32 = |v: usize, what: &str| {
            u32::try_from(v)
                .map_err(|_| KldError::Options(format!("{what} {v} does not fit the file")))
        };
        let mut h = Vec::with_capacity(HEADER_BYTES as usize);
        h.extend_from_slice(MAGIC);
        for v in [
            VERSION,
            to32(n_ctx, "context")?,
            to32(n_vocab, "vocabulary")?,
            to32(n_chunk, "chunk count")?,
            self.top_k.min(n_vocab) as u32,
            bos.unwrap_or(u32::MAX),
        ] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&self.vocab_fingerprint.to_le_bytes());
        self.top_k = self.top_k.min(n_vocab);
        self.put(&h)?;
        let mut buf = Vec::with_capacity(tokens.len() * 4);
        for t in tokens {
            buf.extend_from_slice(&t.to_le_bytes());
        }
        self.put(&buf)?;
        self.header_written = true;
        Ok(())
    }

    fn write_record(&mut self, rec: &BaseRecord) -> Result<(), KldError> {
        let mut b = Vec::with_capacity(record_bytes(self.top_k as u64) as usize);
        b.extend_from_slice(&rec.target_logp.to_le_bytes());
        b.extend_from_slice(&rec.tail_mass.to_le_bytes());
        b.extend_from_slice(&rec.tail_plogp.to_le_bytes());
        for i in 0..self.top_k {
            let (id, lp) = rec.top.get(i).copied().unwrap_or((0, f32::NEG_INFINITY));
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&lp.to_le_bytes());
        }
        // An empty tail (k = vocabulary) stores no samples: id u32::MAX marks "none".
        for i in 0..self.top_k {
            let (id, lp) = rec.samples.get(i).copied().unwrap_or((u32::MAX, 0.0));
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&lp.to_le_bytes());
        }
        self.put(&b)
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(&mut self) -> Result<(), KldError> {
        let Some(out) = self.out.take() else {
            return Ok(());
        };
        let f = out.into_inner().map_err(|e| KldError::Io {
            path: self.path.clone(),
            source: e.into_error(),
        })?;
        drop(f);
        match self.atomic.take() {
            Some(a) => a.commit(true).map_err(kld_io),
            None => Ok(()),
        }
    }
}

impl Drop for BaseResultsWriter {
    fn drop(&mut self) {
        // An unfinished file is useless: our handle first, then the temporary (AtomicFile's drop).
        drop(self.out.take());
        drop(self.atomic.take());
    }
}

/// A commit-helper error as a [`KldError::Io`] naming the file.
fn kld_io(e: crate::formats::Error) -> KldError {
    let source = match e.kind {
        crate::formats::ErrorKind::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    };
    KldError::Io {
        path: e.path,
        source,
    }
}

/// Streams the records of a base-results file, validating each.
pub struct RecordReader {
    path: PathBuf,
    inp: BufReader<File>,
    top_k: usize,
    n_vocab: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for RecordReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordReader")
            .field("path", &self.path)
            .finish()
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn le_f32(b: &[u8], at: usize) -> f32 {
    f32::from_bits(le_u32(b, at))
}

impl RecordReader {
    /// Reads the next record (of chunk `chunk`, position `pos`, for error messages) into `rec`.
    fn next_into(
        &mut self,
        chunk: usize,
        pos: usize,
        rec: &mut BaseRecord,
    ) -> Result<(), KldError> {
        let bad = |what| KldError::BaseFile {
            path: self.path.clone(),
            source: BaseFileError::BadRecord { chunk, pos, what },
        };
        self.buf.resize(record_bytes(self.top_k as u64) as usize, 0);
        self.inp
            .read_exact(&mut self.buf)
            .map_err(|source| KldError::Io {
                path: self.path.clone(),
                source,
            })?;
        let b = &self.buf;
        rec.target_logp = le_f32(b, 0);
        rec.tail_mass = le_f32(b, 4);
        rec.tail_plogp = le_f32(b, 8);
        // Log-probs are ≤ 0 up to rounding; a little slack keeps honest files valid.
        const SLACK: f32 = 1e-3;
        if rec.target_logp.is_nan() || rec.target_logp > SLACK {
            return Err(bad("target log-prob is not a log-probability"));
        }
        if !(0.0..=1.0 + SLACK).contains(&rec.tail_mass) {
            return Err(bad("tail mass outside [0, 1]"));
        }
        if !rec.tail_plogp.is_finite() || rec.tail_plogp > SLACK {
            return Err(bad("tail Σ p ln p is not ≤ 0"));
        }
        rec.top.clear();
        let mut prev = f32::INFINITY;
        for i in 0..self.top_k {
            let id = le_u32(b, 12 + 8 * i);
            let lp = le_f32(b, 16 + 8 * i);
            if id >= self.n_vocab {
                return Err(bad("top-k token id outside the vocabulary"));
            }
            if lp.is_nan() || lp > SLACK || lp > prev {
                return Err(bad("top-k log-probs are not sorted log-probabilities"));
            }
            prev = lp;
            rec.top.push((id, lp));
        }
        rec.samples.clear();
        let base = 12 + 8 * self.top_k;
        for i in 0..self.top_k {
            let id = le_u32(b, base + 8 * i);
            let lp = le_f32(b, base + 4 + 8 * i);
            if id == u32::MAX {
                continue;
            }
            if id >= self.n_vocab {
                return Err(bad("sampled token id outside the vocabulary"));
            }
            if !lp.is_finite() || lp > SLACK {
                return Err(bad("sampled log-prob is not a log-probability"));
            }
            rec.samples.push((id, lp));
        }
        Ok(())
    }
}

/// An open base-results file: header and tokens read and checked, records streamed.
#[derive(Debug)]
pub struct BaseResultsReader {
    /// The header.
    pub header: BaseHeader,
    /// All chunks' tokens (n_chunk · n_ctx).
    pub tokens: Vec<u32>,
    records: RecordReader,
}

impl BaseResultsReader {
    /// Opens and validates `path`: magic, version, ranges, exact length, token ids.
    pub fn open(path: &Path) -> Result<Self, KldError> {
        let io = |source| KldError::Io {
            path: path.to_path_buf(),
            source,
        };
        let bad = |source| KldError::BaseFile {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        let actual = f.metadata().map_err(io)?.len();
        let mut inp = BufReader::new(f);
        let mut h = [0u8; HEADER_BYTES as usize];
        if actual < HEADER_BYTES {
            return Err(bad(BaseFileError::SizeMismatch {
                expected: HEADER_BYTES,
                actual,
            }));
        }
        inp.read_exact(&mut h).map_err(io)?;
        if &h[..8] != MAGIC {
            return Err(bad(BaseFileError::BadMagic));
        }
        let version = le_u32(&h, 8);
        if version != VERSION {
            return Err(bad(BaseFileError::UnsupportedVersion(version)));
        }
        let n_ctx = le_u32(&h, 12);
        let n_vocab = le_u32(&h, 16);
        let n_chunk = le_u32(&h, 20);
        let top_k = le_u32(&h, 24);
        let bos = le_u32(&h, 28);
        let mut fp = [0u8; 8];
        fp.copy_from_slice(&h[32..40]);
        let field = |field, value: u32, lo: u32, hi: u32| {
            if value < lo || value > hi {
                Err(bad(BaseFileError::HeaderField {
                    field,
                    value: value.into(),
                    limit: if value < lo { lo.into() } else { hi.into() },
                }))
            } else {
                Ok(())
            }
        };
        field("n_ctx", n_ctx, 4, MAX_CTX)?;
        field("n_vocab", n_vocab, 1, MAX_VOCAB)?;
        field("n_chunk", n_chunk, 1, u32::MAX)?;
        field("top_k", top_k, 1, MAX_TOP_K.min(n_vocab))?;
        if bos != u32::MAX {
            field("bos", bos, 0, n_vocab - 1)?;
        }
        // Exact size, in u128 so no header can overflow the check.
        let n_tok = u128::from(n_ctx) * u128::from(n_chunk);
        let per_chunk = u128::from(n_ctx - 1 - n_ctx / 2);
        let expected = u128::from(HEADER_BYTES)
            + 4 * n_tok
            + u128::from(n_chunk) * per_chunk * u128::from(record_bytes(top_k.into()));
        if expected != u128::from(actual) {
            return Err(bad(BaseFileError::SizeMismatch {
                expected: u64::try_from(expected).unwrap_or(u64::MAX),
                actual,
            }));
        }
        // The size check bounds n_tok by the file length, so this allocation is backed by bytes on disk.
        let n_tok = n_tok as usize;
        let mut raw = vec![0u8; n_tok * 4];
        inp.read_exact(&mut raw).map_err(io)?;
        let tokens: Vec<u32> = raw.chunks_exact(4).map(|c| le_u32(c, 0)).collect();
        if let Some((index, &id)) = tokens.iter().enumerate().find(|(_, &t)| t >= n_vocab) {
            return Err(bad(BaseFileError::TokenOutOfRange { index, id, n_vocab }));
        }
        Ok(BaseResultsReader {
            header: BaseHeader {
                n_ctx,
                n_vocab,
                n_chunk,
                top_k,
                bos: (bos != u32::MAX).then_some(bos),
                vocab_fingerprint: u64::from_le_bytes(fp),
            },
            tokens,
            records: RecordReader {
                path: path.to_path_buf(),
                inp,
                top_k: top_k as usize,
                n_vocab,
                buf: Vec::new(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_matches_llamacpp_interpolation() {
        let v: Vec<f32> = (0..11).map(|i| i as f32).collect();
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert!((percentile(&v, 0.99) - 9.9).abs() < 1e-5);
        assert_eq!(percentile(&v, 0.0), 0.0);
        assert_eq!(percentile(&v, 1.0), 10.0);
        let p = percentiles(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(p.median, 2.5);
    }

    #[test]
    fn top_k_record_and_bounds() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32 * 0.1).collect();
        let mut lp = Vec::new();
        let am = log_softmax_into(&logits, &mut lp);
        let rec = BaseRecord::from_log_probs(&lp, 5, 8, 7);
        assert_eq!(rec.top.len(), 8);
        assert_eq!(rec.top[0].0 as usize, am);
        assert!(rec.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let head: f64 = rec.top.iter().map(|&(_, l)| (l as f64).exp()).sum();
        assert!((head + rec.tail_mass as f64 - 1.0).abs() < 1e-5);
        assert_eq!(rec.samples.len(), 8);
        assert!(rec
            .samples
            .iter()
            .all(|s| rec.top.iter().all(|t| t.0 != s.0)));
        // A different model: the bounds bracket the exact KLD, and the sampled tail estimate is
        // unbiased (its mean over many sampling offsets approaches the exact value).
        let other: Vec<f32> = (0..100).map(|i| ((i * 53) % 100) as f32 * 0.08).collect();
        let exact = score_exact(&lp, am, &other, 5);
        let approx = score_saved(&rec, &other, 5, &mut Vec::new());
        assert!(approx.kld_lower <= exact.kld + 1e-6);
        assert!(approx.kld_upper >= exact.kld - 1e-6);
        let n = 2000;
        let mean: f64 = (0..n)
            .map(|seed| {
                let r = BaseRecord::from_log_probs(&lp, 5, 8, seed);
                score_saved(&r, &other, 5, &mut Vec::new()).kld
            })
            .sum::<f64>()
            / n as f64;
        assert!(
            (mean - exact.kld).abs() < 0.01 * exact.kld,
            "{mean} vs {}",
            exact.kld
        );
        assert!((approx.nll_base - exact.nll_base).abs() < 1e-6);
        assert_eq!(approx.same_top, exact.same_top);
        // Against itself: zero.
        let same = score_exact(&lp, am, &logits, 5);
        assert!(same.kld.abs() < 1e-6, "{}", same.kld);
        assert!(same.same_top && same.p_diff.abs() < 1e-6, "{:?}", same);
    }
}
