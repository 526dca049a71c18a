//! `longquant export-hf IN.gguf OUT_DIR [--dtype f32|bf16|f16] [--shard-size 5GB] [--force] [--json]`.
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use longquant::export::{self, ExportDtype, ExportError, ExportOptions};
use serde_json::json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF to export (llama architecture, any type longquant can dequantize).
    input: PathBuf,
    /// Folder to write; must not exist or be empty unless --force.
    out_dir: PathBuf,
    /// Element type of the safetensors. f32 (default) holds the dequantized values exactly;
    /// bf16 and f16 round to nearest even (f16 refuses values it cannot hold).
    #[arg(long, default_value = "f32", value_parser = clap::builder::ValueParser::new(parse_dtype))]
    dtype: ExportDtype,
    /// Largest safetensors file; larger models are sharded with model.safetensors.index.json.
    /// Decimal units as Hugging Face counts them (5GB = 5·10⁹ bytes); KiB/MiB/GiB are binary.
    #[arg(long, default_value = "5GB")]
    shard_size: String,
    /// Write into a non-empty folder, replacing an earlier export's files.
    #[arg(long)]
    force: bool,
}

fn parse_dtype(s: &str) -> Result<ExportDtype, String> {
    s.parse()
}

pub fn run(a: Args, json: bool) -> anyhow::Result<()> {
    let shard_size = export::parse_size(&a.shard_size)?;
    let opts = ExportOptions {
        dtype: a.dtype,
        shard_size,
        force: a.force,
    };
    let total = longquant::formats::gguf::GgufFile::open(&a.input)
        .map(|f| export::planned_bytes(&f, a.dtype))
        .unwrap_or(0);
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let inc = |n: u64| bar.inc(n);
    let result = export::export_hf(&a.input, &a.out_dir, &opts, &inc);
    bar.finish_and_clear();
    let summary = match result {
        Ok(s) => s,
        // Refusals keep their own type so the exit code says "refused for safety".
        Err(ExportError::Refused(r)) => return Err(anyhow::Error::new(r)),
        Err(e) => {
            return Err(anyhow::Error::new(e)).with_context(|| {
                format!(
                    "exporting {} to {} (nothing was written)",
                    a.input.display(),
                    a.out_dir.display()
                )
            })
        }
    };
    if json {
        let doc = json!({
            "out_dir": summary.out_dir,
            "dtype": summary.dtype.torch_name(),
            "shards": summary.shards,
            "tensor_bytes": summary.tensor_bytes,
            "tied_embeddings": summary.tied_embeddings,
            "seconds": summary.seconds,
            "files": summary.files.iter().map(|(n, b)| json!({"name": n, "bytes": b})).collect::<Vec<_>>(),
            "tensors": summary.tensors.iter().map(|t| json!({
                "name": t.name,
                "gguf_name": t.gguf_name,
                "source_type": t.source_type.to_string(),
                "shape": t.shape,
                "file": t.file,
                "bytes": t.bytes,
            })).collect::<Vec<_>>(),
            "config": summary.config,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        println!(
            "wrote {} ({} tensors, {} as {}, {} file{}{}) in {:.1} s",
            summary.out_dir.display(),
            summary.tensors.len(),
            human_bytes(summary.tensor_bytes),
            summary.dtype.torch_name(),
            summary.shards,
            if summary.shards == 1 { "" } else { "s" },
            if summary.tied_embeddings {
                ", lm_head tied to embeddings"
            } else {
                ""
            },
            summary.seconds
        );
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
