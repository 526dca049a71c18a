//! Summaries of model files for `longquant inspect`: what a GGUF, a safetensors file or a Hugging
//! Face folder holds, as one JSON-serialisable value plus a human rendering.
use crate::formats::gguf::{GgufFile, Value};
use crate::formats::safetensors::SafetensorsModel;
use serde_json::{json, Map, Value as Json};
use std::collections::BTreeMap;
use std::path::Path;

/// Arrays longer than this are summarised (type, length, first elements) rather than printed whole.
const ARRAY_PREVIEW: usize = 8;

/// What kind of file `inspect` looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// A GGUF file.
    Gguf,
    /// A single `.safetensors` file, a shard index, or a Hugging Face folder.
    Safetensors,
}

/// Errors from inspecting a path.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The underlying file could not be parsed or read.
    #[error(transparent)]
    Format(#[from] crate::formats::Error),
    /// `config.json` in an HF folder could not be read or is not JSON.
    #[error("{path}: {msg}")]
    Config {
        /// The config file.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// Decide from the path (extension, folder contents) which reader applies.
pub fn detect(path: &Path) -> SourceKind {
    if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return SourceKind::Gguf;
    }
    if path.is_file() {
        // Sniff the magic so a GGUF without the extension is still recognised.
        let mut magic = [0u8; 4];
        if let Ok(mut f) = std::fs::File::open(path) {
            use std::io::Read;
            if f.read_exact(&mut magic).is_ok() && &magic == b"GGUF" {
                return SourceKind::Gguf;
            }
        }
    }
    SourceKind::Safetensors
}

/// Inspect `path` and return the summary document (`--json` prints it as is).
pub fn inspect(path: &Path, with_tensors: bool) -> Result<Json, InspectError> {
    match detect(path) {
        SourceKind::Gguf => inspect_gguf(&GgufFile::open(path)?, with_tensors),
        SourceKind::Safetensors => inspect_safetensors(path, with_tensors),
    }
}

/// Summary of an opened GGUF file.
pub fn inspect_gguf(file: &GgufFile, with_tensors: bool) -> Result<Json, InspectError> {
    let md = file.metadata();
    let arch = md
        .get("general.architecture")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut hparams = Map::new();
    if let Some(arch) = &arch {
        for (key, value) in md.iter() {
            if let Some(short) = key
                .strip_prefix(arch.as_str())
                .and_then(|k| k.strip_prefix('.'))
            {
                hparams.insert(short.to_owned(), value_json(value, ARRAY_PREVIEW));
            }
        }
    }
    if let Some(Value::Array(tokens)) = md.get("tokenizer.ggml.tokens") {
        hparams
            .entry("vocab_size")
            .or_insert(json!(tokens.values.len()));
    }
    let metadata: Map<String, Json> = md
        .iter()
        .map(|(k, v)| (k.to_owned(), value_json(v, ARRAY_PREVIEW)))
        .collect();

    let mut by_type: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut n_params: u64 = 0;
    let mut tensor_bytes: u64 = 0;
    let mut tensors = Vec::new();
    for t in file.tensors() {
        let e = by_type.entry(t.ggml_type.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
        n_params += t.n_elements();
        tensor_bytes += t.n_bytes;
        if with_tensors {
            let (split, offset) = file
                .tensor_location(t)
                .unwrap_or((0, file.data_offset() + t.offset));
            let mut e = json!({
                "name": t.name,
                "shape": t.dims,
                "type": t.ggml_type.name(),
                "bytes": t.n_bytes,
                "offset": offset,
            });
            if file.paths().len() > 1 {
                e["split"] = json!(split);
            }
            tensors.push(e);
        }
    }
    let mut doc = json!({
        "path": file.path().display().to_string(),
        "format": "gguf",
        "gguf_version": file.version(),
        "alignment": file.alignment(),
        "architecture": arch,
        "hparams": hparams,
        "metadata_count": md.len(),
        "metadata": metadata,
        "tensor_count": file.tensors().len(),
        "types": types_json(&by_type),
        "parameters": n_params,
        "tensor_bytes": tensor_bytes,
        "file_size": file.file_size(),
        "bits_per_weight": bpw(tensor_bytes, n_params),
    });
    let paths = file.paths();
    if paths.len() > 1 {
        doc["splits"] = json!(paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>());
    }
    if with_tensors {
        doc["tensors"] = Json::Array(tensors);
    }
    Ok(doc)
}

/// Summary of a safetensors file, shard index or HF folder (with config.json when present).
pub fn inspect_safetensors(path: &Path, with_tensors: bool) -> Result<Json, InspectError> {
    let model = SafetensorsModel::open(path)?;
    let mut by_type: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut n_params: u64 = 0;
    let mut tensor_bytes: u64 = 0;
    let mut tensors = Vec::new();
    for t in model.tensors() {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes();
        n_params += t.n_elements();
        tensor_bytes += t.n_bytes();
        if with_tensors {
            tensors.push(json!({
                "name": t.name,
                "shape": t.shape,
                "type": t.dtype.name(),
                "bytes": t.n_bytes(),
                "shard": t.shard,
            }));
        }
    }
    let (architecture, hparams) = match config_dir(path) {
        Some(dir) if dir.join("config.json").is_file() => read_config(&dir.join("config.json"))?,
        _ => (None, Map::new()),
    };
    let file_size: u64 = model
        .shard_paths()
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    let mut doc = json!({
        "path": path.display().to_string(),
        "format": "safetensors",
        "shards": model.shard_paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "architecture": architecture,
        "hparams": hparams,
        "tensor_count": model.tensors().len(),
        "types": types_json(&by_type),
        "parameters": n_params,
        "tensor_bytes": tensor_bytes,
        "file_size": file_size,
        "bits_per_weight": bpw(tensor_bytes, n_params),
    });
    if with_tensors {
        doc["tensors"] = Json::Array(tensors);
    }
    Ok(doc)
}

fn config_dir(path: &Path) -> Option<std::path::PathBuf> {
    if path.is_dir() {
        Some(path.to_path_buf())
    } else {
        path.parent().map(Path::to_path_buf)
    }
}

/// The architecture and the hyperparameters that matter for conversion, from config.json.
fn read_config(path: &Path) -> Result<(Option<String>, Map<String, Json>), InspectError> {
    let err = |msg: String| InspectError::Config {
        path: path.display().to_string(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let cfg: Json = serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let arch = cfg
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(Json::as_str)
        .map(str::to_owned);
    let mut h = Map::new();
    for key in [
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "rms_norm_eps",
        "rope_theta",
        "rope_scaling",
        "rope_parameters",
        "tie_word_embeddings",
        "torch_dtype",
        "dtype",
    ] {
        if let Some(v) = cfg.get(key) {
            h.insert(key.to_owned(), v.clone());
        }
    }
    Ok((arch, h))
}

fn bpw(bytes: u64, params: u64) -> Json {
    if params == 0 {
        Json::Null
    } else {
        json!(bytes as f64 * 8.0 / params as f64)
    }
}

fn types_json(by_type: &BTreeMap<&str, (u64, u64)>) -> Json {
    Json::Object(
        by_type
            .iter()
            .map(|(name, (count, bytes))| {
                (name.to_string(), json!({"count": count, "bytes": bytes}))
            })
            .collect(),
    )
}

/// Metadata value as JSON; arrays longer than `preview` become `{type, len, head}`.
pub fn value_json(v: &Value, preview: usize) -> Json {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(a) => {
            if a.values.len() <= preview {
                Json::Array(a.values.iter().map(|x| value_json(x, preview)).collect())
            } else {
                json!({
                    "array_of": format!("{:?}", a.elem_type),
                    "len": a.values.len(),
                    "head": a.values.iter().take(3).map(|x| value_json(x, preview)).collect::<Vec<_>>(),
                })
            }
        }
    }
}
