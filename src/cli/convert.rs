//! `longquant convert SRC -o OUT --type T [--imatrix FILE] [--threads N] [--pre NAME]
//! [--split-max-size SIZE] [--json] [--force]`. The progress bar, the report printer and the
//! error lifting here are shared with `quantize`.
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use longquant::convert::controls::{
    parse_ggml_type, parse_prune_layers, Controls, KvOverride, TensorTypeRule,
};
use longquant::convert::pipeline::{convert_dry_run, ConvertError, DryRun, Progress};
use longquant::convert::{convert, ConvertOptions, ConvertReport, FileType, TypeChoice};
use longquant::formats::ErrorKind;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json, tokenizer_config.json).
    src: PathBuf,
    /// The GGUF file to write (written to a temporary file beside it, renamed when complete).
    #[arg(short, long)]
    output: PathBuf,
    /// Output type: auto (the checkpoint's own precision), F32, F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S,
    /// Q4_K_M, Q4_K_S, Q5_0, Q5_1, Q4_0, Q4_1, IQ4_XS, IQ4_NL, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K,
    /// Q2_K_S (needs --imatrix). Mixes match llama.cpp's llama-quantize.
    #[arg(long = "type", default_value = "auto")]
    file_type: String,
    /// Importance matrix from llama.cpp's llama-imatrix (GGUF or legacy .dat): quantize each
    /// weight matrix with its per-column importance, as llama-quantize --imatrix does.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Pre-tokenizer name to write when the tokenizer is not recognized (e.g. llama-bpe, smollm).
    #[arg(long)]
    pre: Option<String>,
    /// Write llama.cpp's split layout (OUT-00001-of-0000N.gguf, split.* keys) with at most SIZE
    /// bytes of tensors per file (e.g. 4G, 500M, 2GiB).
    #[arg(long, value_parser = parse_split_size)]
    split_max_size: Option<u64>,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    controls: ControlArgs,
}

/// llama-quantize's controls, with its names and semantics (shared by `convert` and `quantize`).
#[derive(clap::Args)]
pub(super) struct ControlArgs {
    /// Quantize the tensors whose name matches the regular expression PATTERN (searched,
    /// lowercased) to TYPE (a ggml type: q8_0, q4_k, f16, ...). Repeatable; the first matching
    /// rule wins, as in llama-quantize. Matched tensors skip the mix rules.
    #[arg(long = "tensor-type", value_name = "PATTERN=TYPE")]
    tensor_type: Vec<String>,
    /// ggml type for output.weight (no shape fallback; with tied embeddings it reaches
    /// token_embd.weight too, unless --token-embedding-type is given).
    #[arg(long, value_name = "TYPE")]
    output_tensor_type: Option<String>,
    /// ggml type for token_embd.weight (no shape fallback).
    #[arg(long, value_name = "TYPE")]
    token_embedding_type: Option<String>,
    /// Leave output.weight un(re)quantized (its input type).
    #[arg(long)]
    leave_output_tensor: bool,
    /// Set a metadata key in the output: TYPE is int (written as UINT32 of |N|), float (FLOAT32),
    /// bool (true/false) or str (at most 127 bytes). Repeatable, applied in order.
    #[arg(long = "override-kv", value_name = "KEY=TYPE:VALUE")]
    override_kv: Vec<String>,
    /// Use the importance matrix only for tensors whose name contains S (repeatable).
    #[arg(
        long = "include-weights",
        value_name = "S",
        conflicts_with = "exclude_weights"
    )]
    include_weights: Vec<String>,
    /// Do not use the importance matrix for tensors whose name contains S (repeatable).
    #[arg(long = "exclude-weights", value_name = "S")]
    exclude_weights: Vec<String>,
    /// Remove these blocks (comma-separated indices) and renumber the rest.
    #[arg(long, value_name = "L0,L1,...")]
    prune_layers: Option<String>,
    /// Write the output in the same parts as the input (quantize: the input's split files;
    /// convert: one GGUF file per safetensors shard), named OUT-0000i-of-0000N.gguf.
    #[arg(long, conflicts_with = "split_max_size")]
    keep_split: bool,
    /// Show every tensor's type and size and the total, and write nothing.
    #[arg(long)]
    pub(super) dry_run: bool,
}

impl ControlArgs {
    /// The library's controls, every value parsed and checked.
    pub(super) fn controls(&self) -> anyhow::Result<Controls> {
        let c = Controls {
            tensor_types: self
                .tensor_type
                .iter()
                .map(|s| TensorTypeRule::parse(s))
                .collect::<Result<_, _>>()?,
            output_tensor_type: self
                .output_tensor_type
                .as_deref()
                .map(|s| parse_ggml_type("--output-tensor-type", s))
                .transpose()?,
            token_embedding_type: self
                .token_embedding_type
                .as_deref()
                .map(|s| parse_ggml_type("--token-embedding-type", s))
                .transpose()?,
            leave_output_tensor: self.leave_output_tensor,
            override_kv: self
                .override_kv
                .iter()
                .map(|s| KvOverride::parse(s))
                .collect::<Result<_, _>>()?,
            include_weights: self.include_weights.clone(),
            exclude_weights: self.exclude_weights.clone(),
            prune_layers: self
                .prune_layers
                .as_deref()
                .map(parse_prune_layers)
                .transpose()?
                .unwrap_or_default(),
            keep_split: self.keep_split,
        };
        c.check()?;
        Ok(c)
    }
}

/// Print a dry run as a table, or as JSON.
pub(super) fn print_dry_run(d: &DryRun, json: bool) -> anyhow::Result<()> {
    if json {
        let doc = serde_json::json!({
            "dry_run": true,
            "file_type": d.file_type.name(),
            "tensors": d.tensors.iter().map(|t| serde_json::json!({
                "name": t.name, "dims": t.dims, "from": t.from, "to": t.to.name(),
                "bytes_in": t.bytes_in, "bytes_out": t.bytes_out})).collect::<Vec<_>>(),
            "total_in": d.total_in(),
            "total_out": d.total_out(),
            "n_params": d.n_params,
            "bits_per_weight": d.bits_per_weight(),
            "n_fallback": d.n_fallback,
            "outputs": d.outputs,
            "warnings": d.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    for (i, t) in d.tensors.iter().enumerate() {
        let dims: Vec<String> = t.dims.iter().map(u64::to_string).collect();
        println!(
            "[{:>4}/{:>4}] {:<36} [{}] {:>8} -> {:<8} {:>10.3} MiB -> {:>10.3} MiB",
            i + 1,
            d.tensors.len(),
            t.name.escape_debug().to_string(),
            dims.join(", "),
            t.from,
            t.to.name(),
            mib(t.bytes_in),
            mib(t.bytes_out)
        );
    }
    let bpw = |b: u64| {
        if d.n_params == 0 {
            0.0
        } else {
            b as f64 * 8.0 / d.n_params as f64
        }
    };
    println!(
        "model size {:.2} MiB ({:.2} BPW), quantized size {:.2} MiB ({:.2} BPW), {} bytes of tensors; nothing written (dry run)",
        mib(d.total_in()),
        bpw(d.total_in()),
        mib(d.total_out()),
        d.bits_per_weight(),
        d.total_out()
    );
    if d.n_fallback > 0 {
        println!("{} tensors fell back to a 32-wide type", d.n_fallback);
    }
    for o in &d.outputs {
        println!("would write {}", o.display());
    }
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// `--split-max-size`: decimal (`4G` = 4e9 bytes, as llama-gguf-split) or binary (`2GiB`) units.
pub(super) fn parse_split_size(s: &str) -> Result<u64, String> {
    longquant::export::parse_size(s).map_err(|e| e.to_string())
}

pub fn run(a: Args, json: bool) -> anyhow::Result<()> {
    let file_type = TypeChoice::parse(&a.file_type).ok_or_else(|| {
        let names: Vec<&str> = FileType::all().map(FileType::name).collect();
        anyhow::anyhow!(
            "unknown --type {:?}; supported: auto, {}",
            a.file_type,
            names.join(", ")
        )
    })?;
    let opts = ConvertOptions {
        file_type,
        pre_override: a.pre.clone(),
        force: a.force,
        threads: a.threads,
        imatrix: a.imatrix.clone(),
        split_max_size: a.split_max_size,
        controls: a.controls.controls()?,
    };
    if a.controls.dry_run {
        let d = convert_dry_run(&a.src, &a.output, &opts)
            .map_err(lift)
            .with_context(|| format!("planning {}", a.src.display()))?;
        return print_dry_run(&d, json);
    }
    let bar = progress_bar(json);
    let mut n_tensors = 0usize;
    let mut done = 0usize;
    let mut on_progress = |p: Progress<'_>| on_event(&bar, &mut n_tensors, &mut done, p);
    let result = convert(&a.src, &a.output, &opts, &mut on_progress);
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => return Err(lift(e)).with_context(|| format!("converting {}", a.src.display())),
    };
    print_report(&report, json, "in config/tokenizer files", "config")
}

/// A bytes progress bar on a terminal, hidden otherwise.
pub(super) fn progress_bar(json: bool) -> ProgressBar {
    let bar = if json || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(0)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Feed one pipeline event to the bar.
pub(super) fn on_event(
    bar: &ProgressBar,
    n_tensors: &mut usize,
    done: &mut usize,
    p: Progress<'_>,
) {
    match p {
        Progress::Start { tensors, bytes } => {
            *n_tensors = tensors;
            bar.set_length(bytes);
        }
        Progress::Advance { name, bytes } => {
            bar.set_message(format!("[{}/{}] {}", *done + 1, n_tensors, name));
            bar.inc(bytes);
        }
        Progress::TensorDone { .. } => *done += 1,
    }
}

/// Print a conversion report as text or JSON; `source_label` heads the facts' second column and
/// `source_key` names it in JSON (`config` for convert, `input` for quantize).
pub(super) fn print_report(
    report: &ConvertReport,
    json: bool,
    source_label: &str,
    source_key: &str,
) -> anyhow::Result<()> {
    if json {
        let doc = serde_json::json!({
            "output": report.output,
            "outputs": report.outputs,
            "file_type": report.file_type.name(),
            "file_size": report.file_size,
            "source_bytes": report.source_bytes,
            "n_params": report.n_params,
            "bits_per_weight": report.bits_per_weight(),
            "wall_seconds": report.wall_seconds,
            "n_fallback": report.n_fallback,
            "tensors": report.tensors.iter().map(|(n, t, d, b)| serde_json::json!({
                "name": n, "type": t.name(), "dims": d, "bytes": b})).collect::<Vec<_>>(),
            "facts": report.facts.iter().map(|f| serde_json::json!({
                "what": f.what, "gguf": f.gguf, source_key: f.source})).collect::<Vec<_>>(),
            "warnings": report.warnings,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {} ({}, {} tensors, {:.2} GiB, {:.3} bits/weight) in {:.1} s ({:.0} MB/s of source)",
        report.output.display(),
        report.file_type.name(),
        report.tensors.len(),
        report.file_size as f64 / (1u64 << 30) as f64,
        report.bits_per_weight(),
        report.wall_seconds,
        report.source_bytes as f64 / 1e6 / report.wall_seconds.max(1e-9),
    );
    if report.outputs.len() > 1 {
        println!("split into {} files:", report.outputs.len());
        for o in &report.outputs {
            println!("  {}", o.display());
        }
    }
    if report.n_fallback > 0 {
        println!(
            "{} of {} tensors fell back to a 32-wide type (rows not a multiple of 256), as llama-quantize does",
            report.n_fallback,
            report.tensors.len()
        );
    }
    println!();
    println!(
        "{:<28} {:<28} {source_label}",
        "long-context fact", "in the GGUF"
    );
    for f in &report.facts {
        println!("{:<28} {:<28} {}", f.what, f.gguf, f.source);
    }
    Ok(())
}

/// Put the error the exit-code classifier looks for at the top of the chain: refusals as
/// `Refusal`, file errors as `formats::Error`.
pub(super) fn lift(e: ConvertError) -> anyhow::Error {
    match e {
        ConvertError::Refused(r) => anyhow::Error::new(r),
        ConvertError::Format(f) => match f.kind {
            ErrorKind::OutputExists => anyhow::Error::new(longquant::Refusal(format!(
                "output {} exists; pass --force to replace it",
                f.path.display()
            ))),
            ErrorKind::PickleRefused { .. } => {
                anyhow::Error::new(longquant::Refusal(f.to_string()))
            }
            _ => anyhow::Error::new(f),
        },
        other => anyhow::Error::new(other),
    }
}
