//! The one-pass conversion: plan every output tensor (name, ggml dims, type, size) and all metadata
//! from the checkpoint, open the GGUF writer with that plan, then stream tensor by tensor: read the
//! memory-mapped source rows, widen to f32, permute q/k, check for NaN/Inf, quantize on all cores,
//! write. Work happens in row slices of at most [`SLICE_WEIGHTS`] weights, so peak memory is a few
//! hundred MiB whatever the model size (an 8B model's 128256×4096 F32 embedding is 2 GiB).

use std::path::{Path, PathBuf};
use std::time::Instant;

use longquant_formats::gguf::{
    Array, GgufFile, Metadata, TensorSpec, Value, ValueType, WriteOptions,
};
use longquant_formats::safetensors::{Dtype, SafetensorsModel, StTensor};
use longquant_formats::GgmlType;
use longquant_quants::QuantError;

use super::config::{ConfigError, LlamaConfig, RopeScaling};
use super::controls::{apply_overrides, prune, set_last, ControlError, Controls, KvOverride};
use super::importance::ImportanceWeights;
use super::mix::{plan_mix_with, requires_imatrix, FileType, MixOptions, MixTensor, ModelShape};
use super::names::{map_hf_name, HfName, PermuteError, Role, ROPE_FREQS};
use super::split::{SplitLayout, SplitWriter};
use super::stream::{split_err, stream_tensors, TensorSource};
use super::tokenizer::{
    add_special_key, load_vocab, special_id_key, ChatTemplate, TokenizerError, Vocab,
};
use crate::Refusal;

pub use super::stream::SLICE_WEIGHTS;

/// Why a conversion failed. Whatever the cause, no output file is left behind.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Refused for safety (output exists without `--force`, output would overwrite the input).
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Cancelled by Ctrl-C / SIGTERM; the temporary output was removed.
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    /// Reading a checkpoint file or writing the GGUF failed.
    #[error(transparent)]
    Format(#[from] longquant_formats::Error),
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// config.json cannot be converted.
    #[error("{path}: {source}")]
    Config {
        /// config.json's path.
        path: PathBuf,
        /// What is wrong.
        source: ConfigError,
    },
    /// Tokenizer files cannot be converted.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// A tensor the config calls for is not in the checkpoint (or its shard is missing).
    #[error("tensor {name} is missing from the checkpoint")]
    MissingTensor {
        /// HF name.
        name: String,
    },
    /// config.json names more transformer blocks than the checkpoint holds tensors for.
    #[error("config.json says num_hidden_layers = {config}, but the checkpoint has tensors for {found} layers (no tensor {first_missing})")]
    LayerCountMismatch {
        /// `num_hidden_layers` in config.json.
        config: u64,
        /// Blocks found in the checkpoint (highest `model.layers.N` index + 1).
        found: u64,
        /// The first tensor the config calls for that is absent.
        first_missing: String,
    },
    /// A tensor that is not part of a Llama checkpoint.
    #[error("unexpected tensor {name} (not a LlamaForCausalLM weight, or a block index beyond num_hidden_layers)")]
    UnexpectedTensor {
        /// HF name.
        name: String,
    },
    /// A tensor's shape disagrees with config.json.
    #[error("tensor {name} has shape {found:?}, but config.json implies {expected:?}")]
    ShapeMismatch {
        /// HF name.
        name: String,
        /// From config.json (outermost first).
        expected: Vec<u64>,
        /// In the checkpoint.
        found: Vec<u64>,
    },
    /// A tensor dtype this converter does not read.
    #[error("tensor {name} has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        /// HF name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// NaN or infinity in a source tensor.
    #[error("tensor {name} holds a non-finite value {value} at element {index}")]
    NonFinite {
        /// HF name.
        name: String,
        /// Flat element index in the source tensor (after the q/k permutation for q/k).
        index: u64,
        /// The value.
        value: f32,
    },
    /// A quantization kernel refused a tensor.
    #[error("quantizing {name}: {source}")]
    Quant {
        /// GGUF name.
        name: String,
        /// The cause.
        source: QuantError,
    },
    /// The q/k permutation does not fit the tensor.
    #[error("tensor {name}: {source}")]
    Permute {
        /// HF name.
        name: String,
        /// The cause.
        source: PermuteError,
    },
    /// An option is not available.
    #[error("{0}")]
    NotSupported(String),
    /// The input file lacks what the operation needs.
    #[error("{0}")]
    BadInput(String),
    /// A split set could not be written or read.
    #[error(transparent)]
    Split(super::split::SplitError),
    /// A quantized input tensor would have to be requantized, and that was not allowed.
    #[error("tensor {name} is already quantized ({from}); converting it to {to} loses precision twice, pass --allow-requantize to do it anyway")]
    RequantizeRefused {
        /// GGUF name.
        name: String,
        /// Its type in the input.
        from: String,
        /// The type the mix chose.
        to: String,
    },
    /// The file type needs an importance matrix for this tensor and none was given
    /// (llama-quantize's refusal for Q2_K_S, with its message).
    #[error("this quantization requires an importance matrix! offending tensor: {name}, target type: {ggml_type} (pass --imatrix FILE, made by `longquant imatrix` or llama-imatrix)")]
    ImatrixRequired {
        /// GGUF tensor name.
        name: String,
        /// The type the mix chose for it (ggml's name).
        ggml_type: String,
    },
    /// A malformed or contradictory llama-quantize control.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// A type forced by `--output-tensor-type` / `--token-embedding-type` (which llama-quantize
    /// applies without a shape fallback) does not fit the tensor's rows.
    #[error("{option} {ggml_type} does not fit tensor {name}: its rows of {row} weights are not a multiple of {block}")]
    TypeDoesNotFit {
        /// The option that forced it.
        option: &'static str,
        /// GGUF tensor name.
        name: String,
        /// ggml type name.
        ggml_type: String,
        /// Row length.
        row: u64,
        /// The type's block size.
        block: u64,
    },
    /// After writing, the GGUF does not carry what config.json says (a bug; the file is removed).
    #[error("written file disagrees with config.json: {0}")]
    Verify(String),
    /// The importance matrix file cannot be read.
    #[error(transparent)]
    Imatrix(#[from] crate::imatrix::ImatrixError),
    /// An importance matrix entry does not fit its tensor (made for another model?).
    #[error("{path}: the importance matrix has {found} values for {name}, whose rows have {expected} (was it computed on another model?)")]
    ImatrixSize {
        /// The imatrix file.
        path: PathBuf,
        /// GGUF tensor name.
        name: String,
        /// Values in the entry.
        found: u64,
        /// The tensor's row length.
        expected: u64,
    },
    /// An importance matrix entry holds NaN or infinity.
    #[error("{path}: the importance matrix entry for {name} holds a non-finite value {value}")]
    ImatrixNonFinite {
        /// The imatrix file.
        path: PathBuf,
        /// GGUF tensor name.
        name: String,
        /// The value.
        value: f32,
    },
}

/// The requested output type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeChoice {
    /// The source's own precision (F32, BF16 or F16), never a downcast.
    Auto,
    /// A llama.cpp file type.
    Fixed(FileType),
}

impl TypeChoice {
    /// Parse `auto` or a file type name.
    pub fn parse(s: &str) -> Option<TypeChoice> {
        if s.eq_ignore_ascii_case("auto") {
            return Some(TypeChoice::Auto);
        }
        FileType::from_name(s).map(TypeChoice::Fixed)
    }
}

/// What to convert and how.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Output type.
    pub file_type: TypeChoice,
    /// Pre-tokenizer name to use instead of the detected one.
    pub pre_override: Option<String>,
    /// Replace an existing output.
    pub force: bool,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Importance matrix (llama-imatrix's GGUF or legacy `.dat`), used like llama-quantize's
    /// `--imatrix`.
    pub imatrix: Option<PathBuf>,
    /// Write llama.cpp's split layout with files of at most this many tensor bytes.
    pub split_max_size: Option<u64>,
    /// llama-quantize's per-tensor and metadata controls (`--keep-split` writes one GGUF file
    /// per safetensors shard).
    pub controls: Controls,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            file_type: TypeChoice::Auto,
            pre_override: None,
            force: false,
            threads: None,
            imatrix: None,
            split_max_size: None,
            controls: Controls::default(),
        }
    }
}

/// Where a planned tensor's values come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A tensor of the input, by its name there (HF name for a checkpoint, GGUF name for a GGUF).
    Checkpoint(String),
    /// Generated values (the Llama-3.1 rope factors).
    Generated(Vec<f32>),
}

/// One tensor of the output.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedTensor {
    /// GGUF name.
    pub name: String,
    /// Values' origin.
    pub source: Source,
    /// What it is (None for tensors of a GGUF input, which keep their names).
    pub role: Option<Role>,
    /// ggml dimensions (innermost first).
    pub dims: Vec<u64>,
    /// Output type.
    pub ggml_type: GgmlType,
    /// The type the mix wanted when a fallback replaced it.
    pub fallback_from: Option<GgmlType>,
    /// Heads for the q/k permutation (None for other tensors).
    pub permute_heads: Option<u64>,
    /// Bytes in the output.
    pub n_bytes: u64,
}

/// Everything decided before the first byte is written.
#[derive(Debug)]
pub struct Plan {
    /// The checkpoint folder.
    pub src_dir: PathBuf,
    /// Parsed config.json.
    pub config: LlamaConfig,
    /// Tokenizer metadata.
    pub vocab: Vocab,
    /// Chosen file type.
    pub file_type: FileType,
    /// Output tensors in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Tensors that fell back (llama-quantize's count).
    pub n_fallback: usize,
    /// Parameters (elements of all tensors).
    pub n_params: u64,
    /// The importance matrix, when one was given (and `--include-weights`/`--exclude-weights`
    /// left entries in it).
    pub imatrix: Option<ImportanceWeights>,
    /// GGUF metadata.
    pub metadata: Metadata,
    /// Non-fatal findings of planning (a dry run's "will need an importance matrix").
    pub warnings: Vec<String>,
}

/// Progress events for a progress bar.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// Writing starts: tensors and source bytes to process.
    Start {
        /// Tensors.
        tensors: usize,
        /// Source bytes.
        bytes: u64,
    },
    /// Some source bytes of a tensor were processed.
    Advance {
        /// Tensor being processed.
        name: &'a str,
        /// Source bytes just processed.
        bytes: u64,
    },
    /// A tensor is complete.
    TensorDone {
        /// Its GGUF name.
        name: &'a str,
    },
}

/// One long-context fact, as written and as config.json says.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// What it is.
    pub what: &'static str,
    /// Read back from the written GGUF.
    pub gguf: String,
    /// From the checkpoint's config files.
    pub source: String,
}

/// What a finished conversion reports.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The output file (the first file of a split set).
    pub output: PathBuf,
    /// Every file written (one, or the split set in order).
    pub outputs: Vec<PathBuf>,
    /// File type written.
    pub file_type: FileType,
    /// Size of the output.
    pub file_size: u64,
    /// Source bytes read.
    pub source_bytes: u64,
    /// Parameters.
    pub n_params: u64,
    /// (GGUF name, type, dims, bytes) per tensor.
    pub tensors: Vec<(String, GgmlType, Vec<u64>, u64)>,
    /// Fallbacks, as llama-quantize counts them.
    pub n_fallback: usize,
    /// Seconds from start to rename.
    pub wall_seconds: f64,
    /// Long-context facts, read back from the file beside config.json's values.
    pub facts: Vec<Fact>,
    /// Non-fatal warnings (F16 overflow, ...).
    pub warnings: Vec<String>,
}

impl ConvertReport {
    /// Bits per weight over all tensors.
    pub fn bits_per_weight(&self) -> f64 {
        let bytes: u64 = self.tensors.iter().map(|t| t.3).sum();
        if self.n_params == 0 {
            0.0
        } else {
            bytes as f64 * 8.0 / self.n_params as f64
        }
    }
}

/// The shape (outermost first) config.json implies for a role.
fn expected_shape(c: &LlamaConfig, role: Role) -> Vec<u64> {
    let q = c.n_head * c.head_dim;
    let kv = c.n_head_kv * c.head_dim;
    match role {
        Role::TokenEmbd | Role::Output => vec![c.vocab_size, c.hidden_size],
        Role::OutputNorm | Role::AttnNorm | Role::FfnNorm => vec![c.hidden_size],
        Role::RopeFreqs => vec![c.head_dim / 2],
        Role::AttnQ => vec![q, c.hidden_size],
        Role::AttnK | Role::AttnV => vec![kv, c.hidden_size],
        Role::AttnOutput => vec![c.hidden_size, q],
        Role::FfnGate | Role::FfnUp => vec![c.intermediate_size, c.hidden_size],
        Role::FfnDown => vec![c.hidden_size, c.intermediate_size],
    }
}

/// `gguf.size_label` for a dense model: parameters with two significant digits and a K/M/B/T suffix.
pub fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let int_digits = format!("{}", scaled.round() as u64)
        .trim_start_matches('0')
        .len();
    let fix = 2usize.saturating_sub(int_digits);
    format!("{scaled:.fix$}{suffix}")
}

fn str_array(v: &[String]) -> Value {
    Value::Array(Array::new(
        ValueType::String,
        v.iter().map(|s| Value::String(s.clone())).collect(),
    ))
}

/// Build the plan: validate the checkpoint against config.json, choose every tensor's type, and
/// assemble the metadata convert_hf_to_gguf.py (then llama-quantize) would write.
pub fn plan(
    src_dir: &Path,
    st: &SafetensorsModel,
    opts: &ConvertOptions,
) -> Result<Plan, ConvertError> {
    plan_inner(src_dir, st, opts, false)
}

/// [`plan`]; with `dry_run`, a file type that would need an importance matrix is a warning, as
/// in llama-quantize `--dry-run`.
fn plan_inner(
    src_dir: &Path,
    st: &SafetensorsModel,
    opts: &ConvertOptions,
    dry_run: bool,
) -> Result<Plan, ConvertError> {
    opts.controls.check()?;
    let cfg_path = src_dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|source| ConvertError::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let config = LlamaConfig::from_json_str(&cfg_text).map_err(|source| ConvertError::Config {
        path: cfg_path.clone(),
        source,
    })?;
    // Read before the checkpoint is planned: a bad file fails fast.
    let mut imatrix = load_imatrix(opts.imatrix.as_deref(), &opts.controls)?;

    // The blocks the checkpoint holds, before anything is sized by config.json's count: a config
    // claiming 10^9 layers beside tensors for 16 must fail here, not after listing 9·10^9 names.
    let found_layers = st
        .tensors()
        .iter()
        .filter_map(|t| match map_hf_name(&t.name, u64::MAX) {
            HfName::Tensor(m) => m.layer,
            _ => None,
        })
        .max()
        .map_or(0, |l| l.saturating_add(1));
    if config.n_layer > found_layers {
        return Err(ConvertError::LayerCountMismatch {
            config: config.n_layer,
            found: found_layers,
            first_missing: format!("model.layers.{found_layers}.input_layernorm.weight"),
        });
    }
    crate::interrupt::check()?;

    // Map and check every checkpoint tensor.
    let mut mapped: Vec<(&StTensor, String, Role)> = Vec::new();
    for t in st.tensors() {
        match map_hf_name(&t.name, config.n_layer) {
            HfName::Skip => continue,
            HfName::Unknown => {
                return Err(ConvertError::UnexpectedTensor {
                    name: t.name.clone(),
                })
            }
            HfName::Tensor(m) => {
                if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                    return Err(ConvertError::UnsupportedDtype {
                        name: t.name.clone(),
                        dtype: t.dtype.to_string(),
                    });
                }
                let expected = expected_shape(&config, m.role);
                if t.shape != expected {
                    return Err(ConvertError::ShapeMismatch {
                        name: t.name.clone(),
                        expected,
                        found: t.shape.clone(),
                    });
                }
                mapped.push((t, m.gguf, m.role));
            }
        }
    }
    // Every tensor the config calls for must be there (checked one by one, not listed first:
    // the count is bounded by the checkpoint's own tensors above).
    let present = |name: &str| -> Result<(), ConvertError> {
        match st.get(name) {
            Some(_) => Ok(()),
            None => Err(ConvertError::MissingTensor {
                name: name.to_string(),
            }),
        }
    };
    present("model.embed_tokens.weight")?;
    present("model.norm.weight")?;
    if !config.tie_word_embeddings {
        present("lm_head.weight")?;
    }
    for l in 0..config.n_layer {
        for s in [
            "input_layernorm",
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "post_attention_layernorm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            present(&format!("model.layers.{l}.{s}.weight"))?;
        }
    }
    crate::interrupt::check()?;

    // Output type.
    let file_type = match opts.file_type {
        TypeChoice::Fixed(f) => f,
        TypeChoice::Auto => {
            let dtypes: Vec<&Dtype> = mapped
                .iter()
                .filter(|(t, _, _)| t.shape.len() >= 2)
                .map(|(t, _, _)| &t.dtype)
                .collect();
            if dtypes.iter().any(|d| **d == Dtype::F32)
                || (dtypes.contains(&&Dtype::BF16) && dtypes.contains(&&Dtype::F16))
            {
                FileType::F32
            } else if dtypes.contains(&&Dtype::BF16) {
                FileType::BF16
            } else {
                FileType::F16
            }
        }
    };

    // Write order: generated rope factors first, then the checkpoint in file order (shard, offset)
    // so that reading an over-RAM checkpoint streams through each shard once.
    mapped.sort_by_key(|(t, _, _)| (t.shard, t.data_offsets[0]));
    let mut tensors: Vec<PlannedTensor> = Vec::new();
    if let Some(freqs) = config.rope_freqs() {
        tensors.push(PlannedTensor {
            name: ROPE_FREQS.into(),
            dims: vec![freqs.len() as u64],
            source: Source::Generated(freqs),
            role: Some(Role::RopeFreqs),
            ggml_type: GgmlType::F32,
            fallback_from: None,
            permute_heads: None,
            n_bytes: 0,
        });
    }
    for (t, gguf, role) in &mapped {
        let permute = match role {
            Role::AttnQ => Some(config.n_head),
            Role::AttnK => Some(config.n_head_kv),
            _ => None,
        };
        tensors.push(PlannedTensor {
            name: gguf.clone(),
            source: Source::Checkpoint(t.name.clone()),
            role: Some(*role),
            // The one place dimension order is reversed: safetensors outermost-first → ggml innermost-first.
            dims: t.shape.iter().rev().copied().collect(),
            ggml_type: GgmlType::F32,
            fallback_from: None,
            permute_heads: permute,
            n_bytes: 0,
        });
    }
    // The label is the whole model's, as in the GGUF llama-quantize --prune-layers would read.
    let label_params: u64 = tensors.iter().map(|t| t.dims.iter().product::<u64>()).sum();
    let pruned_blocks = prune_planned(&mut tensors, &opts.controls.prune_layers, &mut imatrix);
    let mix_in: Vec<MixTensor> = tensors
        .iter()
        .map(|t| MixTensor {
            name: t.name.clone(),
            ne: t.dims.clone(),
        })
        .collect();
    let shape = ModelShape {
        n_layer: config.n_layer,
        n_head: config.n_head,
        n_head_kv: config.n_head_kv,
    };
    let mix = plan_mix_with(
        file_type,
        &mix_in,
        shape,
        &MixOptions::from_controls(&opts.controls, imatrix.is_some(), false),
    );
    let mut warnings = Vec::new();
    if imatrix.is_none() {
        imatrix_requirement(file_type, &mix_in, &mix, dry_run, &mut warnings)?;
    }
    let mut n_params = 0u64;
    for (t, c) in tensors.iter_mut().zip(&mix.choices) {
        t.ggml_type = c.ggml_type;
        t.fallback_from = c.fallback_from;
        if !c.allowed && t.role == Some(Role::Output) {
            // --leave-output-tensor: the checkpoint's own precision, as convert_hf_to_gguf.py
            // (auto) writes it for llama-quantize to leave alone.
            if let Source::Checkpoint(n) = &t.source {
                t.ggml_type = st
                    .get(n)
                    .and_then(|s| match s.dtype {
                        Dtype::F16 => Some(GgmlType::F16),
                        Dtype::BF16 => Some(GgmlType::BF16),
                        _ => None,
                    })
                    .unwrap_or(GgmlType::F32);
            }
        }
        let n: u64 = t.dims.iter().product();
        n_params += n;
        t.n_bytes = tensor_bytes(t.ggml_type, &t.dims);
    }
    check_fit(&tensors, &opts.controls)?;

    crate::interrupt::check()?;
    let vocab = load_vocab(src_dir, &config, opts.pre_override.as_deref())?;
    crate::interrupt::check()?;
    let mut metadata = build_metadata(src_dir, &config, &vocab, file_type, label_params);
    finish_metadata(
        &mut metadata,
        &opts.controls,
        imatrix.as_ref(),
        &tensors,
        pruned_blocks.map(|b| ("llama".to_string(), b)),
    )?;
    Ok(Plan {
        src_dir: src_dir.to_path_buf(),
        config,
        vocab,
        file_type,
        tensors,
        n_fallback: mix.n_fallback,
        n_params,
        metadata,
        imatrix,
        warnings,
    })
}

/// The importance matrix as llama-quantize prepares it: read, filtered by
/// `--include-weights`/`--exclude-weights` (`None` when nothing is left).
pub(crate) fn load_imatrix(
    path: Option<&Path>,
    controls: &Controls,
) -> Result<Option<ImportanceWeights>, ConvertError> {
    match path {
        None => Ok(None),
        Some(p) => ImportanceWeights::load_filtered(
            p,
            &controls.include_weights,
            &controls.exclude_weights,
        ),
    }
}

/// Bytes of a tensor of `ty` and `dims` (`u64::MAX` when its rows do not fit the type).
pub(crate) fn tensor_bytes(ty: GgmlType, dims: &[u64]) -> u64 {
    let rows: u64 = dims.iter().skip(1).product();
    ty.row_size(dims.first().copied().unwrap_or(0))
        .and_then(|r| r.checked_mul(rows))
        .unwrap_or(u64::MAX)
}

/// `--prune-layers` on planned tensors: pruned blocks removed, the rest renamed, the importance
/// matrix looked up by the old names. Returns the new block count (None without pruning).
pub(crate) fn prune_planned(
    tensors: &mut Vec<PlannedTensor>,
    layers: &[u64],
    imatrix: &mut Option<ImportanceWeights>,
) -> Option<u64> {
    if layers.is_empty() {
        return None;
    }
    let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    let p = prune(&names, layers);
    let mut pairs = Vec::with_capacity(tensors.len());
    let old = std::mem::take(tensors);
    for (mut t, new) in old.into_iter().zip(p.names) {
        if let Some(new) = new {
            pairs.push((new.clone(), t.name.clone()));
            t.name = new;
            tensors.push(t);
        }
    }
    if let Some(im) = imatrix {
        im.rename(&pairs);
    }
    Some(p.block_count)
}

/// A type forced by `--output-tensor-type` or `--token-embedding-type` must fit its rows (the mix
/// and `--tensor-type` choices always do: the shape fallback sees to it).
pub(crate) fn check_fit(
    tensors: &[PlannedTensor],
    controls: &Controls,
) -> Result<(), ConvertError> {
    for t in tensors {
        if t.n_bytes != u64::MAX {
            continue;
        }
        let option = if t.name == "output.weight" && controls.output_tensor_type.is_some() {
            "--output-tensor-type"
        } else if controls.token_embedding_type.is_some() {
            "--token-embedding-type"
        } else {
            "--output-tensor-type"
        };
        return Err(ConvertError::TypeDoesNotFit {
            option,
            name: t.name.clone(),
            ggml_type: t.ggml_type.name().to_string(),
            row: t.dims.first().copied().unwrap_or(0),
            block: t.ggml_type.block_size(),
        });
    }
    Ok(())
}

/// The metadata steps llama-quantize takes after copying the input's keys, in its order:
/// `--override-kv` (then the importance matrix's keys, which it passes as overrides too), then the
/// pruned `block_count`. Also checks the importance matrix against the tensors it will quantize.
pub(crate) fn finish_metadata(
    metadata: &mut Metadata,
    controls: &Controls,
    imatrix: Option<&ImportanceWeights>,
    quantized: &[PlannedTensor],
    pruned_blocks: Option<(String, u64)>,
) -> Result<(), ConvertError> {
    apply_overrides(metadata, &controls.override_kv);
    if let Some(im) = imatrix {
        im.check(quantized)?;
        im.add_metadata(metadata);
    }
    if let Some((arch, blocks)) = pruned_blocks {
        set_last(
            metadata,
            &format!("{arch}.block_count"),
            u32::try_from(blocks).unwrap_or(u32::MAX),
        );
    }
    Ok(())
}

/// llama-quantize refuses, before writing anything, a file type that needs an importance matrix
/// (`tensor_requires_imatrix`) when none is given; the first such tensor in file order is named.
/// A dry run only warns, as llama-quantize `--dry-run` does.
pub(crate) fn imatrix_requirement(
    file_type: FileType,
    tensors: &[MixTensor],
    mix: &super::mix::Mix,
    dry_run: bool,
    warnings: &mut Vec<String>,
) -> Result<(), ConvertError> {
    for (t, c) in tensors.iter().zip(&mix.choices) {
        if c.allowed && requires_imatrix(&t.name, c.ggml_type, file_type) {
            let e = ConvertError::ImatrixRequired {
                name: t.name.clone(),
                ggml_type: c.ggml_type.name().to_string(),
            };
            if dry_run {
                warnings.push(format!(
                    "the dry run succeeded, but the real quantization will need an importance matrix: {e}"
                ));
                return Ok(());
            }
            return Err(e);
        }
    }
    Ok(())
}

/// The metadata, in the order convert_hf_to_gguf.py adds it.
fn build_metadata(
    src_dir: &Path,
    c: &LlamaConfig,
    v: &Vocab,
    ftype: FileType,
    n_params: u64,
) -> Metadata {
    let mut m = Metadata::new();
    let arch = "llama";
    let k = |s: &str| format!("{arch}.{s}");
    m.insert("general.architecture", arch);
    m.insert("general.type", "model");
    let name = src_dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    m.insert("general.name", name);
    m.insert("general.size_label", size_label(n_params));
    m.insert(k("block_count"), c.n_layer as u32);
    if let Some(ctx) = c.context_length {
        m.insert(k("context_length"), ctx as u32);
    }
    m.insert(k("embedding_length"), c.hidden_size as u32);
    m.insert(k("feed_forward_length"), c.intermediate_size as u32);
    m.insert(k("attention.head_count"), c.n_head as u32);
    m.insert(k("attention.head_count_kv"), c.n_head_kv as u32);
    match c.rope_scaling {
        RopeScaling::None | RopeScaling::Llama3 { .. } => {}
        RopeScaling::Linear { factor } => {
            m.insert(k("rope.scaling.type"), "linear");
            m.insert(k("rope.scaling.factor"), factor as f32);
        }
        RopeScaling::Yarn {
            factor,
            original_context_length,
            ext_factor,
            attn_factor,
            beta_fast,
            beta_slow,
        } => {
            m.insert(k("rope.scaling.type"), "yarn");
            m.insert(k("rope.scaling.factor"), factor as f32);
            m.insert(
                k("rope.scaling.original_context_length"),
                original_context_length as u32,
            );
            for (key, val) in [
                ("rope.scaling.yarn_ext_factor", ext_factor),
                ("rope.scaling.yarn_attn_factor", attn_factor),
                ("rope.scaling.yarn_beta_fast", beta_fast),
                ("rope.scaling.yarn_beta_slow", beta_slow),
            ] {
                if let Some(x) = val {
                    m.insert(k(key), x as f32);
                }
            }
        }
    }
    if let Some(theta) = c.rope_theta {
        m.insert(k("rope.freq_base"), theta as f32);
    }
    m.insert(k("attention.layer_norm_rms_epsilon"), c.rms_norm_eps as f32);
    if c.head_dim_explicit {
        m.insert(k("attention.key_length"), c.head_dim as u32);
        m.insert(k("attention.value_length"), c.head_dim as u32);
    }
    m.insert("general.file_type", ftype.llama_ftype());
    m.insert(k("vocab_size"), c.vocab_size as u32);
    m.insert(k("rope.dimension_count"), c.head_dim as u32);
    m.insert("general.quantization_version", 2u32);

    if let Some(b) = v.add_space_prefix {
        m.insert("tokenizer.ggml.add_space_prefix", b);
    }
    m.insert("tokenizer.ggml.model", "gpt2");
    m.insert("tokenizer.ggml.pre", v.pre.clone());
    m.insert("tokenizer.ggml.tokens", str_array(&v.tokens));
    m.insert(
        "tokenizer.ggml.token_type",
        Value::Array(Array::new(
            ValueType::I32,
            v.token_types.iter().map(|&t| Value::I32(t)).collect(),
        )),
    );
    if !v.merges.is_empty() {
        m.insert("tokenizer.ggml.merges", str_array(&v.merges));
    }
    for (kind, id) in &v.special_ids {
        if let Some(key) = special_id_key(kind) {
            m.insert(key, *id);
        }
    }
    for (kind, b) in &v.add_special {
        if let Some(key) = add_special_key(kind) {
            m.insert(key, *b);
        }
    }
    match &v.chat_template {
        Some(ChatTemplate::Single(t)) => {
            m.insert("tokenizer.chat_template", t.clone());
        }
        Some(ChatTemplate::Named { default, others }) => {
            for (n, t) in others {
                m.insert(format!("tokenizer.chat_template.{n}"), t.clone());
            }
            if !others.is_empty() {
                let names: Vec<String> = others.iter().map(|(n, _)| n.clone()).collect();
                m.insert("tokenizer.chat_templates", str_array(&names));
            }
            if let Some(t) = default {
                m.insert("tokenizer.chat_template", t.clone());
            }
        }
        None => {}
    }
    if let Some(b) = v.normalizer_lowercase {
        m.insert("tokenizer.ggml.normalizer.lowercase", b);
    }
    if let Some(b) = v.normalizer_strip_accents {
        m.insert("tokenizer.ggml.normalizer.strip_accents", b);
    }
    m
}

/// The files `out` stands for: itself, or the split set [`super::split::split_paths`] would
/// name. The split count is only known once the plan exists, so callers pass it.
pub(crate) fn output_paths(out: &Path, split_count: Option<usize>) -> Vec<PathBuf> {
    match split_count {
        None => vec![out.to_path_buf()],
        Some(n) => super::split::split_paths(out, n),
    }
}

/// Refuse to overwrite an input or (without `force`) an existing output, or to write over a
/// directory.
pub(crate) fn check_outputs(
    outputs: &[PathBuf],
    inputs: &[PathBuf],
    force: bool,
) -> Result<(), Refusal> {
    for out in outputs {
        let Ok(out_c) = out.canonicalize() else {
            continue;
        };
        if inputs
            .iter()
            .any(|p| p.canonicalize().is_ok_and(|p| p == out_c))
        {
            return Err(Refusal(format!(
                "output {} is one of the input files",
                out.display()
            )));
        }
        if out_c.is_dir() {
            return Err(Refusal(format!("output {} is a directory", out.display())));
        }
        if !force {
            return Err(Refusal(format!(
                "output {} exists; pass --force to replace it",
                out.display()
            )));
        }
    }
    Ok(())
}

/// How many files a plan's tensors fill in `layout` (None for one plain file).
pub(crate) fn split_count(tensors: &[PlannedTensor], layout: &SplitLayout) -> Option<usize> {
    let sizes: Vec<u64> = tensors.iter().map(|t| t.n_bytes).collect();
    layout.count(&sizes)
}

/// The output layout from `--split-max-size` and `--keep-split` (`part_of` gives, per planned
/// tensor, the input part it comes from; parts are numbered in order of first use).
pub(crate) fn output_layout(
    split_max_size: Option<u64>,
    keep_split: bool,
    tensors: &[PlannedTensor],
    part_of: impl Fn(&PlannedTensor) -> usize,
) -> Result<SplitLayout, ConvertError> {
    match (split_max_size, keep_split) {
        (Some(_), true) => Err(ControlError {
            option: "--keep-split",
            given: String::new(),
            what: "cannot be combined with --split-max-size".into(),
        }
        .into()),
        (Some(max), false) => Ok(SplitLayout::MaxSize(max)),
        (None, false) => Ok(SplitLayout::Single),
        (None, true) => {
            // Renumber the parts in use, so that a part left without tensors (a safetensors shard
            // holding only skipped buffers, a split part emptied by --prune-layers) makes no file.
            let mut seen: Vec<usize> = Vec::new();
            let mut out = Vec::with_capacity(tensors.len());
            for t in tensors {
                let p = part_of(t);
                let i = match seen.iter().position(|&s| s == p) {
                    Some(i) => i,
                    None => {
                        seen.push(p);
                        seen.len() - 1
                    }
                };
                if out.last().is_some_and(|&l| i < l) {
                    return Err(ConvertError::NotSupported(
                        "--keep-split: the input parts' tensors are interleaved in write order"
                            .into(),
                    ));
                }
                out.push(i);
            }
            Ok(SplitLayout::Given(out))
        }
    }
}

/// Run `f` on a pool of `threads` workers (the global pool when `None`).
pub(crate) fn with_threads<T>(
    threads: Option<usize>,
    f: impl FnOnce() -> Result<T, ConvertError> + Send,
) -> Result<T, ConvertError>
where
    T: Send,
{
    match threads {
        Some(n) if n > 0 => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| {
                    ConvertError::NotSupported(format!("cannot start {n} threads: {e}"))
                })?;
            pool.install(f)
        }
        _ => f(),
    }
}

/// Open the output for a plan: one file, or a split set. Returns the writer.
pub(crate) fn open_output(
    out: &Path,
    metadata: &Metadata,
    tensors: &[PlannedTensor],
    layout: &SplitLayout,
    force: bool,
) -> Result<SplitWriter, ConvertError> {
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type))
        .collect();
    let sizes: Vec<u64> = tensors.iter().map(|t| t.n_bytes).collect();
    SplitWriter::create(
        out,
        metadata,
        specs,
        sizes,
        layout,
        WriteOptions { overwrite: force },
    )
    .map_err(split_err)
}

/// Convert the checkpoint in `src` (a folder) to `out`. `progress` receives events for a bar.
pub fn convert(
    src: &Path,
    out: &Path,
    opts: &ConvertOptions,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<ConvertReport, ConvertError> {
    with_threads(opts.threads, || convert_inner(src, out, opts, progress))
}

fn convert_inner(
    src: &Path,
    out: &Path,
    opts: &ConvertOptions,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<ConvertReport, ConvertError> {
    let start = Instant::now();
    let src_dir = if src.is_dir() {
        src.to_path_buf()
    } else {
        src.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let st = SafetensorsModel::open(src)?;
    let mut inputs: Vec<PathBuf> = st.shard_paths().to_vec();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors.index.json",
    ] {
        inputs.push(src_dir.join(f));
    }
    // The plain output name first (cheap), then the real file names once the plan knows them.
    check_outputs(&[out.to_path_buf()], &inputs, opts.force)?;
    let plan = plan(&src_dir, &st, opts)?;
    let job = Job {
        tensors: &plan.tensors,
        metadata: &plan.metadata,
        imatrix: plan.imatrix.as_ref(),
        file_type: plan.file_type,
        n_params: plan.n_params,
        n_fallback: plan.n_fallback,
    };
    // --keep-split: one file per safetensors shard (the generated rope factors go with the first).
    let layout = output_layout(
        opts.split_max_size,
        opts.controls.keep_split,
        &plan.tensors,
        |t| match &t.source {
            Source::Checkpoint(n) => st.get(n).map_or(0, |s| s.shard),
            Source::Generated(_) => 0,
        },
    )?;
    write_job(
        out,
        &inputs,
        &layout,
        opts.force,
        &job,
        &st,
        progress,
        start,
        |first| verify_facts_with(first, &plan, &opts.controls.override_kv),
    )
}

/// One tensor of a dry run.
#[derive(Debug, Clone, PartialEq)]
pub struct DryTensor {
    /// GGUF name in the output.
    pub name: String,
    /// ggml dimensions.
    pub dims: Vec<u64>,
    /// The input's type name (a ggml type for a GGUF, the safetensors dtype for a checkpoint).
    pub from: String,
    /// Bytes in the input.
    pub bytes_in: u64,
    /// Output type.
    pub to: GgmlType,
    /// Bytes in the output.
    pub bytes_out: u64,
}

/// What `--dry-run` reports: every tensor's type and size, and the totals; nothing is written.
#[derive(Debug, Clone, PartialEq)]
pub struct DryRun {
    /// File type.
    pub file_type: FileType,
    /// Per tensor, in write order.
    pub tensors: Vec<DryTensor>,
    /// Parameters.
    pub n_params: u64,
    /// Tensors that fell back (llama-quantize's count).
    pub n_fallback: usize,
    /// The files the real run would write.
    pub outputs: Vec<PathBuf>,
    /// Warnings (an importance matrix the real run will need).
    pub warnings: Vec<String>,
}

impl DryRun {
    /// Tensor bytes of the input.
    pub fn total_in(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes_in).sum()
    }
    /// Tensor bytes of the output (without the header and padding, as llama-quantize counts).
    pub fn total_out(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes_out).sum()
    }
    /// Output bits per weight.
    pub fn bits_per_weight(&self) -> f64 {
        if self.n_params == 0 {
            0.0
        } else {
            self.total_out() as f64 * 8.0 / self.n_params as f64
        }
    }
}

/// `convert --dry-run`: plan the conversion of `src` and report every tensor's type and size
/// without writing anything (`out` only names the files the real run would write).
pub fn convert_dry_run(
    src: &Path,
    out: &Path,
    opts: &ConvertOptions,
) -> Result<DryRun, ConvertError> {
    let src_dir = if src.is_dir() {
        src.to_path_buf()
    } else {
        src.parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    let st = SafetensorsModel::open(src)?;
    let plan = plan_inner(&src_dir, &st, opts, true)?;
    let layout = output_layout(
        opts.split_max_size,
        opts.controls.keep_split,
        &plan.tensors,
        |t| match &t.source {
            Source::Checkpoint(n) => st.get(n).map_or(0, |s| s.shard),
            Source::Generated(_) => 0,
        },
    )?;
    let tensors = plan
        .tensors
        .iter()
        .map(|t| {
            let (from, bytes_in) = match &t.source {
                Source::Checkpoint(n) => st
                    .get(n)
                    .map(|s| (s.dtype.to_string(), st.data(s).len() as u64))
                    .unwrap_or_default(),
                Source::Generated(v) => ("F32 (generated)".into(), v.len() as u64 * 4),
            };
            DryTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                from,
                bytes_in,
                to: t.ggml_type,
                bytes_out: t.n_bytes,
            }
        })
        .collect();
    Ok(DryRun {
        file_type: plan.file_type,
        tensors,
        n_params: plan.n_params,
        n_fallback: plan.n_fallback,
        outputs: output_paths(out, split_count(&plan.tensors, &layout)),
        warnings: plan.warnings,
    })
}

/// What a planned conversion or requantization writes: shared by [`convert`] and
/// [`super::quantize::quantize`], which differ only in where tensors come from and how the
/// written file's long-context facts are checked.
pub(crate) struct Job<'a> {
    pub tensors: &'a [PlannedTensor],
    pub metadata: &'a Metadata,
    pub imatrix: Option<&'a ImportanceWeights>,
    pub file_type: FileType,
    pub n_params: u64,
    pub n_fallback: usize,
}

/// Checks the final output names against the inputs, streams every tensor of `job` from
/// `source` into the (possibly split) output, finishes it, then runs `verify` on the first file;
/// if that fails every output is removed, so a file that lost its long-context facts never stays.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_job(
    out: &Path,
    inputs: &[PathBuf],
    layout: &SplitLayout,
    force: bool,
    job: &Job<'_>,
    source: &dyn TensorSource,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
    start: Instant,
    verify: impl FnOnce(&Path) -> Result<Vec<Fact>, ConvertError>,
) -> Result<ConvertReport, ConvertError> {
    let outputs = output_paths(out, split_count(job.tensors, layout));
    check_outputs(&outputs, inputs, force)?;
    let mut writer = open_output(out, job.metadata, job.tensors, layout, force)?;
    let stats = stream_tensors(job.tensors, source, &mut writer, job.imatrix, progress)?;
    let outputs = writer.paths().to_vec();
    let file_size = writer.finish().map_err(split_err)?;
    let wall_seconds = start.elapsed().as_secs_f64();

    let first = outputs
        .first()
        .cloned()
        .unwrap_or_else(|| out.to_path_buf());
    let facts = match verify(&first) {
        Ok(f) => f,
        Err(e) => {
            for o in &outputs {
                let _ = std::fs::remove_file(o);
            }
            return Err(e);
        }
    };
    Ok(ConvertReport {
        output: first,
        outputs,
        file_type: job.file_type,
        file_size,
        source_bytes: stats.source_bytes,
        n_params: job.n_params,
        tensors: job
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.ggml_type, t.dims.clone(), t.n_bytes))
            .collect(),
        n_fallback: job.n_fallback,
        wall_seconds,
        facts,
        warnings: stats.warnings,
    })
}

fn show(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => s.escape_debug().to_string(),
        Some(Value::F32(x)) => format!("{x}"),
        Some(Value::Bool(b)) => b.to_string(),
        Some(other) => other
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

/// Read the written file back and set what carries long-context ability beside config.json.
/// A disagreement is an error: the file would silently lose its long-context behaviour.
pub fn verify_facts(out: &Path, plan: &Plan) -> Result<Vec<Fact>, ConvertError> {
    verify_facts_with(out, plan, &[])
}

/// [`verify_facts`] where `--override-kv` set some of the facts' keys: those must carry the
/// override (shown as the expected value, marked as such).
pub fn verify_facts_with(
    out: &Path,
    plan: &Plan,
    overrides: &[KvOverride],
) -> Result<Vec<Fact>, ConvertError> {
    let mut facts = facts_against(out, &plan.src_dir, &plan.config, &plan.vocab)?;
    for f in &mut facts {
        let overridden =
            fact_key("llama", f.what).and_then(|key| overrides.iter().rev().find(|o| o.key == key));
        let expected = match overridden {
            Some(o) => show(Some(&o.value)),
            None => f.source.clone(),
        };
        if f.checked() && f.gguf != expected {
            return Err(ConvertError::Verify(format!(
                "{}: file has {}, {} has {}",
                f.what,
                f.gguf,
                if overridden.is_some() {
                    "--override-kv"
                } else {
                    "config"
                },
                expected
            )));
        }
        if overridden.is_some() {
            f.source = format!("{expected} (--override-kv; config: {})", f.source);
        }
    }
    Ok(facts)
}

/// The GGUF key of a long-context fact (None for the composite "rope scaling" and the
/// informational generation_config line).
pub(crate) fn fact_key(arch: &str, what: &str) -> Option<String> {
    Some(match what {
        "context length" => format!("{arch}.context_length"),
        "rope theta" => format!("{arch}.rope.freq_base"),
        "attention heads" => format!("{arch}.attention.head_count"),
        "KV heads" => format!("{arch}.attention.head_count_kv"),
        "rope dimensions" => format!("{arch}.rope.dimension_count"),
        "pre-tokenizer" => "tokenizer.ggml.pre".into(),
        "bos id" => "tokenizer.ggml.bos_token_id".into(),
        "eos id" => "tokenizer.ggml.eos_token_id".into(),
        "add bos" => "tokenizer.ggml.add_bos_token".into(),
        _ => return None,
    })
}

/// `longquant inspect --check-against HF_DIR`: the long-context facts of a GGUF (or the first file
/// of a split set) beside what the checkpoint folder's config.json and tokenizer files say. The
/// caller treats any [`Fact::checked`] disagreement as an error.
pub fn check_against(gguf: &Path, hf_dir: &Path) -> Result<Vec<Fact>, ConvertError> {
    let cfg_path = hf_dir.join("config.json");
    let cfg_text = std::fs::read_to_string(&cfg_path).map_err(|source| ConvertError::Io {
        path: cfg_path.clone(),
        source,
    })?;
    let config = LlamaConfig::from_json_str(&cfg_text).map_err(|source| ConvertError::Config {
        path: cfg_path.clone(),
        source,
    })?;
    // The pre-tokenizer as recorded in the file, when the folder's tokenizer is not one we detect.
    let vocab = match load_vocab(hf_dir, &config, None) {
        Ok(v) => v,
        Err(TokenizerError::UnknownPre { .. }) => {
            let f = GgufFile::open(gguf)?;
            let pre = f
                .metadata()
                .get("tokenizer.ggml.pre")
                .and_then(Value::as_str)
                .map(str::to_string);
            load_vocab(hf_dir, &config, pre.as_deref())?
        }
        Err(e) => return Err(e.into()),
    };
    facts_against(gguf, hf_dir, &config, &vocab)
}

impl Fact {
    /// Whether a disagreement is an error (the generation_config eos list is informational:
    /// GGUF has one eos id).
    pub fn checked(&self) -> bool {
        self.what != "generation_config eos ids"
    }
}

/// Every long-context fact of the GGUF at `out`, beside the checkpoint's values.
fn facts_against(
    out: &Path,
    src_dir: &Path,
    c: &LlamaConfig,
    vocab: &Vocab,
) -> Result<Vec<Fact>, ConvertError> {
    let f = GgufFile::open(out)?;
    let md = f.metadata();
    let opt = |x: Option<u64>| x.map_or("(absent)".to_string(), |v| v.to_string());
    let scaling = match c.rope_scaling {
        RopeScaling::None => "none".to_string(),
        RopeScaling::Linear { factor } => format!("linear ×{factor}"),
        RopeScaling::Yarn {
            factor,
            original_context_length,
            ..
        } => format!("yarn ×{factor} from {original_context_length}"),
        RopeScaling::Llama3 {
            factor,
            original_context_length,
            ..
        } => format!("llama3 ×{factor} from {original_context_length}"),
    };
    let gguf_scaling = match (md.get("llama.rope.scaling.type"), f.tensor(ROPE_FREQS)) {
        (Some(Value::String(t)), _) => format!(
            "{t} ×{}{}",
            show(md.get("llama.rope.scaling.factor")),
            md.get("llama.rope.scaling.original_context_length")
                .map(|v| format!(" from {}", show(Some(v))))
                .unwrap_or_default()
        ),
        (_, Some(_)) => scaling.clone(),
        _ => "none".to_string(),
    };
    let gen_eos = super::tokenizer::read_generation_eos(src_dir).unwrap_or_default();
    let facts = vec![
        Fact {
            what: "context length",
            gguf: show(md.get("llama.context_length")),
            source: opt(c.context_length),
        },
        Fact {
            what: "rope theta",
            gguf: show(md.get("llama.rope.freq_base")),
            source: c
                .rope_theta
                .map_or("(absent)".into(), |t| format!("{}", t as f32)),
        },
        Fact {
            what: "rope scaling",
            gguf: gguf_scaling,
            source: scaling,
        },
        Fact {
            what: "attention heads",
            gguf: show(md.get("llama.attention.head_count")),
            source: c.n_head.to_string(),
        },
        Fact {
            what: "KV heads",
            gguf: show(md.get("llama.attention.head_count_kv")),
            source: c.n_head_kv.to_string(),
        },
        Fact {
            what: "rope dimensions",
            gguf: show(md.get("llama.rope.dimension_count")),
            source: c.head_dim.to_string(),
        },
        Fact {
            what: "pre-tokenizer",
            gguf: show(md.get("tokenizer.ggml.pre")),
            source: vocab.pre.clone(),
        },
        Fact {
            what: "bos id",
            gguf: show(md.get("tokenizer.ggml.bos_token_id")),
            source: opt(vocab.special_id("bos").map(u64::from)),
        },
        Fact {
            what: "eos id",
            gguf: show(md.get("tokenizer.ggml.eos_token_id")),
            source: opt(vocab.special_id("eos").map(u64::from)),
        },
        Fact {
            what: "add bos",
            gguf: show(md.get("tokenizer.ggml.add_bos_token")),
            source: vocab
                .add_special("bos")
                .map_or("(absent)".into(), |b| b.to_string()),
        },
    ];
    let mut facts = facts;
    if !gen_eos.is_empty() {
        facts.push(Fact {
            what: "generation_config eos ids",
            gguf: show(md.get("tokenizer.ggml.eos_token_id")),
            source: format!("{gen_eos:?}"),
        });
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_like_gguf_py() {
        assert_eq!(size_label(8_030_261_248), "8.0B");
        assert_eq!(size_label(25_182_464), "25M");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_500_000), "1.5M");
    }

    #[test]
    fn type_choice() {
        assert_eq!(TypeChoice::parse("auto"), Some(TypeChoice::Auto));
        assert_eq!(
            TypeChoice::parse("q4_k_m"),
            Some(TypeChoice::Fixed(FileType::Q4_K_M))
        );
        assert_eq!(TypeChoice::parse("q3_k"), None);
    }
}
