//! What evaluation asks of a forward pass, whatever device runs it.
//!
//! `eval/` (perplexity, KLD, sweeps) and the `logits` command talk to an [`Evaluator`]; the
//! CPU [`Model`] and the CUDA backend (`crate::cuda`, feature `cuda`) both implement it.
use super::{EvalOptions, LlamaConfig, Model, ModelError, Session, SessionOptions};
use longquant_formats::gguf::GgufFile;

/// Where a model is evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The embedded CPU forward pass.
    #[default]
    Cpu,
    /// CUDA device N (a build with the `cuda` feature).
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!("`{s}` is not a device (cpu, cuda or cuda:N)")),
            },
        }
    }
}

/// Checks and loads the model in `file` for evaluation on `device`.
pub fn load_on(file: &GgufFile, device: Device) -> Result<Box<dyn Evaluator + '_>, ModelError> {
    match device {
        Device::Cpu => Ok(Box::new(Model::load(file)?)),
        #[cfg(feature = "cuda")]
        Device::Cuda(n) => Ok(Box::new(crate::cuda::CudaModel::load(file, n)?)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(n) => Err(ModelError::Device(format!(
            "cuda:{n} was asked for, but this longquant was built without CUDA support \
             (rebuild with `cargo build --release --features cuda`)"
        ))),
    }
}

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

    /// Evaluates as [`Evaluator::eval`] does and shows every matrix product's input to `sink`
    /// (see [`InputSink`]): the CPU hands over whole rows as [`Model::eval_observed`] does; a
    /// device backend sums the squares per column where the activations are and hands over
    /// the sums once per chunk. The output head's input covers positions `>= logits_from`.
    fn eval_observed(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
        sink: &mut dyn InputSink,
    ) -> Result<(), ModelError>;

    /// Scores this model against `base` on one chunk where both live, without bringing
    /// logits to the host: `on_score(pos, score)` for every position `logits_from ..
    /// logits_from + targets.len()`, where `targets[pos - logits_from]` is the token that
    /// follows `pos`. `Ok(false)` (nothing called) when the two cannot be compared on one
    /// device; the caller then runs them in lockstep on the host.
    fn compare_on_device(
        &self,
        _base: &dyn Evaluator,
        _tokens: &[u32],
        _logits_from: usize,
        _targets: &[u32],
        _opts: &EvalOptions,
        _on_score: &mut dyn FnMut(usize, DeviceScore),
    ) -> Result<bool, ModelError> {
        Ok(false)
    }

    /// Scores this model against a saved base where its logits are: `next(pos, record)` fills
    /// the saved record of position `pos` (positions `logits_from .. logits_from +
    /// targets.len()` in order; `false` stops the run, the caller keeps its error) and
    /// `on_score(pos, score)` gets each result. `Ok(false)` (nothing called) when the device
    /// cannot; the caller then scores logits on the host.
    fn compare_saved_on_device(
        &self,
        _tokens: &[u32],
        _logits_from: usize,
        _targets: &[u32],
        _opts: &EvalOptions,
        _next: &mut dyn FnMut(usize, &mut BaseRecord) -> bool,
        _on_score: &mut dyn FnMut(usize, SavedScore),
    ) -> Result<bool, ModelError> {
        Ok(false)
    }

    /// An empty decoding session (incremental evaluation with a K/V cache), for generation.
    fn decoder(&self, opts: &EvalOptions) -> Result<Box<dyn Decoder + '_>, ModelError>;

    /// The CUDA model behind this evaluator, if it is one.
    #[cfg(feature = "cuda")]
    fn as_cuda(&self) -> Option<&crate::cuda::CudaModel<'_>> {
        None
    }

    /// Whether the output head is the token embedding (tied weights).
    fn tied_output(&self) -> bool;

    /// A short name of the device, for reports (`cpu`, `cuda:0 (NVIDIA H200)`).
    fn device_name(&self) -> String {
        "cpu".to_string()
    }
}

/// One position of [`Evaluator::compare_on_device`]: the model's and the base's NLL of the
/// target, `KL(base ‖ model)` and whether both put the same token first, computed as the host's
/// exact scoring does (`eval::kld`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceScore {
    /// −ln p_model(target).
    pub nll: f64,
    /// −ln p_base(target).
    pub nll_base: f64,
    /// Σ p_base ln(p_base / p_model).
    pub kld: f64,
    /// The two argmaxes (first maximum) agree.
    pub same_top: bool,
}

/// One scored position of a saved base (`compare --save-base`, `eval::kld`, whose
/// `BaseRecord::from_log_probs` builds it): top-k (id, log-prob) sorted by log-prob descending,
/// the target's log-prob, and the tail (everything outside the top k).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BaseRecord {
    /// ln p_base(target).
    pub target_logp: f32,
    /// Base probability mass outside the top k.
    pub tail_mass: f32,
    /// Σ over the tail of p ln p (≤ 0).
    pub tail_plogp: f32,
    /// (token id, ln p_base), most probable first.
    pub top: Vec<(u32, f32)>,
    /// (token id, ln p_base) of k tail tokens drawn ∝ p_base by systematic sampling (repeats
    /// possible): `r · mean ln(p/q)` over them estimates the tail's share of the KLD without bias.
    pub samples: Vec<(u32, f32)>,
}

/// One position of [`Evaluator::compare_saved_on_device`], computed as the host's scoring against
/// a saved base does (`eval::kld`): the model's NLL of the target, the KLD estimate with its
/// bounds and its sampling variance, and whether the model's argmax is the base's first.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SavedScore {
    /// −ln p_model(target).
    pub nll: f64,
    /// −ln p_base(target), from the record.
    pub nll_base: f64,
    /// The record's base mass outside its top k.
    pub tail_mass: f64,
    /// The estimate: exact head plus the sampled (or ∝ q) tail term, clamped into its bounds.
    pub kld: f64,
    /// Lower bound of the exact KLD.
    pub kld_lower: f64,
    /// Upper bound.
    pub kld_upper: f64,
    /// Sampling variance of the tail estimate.
    pub tail_var: f64,
    /// The model's argmax is the base's most probable token.
    pub same_top: bool,
}

/// Incremental evaluation: tokens fed in order, the K/V cache kept between calls.
pub trait Decoder {
    /// Appends `tokens` and returns the logits of the last one.
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError>;
    /// Positions fed so far.
    fn len(&self) -> usize;
    /// Nothing fed yet.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Decoder for Session<'_, '_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let mut out = Vec::new();
        Session::feed(self, tokens, &mut |_, logits| out = logits.to_vec())?;
        Ok(out)
    }

    fn len(&self) -> usize {
        Session::len(self)
    }
}

/// Where [`Evaluator::eval_observed`] puts what the matrix products saw (an importance-matrix
/// accumulator). `tensor` is the weight's GGUF name (`blk.N.attn_q.weight`, ...,
/// `output.weight`).
pub trait InputSink {
    /// Whole f32 input rows of `tensor`'s width (a tile of tokens).
    fn rows(&mut self, tensor: &str, acts: &[f32]);
    /// Per-column sums of squares of `n_rows` input rows of `tensor`.
    fn sums(&mut self, tensor: &str, sums: &[f64], n_rows: u64);
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

    fn eval_observed(
        &self,
        tokens: &[u32],
        logits_from: usize,
        opts: &EvalOptions,
        on_logits: &mut dyn FnMut(usize, &[f32]),
        sink: &mut dyn InputSink,
    ) -> Result<(), ModelError> {
        Model::eval_observed(self, tokens, logits_from, opts, on_logits, &mut |t, a| {
            sink.rows(t, a)
        })
    }

    fn tied_output(&self) -> bool {
        self.weights.tied_output
    }

    fn decoder(&self, opts: &EvalOptions) -> Result<Box<dyn Decoder + '_>, ModelError> {
        Ok(Box::new(self.session(SessionOptions {
            cache_type_k: opts.cache_type_k,
            cache_type_v: opts.cache_type_v,
        })))
    }
}
