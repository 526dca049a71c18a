//! `longquant logits MODEL.gguf (--prompt TEXT | --tokens 1,2,3) [--top K] [--json]`: the forward
//! pass's logits, for comparing with other implementations.
use anyhow::{bail, Context};
use longquant::formats::gguf::GgufFile;
use longquant::tokenizer::GgufTokenizer;
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model.
    model: PathBuf,
    /// Text to tokenize (BOS per the model; control tokens such as <|im_start|> are parsed).
    #[arg(long, conflicts_with = "tokens")]
    prompt: Option<String>,
    /// Comma-separated token ids.
    #[arg(long, value_delimiter = ',')]
    tokens: Option<Vec<u32>>,
    /// How many top logits to show per position.
    #[arg(long, default_value_t = 5)]
    top: usize,
    #[command(flatten)]
    cache: super::cache::CacheArgs,
    /// Where the forward pass runs: cpu, cuda or cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", value_parser = super::device::parse)]
    device: super::device::Device,
}

fn top_k(logits: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(k - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(k);
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    idx.into_iter().map(|i| (i, logits[i])).collect()
}

pub fn run(a: Args, json_out: bool) -> anyhow::Result<()> {
    let file =
        GgufFile::open(&a.model).with_context(|| format!("opening {}", a.model.display()))?;
    let model = super::device::load(&file, &a.model, a.device)?;
    let tok = GgufTokenizer::from_gguf(&file).context("building the tokenizer")?;
    let ids = match (&a.prompt, &a.tokens) {
        (Some(p), None) => tok.encode(p, true, true)?,
        (None, Some(t)) => t.clone(),
        _ => bail!("give exactly one of --prompt or --tokens"),
    };
    let opts = a.cache.eval();
    let n = ids.len();
    let mut rows = Vec::with_capacity(n);
    let mut last = Vec::new();
    model.eval(&ids, 0, &opts, &mut |pos, logits| {
        rows.push(top_k(logits, a.top));
        if pos + 1 == n {
            last = logits.to_vec();
        }
    })?;
    if json_out {
        let doc = json!({
            "tokens": ids,
            "positions": rows.iter().map(|r| json!({
                "top": r.iter().map(|&(i, v)| json!({"id": i, "logit": v})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "last_logits": last,
        });
        println!("{}", serde_json::to_string(&doc)?);
    } else {
        for (pos, (id, r)) in ids.iter().zip(&rows).enumerate() {
            let piece = tok.decode(&[*id]).unwrap_or_default();
            let tops: Vec<String> = r
                .iter()
                .map(|&(i, v)| {
                    format!(
                        "{i} {:?} {v:.3}",
                        tok.decode(&[i as u32]).unwrap_or_default()
                    )
                })
                .collect();
            println!("{pos:>5} {id:>7} {piece:?} -> {}", tops.join(" | "));
        }
    }
    Ok(())
}
