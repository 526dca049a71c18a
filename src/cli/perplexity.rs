//! `longquant perplexity MODEL.gguf --file TEXT [--ctx N] [--chunks K] [--threads T] [-ctk T] [-ctv T] [--json]`.
use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use longquant::eval::perplexity::{perplexity, PerplexityOptions};
use longquant::formats::gguf::GgufFile;
use longquant::tokenizer::GgufTokenizer;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model.
    model: PathBuf,
    /// UTF-8 text to score.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Tokens per chunk (llama-perplexity's -c).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// Where the forward pass runs: cpu, cuda or cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = super::device::parse)]
    device: super::device::Device,
}

pub fn run(a: Args, json_out: bool) -> anyhow::Result<()> {
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let model = super::device::load(&file, &a.model, a.device)?;
    let tok = GgufTokenizer::from_gguf(&file)
        .with_context(|| format!("building the tokenizer of {}", a.model.display()))?;
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let opts = PerplexityOptions {
        n_ctx: a.ctx,
        max_chunks: a.chunks,
        eval: a.cache.eval(),
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
    let res = pool
        .install(|| {
            perplexity(
                model.as_ref(),
                &tok,
                &text,
                &opts,
                &mut |done, total, ppl| {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    bar.set_message(format!("PPL {ppl:.4}"));
                },
            )
        })
        .with_context(|| {
            format!(
                "perplexity of {} on {}",
                a.model.display(),
                a.file.display()
            )
        })?;
    bar.finish_and_clear();

    if json_out {
        let mut doc = json!({
            "model": a.model.display().to_string(),
            "file": a.file.display().to_string(),
            "n_ctx": res.n_ctx,
            "ppl": res.ppl,
            "ppl_stderr": res.ppl_stderr,
            "n_tokens_scored": res.n_tokens_scored,
            "n_tokens_evaluated": res.n_tokens_evaluated,
            "n_tokens_text": res.n_tokens_text,
            "seconds": res.seconds,
            "tokens_per_second": res.tokens_per_second,
            "threads": pool.current_num_threads(),
            "device": model.device_name(),
            "chunks": res.chunks,
            "by_position": res.by_position.iter().map(|b| json!({
                "start": b.start,
                "end": if b.end == usize::MAX { serde_json::Value::Null } else { json!(b.end) },
                "n_tokens": b.n_tokens,
                "ppl": b.ppl,
            })).collect::<Vec<_>>(),
        });
        if let Some(m) = doc.as_object_mut() {
            for (k, v) in a.cache.json_fields() {
                m.insert(k.into(), v);
            }
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for (i, nll) in res.chunks.iter().enumerate() {
            println!("chunk {:>4}: PPL {:.4}", i + 1, nll.exp());
        }
        for b in &res.by_position {
            let end = if b.end == usize::MAX {
                "∞".to_string()
            } else {
                b.end.to_string()
            };
            println!(
                "positions [{}, {end}): {} tokens, PPL {:.4}",
                b.start, b.n_tokens, b.ppl
            );
        }
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5}  ({} tokens scored, {} chunks of {}, {:.1} tokens/s on {})",
            res.ppl,
            res.ppl_stderr,
            res.n_tokens_scored,
            res.chunks.len(),
            res.n_ctx,
            res.tokens_per_second,
            model.device_name()
        );
    }
    Ok(())
}
