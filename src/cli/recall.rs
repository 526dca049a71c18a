//! `longquant recall MODEL.gguf [--base BASE.gguf] [--lengths ...] [--depths ...] [--samples N]
//! [--seed S] [--threads T] [--json] [--plot recall.svg]`: JSON key-value retrieval accuracy per
//! prompt length × key depth, with greedy generation on the embedded forward pass.
use anyhow::Context;
use longquant::formats::gguf::GgufFile;
use longquant::recall::heatmap::render_svg;
use longquant::recall::{run_recall, RecallSettings, Subject};
use longquant::tokenizer::GgufTokenizer;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model.
    model: PathBuf,
    /// A base (e.g. unquantized) GGUF answering the same prompts, for accuracy and agreement.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Prompt lengths in tokens (template and BOS included).
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384,65536")]
    lengths: Vec<usize>,
    /// Depths of the queried key, 0 = first pair, 1 = last.
    #[arg(long, value_delimiter = ',', default_value = "0,0.25,0.5,0.75,1")]
    depths: Vec<f64>,
    /// Prompts per length × depth cell.
    #[arg(long, default_value_t = 5)]
    samples: usize,
    /// Seed of the UUIDs (the run is deterministic given the seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write an SVG heat map here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Most tokens generated per answer.
    #[arg(long, default_value_t = 100)]
    max_new_tokens: usize,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// Where the model runs: cpu, cuda or cuda:N (a build with the `cuda` feature).
    #[arg(long, default_value = "cpu", value_parser = super::device::parse)]
    device: super::device::Device,
    /// Where the base runs (default: --device).
    #[arg(long, value_parser = super::device::parse)]
    base_device: Option<super::device::Device>,
}

pub fn run(a: Args, json_out: bool) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        // Ignore the error if a pool already exists (only possible when embedded).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
    for d in &a.depths {
        if !(0.0..=1.0).contains(d) {
            anyhow::bail!("depth {d} is not in [0, 1]");
        }
    }
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let model = super::device::load(&file, &a.model, a.device)?;
    let tok = GgufTokenizer::from_gguf(&file).context("building the tokenizer")?;
    let subject = Subject::new(model.as_ref(), &tok, file.metadata());

    let base_file = match &a.base {
        Some(p) => Some(GgufFile::open(p).with_context(|| format!("opening {}", p.display()))?),
        None => None,
    };
    let base_model = match (&base_file, &a.base) {
        (Some(f), Some(p)) => Some(super::device::load(
            f,
            p,
            a.base_device.unwrap_or(a.device),
        )?),
        _ => None,
    };
    let base_tok = match &base_file {
        Some(f) => Some(GgufTokenizer::from_gguf(f).context("building the base tokenizer")?),
        None => None,
    };
    let base_subject = match (&base_model, &base_tok, &base_file) {
        (Some(m), Some(t), Some(f)) => Some(Subject::new(m.as_ref(), t, f.metadata())),
        _ => None,
    };

    let settings = RecallSettings {
        lengths: a.lengths.clone(),
        depths: a.depths.clone(),
        samples: a.samples,
        seed: a.seed,
        max_new_tokens: a.max_new_tokens,
        eval: a.cache.eval(),
    };
    let total = (a.lengths.len() * a.depths.len() * a.samples) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} prompts {elapsed}/{eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let report = run_recall(
        &subject,
        base_subject.as_ref(),
        &settings,
        &mut |done, _| bar.set_position(done as u64),
    )
    .context("recall run")?;
    bar.finish_and_clear();

    if let Some(p) = &a.plot {
        let title = format!(
            "JSON KV recall: {}",
            a.model
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        std::fs::write(p, render_svg(&report.cells, &title))
            .with_context(|| format!("writing {}", p.display()))?;
    }

    if json_out {
        let mut doc = json!({
            "model": a.model.display().to_string(),
            "base": a.base.as_ref().map(|p| p.display().to_string()),
            "seed": a.seed,
            "device": model.device_name(),
            "cells": report.cells.iter().map(|c| json!({
                "length": c.length,
                "depth": c.depth,
                "accuracy": c.accuracy,
                "samples": c.samples,
                "base_accuracy": c.base_accuracy,
                "agreement": c.agreement,
            })).collect::<Vec<_>>(),
            "accuracy": report.accuracy(),
            "base_accuracy": report.base_accuracy(),
            "prompt_tokens_per_second": report.prompt_tokens_per_second(),
            "decode_tokens_per_second": report.decode_tokens_per_second(),
            "prompt_tokens": report.prompt_tokens,
            "decode_tokens": report.decode_tokens,
        });
        if let Some(m) = doc.as_object_mut() {
            for (k, v) in a.cache.json_fields() {
                m.insert(k.into(), v);
            }
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "{:>8} {:>6} {:>9} {:>8}{}",
            "length",
            "depth",
            "accuracy",
            "samples",
            if a.base.is_some() {
                "      base  agreement"
            } else {
                ""
            }
        );
        for c in &report.cells {
            let extra = match (c.base_accuracy, c.agreement) {
                (Some(b), Some(g)) => format!(" {:>9.3} {:>10.3}", b, g),
                _ => String::new(),
            };
            println!(
                "{:>8} {:>6} {:>9.3} {:>8}{extra}",
                c.length, c.depth, c.accuracy, c.samples
            );
        }
        println!("accuracy {:.3}", report.accuracy());
        if let Some(b) = report.base_accuracy() {
            println!("base accuracy {b:.3}");
        }
        println!(
            "prompt {:.1} tokens/s, decode {:.1} tokens/s",
            report.prompt_tokens_per_second(),
            report.decode_tokens_per_second()
        );
    }
    Ok(())
}
