//! GGUF (llama architecture) → a Hugging Face checkpoint folder that transformers and our own
//! converter load: `config.json`, `generation_config.json`, the tokenizer files and the weights as
//! safetensors (one `model.safetensors`, or shards with `model.safetensors.index.json`).
//!
//! Each tensor is dequantized from its stored type with the quants crate's kernels, its ggml
//! dimensions (innermost first) are reversed into HF's shape (outermost first), and q/k
//! projections are moved back from GGUF's interleaved-pair RoPE layout to HF's rotate-half
//! layout (the inverse of what `convert_hf_to_gguf.py` does; see [`crate::convert::names`]).
//!
//! The default output dtype is F32: every value a ggml block format decodes to is an f32, so F32
//! is the only dtype that holds the dequantized model exactly, whatever the source type. BF16 and
//! F16 round to nearest even; an F16 export refuses values that overflow F16.
//!
//! Writing is all-or-nothing: every file goes to a hidden temporary name in the output folder
//! ([`longquant_formats::atomic::AtomicFile`]) and is moved to its final name only once all of
//! them are complete; on an error or Ctrl-C/SIGTERM the temporaries are removed, and a `kill -9`'s
//! leftovers (`.<name>.tmp-<pid>-<n>`) are removed by the next export into the folder.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use half::{bf16, f16};
use longquant_formats::atomic::AtomicFile;
use longquant_formats::gguf::{GgufFile, Metadata, TensorInfo, Value};
use longquant_formats::GgmlType;
use longquant_quants::tensor::dequantize_row;
use longquant_quants::BlockFormat;
use rayon::prelude::*;
use serde_json::{json, Map, Value as Json};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::template::{Template, TemplateProcessing};
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::convert::names::{gguf_to_hf_name, permuted_source_row, ROPE_FREQS};
use crate::Refusal;

/// HF's default `max_shard_size` for `save_pretrained` (decimal gigabytes, as HF counts them).
pub const DEFAULT_SHARD_SIZE: u64 = 5_000_000_000;

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Cancelled by Ctrl-C / SIGTERM; the temporary files were removed.
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
    /// The GGUF could not be opened or parsed.
    #[error("reading {path}")]
    Gguf {
        /// The input file.
        path: PathBuf,
        /// What the reader reported.
        #[source]
        source: longquant_formats::Error,
    },
    /// Refused for safety: output folder not empty without `--force`, or it would overwrite the input.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// `general.architecture` is not one we export.
    #[error("architecture `{0}` cannot be exported (supported: llama)")]
    UnsupportedArchitecture(String),
    /// A hyperparameter key is missing or has the wrong type.
    #[error("metadata key `{key}` is missing or not {expected}")]
    MissingKey {
        /// The GGUF key.
        key: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A hyperparameter value that has no HF `LlamaConfig` equivalent (or is inconsistent).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor stored in a ggml type we cannot dequantize.
    #[error(
        "tensor `{tensor}` is stored as {ggml_type}, which longquant cannot dequantize \
         (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)"
    )]
    UnsupportedType {
        /// Tensor name.
        tensor: String,
        /// Its ggml type.
        ggml_type: GgmlType,
    },
    /// A tensor name with no Llama HF equivalent.
    #[error("tensor `{0}` is not a Llama tensor this exporter knows")]
    UnknownTensor(String),
    /// A required tensor is absent.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the hyperparameters.
    #[error(
        "tensor `{tensor}` has ggml dims {got:?}, expected {expected:?} from the hyperparameters"
    )]
    BadShape {
        /// Tensor name.
        tensor: String,
        /// Dims the hyperparameters imply (ggml order).
        expected: Vec<u64>,
        /// Dims stored.
        got: Vec<u64>,
    },
    /// A NaN or infinity in a tensor.
    #[error("tensor `{tensor}` holds a non-finite value ({value}) at element {index}")]
    NonFinite {
        /// GGUF tensor name.
        tensor: String,
        /// Flat element index in HF layout.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A value too large for F16 with `--dtype f16`.
    #[error(
        "tensor `{tensor}`: value {value} at element {index} overflows F16; export as bf16 or f32"
    )]
    F16Overflow {
        /// GGUF tensor name.
        tensor: String,
        /// Flat element index in HF layout.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The dequantization kernel refused the data.
    #[error("dequantizing tensor `{tensor}`")]
    Dequantize {
        /// Tensor name.
        tensor: String,
        /// The kernel's error.
        #[source]
        source: longquant_quants::QuantError,
    },
    /// The tokenizer metadata could not be turned into a `tokenizers` tokenizer.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A size argument such as `--shard-size` did not parse.
    #[error("cannot parse size `{0}` (examples: 5GB, 500MB, 2GiB, 1000000)")]
    BadSize(String),
    /// Writing the output failed.
    #[error("writing {path}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The safetensors writer failed.
    #[error("writing {path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The writer's message.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Element type of the exported safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportDtype {
    /// 32-bit float: exact for every ggml type (the default).
    #[default]
    F32,
    /// IEEE half, rounded to nearest even; overflow is an error.
    F16,
    /// bfloat16, rounded to nearest even.
    BF16,
}

impl ExportDtype {
    /// Bytes per element.
    pub fn size(self) -> u64 {
        match self {
            ExportDtype::F32 => 4,
            ExportDtype::F16 | ExportDtype::BF16 => 2,
        }
    }

    /// The name transformers 4 writes as `torch_dtype`.
    pub fn torch_name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "float32",
            ExportDtype::F16 => "float16",
            ExportDtype::BF16 => "bfloat16",
        }
    }

    fn safetensors(self) -> safetensors::Dtype {
        match self {
            ExportDtype::F32 => safetensors::Dtype::F32,
            ExportDtype::F16 => safetensors::Dtype::F16,
            ExportDtype::BF16 => safetensors::Dtype::BF16,
        }
    }
}

impl std::str::FromStr for ExportDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ExportDtype::F32),
            "f16" | "float16" => Ok(ExportDtype::F16),
            "bf16" | "bfloat16" => Ok(ExportDtype::BF16),
            _ => Err(format!("unknown dtype `{s}` (expected f32, f16 or bf16)")),
        }
    }
}

/// Parses a size such as `5GB` (decimal, as HF's `max_shard_size`), `2GiB` (binary) or a plain
/// byte count.
pub fn parse_size(s: &str) -> Result<u64, ExportError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "tb" | "t" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(ExportError::BadSize(s.to_string())),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| ExportError::BadSize(s.to_string()))?;
    let bytes = (v * mult as f64).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(ExportError::BadSize(s.to_string()));
    }
    Ok(bytes as u64)
}

/// The quants crate's format for a stored ggml type, if we can dequantize it.
pub fn block_format(t: GgmlType) -> Option<BlockFormat> {
    Some(match t {
        GgmlType::F32 => BlockFormat::F32,
        GgmlType::F16 => BlockFormat::F16,
        GgmlType::BF16 => BlockFormat::BF16,
        GgmlType::Q4_0 => BlockFormat::Q4_0,
        GgmlType::Q4_1 => BlockFormat::Q4_1,
        GgmlType::Q5_0 => BlockFormat::Q5_0,
        GgmlType::Q5_1 => BlockFormat::Q5_1,
        GgmlType::Q8_0 => BlockFormat::Q8_0,
        GgmlType::Q2_K => BlockFormat::Q2_K,
        GgmlType::Q3_K => BlockFormat::Q3_K,
        GgmlType::Q4_K => BlockFormat::Q4_K,
        GgmlType::Q5_K => BlockFormat::Q5_K,
        GgmlType::Q6_K => BlockFormat::Q6_K,
        GgmlType::IQ4_NL => BlockFormat::IQ4_NL,
        GgmlType::IQ4_XS => BlockFormat::IQ4_XS,
        _ => return None,
    })
}

/// What to export and how.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Element type of the safetensors.
    pub dtype: ExportDtype,
    /// Largest shard in bytes; a model at most this large is one `model.safetensors`.
    pub shard_size: u64,
    /// Allow a non-empty output folder (files of an earlier export are replaced).
    pub force: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            dtype: ExportDtype::F32,
            shard_size: DEFAULT_SHARD_SIZE,
            force: false,
        }
    }
}

/// One exported tensor.
#[derive(Debug, Clone)]
pub struct ExportedTensor {
    /// HF name.
    pub name: String,
    /// GGUF name it came from.
    pub gguf_name: String,
    /// ggml type it was stored as.
    pub source_type: GgmlType,
    /// HF shape (outermost first).
    pub shape: Vec<u64>,
    /// File (within the output folder) that holds it.
    pub file: String,
    /// Bytes written.
    pub bytes: u64,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The output folder.
    pub out_dir: PathBuf,
    /// Element type written.
    pub dtype: ExportDtype,
    /// Every file written, with its size in bytes.
    pub files: Vec<(String, u64)>,
    /// Every tensor, in HF order.
    pub tensors: Vec<ExportedTensor>,
    /// Number of safetensors files (1 when not sharded).
    pub shards: usize,
    /// Sum of tensor bytes.
    pub tensor_bytes: u64,
    /// Whether lm_head is tied to the embeddings (no `lm_head.weight` written).
    pub tied_embeddings: bool,
    /// The `config.json` written.
    pub config: Json,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Llama hyperparameters as a GGUF states them.
#[derive(Debug, Clone, PartialEq)]
struct Hparams {
    n_embd: u64,
    n_layer: u64,
    n_ff: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    n_ctx: u64,
    n_vocab: u64,
    rms_eps: f32,
    rope_theta: f32,
    rope_scaling: Option<Json>,
}

fn md_u64(md: &Metadata, key: &str) -> Result<u64, ExportError> {
    md.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| ExportError::MissingKey {
            key: key.to_string(),
            expected: "an unsigned integer",
        })
}

fn md_f32(md: &Metadata, key: &str) -> Result<Option<f32>, ExportError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::F32(v)) => Ok(Some(*v)),
        // Narrowing an f64 key keeps what llama.cpp would load (it reads these as f32).
        Some(v) => v
            .as_f64()
            .map(|x| Some(x as f32))
            .ok_or_else(|| ExportError::MissingKey {
                key: key.to_string(),
                expected: "a number",
            }),
    }
}

/// An f32 as the shortest decimal that reads back to the same f32 (1e-5, not
/// 9.999999747378752e-6), so that `config.json` shows what the model's author wrote and a
/// converter narrowing it to f32 again gets the identical bits.
fn f32_json(v: f32) -> Json {
    let shortest: f64 = format!("{v}").parse().unwrap_or(f64::from(v));
    serde_json::Number::from_f64(shortest).map_or(Json::Null, Json::Number)
}

fn read_hparams(file: &GgufFile) -> Result<Hparams, ExportError> {
    let md = file.metadata();
    let arch = md
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| ExportError::MissingKey {
            key: "general.architecture".into(),
            expected: "a string",
        })?;
    if arch != "llama" {
        return Err(ExportError::UnsupportedArchitecture(arch.to_string()));
    }
    if md
        .get("llama.expert_count")
        .and_then(Value::as_u64)
        .is_some_and(|n| n > 0)
    {
        return Err(ExportError::Unsupported(
            "mixture-of-experts llama (llama.expert_count > 0) has no LlamaForCausalLM equivalent"
                .into(),
        ));
    }
    let n_embd = md_u64(md, "llama.embedding_length")?;
    let n_layer = md_u64(md, "llama.block_count")?;
    let n_ff = md_u64(md, "llama.feed_forward_length")?;
    let n_head = md_u64(md, "llama.attention.head_count")?;
    let n_head_kv = match md.get("llama.attention.head_count_kv") {
        None => n_head,
        Some(_) => md_u64(md, "llama.attention.head_count_kv")?,
    };
    let n_ctx = md_u64(md, "llama.context_length")?;
    if n_head == 0 || n_head_kv == 0 || n_head % n_head_kv != 0 {
        return Err(ExportError::Unsupported(format!(
            "{n_head} attention heads cannot be grouped over {n_head_kv} KV heads"
        )));
    }
    let head_dim = match md.get("llama.attention.key_length") {
        Some(_) => md_u64(md, "llama.attention.key_length")?,
        None => n_embd / n_head,
    };
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(ExportError::Unsupported(format!(
            "head size {head_dim} is not a positive even number"
        )));
    }
    if let Some(v) = md.get("llama.attention.value_length") {
        if v.as_u64() != Some(head_dim) {
            return Err(ExportError::Unsupported(format!(
                "value head size {v:?} differs from key head size {head_dim}"
            )));
        }
    }
    if let Some(v) = md.get("llama.rope.dimension_count") {
        if v.as_u64() != Some(head_dim) {
            return Err(ExportError::Unsupported(format!(
                "rope dimension count {v:?} differs from head size {head_dim} (partial rotary is not Llama)"
            )));
        }
    }
    let n_vocab = match md.get("llama.vocab_size") {
        Some(_) => md_u64(md, "llama.vocab_size")?,
        None => file
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| ExportError::MissingTensor("token_embd.weight".into()))?,
    };
    let rms_eps = md_f32(md, "llama.attention.layer_norm_rms_epsilon")?.ok_or_else(|| {
        ExportError::MissingKey {
            key: "llama.attention.layer_norm_rms_epsilon".into(),
            expected: "a number",
        }
    })?;
    // llama.cpp's default when a llama GGUF has no freq_base.
    let rope_theta = md_f32(md, "llama.rope.freq_base")?.unwrap_or(10_000.0);

    let scaling_type = md
        .get("llama.rope.scaling.type")
        .and_then(Value::as_str)
        .unwrap_or("none");
    let rope_scaling = match scaling_type {
        "none" if file.tensor(ROPE_FREQS).is_some() => {
            Some(llama3_scaling(file, rope_theta, head_dim)?)
        }
        "none" => None,
        "linear" => {
            let factor = md_f32(md, "llama.rope.scaling.factor")?.ok_or_else(|| {
                ExportError::MissingKey {
                    key: "llama.rope.scaling.factor".into(),
                    expected: "a number",
                }
            })?;
            Some(json!({ "rope_type": "linear", "factor": f32_json(factor) }))
        }
        other => {
            return Err(ExportError::Unsupported(format!(
                "rope scaling type `{other}` (supported: none, linear)"
            )))
        }
    };
    Ok(Hparams {
        n_embd,
        n_layer,
        n_ff,
        n_head,
        n_head_kv,
        head_dim,
        n_ctx,
        n_vocab,
        rms_eps,
        rope_theta,
        rope_scaling,
    })
}

/// Recovers Llama-3.1 `rope_scaling` from the `rope_freqs.weight` tensor.
///
/// The GGUF stores only the per-frequency factors, not the parameters that produced them, so we
/// search the values Llama-3.x checkpoints use and accept parameters only when the converter's own
/// generator ([`crate::convert::config::llama3_rope_factors`]) reproduces every stored factor bit
/// for bit. Where several parameter sets produce the same factors, any of them converts back to
/// the identical tensor, so the first (the most common: 1, 4, 8192) is as good as the original.
fn llama3_scaling(file: &GgufFile, theta: f32, head_dim: u64) -> Result<Json, ExportError> {
    let info = file
        .tensor(ROPE_FREQS)
        .ok_or_else(|| ExportError::MissingTensor(ROPE_FREQS.into()))?;
    let refuse = |why: &str| {
        ExportError::Unsupported(format!(
            "`{ROPE_FREQS}` (Llama-3.1-style rope scaling) cannot be turned back into config.json's \
             rope_scaling: {why}"
        ))
    };
    if info.dims != [head_dim / 2] {
        return Err(refuse(&format!(
            "dims {:?}, expected [{}]",
            info.dims,
            head_dim / 2
        )));
    }
    let fmt = block_format(info.ggml_type).ok_or_else(|| ExportError::UnsupportedType {
        tensor: info.name.clone(),
        ggml_type: info.ggml_type,
    })?;
    let mut stored = vec![0f32; (head_dim / 2) as usize];
    dequantize_row(fmt, file.tensor_data(info), &mut stored).map_err(|source| {
        ExportError::Dequantize {
            tensor: info.name.clone(),
            source,
        }
    })?;
    let want: Vec<u32> = stored.iter().map(|x| x.to_bits()).collect();
    // The lowest frequencies carry `factor` itself; fall back to the usual values.
    let shortest = |v: f32| format!("{v}").parse::<f64>().unwrap_or(f64::from(v));
    let mut factors: Vec<f64> = stored
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(None, |m: Option<f32>, v| Some(m.map_or(v, |m| m.max(v))))
        .map(shortest)
        .into_iter()
        .collect();
    factors.extend([8.0, 16.0, 32.0, 4.0, 2.0]);
    for &factor in &factors {
        for low in [1.0, 0.5, 2.0, 1.5, 4.0] {
            for high in [4.0, 2.0, 8.0, 1.0, 16.0, 32.0] {
                if high <= low {
                    continue;
                }
                for ctx in [8192u64, 4096, 2048, 16384, 32768, 65536, 131072] {
                    let got = crate::convert::config::llama3_rope_factors(
                        f64::from(theta),
                        head_dim,
                        factor,
                        low,
                        high,
                        ctx,
                    );
                    if got.iter().map(|x| x.to_bits()).eq(want.iter().copied()) {
                        return Ok(json!({
                            "factor": factor,
                            "low_freq_factor": low,
                            "high_freq_factor": high,
                            "original_max_position_embeddings": ctx,
                            "rope_type": "llama3",
                        }));
                    }
                }
            }
        }
    }
    Err(refuse(
        "no Llama-3 rope_scaling parameters reproduce its factors",
    ))
}

/// A tensor to write: where it comes from and how it is laid out in HF.
#[derive(Debug, Clone)]
struct Planned {
    hf_name: String,
    info: TensorInfo,
    fmt: BlockFormat,
    /// HF shape (outermost first).
    shape: Vec<u64>,
    /// For q/k: the head count used by the rope permutation.
    permute_heads: Option<u64>,
}

impl Planned {
    fn row_len(&self) -> u64 {
        self.info.dims.first().copied().unwrap_or(1)
    }
    fn rows(&self) -> u64 {
        self.info.dims.iter().skip(1).product()
    }
}

/// ggml dims each Llama tensor must have, from the hyperparameters.
fn expected_dims(gguf: &str, hp: &Hparams) -> Option<Vec<u64>> {
    let q = hp.n_head * hp.head_dim;
    let kv = hp.n_head_kv * hp.head_dim;
    let suffix = match gguf.strip_prefix("blk.") {
        Some(rest) => rest.split_once('.').map(|(_, s)| s)?,
        None => gguf,
    };
    Some(match suffix {
        "token_embd.weight" | "output.weight" => vec![hp.n_embd, hp.n_vocab],
        "output_norm.weight" | "attn_norm.weight" | "ffn_norm.weight" => vec![hp.n_embd],
        "attn_q.weight" => vec![hp.n_embd, q],
        "attn_k.weight" | "attn_v.weight" => vec![hp.n_embd, kv],
        "attn_output.weight" => vec![q, hp.n_embd],
        "ffn_gate.weight" | "ffn_up.weight" => vec![hp.n_embd, hp.n_ff],
        "ffn_down.weight" => vec![hp.n_ff, hp.n_embd],
        _ => return None,
    })
}

/// Rank of an HF name in the order transformers' state dict lists a Llama: embeddings, each
/// layer in module order, the final norm, the head.
fn hf_order(hf: &str) -> (u64, u64, u64) {
    const LAYER: [&str; 9] = [
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
    ];
    match hf {
        "model.embed_tokens.weight" => (0, 0, 0),
        "model.norm.weight" => (2, 0, 0),
        "lm_head.weight" => (3, 0, 0),
        _ => {
            let rest = hf.strip_prefix("model.layers.").unwrap_or(hf);
            let (idx, suffix) = rest.split_once('.').unwrap_or((rest, ""));
            let i = idx.parse().unwrap_or(u64::MAX);
            let j = LAYER
                .iter()
                .position(|s| *s == suffix)
                .unwrap_or(LAYER.len());
            (1, i, j as u64)
        }
    }
}

fn plan_tensors(file: &GgufFile, hp: &Hparams) -> Result<Vec<Planned>, ExportError> {
    let mut out = Vec::with_capacity(file.tensors().len());
    for info in file.tensors() {
        // Generated from config.json's rope_scaling (read_hparams recovered it); no HF tensor.
        if info.name == ROPE_FREQS {
            continue;
        }
        let hf_name = gguf_to_hf_name(&info.name)
            .ok_or_else(|| ExportError::UnknownTensor(info.name.clone()))?;
        let expected = expected_dims(&info.name, hp)
            .ok_or_else(|| ExportError::UnknownTensor(info.name.clone()))?;
        if info.dims != expected {
            return Err(ExportError::BadShape {
                tensor: info.name.clone(),
                expected,
                got: info.dims.clone(),
            });
        }
        if let Some(layer) = info
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
        {
            if layer.0.parse::<u64>().map_or(true, |l| l >= hp.n_layer) {
                return Err(ExportError::UnknownTensor(info.name.clone()));
            }
        }
        let fmt = block_format(info.ggml_type).ok_or_else(|| ExportError::UnsupportedType {
            tensor: info.name.clone(),
            ggml_type: info.ggml_type,
        })?;
        let permute_heads = if info.name.ends_with(".attn_q.weight") {
            Some(hp.n_head)
        } else if info.name.ends_with(".attn_k.weight") {
            Some(hp.n_head_kv)
        } else {
            None
        };
        // The one place dims are reversed: ggml lists the row length first, HF the row count.
        let shape: Vec<u64> = info.dims.iter().rev().copied().collect();
        out.push(Planned {
            hf_name,
            info: info.clone(),
            fmt,
            shape,
            permute_heads,
        });
    }
    // Every tensor a Llama needs must be there; only output.weight may be absent (tied).
    let mut required = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".to_string(),
    ];
    for l in 0..hp.n_layer {
        for s in [
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            required.push(format!("blk.{l}.{s}.weight"));
        }
    }
    for r in required {
        if file.tensor(&r).is_none() {
            return Err(ExportError::MissingTensor(r));
        }
    }
    out.sort_by_key(|p| hf_order(&p.hf_name));
    Ok(out)
}

/// Dequantizes one GGUF tensor into HF layout (q/k un-permuted) and encodes it as `dtype`
/// little-endian bytes. Rows are processed in parallel; each output row is produced from the
/// GGUF row that the forward permutation placed there, so no second full-size buffer is needed.
fn hf_tensor_bytes(
    file: &GgufFile,
    p: &Planned,
    dtype: ExportDtype,
) -> Result<Vec<u8>, ExportError> {
    let tensor = &p.info.name;
    let row_len = usize::try_from(p.row_len())
        .map_err(|_| ExportError::Unsupported(format!("{tensor}: row too long")))?;
    let rows = usize::try_from(p.rows())
        .map_err(|_| ExportError::Unsupported(format!("{tensor}: too many rows")))?;
    let row_size = p.fmt.row_size(row_len).ok_or_else(|| {
        ExportError::Unsupported(format!("{tensor}: row of {row_len} is not whole blocks"))
    })?;
    let data = file.tensor_data(&p.info);
    let needed = rows.checked_mul(row_size);
    if needed != Some(data.len()) {
        return Err(ExportError::Unsupported(format!(
            "{tensor}: {} bytes stored, {rows} rows of {row_size} expected",
            data.len()
        )));
    }
    // hf_row → gguf_row. The forward mapping (names.rs) says which HF row feeds each GGUF row;
    // inverting that table gives, for each HF row, the GGUF row to read.
    let src_row: Option<Vec<usize>> = match p.permute_heads {
        None => None,
        Some(n_head) => {
            let mut inv = vec![0usize; rows];
            for g in 0..rows {
                let h = permuted_source_row(g as u64, rows as u64, n_head)
                    .map_err(|e| ExportError::Unsupported(format!("{tensor}: {e}")))?;
                // h < rows: the permutation stays inside its head.
                if let Some(slot) = inv.get_mut(h as usize) {
                    *slot = g;
                }
            }
            Some(inv)
        }
    };
    let esize = dtype.size() as usize;
    let out_row = row_len * esize;
    let mut out = vec![0u8; rows * out_row];
    let first_err = out
        .par_chunks_mut(out_row.max(1))
        .enumerate()
        .map_init(
            || vec![0f32; row_len],
            |buf, (hf_row, dst)| -> Result<(), Box<(usize, ExportError)>> {
                let g = src_row
                    .as_ref()
                    .map_or(hf_row, |m| m.get(hf_row).copied().unwrap_or(hf_row));
                let src = data.get(g * row_size..(g + 1) * row_size).unwrap_or(&[]);
                dequantize_row(p.fmt, src, buf).map_err(|source| {
                    Box::new((
                        hf_row * row_len,
                        ExportError::Dequantize {
                            tensor: tensor.clone(),
                            source,
                        },
                    ))
                })?;
                for (i, (&x, d)) in buf.iter().zip(dst.chunks_exact_mut(esize)).enumerate() {
                    let index = hf_row * row_len + i;
                    if !x.is_finite() {
                        return Err(Box::new((
                            index,
                            ExportError::NonFinite {
                                tensor: tensor.clone(),
                                index,
                                value: x,
                            },
                        )));
                    }
                    match dtype {
                        ExportDtype::F32 => d.copy_from_slice(&x.to_le_bytes()),
                        ExportDtype::BF16 => d.copy_from_slice(&bf16::from_f32(x).to_le_bytes()),
                        ExportDtype::F16 => {
                            let h = f16::from_f32(x);
                            if h.is_infinite() {
                                return Err(Box::new((
                                    index,
                                    ExportError::F16Overflow {
                                        tensor: tensor.clone(),
                                        index,
                                        value: x,
                                    },
                                )));
                            }
                            d.copy_from_slice(&h.to_le_bytes());
                        }
                    }
                }
                Ok(())
            },
        )
        .filter_map(Result::err)
        .min_by_key(|b| b.0);
    match first_err {
        Some(b) => Err(b.1),
        None => Ok(out),
    }
}

/// Dequantizes a GGUF tensor into HF layout as f32 values (q/k un-permuted), for callers that
/// want the numbers rather than a file.
pub fn hf_tensor_f32(
    file: &GgufFile,
    gguf_name: &str,
) -> Result<(String, Vec<u64>, Vec<f32>), ExportError> {
    let hp = read_hparams(file)?;
    let p = plan_tensors(file, &hp)?
        .into_iter()
        .find(|p| p.info.name == gguf_name)
        .ok_or_else(|| ExportError::MissingTensor(gguf_name.to_string()))?;
    let bytes = hf_tensor_bytes(file, &p, ExportDtype::F32)?;
    let vals = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((p.hf_name, p.shape, vals))
}

/// Special token ids and strings a GGUF names.
#[derive(Debug, Default)]
struct Specials {
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    eot: Option<(u32, String)>,
    unk: Option<(u32, String)>,
    pad: Option<(u32, String)>,
    add_bos: bool,
    add_eos: bool,
}

fn string_array<'a>(md: &'a Metadata, key: &str) -> Result<Vec<&'a str>, ExportError> {
    let missing = || ExportError::MissingKey {
        key: key.to_string(),
        expected: "a string array",
    };
    let arr = md.get(key).and_then(Value::as_array).ok_or_else(missing)?;
    arr.values
        .iter()
        .map(|v| v.as_str().ok_or_else(missing))
        .collect()
}

fn specials(md: &Metadata, tokens: &[&str]) -> Specials {
    let id = |key: &str| -> Option<(u32, String)> {
        let v = md.get(key).and_then(Value::as_u64)?;
        let i = u32::try_from(v).ok()?;
        tokens.get(i as usize).map(|t| (i, (*t).to_string()))
    };
    Specials {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        eot: id("tokenizer.ggml.eot_token_id"),
        unk: id("tokenizer.ggml.unknown_token_id"),
        pad: id("tokenizer.ggml.padding_token_id"),
        // llama.cpp's default for BPE vocabularies without the key is to add BOS.
        add_bos: md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        add_eos: md
            .get("tokenizer.ggml.add_eos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// llama.cpp's token types (`llama_token_type`).
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_UNUSED: i64 = 5;

/// Builds the HF `tokenizers` tokenizer a GGUF's `tokenizer.ggml.*` metadata describes, shaped as
/// HF's own byte-level BPE tokenizer.json files are: regex splits then a byte-level mapping,
/// control tokens as special added tokens, user-defined ones as plain added tokens, and a
/// template post-processor that prepends BOS when `add_bos_token` asks for it.
///
/// Tokens of type "unused" (the `[PAD{i}]` fillers `convert_hf_to_gguf.py` appends up to
/// `vocab_size`) are left out of the vocabulary, as in the original tokenizer.json; `vocab_size`
/// in config.json still counts them, so a converter regenerates them.
pub fn hf_tokenizer(md: &Metadata) -> Result<tokenizers::Tokenizer, ExportError> {
    let model = md
        .get("tokenizer.ggml.model")
        .and_then(Value::as_str)
        .ok_or_else(|| ExportError::MissingKey {
            key: "tokenizer.ggml.model".into(),
            expected: "a string",
        })?;
    if model != "gpt2" {
        return Err(ExportError::Tokenizer(format!(
            "tokenizer model `{model}` cannot be exported (supported: gpt2, i.e. byte-level BPE)"
        )));
    }
    let pre = md
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let (regexes, ignore_merges) = crate::tokenizer::pre_regexes(pre).ok_or_else(|| {
        ExportError::Tokenizer(format!(
            "pre-tokenizer `{pre}` is not supported (supported: llama-bpe, llama3, smollm, gpt2, default)"
        ))
    })?;
    let tokens = string_array(md, "tokenizer.ggml.tokens")?;
    let merges_raw = string_array(md, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match md
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
    {
        Some(a) => a.values.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(ExportError::Tokenizer(format!(
            "{} tokens but {} token types",
            tokens.len(),
            types.len()
        )));
    }
    let mut vocab = Vocab::default();
    for (id, (tok, &ty)) in (0u32..).zip(tokens.iter().zip(types.iter())) {
        if ty == TOKEN_UNUSED {
            continue;
        }
        vocab.insert((*tok).to_string(), id);
    }
    let mut merges: Merges = Vec::with_capacity(merges_raw.len());
    for (i, m) in merges_raw.iter().enumerate() {
        let (a, b) = m
            .split_once(' ')
            .ok_or_else(|| ExportError::Tokenizer(format!("merge #{i} `{m}` is not two tokens")))?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| ExportError::Tokenizer(e.to_string()))?;
    let mut pres: Vec<PreTokenizerWrapper> = Vec::with_capacity(regexes.len() + 1);
    for re in regexes {
        let split = Split::new(
            SplitPattern::Regex((*re).to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| ExportError::Tokenizer(e.to_string()))?;
        pres.push(split.into());
    }
    // Byte-level mapping only (the regexes above did the splitting), as Llama-3's tokenizer.json.
    pres.push(ByteLevel::new(false, true, false).into());

    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(pres)));
    tk.with_decoder(Some(ByteLevelDecoder::default()));

    let mut special = Vec::new();
    let mut user = Vec::new();
    for (tok, &ty) in tokens.iter().zip(types.iter()) {
        match ty {
            TOKEN_CONTROL => special.push(AddedToken::from(*tok, true).normalized(false)),
            TOKEN_USER_DEFINED => user.push(AddedToken::from(*tok, false).normalized(false)),
            _ => {}
        }
    }
    tk.add_special_tokens(&special);
    tk.add_tokens(&user);

    let sp = specials(md, &tokens);
    let mut single: Vec<String> = Vec::new();
    let mut pair: Vec<String> = Vec::new();
    let mut template_tokens: Vec<(String, u32)> = Vec::new();
    // Template pieces are written "content:type_id"; a token containing ':' or ' ' cannot be
    // one, and then add_bos_token in tokenizer_config.json carries the intent alone.
    let usable = |t: &str| !t.contains(':') && !t.contains(' ');
    let bos = sp
        .bos
        .as_ref()
        .filter(|_| sp.add_bos)
        .filter(|(_, t)| usable(t));
    let eos = sp
        .eos
        .as_ref()
        .filter(|_| sp.add_eos)
        .filter(|(_, t)| usable(t));
    if let Some((id, t)) = bos {
        single.push(format!("{t}:0"));
        template_tokens.push((t.clone(), *id));
    }
    single.push("$A:0".into());
    if let Some((id, t)) = eos {
        single.push(format!("{t}:0"));
        if !template_tokens.iter().any(|(s, _)| s == t) {
            template_tokens.push((t.clone(), *id));
        }
    }
    if let Some((_, t)) = bos {
        pair.extend(single.iter().cloned());
        pair.push(format!("{t}:1"));
    } else {
        pair.extend(single.iter().cloned());
    }
    pair.push("$B:1".into());
    if let Some((_, t)) = eos {
        pair.push(format!("{t}:1"));
    }
    if !template_tokens.is_empty() {
        let single = Template::try_from(single).map_err(ExportError::Tokenizer)?;
        let pair = Template::try_from(pair).map_err(ExportError::Tokenizer)?;
        let post = TemplateProcessing::builder()
            .single(single)
            .pair(pair)
            .special_tokens(template_tokens)
            .build()
            .map_err(|e| ExportError::Tokenizer(e.to_string()))?;
        tk.with_post_processor(Some(post));
    }
    Ok(tk)
}

fn config_json(file: &GgufFile, hp: &Hparams, tied: bool, dtype: ExportDtype) -> Json {
    let md = file.metadata();
    let tokens = string_array(md, "tokenizer.ggml.tokens").unwrap_or_default();
    let sp = specials(md, &tokens);
    let mut c = Map::new();
    c.insert("architectures".into(), json!(["LlamaForCausalLM"]));
    c.insert("model_type".into(), json!("llama"));
    c.insert("attention_bias".into(), json!(false));
    c.insert("attention_dropout".into(), json!(0.0));
    if let Some((id, _)) = &sp.bos {
        c.insert("bos_token_id".into(), json!(id));
    }
    if let Some((id, _)) = &sp.eos {
        c.insert("eos_token_id".into(), json!(id));
    }
    if let Some((id, _)) = &sp.pad {
        c.insert("pad_token_id".into(), json!(id));
    }
    c.insert("head_dim".into(), json!(hp.head_dim));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert("hidden_size".into(), json!(hp.n_embd));
    c.insert("initializer_range".into(), json!(0.02));
    c.insert("intermediate_size".into(), json!(hp.n_ff));
    c.insert("max_position_embeddings".into(), json!(hp.n_ctx));
    c.insert("mlp_bias".into(), json!(false));
    c.insert("num_attention_heads".into(), json!(hp.n_head));
    c.insert("num_hidden_layers".into(), json!(hp.n_layer));
    c.insert("num_key_value_heads".into(), json!(hp.n_head_kv));
    c.insert("pretraining_tp".into(), json!(1));
    c.insert("rms_norm_eps".into(), f32_json(hp.rms_eps));
    c.insert(
        "rope_scaling".into(),
        hp.rope_scaling.clone().unwrap_or(Json::Null),
    );
    c.insert("rope_theta".into(), f32_json(hp.rope_theta));
    c.insert("tie_word_embeddings".into(), json!(tied));
    c.insert("torch_dtype".into(), json!(dtype.torch_name()));
    c.insert("use_cache".into(), json!(true));
    c.insert("vocab_size".into(), json!(hp.n_vocab));
    Json::Object(c)
}

fn generation_config_json(sp: &Specials) -> Json {
    let mut g = Map::new();
    if let Some((id, _)) = &sp.bos {
        g.insert("bos_token_id".into(), json!(id));
    }
    match (&sp.eos, &sp.eot) {
        (Some((e, _)), Some((t, _))) if e != t => {
            g.insert("eos_token_id".into(), json!([e, t]));
        }
        (Some((e, _)), _) | (None, Some((e, _))) => {
            g.insert("eos_token_id".into(), json!(e));
        }
        (None, None) => {}
    }
    if let Some((id, _)) = &sp.pad {
        g.insert("pad_token_id".into(), json!(id));
    }
    Json::Object(g)
}

fn tokenizer_config_json(md: &Metadata, n_ctx: u64) -> Result<(Json, Json), ExportError> {
    let tokens = string_array(md, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = md
        .get("tokenizer.ggml.token_type")
        .and_then(Value::as_array)
        .map(|a| a.values.iter().map(|v| v.as_i64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let sp = specials(md, &tokens);
    let mut decoder = Map::new();
    for (id, (tok, &ty)) in tokens.iter().zip(types.iter()).enumerate() {
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            decoder.insert(
                id.to_string(),
                json!({
                    "content": tok,
                    "lstrip": false,
                    "normalized": false,
                    "rstrip": false,
                    "single_word": false,
                    "special": ty == TOKEN_CONTROL,
                }),
            );
        }
    }
    let mut c = Map::new();
    c.insert("add_bos_token".into(), json!(sp.add_bos));
    c.insert("add_eos_token".into(), json!(sp.add_eos));
    c.insert("added_tokens_decoder".into(), Json::Object(decoder));
    let mut map = Map::new();
    for (key, tok) in [
        ("bos_token", &sp.bos),
        ("eos_token", &sp.eos),
        ("pad_token", &sp.pad),
        ("unk_token", &sp.unk),
    ] {
        if let Some((_, t)) = tok {
            c.insert(key.into(), json!(t));
            map.insert(key.into(), json!(t));
        }
    }
    if let Some(t) = md.get("tokenizer.chat_template").and_then(Value::as_str) {
        c.insert("chat_template".into(), json!(t));
    }
    c.insert("clean_up_tokenization_spaces".into(), json!(false));
    c.insert("model_max_length".into(), json!(n_ctx));
    c.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    Ok((Json::Object(c), Json::Object(map)))
}

/// A tensor handed to the safetensors writer; its bytes are computed when the writer asks for
/// them, so only one tensor's data is in memory at a time. A failure is parked in `error` (the
/// writer's `View` cannot fail) and zeros are returned; the caller discards the file.
struct LazyTensor<'a> {
    file: &'a GgufFile,
    planned: &'a Planned,
    dtype: ExportDtype,
    shape: Vec<usize>,
    len: usize,
    error: &'a Mutex<Option<ExportError>>,
    done: &'a (dyn Fn(u64) + Sync),
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let failed = self.error.lock().map(|e| e.is_some()).unwrap_or(true);
        if failed {
            return Cow::Owned(vec![0; self.len]);
        }
        let bytes = crate::interrupt::check()
            .map_err(ExportError::from)
            .and_then(|()| hf_tensor_bytes(self.file, self.planned, self.dtype));
        match bytes {
            Ok(b) => {
                (self.done)(b.len() as u64);
                Cow::Owned(b)
            }
            Err(e) => {
                if let Ok(mut slot) = self.error.lock() {
                    slot.get_or_insert(e);
                }
                Cow::Owned(vec![0; self.len])
            }
        }
    }
    fn data_len(&self) -> usize {
        self.len
    }
}

/// Files being written, each through [`AtomicFile`]; all removed on drop unless committed.
struct Staging {
    dir: PathBuf,
    created_dir: bool,
    /// (temporary until committed, final name)
    files: Vec<(Option<AtomicFile>, String)>,
    committed: bool,
}

/// A commit-helper error as an [`ExportError::Io`] naming the file.
fn export_io(e: longquant_formats::Error) -> ExportError {
    let source = match e.kind {
        longquant_formats::ErrorKind::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    };
    ExportError::Io {
        path: e.path,
        source,
    }
}

impl Staging {
    /// A new temporary for `name` (overwritten by whoever writes it by path).
    fn temp_for(&mut self, name: &str) -> Result<PathBuf, ExportError> {
        let f = AtomicFile::create(&self.dir.join(name), true).map_err(export_io)?;
        let tmp = f.temp_path().to_path_buf();
        self.files.push((Some(f), name.to_string()));
        Ok(tmp)
    }

    fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), ExportError> {
        let dst = self.dir.join(name);
        let f = AtomicFile::create(&dst, true).map_err(export_io)?;
        let mut h = f.try_clone_file().map_err(export_io)?;
        h.write_all(bytes).map_err(io_err(&dst))?;
        drop(h);
        self.files.push((Some(f), name.to_string()));
        Ok(())
    }

    fn write_json(&mut self, name: &str, v: &Json) -> Result<(), ExportError> {
        let mut s = serde_json::to_string_pretty(v).map_err(|e| ExportError::Io {
            path: self.dir.join(name),
            source: std::io::Error::other(e),
        })?;
        s.push('\n');
        self.write(name, s.as_bytes())
    }

    /// Syncs and moves every temporary to its final name (each commit syncs the folder).
    fn commit(&mut self) -> Result<(), ExportError> {
        for (f, _) in &mut self.files {
            if let Some(f) = f.take() {
                f.commit(true).map_err(export_io)?;
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        // Dropping each AtomicFile removes its temporary.
        self.files.clear();
        if self.created_dir {
            let _ = fs::remove_dir(&self.dir);
        }
    }
}

fn is_model_file(name: &str) -> bool {
    name == "model.safetensors"
        || name == "model.safetensors.index.json"
        || (name.starts_with("model-") && name.ends_with(".safetensors") && name.contains("-of-"))
}

/// Checks the output folder and refuses unsafe targets. Returns whether it has to be created.
fn check_out_dir(input: &Path, out_dir: &Path, force: bool) -> Result<bool, ExportError> {
    let input_canon = fs::canonicalize(input).map_err(io_err(input))?;
    if out_dir.exists() {
        if !out_dir.is_dir() {
            return Err(
                Refusal(format!("{} exists and is not a folder", out_dir.display())).into(),
            );
        }
        let mut entries = fs::read_dir(out_dir).map_err(io_err(out_dir))?;
        let non_empty = entries.next().is_some();
        if non_empty && !force {
            return Err(Refusal(format!(
                "{} is not empty; pass --force to write into it",
                out_dir.display()
            ))
            .into());
        }
        let out_canon = fs::canonicalize(out_dir).map_err(io_err(out_dir))?;
        if input_canon.parent() == Some(out_canon.as_path()) {
            let name = input_canon
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if is_model_file(&name) || name.ends_with(".json") {
                return Err(Refusal(format!(
                    "the export would overwrite its input {}",
                    input.display()
                ))
                .into());
            }
        }
        Ok(false)
    } else {
        Ok(true)
    }
}

/// Exports a llama GGUF to a Hugging Face folder. `progress` is called with the bytes of each
/// tensor as it is written (for a progress bar); the total is [`planned_bytes`].
pub fn export_hf(
    input: &Path,
    out_dir: &Path,
    opts: &ExportOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ExportSummary, ExportError> {
    let start = Instant::now();
    let file = GgufFile::open(input).map_err(|source| ExportError::Gguf {
        path: input.to_path_buf(),
        source,
    })?;
    let hp = read_hparams(&file)?;
    let planned = plan_tensors(&file, &hp)?;
    let tied = file.tensor("output.weight").is_none();
    let md = file.metadata();
    let tokenizer = hf_tokenizer(md)?;
    let tokenizer_json = tokenizer
        .to_string(true)
        .map_err(|e| ExportError::Tokenizer(e.to_string()))?;
    let tokens = string_array(md, "tokenizer.ggml.tokens")?;
    let sp = specials(md, &tokens);
    let config = config_json(&file, &hp, tied, opts.dtype);
    let generation = generation_config_json(&sp);
    let (tok_config, special_map) = tokenizer_config_json(md, hp.n_ctx)?;

    let created_dir = check_out_dir(input, out_dir, opts.force)?;
    if created_dir {
        fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    }
    let mut staging = Staging {
        dir: out_dir.to_path_buf(),
        created_dir,
        files: Vec::new(),
        committed: false,
    };

    // Shards: greedy in HF order, a new shard when the next tensor would pass the limit
    // (huggingface_hub's split_torch_state_dict_into_shards does the same).
    let esize = opts.dtype.size();
    let sizes: Vec<u64> = planned
        .iter()
        .map(|p| p.info.n_elements().saturating_mul(esize))
        .collect();
    let total: u64 = sizes.iter().copied().fold(0, u64::saturating_add);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut cur: u64 = 0;
    for (i, &s) in sizes.iter().enumerate() {
        match groups.last_mut() {
            Some(g) if cur.saturating_add(s) <= opts.shard_size => {
                g.push(i);
                cur += s;
            }
            _ => {
                groups.push(vec![i]);
                cur = s;
            }
        }
    }
    let n_shards = groups.len();
    let file_names: Vec<String> = if n_shards <= 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=n_shards)
            .map(|i| format!("model-{i:05}-of-{n_shards:05}.safetensors"))
            .collect()
    };

    let error = Mutex::new(None);
    let mut exported = Vec::with_capacity(planned.len());
    for (g, fname) in groups.iter().zip(file_names.iter()) {
        let mut views = Vec::with_capacity(g.len());
        for &i in g {
            let Some(p) = planned.get(i) else { continue };
            let shape: Vec<usize> = p.shape.iter().map(|&d| d as usize).collect();
            let len = sizes.get(i).copied().unwrap_or(0) as usize;
            views.push((
                p.hf_name.clone(),
                LazyTensor {
                    file: &file,
                    planned: p,
                    dtype: opts.dtype,
                    shape,
                    len,
                    error: &error,
                    done: progress,
                },
            ));
            exported.push(ExportedTensor {
                name: p.hf_name.clone(),
                gguf_name: p.info.name.clone(),
                source_type: p.info.ggml_type,
                shape: p.shape.clone(),
                file: fname.clone(),
                bytes: len as u64,
            });
        }
        let tmp = staging.temp_for(fname)?;
        let meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        safetensors::serialize_to_file(views, Some(meta), &tmp).map_err(|e| {
            ExportError::Safetensors {
                path: out_dir.join(fname),
                message: e.to_string(),
            }
        })?;
        if let Some(e) = error.lock().ok().and_then(|mut s| s.take()) {
            return Err(e);
        }
        // (Synced by the staging commit, through the AtomicFile's handle to the same file.)
    }
    if n_shards > 1 {
        let weight_map: BTreeMap<&str, &str> = exported
            .iter()
            .map(|t| (t.name.as_str(), t.file.as_str()))
            .collect();
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        staging.write_json("model.safetensors.index.json", &index)?;
    }
    staging.write_json("config.json", &config)?;
    staging.write_json("generation_config.json", &generation)?;
    staging.write("tokenizer.json", tokenizer_json.as_bytes())?;
    staging.write_json("tokenizer_config.json", &tok_config)?;
    staging.write_json("special_tokens_map.json", &special_map)?;
    staging.commit()?;

    // An earlier export's weights that this one did not replace would shadow or mix with ours
    // (a stale index wins over a new model.safetensors): remove them now that ours are in place.
    let ours: Vec<&str> = staging.files.iter().map(|(_, n)| n.as_str()).collect();
    if let Ok(rd) = fs::read_dir(out_dir) {
        let input_canon = fs::canonicalize(input).ok();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            if is_model_file(&name)
                && !ours.contains(&name.as_str())
                && fs::canonicalize(&path).ok() != input_canon
            {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
    }

    let files = staging
        .files
        .iter()
        .map(|(_, n)| {
            let len = fs::metadata(out_dir.join(n)).map(|m| m.len()).unwrap_or(0);
            (n.clone(), len)
        })
        .collect();
    Ok(ExportSummary {
        out_dir: out_dir.to_path_buf(),
        dtype: opts.dtype,
        files,
        tensors: exported,
        shards: n_shards,
        tensor_bytes: total,
        tied_embeddings: tied,
        config,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Total tensor bytes an export of `file` writes as `dtype` (the progress bar's length).
pub fn planned_bytes(file: &GgufFile, dtype: ExportDtype) -> u64 {
    file.tensors()
        .iter()
        .filter(|t| t.name != ROPE_FREQS)
        .map(|t| t.n_elements().saturating_mul(dtype.size()))
        .fold(0, u64::saturating_add)
}
