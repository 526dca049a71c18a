//! `longquant bench MODEL.gguf [-p 512] [-n 128] [-d 0,1024,8192] [-r 5] [--threads T]
//! [--device D] [-ctk T -ctv T] [--json]`: prompt and generation speed at context depths, the
//! tests of `llama-bench -p -n -d -r` (see `longquant::bench`).
use anyhow::Context;
use longquant::bench::{self, BenchSpec};
use longquant::formats::gguf::GgufFile;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model.
    model: PathBuf,
    /// Prompt lengths to time, comma-separated (`llama-bench -p`; 0 = none).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths to time, comma-separated (`llama-bench -n`; 0 = none).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Context depths: tokens in the cache before each test (`llama-bench -d`).
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    depths: Vec<usize>,
    /// Timed repetitions per test (`llama-bench -r`).
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: usize,
    /// Skip the untimed warm-up run of each test.
    #[arg(long)]
    no_warmup: bool,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// Where the forward pass runs: cpu, cuda or cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = super::device::parse)]
    device: super::device::Device,
}

pub fn run(a: Args, json_out: bool) -> anyhow::Result<()> {
    super::compare::init_threads(a.threads);
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let model = super::device::load(&file, &a.model, a.device)?;
    let spec = BenchSpec {
        n_prompt: a.n_prompt.clone(),
        n_gen: a.n_gen.clone(),
        depths: a.depths.clone(),
        repetitions: a.repetitions.max(1),
        warmup: !a.no_warmup,
        opts: a.cache.eval(),
    };
    let threads = rayon::current_num_threads();
    if !json_out {
        println!(
            "{} on {}, {threads} threads, {} repetitions",
            a.model.display(),
            model.device_name(),
            spec.repetitions
        );
        println!("{:<18} {:>14}", "test", "t/s");
    }
    let rows = bench::run(model.as_ref(), &spec, &mut |row| {
        if !json_out {
            let (m, sd) = row.rate_mean_sd();
            println!("{:<18} {:>8.2} ± {:.2}", row.name(), m, sd);
        }
    })
    .with_context(|| format!("benchmarking {}", a.model.display()))?;
    if json_out {
        let tests: Vec<_> = rows
            .iter()
            .map(|r| {
                let (m, sd) = r.rate_mean_sd();
                json!({
                    "test": r.name(),
                    "kind": r.kind.tag(),
                    "n_tokens": r.n_tokens,
                    "depth": r.depth,
                    "seconds": r.seconds,
                    "tokens_per_second": m,
                    "tokens_per_second_sd": sd,
                })
            })
            .collect();
        let mut doc = json!({
            "model": a.model.display().to_string(),
            "device": model.device_name(),
            "threads": threads,
            "repetitions": spec.repetitions,
            "tests": tests,
        });
        for (k, v) in a.cache.json_fields() {
            doc[k] = v;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
