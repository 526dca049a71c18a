//! `longquant convert SRC -o OUT --type T [--imatrix FILE] [--threads N] [--pre NAME]
//! [--split-max-size SIZE] [--json] [--force]`. The progress bar, the report printer and the
//! error lifting here are shared with `quantize`.
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use longquant::convert::pipeline::{ConvertError, Progress};
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
    };
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
