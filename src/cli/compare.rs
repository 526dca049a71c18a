//! `longquant compare --base BASE.gguf --model Q.gguf --file TEXT [--ctx N] [--chunks K]
//! [--threads T] [--save-base FILE] [--base-results FILE] [--json]`.
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use longquant::eval::kld::{
    check_same_vocab, compare_models, compare_with_saved, tokenize, vocab_fingerprint,
    BaseResultsReader, BaseResultsWriter, CompareOptions, KldReport, KldSnapshot, DEFAULT_TOP_K,
};
use longquant::formats::gguf::GgufFile;
use longquant::tokenizer::GgufTokenizer;
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The reference (unquantized) GGUF.
    #[arg(long, required_unless_present = "base_results")]
    base: Option<PathBuf>,
    /// The GGUF to judge.
    #[arg(long)]
    model: PathBuf,
    /// UTF-8 text to score (not needed with --base-results, which stores the tokens).
    #[arg(long, short = 'f', required_unless_present = "base_results")]
    file: Option<PathBuf>,
    /// Tokens per chunk (llama-perplexity's -c; default 512, or the context of --base-results).
    #[arg(long)]
    ctx: Option<usize>,
    /// Evaluate at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Worker threads (default: all cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// Also save the base's compact per-position results (top-k log-probs) to FILE.
    #[arg(long, conflicts_with = "base_results")]
    save_base: Option<PathBuf>,
    /// Top log-probs per position kept by --save-base.
    #[arg(long, default_value_t = DEFAULT_TOP_K)]
    top_k: usize,
    /// Use base results saved by --save-base instead of running --base (KLD then approximate, bounds reported).
    #[arg(long, conflicts_with = "base")]
    base_results: Option<PathBuf>,
    /// Where the model's forward pass runs: cpu, cuda or cuda:N (needs `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = super::device::parse)]
    device: super::device::Device,
    /// Where the base's forward pass runs (default: --device). `--base-device cpu --device
    /// cuda` with the same file for both measures the GPU against the CPU.
    #[arg(long, value_parser = super::device::parse)]
    base_device: Option<super::device::Device>,
}

/// Sets the size of rayon's global pool: the forward passes run on plain threads (see
/// `eval::kld`), whose parallel kernels use the global pool.
pub fn init_threads(threads: Option<usize>) {
    if let Some(t) = threads {
        // Fails only if the pool was already built, in which case its size stands.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(t.max(1))
            .build_global();
    }
}

pub fn run(a: Args, json_out: bool) -> anyhow::Result<()> {
    init_threads(a.threads);
    let opts = CompareOptions {
        n_ctx: a.ctx.unwrap_or(512),
        max_chunks: a.chunks,
        eval: a.cache.eval(),
    };
    let qfile =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let model = super::device::load(&qfile, &a.model, a.device)?;

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
    let mut progress = |done: usize, total: usize, s: &KldSnapshot| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!(
            "PPL(Q) {:.4}  KLD {:.5}  same top {:.2}%",
            s.ppl_model, s.kld, s.same_top_p
        ));
    };

    let (report, base_name) = if let Some(saved) = &a.base_results {
        let mut reader = BaseResultsReader::open(saved)
            .with_context(|| format!("reading base results {}", saved.display()))?;
        let mut o = opts;
        o.n_ctx = reader.header.n_ctx as usize;
        if let Some(c) = a.ctx.filter(|&c| c != o.n_ctx) {
            bail!(
                "--ctx {} differs from the context {} of {}",
                c,
                o.n_ctx,
                saved.display()
            );
        }
        let r = compare_with_saved(
            &mut reader,
            model.as_ref(),
            vocab_fingerprint(qfile.metadata()),
            &o,
            &mut progress,
        )
        .with_context(|| format!("comparing {} with {}", a.model.display(), saved.display()))?;
        (r, saved.display().to_string())
    } else {
        let (Some(base_path), Some(text_path)) = (&a.base, &a.file) else {
            bail!("--base and --file are required without --base-results");
        };
        let bfile = GgufFile::open(base_path)
            .with_context(|| format!("opening {}", base_path.display()))?;
        check_same_vocab(&bfile, &qfile)
            .with_context(|| format!("{} vs {}", base_path.display(), a.model.display()))?;
        let base = super::device::load(&bfile, base_path, a.base_device.unwrap_or(a.device))?;
        let tok = GgufTokenizer::from_gguf(&bfile)
            .with_context(|| format!("building the tokenizer of {}", base_path.display()))?;
        let text = std::fs::read_to_string(text_path)
            .with_context(|| format!("reading {}", text_path.display()))?;
        let (tokens, bos) = tokenize(&tok, &text)?;
        let mut writer = match &a.save_base {
            Some(p) => Some(
                BaseResultsWriter::create(
                    p,
                    a.top_k,
                    vocab_fingerprint(bfile.metadata()).unwrap_or(0),
                )
                .with_context(|| format!("creating {}", p.display()))?,
            ),
            None => None,
        };
        let r = compare_models(
            base.as_ref(),
            model.as_ref(),
            &tokens,
            bos,
            &opts,
            writer.as_mut(),
            &mut progress,
        )
        .with_context(|| {
            format!(
                "comparing {} with {} on {}",
                a.model.display(),
                base_path.display(),
                text_path.display()
            )
        })?;
        (r, base_path.display().to_string())
    };
    bar.finish_and_clear();

    if json_out {
        let mut doc = report.to_json();
        if let Value::Object(m) = &mut doc {
            m.insert("model".into(), json!(a.model.display().to_string()));
            m.insert("base".into(), json!(base_name));
            for (k, v) in a.cache.json_fields() {
                m.insert(k.into(), v);
            }
            m.insert("threads".into(), json!(rayon::current_num_threads()));
            m.insert("device".into(), json!(a.device.to_string()));
            m.insert(
                "base_device".into(),
                json!(a.base_device.unwrap_or(a.device).to_string()),
            );
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

fn print_report(r: &KldReport) {
    println!(
        "{} chunks of {} tokens, {} positions scored, {:.1} s",
        r.n_chunks, r.n_ctx, r.n_tokens_scored, r.seconds
    );
    println!("====== Perplexity statistics ======");
    println!(
        "Mean PPL(Q)                   : {:10.6} ± {:10.6}",
        r.ppl_model.value, r.ppl_model.stderr
    );
    println!(
        "Mean PPL(base)                : {:10.6} ± {:10.6}",
        r.ppl_base.value, r.ppl_base.stderr
    );
    println!(
        "Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%",
        100.0 * r.ln_ppl_correlation
    );
    println!(
        "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}",
        r.ln_ppl_ratio.value, r.ln_ppl_ratio.stderr
    );
    println!(
        "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
        r.ppl_ratio.value, r.ppl_ratio.stderr
    );
    println!(
        "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}",
        r.ppl_diff.value, r.ppl_diff.stderr
    );
    println!();
    println!("====== KL divergence statistics ======");
    println!("Mean    KLD: {:10.6} ± {:10.6}", r.kld.value, r.kld.stderr);
    let p = &r.kld_percentiles;
    for (name, v) in [
        ("Maximum KLD", p.max),
        ("99.9%   KLD", p.p99_9),
        ("99.0%   KLD", p.p99),
        ("95.0%   KLD", p.p95),
        ("90.0%   KLD", p.p90),
        ("Median  KLD", p.median),
        ("10.0%   KLD", p.p10),
        (" 5.0%   KLD", p.p5),
        (" 1.0%   KLD", p.p1),
        (" 0.1%   KLD", p.p0_1),
        ("Minimum KLD", p.min),
    ] {
        println!("{name}: {v:10.6}");
    }
    if let Some(a) = &r.approx {
        println!(
            "(against saved top-{} base results: mean tail mass {:.4}; the tail's KLD is sampled, adding ± {:.6}; bounds [{:.6}, {:.6}])",
            a.top_k, a.tail_mass_mean, a.kld_sampling_stderr, a.kld_lower_mean, a.kld_upper_mean
        );
    }
    println!();
    println!("====== Token probability statistics ======");
    println!(
        "Mean    Δp: {:6.3} ± {:5.3} %",
        r.mean_dp.value, r.mean_dp.stderr
    );
    let d = &r.dp_percentiles;
    for (name, v) in [
        ("Maximum Δp", d.max),
        ("99.9%   Δp", d.p99_9),
        ("99.0%   Δp", d.p99),
        ("95.0%   Δp", d.p95),
        ("90.0%   Δp", d.p90),
        ("Median  Δp", d.median),
        ("10.0%   Δp", d.p10),
        (" 5.0%   Δp", d.p5),
        (" 1.0%   Δp", d.p1),
        (" 0.1%   Δp", d.p0_1),
        ("Minimum Δp", d.min),
    ] {
        println!("{name}: {v:6.3}%");
    }
    println!(
        "RMS Δp    : {:6.3} ± {:5.3} %",
        r.rms_dp.value, r.rms_dp.stderr
    );
    println!(
        "Same top p: {:6.3} ± {:5.3} %",
        r.same_top_p.value, r.same_top_p.stderr
    );
    println!();
    println!("====== By position ======");
    for b in &r.by_position {
        let end = if b.end == usize::MAX {
            "∞".to_string()
        } else {
            b.end.to_string()
        };
        println!(
            "positions [{}, {end}): {:>8} tokens  KLD {:.6} ± {:.6}  same top p {:6.3}%  PPL(Q) {:.4}  PPL(base) {:.4}",
            b.start, b.n_tokens, b.kld.value, b.kld.stderr, b.same_top_p, b.ppl_model, b.ppl_base
        );
    }
}
