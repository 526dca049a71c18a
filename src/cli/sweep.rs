//! `longquant sweep SRC --file TEXT [--types ...] [--ctx N] [--chunks K] [--threads T]
//! [--imatrix FILE] [--max-size SIZE | --max-kld X | --max-memory SIZE] [--cache-types T,...]
//! [--plot sweep.svg] [--json]`.
use anyhow::{bail, Context};
use longquant::convert::mix::FileType;
use longquant::eval::kld::DEFAULT_TOP_K;
use longquant::eval::plot::sweep_svg;
use longquant::eval::sweep::{default_compare, sweep, Bound, SweepOptions, DEFAULT_TYPES};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A Hugging Face folder, or an F32/F16/BF16 GGUF.
    src: PathBuf,
    /// UTF-8 text to score.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Comma-separated levels.
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Importance matrix for the quantizer.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Recommend the lowest-KLD level of at most this size (e.g. 5GiB, 700MB).
    #[arg(long, conflicts_with = "max_kld")]
    max_size: Option<String>,
    /// Recommend the smallest level whose mean KLD is at most this.
    #[arg(long)]
    max_kld: Option<f64>,
    /// Recommend the lowest-KLD (level, cache type) whose weights plus K/V cache at --ctx fit in
    /// SIZE (e.g. 12GiB).
    #[arg(long, conflicts_with_all = ["max_kld", "max_size"])]
    max_memory: Option<String>,
    /// Evaluate every level with each of these K/V cache types (llama.cpp's names; `K/V` for a
    /// mixed pair, e.g. q8_0/f16): the table becomes weights × cache. The reference keeps
    /// --cache-type-k/-v (default f16).
    #[arg(long, value_delimiter = ',')]
    cache_types: Vec<String>,
    /// Write an SVG plot of size against KLD.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Top log-probs (and tail samples) kept per position for the reference.
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    top_k: usize,
    /// Folder for the temporary files (default: the system's temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Where the reference and the levels are evaluated: cpu, cuda or cuda:N (needs a build
    /// with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = super::device::parse)]
    device: super::device::Device,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
}

pub fn run(a: Args, json_out: bool) -> anyhow::Result<()> {
    super::compare::init_threads(a.threads);
    let types = if a.types.is_empty() {
        DEFAULT_TYPES.to_vec()
    } else {
        a.types
            .iter()
            .map(|t| {
                FileType::from_name(t.trim())
                    .filter(|f| f.is_quantized())
                    .with_context(|| format!("unknown or unquantized level `{}`", t.escape_debug()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let caches = a
        .cache_types
        .iter()
        .map(|c| {
            let c = c.trim();
            let (k, v) = c.split_once('/').unwrap_or((c, c));
            let p = |t: &str| {
                t.parse::<longquant::model::KvType>()
                    .map_err(|e| anyhow::anyhow!("--cache-types {c}: {e}"))
            };
            Ok((p(k)?, p(v)?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bound = match (&a.max_size, a.max_kld) {
        _ if a.max_memory.is_some() => {
            let s = a.max_memory.as_deref().unwrap_or_default();
            Some(Bound::MaxMemory(
                longquant::export::parse_size(s).with_context(|| format!("--max-memory {s}"))?,
            ))
        }
        (Some(s), _) => Some(Bound::MaxSize(
            longquant::export::parse_size(s).with_context(|| format!("--max-size {s}"))?,
        )),
        (None, Some(k)) if k.is_finite() && k >= 0.0 => Some(Bound::MaxKld(k)),
        (None, Some(k)) => bail!("--max-kld must be a non-negative number, not {k}"),
        (None, None) => None,
    };
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let opts = SweepOptions {
        types,
        compare: longquant::eval::kld::CompareOptions {
            eval: a.cache.eval(),
            ..default_compare(a.ctx, a.chunks)
        },
        threads: a.threads,
        imatrix: a.imatrix.clone(),
        bound,
        top_k: a.top_k,
        work_dir: a.work_dir.clone(),
        device: a.device,
        caches,
    };
    let quiet = json_out;
    let report = sweep(&a.src, &text, &opts, &mut |msg| {
        if !quiet {
            eprintln!("{msg}");
        }
    })
    .with_context(|| format!("sweeping {}", a.src.display()))?;

    if let Some(p) = &a.plot {
        let title = format!(
            "{}: size vs KL divergence ({} ctx, {} chunks)",
            a.src.file_name().unwrap_or_default().to_string_lossy(),
            a.ctx,
            report.rows.first().map_or(0, |r| r.report.n_chunks)
        );
        std::fs::write(p, sweep_svg(&report, &title))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if json_out {
        let mut doc = report.to_json();
        if let Some(m) = doc.as_object_mut() {
            for (k, v) in a.cache.json_fields() {
                m.insert(k.into(), v);
            }
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
