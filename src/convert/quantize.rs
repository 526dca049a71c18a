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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use longquant_formats::gguf::{GgufFile, Metadata, Value};
use longquant_formats::GgmlType;

use super::controls::{apply_overrides, set_last, Controls};
use super::importance::ImportanceWeights;
use super::mix::{plan_mix_with, FileType, MixOptions, MixTensor, ModelShape};
use super::pipeline::{
    check_fit, check_outputs, finish_metadata, imatrix_requirement, load_imatrix, output_layout,
    output_paths, prune_planned, split_count, tensor_bytes, with_threads, write_job, ConvertError,
    ConvertReport, DryRun, DryTensor, Fact, Job, PlannedTensor, Progress, Source,
};
use super::split::{SplitLayout, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use super::stream::block_format;

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
    /// llama-quantize's per-tensor and metadata controls.
    pub controls: Controls,
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
            controls: Controls::default(),
        }
    }
}

/// A planned requantization.
#[derive(Debug)]
pub struct QuantizePlan {
    /// Output tensors in write order.
    pub tensors: Vec<PlannedTensor>,
    /// Each output tensor's type in the input.
    pub input_types: Vec<GgmlType>,
    /// Output metadata.
    pub metadata: Metadata,
    /// The input's metadata as the output must carry it: with `--override-kv` applied (what the
    /// written file's long-context facts are checked against; llama.cpp's loader also reads the
    /// model's shape through the overrides).
    pub expected: Metadata,
    /// Fallbacks (llama-quantize's count).
    pub n_fallback: usize,
    /// Parameters.
    pub n_params: u64,
    /// The importance matrix, when one was given (and filtering left entries in it).
    pub imatrix: Option<ImportanceWeights>,
    /// Findings of a dry run that the real run would refuse.
    pub warnings: Vec<String>,
}

fn md_u64(md: &Metadata, key: &str) -> Result<u64, ConvertError> {
    md.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| ConvertError::BadInput(format!("the input GGUF has no integer {key}")))
}

/// Plan a requantization of `model`: every tensor's type, and the metadata.
pub fn plan_quantize(
    model: &GgufFile,
    opts: &QuantizeOptions,
) -> Result<QuantizePlan, ConvertError> {
    plan_quantize_inner(model, opts, false)
}

fn plan_quantize_inner(
    model: &GgufFile,
    opts: &QuantizeOptions,
    dry_run: bool,
) -> Result<QuantizePlan, ConvertError> {
    let controls = &opts.controls;
    controls.check()?;
    let mut imatrix = load_imatrix(opts.imatrix.as_deref(), controls)?;
    let md = model.metadata();
    let mut expected = md.clone();
    apply_overrides(&mut expected, &controls.override_kv);
    let arch = expected
        .get("general.architecture")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::BadInput("the input GGUF has no general.architecture".into()))?
        .to_string();
    let n_head = md_u64(&expected, &format!("{arch}.attention.head_count"))?;
    let shape = ModelShape {
        n_layer: md_u64(&expected, &format!("{arch}.block_count"))?,
        n_head,
        n_head_kv: expected
            .get(&format!("{arch}.attention.head_count_kv"))
            .and_then(Value::as_u64)
            .unwrap_or(n_head),
    };
    let mut tensors: Vec<PlannedTensor> = model
        .tensors()
        .iter()
        .map(|info| PlannedTensor {
            name: info.name.clone(),
            source: Source::Checkpoint(info.name.clone()),
            role: None,
            dims: info.dims.clone(),
            ggml_type: info.ggml_type,
            fallback_from: None,
            permute_heads: None,
            n_bytes: info.n_bytes,
        })
        .collect();
    let pruned = prune_planned(&mut tensors, &controls.prune_layers, &mut imatrix);
    let input_types: Vec<GgmlType> = tensors.iter().map(|t| t.ggml_type).collect();
    let mix_in: Vec<MixTensor> = tensors
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
        &MixOptions::from_controls(controls, imatrix.is_some(), opts.pure),
    );
    let mut warnings = Vec::new();
    if imatrix.is_none() {
        imatrix_requirement(opts.file_type, &mix_in, &mix, dry_run, &mut warnings)?;
    }
    let mut n_params = 0u64;
    for ((t, &from), choice) in tensors.iter_mut().zip(&input_types).zip(&mix.choices) {
        let (to, fallback_from) = if choice.allowed {
            (choice.ggml_type, choice.fallback_from)
        } else {
            (from, None)
        };
        if to != from {
            let refusal = if from.is_quantized() && !opts.allow_requantize {
                Some(ConvertError::RequantizeRefused {
                    name: t.name.clone(),
                    from: from.name().to_string(),
                    to: to.name().to_string(),
                })
            } else if block_format(from).is_none() {
                Some(ConvertError::NotSupported(format!(
                    "tensor {} is {}, which longquant cannot dequantize (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS)",
                    t.name,
                    from.name()
                )))
            } else {
                None
            };
            match refusal {
                // llama-quantize --dry-run computes sizes without these checks.
                Some(e) if dry_run => warnings.push(format!("the real run would stop: {e}")),
                Some(e) => return Err(e),
                None => {}
            }
        }
        n_params += t.dims.iter().product::<u64>();
        t.ggml_type = to;
        t.fallback_from = fallback_from;
        t.n_bytes = tensor_bytes(to, &t.dims);
    }
    check_fit(&tensors, controls)?;
    // llama_model_quantize_impl's order: copy the keys, set the quantization version and file
    // type, remove the split keys, apply the overrides (each moved last, as gguf_set_val_* does),
    // set the pruned block count. One difference, kept on purpose: llama-quantize moves
    // general.quantization_version and general.file_type last too; we keep them where the input
    // has them, so that files made before stay byte-identical (the llama.cpp oracles in
    // tests/data/llamacpp record the sha256 of files this command made).
    let mut metadata = md.clone();
    metadata.insert("general.quantization_version", 2u32);
    metadata.insert("general.file_type", opts.file_type.llama_ftype());
    for k in [KEY_SPLIT_NO, KEY_SPLIT_COUNT, KEY_SPLIT_TENSORS_COUNT] {
        metadata.remove(k);
    }
    // Only tensors that change type are quantized (the others are copied, as in llama-quantize,
    // whose imatrix size check is on the quantizing path too).
    let quantized: Vec<PlannedTensor> = tensors
        .iter()
        .zip(&input_types)
        .filter(|(t, &from)| t.ggml_type != from || !t.ggml_type.is_quantized())
        .map(|(t, _)| t.clone())
        .collect();
    finish_metadata(
        &mut metadata,
        controls,
        imatrix.as_ref(),
        &quantized,
        pruned.map(|b| (arch.clone(), b)),
    )?;
    if let Some(b) = pruned {
        set_last(
            &mut expected,
            &format!("{arch}.block_count"),
            u32::try_from(b).unwrap_or(u32::MAX),
        );
    }
    Ok(QuantizePlan {
        tensors,
        input_types,
        metadata,
        expected,
        n_fallback: mix.n_fallback,
        n_params,
        imatrix,
        warnings,
    })
}

/// The output layout for `opts` (`--keep-split` follows the input's files).
fn layout_for(
    model: &GgufFile,
    plan: &QuantizePlan,
    opts: &QuantizeOptions,
) -> Result<SplitLayout, ConvertError> {
    let part: HashMap<&str, usize> = model
        .tensors()
        .iter()
        .map(|t| (t.name.as_str(), model.tensor_location(t).map_or(0, |l| l.0)))
        .collect();
    output_layout(
        opts.split_max_size,
        opts.controls.keep_split,
        &plan.tensors,
        |t| match &t.source {
            Source::Checkpoint(n) => part.get(n.as_str()).copied().unwrap_or(0),
            Source::Generated(_) => 0,
        },
    )
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

/// `quantize --dry-run`: every tensor's type and size, and the totals, without writing anything
/// (`out`, when given, only names the files the real run would write).
pub fn quantize_dry_run(
    input: &Path,
    out: Option<&Path>,
    opts: &QuantizeOptions,
) -> Result<DryRun, ConvertError> {
    let model = GgufFile::open(input)?;
    let plan = plan_quantize_inner(&model, opts, true)?;
    let layout = layout_for(&model, &plan, opts)?;
    let tensors = plan
        .tensors
        .iter()
        .zip(&plan.input_types)
        .map(|(t, from)| {
            let bytes_in = match &t.source {
                Source::Checkpoint(n) => model.tensor(n).map_or(0, |i| i.n_bytes),
                Source::Generated(_) => 0,
            };
            DryTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                from: from.name().to_string(),
                bytes_in,
                to: t.ggml_type,
                bytes_out: t.n_bytes,
            }
        })
        .collect();
    Ok(DryRun {
        file_type: opts.file_type,
        tensors,
        n_params: plan.n_params,
        n_fallback: plan.n_fallback,
        outputs: out
            .map(|o| output_paths(o, split_count(&plan.tensors, &layout)))
            .unwrap_or_default(),
        warnings: plan.warnings,
    })
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
    let model = GgufFile::open(input)?;
    let inputs = model.paths();
    check_outputs(&[out.to_path_buf()], &inputs, opts.force)?;
    let plan = plan_quantize(&model, opts)?;
    let layout = layout_for(&model, &plan, opts)?;
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
        &layout,
        opts.force,
        &job,
        &model,
        progress,
        start,
        |first| carried_facts(first, &plan.expected),
    )
}

/// Read the written file back and set its long-context keys beside the input's; any difference
/// is an error (the metadata is copied, so it would be a bug).
fn carried_facts(out: &Path, input: &Metadata) -> Result<Vec<Fact>, ConvertError> {
    let f = GgufFile::open(out)?;
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
