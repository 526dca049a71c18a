//! `longquant imatrix MODEL.gguf --file CALIB -o imatrix.gguf [--ctx N] [--chunks K] [--threads T]
//! [--process-output] [--legacy-dat] [--no-ppl] [-ctk T] [-ctv T] [--force] [--json]`: collect an
//! importance matrix as llama-imatrix does, for `quantize --imatrix` (ours or llama-quantize's).
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use longquant::eval::imatrix_collect::{collect_imatrix, ImatrixOptions, ImatrixProgress};
use longquant::formats::gguf::GgufFile;
use longquant::tokenizer::GgufTokenizer;
use longquant::Refusal;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model whose activations are measured.
    model: PathBuf,
    /// UTF-8 calibration text.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// The importance matrix to write (llama.cpp's GGUF imatrix format; see --legacy-dat).
    #[arg(long, short = 'o')]
    output: PathBuf,
    /// Tokens per chunk (llama-imatrix's -c); each chunk is evaluated from an empty state.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Also collect output.weight (only models with their own output matrix have one; with tied
    /// embeddings llama-imatrix collects nothing for the head either).
    #[arg(long)]
    process_output: bool,
    /// Write llama.cpp's legacy .dat format instead of GGUF.
    #[arg(long)]
    legacy_dat: bool,
    /// Skip the running perplexity (llama-imatrix --no-ppl).
    #[arg(long)]
    no_ppl: bool,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// Where the forward pass runs: cpu, cuda or cuda:N (needs a build with `--features cuda`);
    /// on a GPU the per-column sums of squares are accumulated on the device.
    #[arg(long, default_value = "cpu", value_parser = super::device::parse)]
    device: super::device::Device,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: Args, json_out: bool) -> anyhow::Result<()> {
    if a.output.exists() && !a.force {
        return Err(Refusal(format!(
            "{} exists; pass --force to replace it",
            a.output.display()
        ))
        .into());
    }
    let same_as = |p: &PathBuf| {
        std::fs::canonicalize(p).ok().is_some_and(|c| {
            std::fs::canonicalize(&a.output)
                .ok()
                .is_some_and(|o| o == c)
        })
    };
    if same_as(&a.model) || same_as(&a.file) {
        return Err(Refusal(format!(
            "{} is an input; refusing to overwrite it",
            a.output.display()
        ))
        .into());
    }
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let model = super::device::load(&file, &a.model, a.device)?;
    let tok = GgufTokenizer::from_gguf(&file)
        .with_context(|| format!("building the tokenizer of {}", a.model.display()))?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    if a.process_output && model.tied_output() && !json_out {
        eprintln!(
            "note: {} has tied embeddings (no output.weight); --process-output collects nothing more",
            a.model.display()
        );
    }
    let opts = ImatrixOptions {
        n_ctx: a.ctx,
        max_chunks: a.chunks,
        process_output: a.process_output,
        compute_ppl: !a.no_ppl,
        eval: a.cache.eval(),
        // llama-imatrix records the text's path as it was given.
        datasets: vec![a.file.display().to_string()],
    };
    let mut builder = rayon::ThreadPoolBuilder::new();
    if let Some(t) = a.threads {
        builder = builder.num_threads(t.max(1));
    }
    let pool = builder.build().context("starting the worker threads")?;

    let bar = ProgressBar::new(0);
    if json_out || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} chunk {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let run = pool
        .install(|| {
            collect_imatrix(
                model.as_ref(),
                &tok,
                &text,
                &opts,
                &mut |p: ImatrixProgress| {
                    bar.set_length(p.total as u64);
                    bar.set_position(p.done as u64);
                    if let Some(ppl) = p.ppl {
                        bar.set_message(format!("PPL {ppl:.4}"));
                    }
                },
            )
        })
        .with_context(|| {
            format!(
                "importance matrix of {} on {}",
                a.model.display(),
                a.file.display()
            )
        })?;
    bar.finish_and_clear();

    let im = &run.imatrix;
    if a.legacy_dat {
        im.write_legacy(&a.output)
    } else {
        im.write_gguf(&a.output, true, 0).map(|_| ())
    }
    .with_context(|| format!("writing {}", a.output.display()))?;

    let format = if a.legacy_dat { "dat" } else { "gguf" };
    if json_out {
        let mut doc = json!({
            "model": a.model.display().to_string(),
            "file": a.file.display().to_string(),
            "output": a.output.display().to_string(),
            "format": format,
            "n_ctx": run.n_ctx,
            "n_chunks": run.n_chunks,
            "n_tokens_evaluated": run.n_tokens_evaluated,
            "n_tokens_text": run.n_tokens_text,
            "entries": im.len(),
            "ppl": run.ppl.map(|p| p.0),
            "ppl_stderr": run.ppl.map(|p| p.1),
            "running_ppl": run.running_ppl,
            "seconds": run.seconds,
            "tokens_per_second": run.tokens_per_second,
            "threads": pool.current_num_threads(),
        });
        if let Some(m) = doc.as_object_mut() {
            for (k, v) in a.cache.json_fields() {
                m.insert(k.into(), v);
            }
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        // llama-imatrix's running-perplexity line: [chunk]ppl,...
        if !run.running_ppl.is_empty() {
            let line: String = run
                .running_ppl
                .iter()
                .enumerate()
                .map(|(i, p)| format!("[{}]{p:.4},", i + 1))
                .collect();
            println!("{line}");
        }
        if let Some((ppl, se)) = run.ppl {
            println!("Final estimate: PPL = {ppl:.4} +/- {se:.5}");
        }
        println!(
            "wrote {} ({format}): {} entries, {} chunks of {} tokens ({} tokens, {:.1} tokens/s, {:.2} s)",
            a.output.display(),
            im.len(),
            run.n_chunks,
            run.n_ctx,
            run.n_tokens_evaluated,
            run.tokens_per_second,
            run.seconds
        );
    }
    Ok(())
}
