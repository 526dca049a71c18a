//! `longquant inspect PATH [--tensors] [--json]`.
use anyhow::Context;
use serde_json::Value as Json;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a .safetensors file, a model.safetensors.index.json, or a Hugging Face folder.
    path: PathBuf,
    /// List every tensor: name, shape, type, bytes and offset (GGUF) or shard (safetensors).
    #[arg(long)]
    tensors: bool,
    /// For a GGUF: set what carries long-context ability (context length, rope theta and scaling,
    /// head counts, pre-tokenizer, special ids) beside this Hugging Face folder's config and
    /// tokenizer files; any mismatch is an error.
    #[arg(long, value_name = "HF_DIR")]
    check_against: Option<PathBuf>,
}

pub fn run(a: Args, json: bool) -> anyhow::Result<()> {
    use longquant::inspect::InspectError;
    let doc = longquant::inspect::inspect(&a.path, a.tensors)
        // Keep the formats error itself in the chain (not its transparent wrapper) so the exit
        // code can tell invalid input from I/O failures and refusals.
        .map_err(|e| match e {
            InspectError::Format(f) => anyhow::Error::new(f),
            other => anyhow::Error::new(other),
        })
        .with_context(|| format!("inspecting {}", a.path.display()))?;
    let Some(hf) = a.check_against.as_ref() else {
        if json {
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            print!("{}", render(&doc));
        }
        return Ok(());
    };
    let facts = longquant::convert::pipeline::check_against(&a.path, hf)
        .map_err(|e| match e {
            longquant::convert::ConvertError::Format(f) => anyhow::Error::new(f),
            other => anyhow::Error::new(other),
        })
        .with_context(|| format!("checking {} against {}", a.path.display(), hf.display()))?;
    let bad: Vec<&str> = facts
        .iter()
        .filter(|f| f.checked() && f.gguf != f.source)
        .map(|f| f.what)
        .collect();
    if json {
        let mut doc = doc;
        if let Some(o) = doc.as_object_mut() {
            o.insert(
                "check_against".into(),
                serde_json::json!({
                    "dir": hf,
                    "ok": bad.is_empty(),
                    "facts": facts.iter().map(|f| serde_json::json!({
                        "what": f.what, "gguf": f.gguf, "hf": f.source,
                        "agree": !f.checked() || f.gguf == f.source})).collect::<Vec<_>>(),
                }),
            );
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render(&doc));
        println!();
        println!(
            "{:<28} {:<28} {:<28}",
            "long-context fact", "in the GGUF", "in HF_DIR"
        );
        for f in &facts {
            let mark = if f.checked() && f.gguf != f.source {
                "  <- MISMATCH"
            } else {
                ""
            };
            println!("{:<28} {:<28} {:<28}{mark}", f.what, f.gguf, f.source);
        }
    }
    if !bad.is_empty() {
        anyhow::bail!(
            "{} disagrees with {}: {}",
            a.path.display(),
            hf.display(),
            bad.join(", ")
        );
    }
    Ok(())
}

/// Human rendering of the summary. Strings that came from the file are printed escaped (`{:?}`
/// style via JSON) so control characters cannot reach the terminal.
fn render(doc: &Json) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let get = |k: &str| doc.get(k).cloned().unwrap_or(Json::Null);
    let _ = writeln!(
        s,
        "path:          {}",
        escape(get("path").as_str().unwrap_or(""))
    );
    match doc["format"].as_str() {
        Some("gguf") => {
            let splits = doc["splits"].as_array().map_or(1, Vec::len);
            let _ = writeln!(
                s,
                "format:        GGUF v{} (alignment {}), {}{}",
                get("gguf_version"),
                get("alignment"),
                human_bytes(get("file_size").as_u64().unwrap_or(0)),
                if splits > 1 {
                    format!(", split set of {splits} files (read as one model)")
                } else {
                    String::new()
                }
            );
        }
        _ => {
            let shards = doc["shards"].as_array().map_or(0, Vec::len);
            let _ = writeln!(
                s,
                "format:        safetensors, {} shard(s), {}",
                shards,
                human_bytes(get("file_size").as_u64().unwrap_or(0))
            );
        }
    }
    let _ = writeln!(
        s,
        "architecture:  {}",
        get("architecture")
            .as_str()
            .map_or("(unknown)".to_owned(), escape)
    );
    if let Some(h) = doc["hparams"].as_object() {
        for (k, v) in h {
            let _ = writeln!(s, "  {k:<38} {}", short(v));
        }
    }
    if let Some(md) = doc.get("metadata").and_then(Json::as_object) {
        let _ = writeln!(s, "metadata:      {} keys", md.len());
        for (k, v) in md {
            let _ = writeln!(s, "  {:<40} {}", escape(k), short(v));
        }
    }
    let params = get("parameters").as_u64().unwrap_or(0);
    let _ = writeln!(
        s,
        "tensors:       {} ({:.1}M parameters, {} of data, {:.3} bits/weight)",
        get("tensor_count"),
        params as f64 / 1e6,
        human_bytes(get("tensor_bytes").as_u64().unwrap_or(0)),
        get("bits_per_weight").as_f64().unwrap_or(0.0)
    );
    if let Some(types) = doc["types"].as_object() {
        for (name, v) in types {
            let _ = writeln!(
                s,
                "  {:<8} {:>6} tensors  {:>12}",
                name,
                v["count"],
                human_bytes(v["bytes"].as_u64().unwrap_or(0))
            );
        }
    }
    if let Some(list) = doc.get("tensors").and_then(Json::as_array) {
        let _ = writeln!(
            s,
            "{:<48} {:<24} {:<6} {:>12} {:>14}",
            "name", "shape", "type", "bytes", "offset/shard"
        );
        for t in list {
            let place = t
                .get("offset")
                .or_else(|| t.get("shard"))
                .cloned()
                .unwrap_or(Json::Null);
            let _ = writeln!(
                s,
                "{:<48} {:<24} {:<6} {:>12} {:>14}",
                escape(t["name"].as_str().unwrap_or("")),
                t["shape"].to_string(),
                t["type"].as_str().unwrap_or(""),
                t["bytes"],
                place
            );
        }
    }
    s
}

/// Escape a string from a file for the terminal (JSON escaping, without the quotes).
fn escape(x: &str) -> String {
    let q = Json::String(x.to_owned()).to_string();
    q[1..q.len() - 1].to_owned()
}

/// One-line value: long strings are cut so a chat template does not flood the screen.
fn short(v: &Json) -> String {
    let text = v.to_string();
    const MAX: usize = 100;
    if text.chars().count() > MAX {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut}… ({} chars)", text.chars().count())
    } else {
        text
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}
