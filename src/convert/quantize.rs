//! GGUF → GGUF with llama-quantize's mixes (`longquant quantize`).
//!
//! What llama-quantize does (src/llama-quant.cpp, `llama_model_quantize_impl`), and so do we:
//! - metadata is copied from the input, `general.quantization_version` and `general.file_type` set,
//!   the `split.*` keys removed (a split output gets its own);
//! - tensors that may not be quantized (1-D, norms, ...) keep their input type;
//! - the others get the mix's type ([`super::mix::plan_mix_with`], `--pure` skips the mix rules);
//! - a tensor already in its target type is copied unchanged;
//! - a quantized tensor that would change type needs `--allow-requantize` (it is dequantized to
//!   f32 first; the error is raised before anything is written, where llama-quantize stops half-way).
//!
//! Tensors are written in the input's file order (so an over-RAM input is read sequentially), not
//! llama-quantize's sorted order; readers look tensors up by name, and the types do not depend on it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use longquant_formats::gguf::{Metadata, Value};

use super::importance::ImportanceWeights;
use super::mix::{allows_quantization, plan_mix_with, FileType, MixOptions, MixTensor, ModelShape};
use super::pipeline::{
    check_outputs, with_threads, write_job, ConvertError, ConvertReport, Fact, Job, PlannedTensor,
    Progress, Source,
};
use super::split::{
    open_split_model, SplitModel, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT,
};
use super::stream::{block_format, split_err};

/// What to quantize to and how.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    /// Target file type (mix).
    pub file_type: FileType,
    /// Dequantize and requantize tensors that are already quantized in another type.
    pub allow_requantize: bool,
    /// Every quantizable tensor in the base type (llama-quantize `--pure`).
    pub pure: bool,
    /// Replace existing output files.
    pub force: bool,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Importance matrix (llama-imatrix's GGUF or legacy `.dat`), used like llama-quantize's
    /// `--imatrix`.
    pub imatrix: Option<PathBuf>,
    /// Write llama.cpp's split layout with files of at most this many tensor bytes.
    pub split_max_size: Option<u64>,
}

impl QuantizeOptions {
    /// Options for `file_type` with everything else off.
    pub fn new(file_type: FileType) -> QuantizeOptions {
        QuantizeOptions {
            file_type,
            allow_requantize: false,
            pure: false,
            force: false,
            threads: None,
            imatrix: None,
            split_max_size: None,
        }
    }
}

/// A planned requantization.
#[derive(Debug)]
pub struct QuantizePlan {
    /// Output tensors in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Output metadata.
    pub metadata: Metadata,
    /// Fallbacks (llama-quantize's count).
    pub n_fallback: usize,
    /// Parameters.
    pub n_params: u64,
    /// The importance matrix, when one was given.
    pub imatrix: Option<ImportanceWeights>,
}

fn md_u64(md: &Metadata, key: &str) -> Result<u64, ConvertError> {
    md.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| ConvertError::BadInput(format!("the input GGUF has no integer {key}")))
}

/// Plan a requantization of `model`: every tensor's type, and the metadata.
pub fn plan_quantize(
    model: &SplitModel,
    opts: &QuantizeOptions,
) -> Result<QuantizePlan, ConvertError> {
    let imatrix = opts
        .imatrix
        .as_deref()
        .map(ImportanceWeights::load)
        .transpose()?;
    let md = model.metadata();
    let arch = md
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::BadInput("the input GGUF has no general.architecture".into()))?
        .to_string();
    let n_head = md_u64(md, &format!("{arch}.attention.head_count"))?;
    let shape = ModelShape {
        n_layer: md_u64(md, &format!("{arch}.block_count"))?,
        n_head,
        n_head_kv: md
            .get(&format!("{arch}.attention.head_count_kv"))
            .and_then(Value::as_u64)
            .unwrap_or(n_head),
    };
    let infos: Vec<_> = model.tensors().map(|(_, t)| t).collect();
    let mix_in: Vec<MixTensor> = infos
        .iter()
        .map(|t| MixTensor {
            name: t.name.clone(),
            ne: t.dims.clone(),
        })
        .collect();
    let mix = plan_mix_with(
        opts.file_type,
        &mix_in,
        shape,
        MixOptions {
            has_imatrix: imatrix.is_some(),
            pure: opts.pure,
        },
    );
    if imatrix.is_none() {
        super::pipeline::check_imatrix_not_required(opts.file_type, &mix_in, &mix)?;
    }
    let mut tensors = Vec::with_capacity(infos.len());
    let mut n_params = 0u64;
    for ((info, mt), choice) in infos.iter().zip(&mix_in).zip(&mix.choices) {
        let from = info.ggml_type;
        let (to, fallback_from) = if allows_quantization(mt) {
            (choice.ggml_type, choice.fallback_from)
        } else {
            (from, None)
        };
        if to != from {
            if from.is_quantized() && !opts.allow_requantize {
                return Err(ConvertError::RequantizeRefused {
                    name: info.name.clone(),
                    from: from.name().to_string(),
                    to: to.name().to_string(),
                });
            }
            if block_format(from).is_none() {
                return Err(ConvertError::NotSupported(format!(
                    "tensor {} is {}, which longquant cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)",
                    info.name,
                    from.name()
                )));
            }
        }
        let rows: u64 = info.dims.iter().skip(1).product();
        n_params += info.n_elements();
        tensors.push(PlannedTensor {
            name: info.name.clone(),
            source: Source::Checkpoint(info.name.clone()),
            role: None,
            dims: info.dims.clone(),
            ggml_type: to,
            fallback_from,
            permute_heads: None,
            n_bytes: to
                .row_size(info.dims.first().copied().unwrap_or(0))
                .and_then(|r| r.checked_mul(rows))
                .unwrap_or(u64::MAX),
        });
    }
    let mut metadata = md.clone();
    for k in [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT] {
        metadata.remove(k);
    }
    metadata.insert("general.quantization_version", 2u32);
    metadata.insert("general.file_type", opts.file_type.llama_ftype());
    if let Some(im) = &imatrix {
        // Only tensors that change type are quantized (the others are copied, as in
        // llama-quantize, whose size check is on the quantizing path too).
        im.check(
            tensors
                .iter()
                .zip(&infos)
                .filter(|(t, i)| t.ggml_type != i.ggml_type || !t.ggml_type.is_quantized())
                .map(|(t, _)| t),
        )?;
        im.add_metadata(&mut metadata);
    }
    Ok(QuantizePlan {
        tensors,
        metadata,
        n_fallback: mix.n_fallback,
        n_params,
        imatrix,
    })
}

/// Requantize `input` (a GGUF, or the first file of a split set) into `out`.
pub fn quantize(
    input: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<ConvertReport, ConvertError> {
    with_threads(opts.threads, || quantize_inner(input, out, opts, progress))
}

fn quantize_inner(
    input: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<ConvertReport, ConvertError> {
    let start = Instant::now();
    // Refuse input == output before opening anything large.
    check_outputs(&[out.to_path_buf()], &[input.to_path_buf()], opts.force)?;
    let model = open_split_model(input).map_err(split_err)?;
    let inputs = model.paths();
    check_outputs(&[out.to_path_buf()], &inputs, opts.force)?;
    let plan = plan_quantize(&model, opts)?;
    let job = Job {
        tensors: &plan.tensors,
        metadata: &plan.metadata,
        imatrix: plan.imatrix.as_ref(),
        file_type: opts.file_type,
        n_params: plan.n_params,
        n_fallback: plan.n_fallback,
    };
    write_job(
        out,
        &inputs,
        opts.split_max_size,
        opts.force,
        &job,
        &model,
        progress,
        start,
        |first| carried_facts(first, model.metadata()),
    )
}

/// Read the written file back and set its long-context keys beside the input's; any difference
/// is an error (the metadata is copied, so it would be a bug).
fn carried_facts(out: &Path, input: &Metadata) -> Result<Vec<Fact>, ConvertError> {
    let f = longquant_formats::gguf::GgufFile::open(out)?;
    let md = f.metadata();
    let arch = input
        .get("general.architecture")
        .and_then(Value::as_str)
        .unwrap_or("llama")
        .to_string();
    let keys: [(&'static str, String); 10] = [
        ("context length", format!("{arch}.context_length")),
        ("rope theta", format!("{arch}.rope.freq_base")),
        ("rope scaling", format!("{arch}.rope.scaling.type")),
        ("attention heads", format!("{arch}.attention.head_count")),
        ("KV heads", format!("{arch}.attention.head_count_kv")),
        ("rope dimensions", format!("{arch}.rope.dimension_count")),
        ("pre-tokenizer", "tokenizer.ggml.pre".into()),
        ("bos id", "tokenizer.ggml.bos_token_id".into()),
        ("eos id", "tokenizer.ggml.eos_token_id".into()),
        ("add bos", "tokenizer.ggml.add_bos_token".into()),
    ];
    let show = |v: Option<&Value>| match v {
        None => "(absent)".to_string(),
        Some(Value::String(s)) => s.escape_debug().to_string(),
        Some(Value::F32(x)) => format!("{x}"),
        Some(Value::Bool(b)) => b.to_string(),
        Some(o) => o
            .as_u64()
            .map(|n| n.to_string())
            .unwrap_or_else(|| format!("{o:?}")),
    };
    let mut facts = Vec::new();
    for (what, key) in keys {
        let fact = Fact {
            what,
            gguf: show(md.get(&key)),
            source: show(input.get(&key)),
        };
        if fact.gguf != fact.source {
            return Err(ConvertError::Verify(format!(
                "{what}: output has {}, input has {}",
                fact.gguf, fact.source
            )));
        }
        facts.push(fact);
    }
    Ok(facts)
}
