//! `longquant quantize IN.gguf [OUT.gguf] --type T [--allow-requantize] [--pure] [--imatrix FILE]
//! [--threads N] [--split-max-size SIZE] [--json] [--force]` plus llama-quantize's controls
//! ([`ControlArgs`]): GGUF → GGUF with llama-quantize's mixes.
use anyhow::Context;
use longquant::convert::pipeline::Progress;
use longquant::convert::quantize::{quantize, quantize_dry_run, QuantizeOptions};
use longquant::convert::FileType;
use std::path::PathBuf;

use super::convert::{
    lift, on_event, parse_split_size, print_dry_run, print_report, progress_bar, ControlArgs,
};

#[derive(clap::Args)]
pub struct Args {
    /// Input GGUF (or the first file of a split set, PREFIX-00001-of-0000N.gguf).
    input: PathBuf,
    /// The GGUF file to write (written to a temporary file beside it, renamed when complete);
    /// not needed with --dry-run.
    #[arg(required_unless_present = "dry_run")]
    output: Option<PathBuf>,
    /// Output type: F32, F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q4_K_M, Q4_K_S, Q5_0, Q5_1, Q4_0,
    /// Q4_1, IQ4_XS, IQ4_NL, Q3_K_L, Q3_K_M, Q3_K_S, Q2_K, Q2_K_S (needs --imatrix). Mixes match
    /// llama.cpp's llama-quantize.
    #[arg(long = "type")]
    file_type: String,
    /// Dequantize tensors that are already quantized (Q4_1, Q8_0, ...) and quantize them again.
    #[arg(long)]
    allow_requantize: bool,
    /// Every quantizable tensor in the base type, no mix rules (llama-quantize --pure).
    #[arg(long)]
    pure: bool,
    /// Importance matrix from llama.cpp's llama-imatrix (GGUF or legacy .dat): quantize each
    /// weight matrix with its per-column importance, as llama-quantize --imatrix does.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write llama.cpp's split layout with at most SIZE bytes of tensors per file (4G, 500M, 2GiB).
    #[arg(long, value_parser = parse_split_size)]
    split_max_size: Option<u64>,
    /// Replace OUT if it exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    controls: ControlArgs,
}

pub fn run(a: Args, json: bool) -> anyhow::Result<()> {
    let file_type = FileType::from_name(&a.file_type).ok_or_else(|| {
        let names: Vec<&str> = FileType::all().map(FileType::name).collect();
        anyhow::anyhow!(
            "unknown --type {:?}; supported: {}",
            a.file_type,
            names.join(", ")
        )
    })?;
    let opts = QuantizeOptions {
        file_type,
        allow_requantize: a.allow_requantize,
        pure: a.pure,
        force: a.force,
        threads: a.threads,
        imatrix: a.imatrix.clone(),
        split_max_size: a.split_max_size,
        controls: a.controls.controls()?,
    };
    if a.controls.dry_run {
        let d = quantize_dry_run(&a.input, a.output.as_deref(), &opts)
            .map_err(lift)
            .with_context(|| format!("planning {}", a.input.display()))?;
        return print_dry_run(&d, json);
    }
    let Some(output) = a.output.as_deref() else {
        anyhow::bail!("give the output file (only --dry-run runs without one)");
    };
    let bar = progress_bar(json);
    let mut n_tensors = 0usize;
    let mut done = 0usize;
    let mut on_progress = |p: Progress<'_>| on_event(&bar, &mut n_tensors, &mut done, p);
    let result = quantize(&a.input, output, &opts, &mut on_progress);
    bar.finish_and_clear();
    let report = match result {
        Ok(r) => r,
        Err(e) => return Err(lift(e)).with_context(|| format!("quantizing {}", a.input.display())),
    };
    print_report(&report, json, "in the input GGUF", "input")
}
