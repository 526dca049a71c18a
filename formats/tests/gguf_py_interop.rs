//! Differential tests against gguf-py (llama.cpp's reference Python reader): a file we write is read
//! by `GGUFReader` with identical metadata, tensor infos and bytes; and the SmolLM2 fixture is seen
//! identically by both readers. Needs `python3` with the `gguf` package: missing → failure in CI
//! (CI=true), skip with a note elsewhere.

mod common;
#[path = "common/sample.rs"]
mod sample;

use std::path::Path;
use std::process::Command;

use longquant_formats::gguf::{write_gguf, GgufFile, TensorSpec, Value, WriteOptions};
use serde_json::{json, Value as Json};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/dump_gguf.py");

fn gguf_py_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import gguf"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if common::in_ci() {
            panic!("python3 with the gguf package is required in CI (pip install gguf)");
        }
        eprintln!("note: python3 -c 'import gguf' failed; skipping gguf-py interop test");
    }
    ok
}

fn dump(path: &Path, data: bool) -> Json {
    let mut cmd = Command::new("python3");
    cmd.arg(SCRIPT).arg(path);
    if data {
        cmd.arg("--data");
    }
    let out = cmd.output().expect("run python3");
    assert!(
        out.status.success(),
        "gguf-py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from dump_gguf.py")
}

/// Our value as gguf-py reports it: its type list (array, then the first element's types; an
/// empty array reports only ARRAY) and its contents (nested arrays flattened).
fn as_gguf_py(v: &Value) -> (Vec<u32>, Json) {
    fn flat(v: &Value, out: &mut Vec<Json>) {
        match v {
            Value::Array(a) => a.values.iter().for_each(|e| flat(e, out)),
            other => out.push(scalar(other)),
        }
    }
    fn scalar(v: &Value) -> Json {
        match v {
            Value::U8(x) => json!(x),
            Value::I8(x) => json!(x),
            Value::U16(x) => json!(x),
            Value::I16(x) => json!(x),
            Value::U32(x) => json!(x),
            Value::I32(x) => json!(x),
            Value::F32(x) => json!(f64::from(*x)),
            Value::Bool(x) => json!(x),
            Value::String(s) => json!(s),
            Value::U64(x) => json!(x),
            Value::I64(x) => json!(x),
            Value::F64(x) => json!(x),
            Value::Array(_) => unreachable!("arrays are flattened by the caller"),
        }
    }
    fn types(v: &Value, out: &mut Vec<u32>) {
        out.push(v.value_type().id());
        if let Value::Array(a) = v {
            if let Some(first) = a.values.first() {
                types(first, out);
            }
        }
    }
    let mut t = Vec::new();
    types(v, &mut t);
    let value = match v {
        Value::Array(_) => {
            let mut items = Vec::new();
            flat(v, &mut items);
            Json::Array(items)
        }
        other => scalar(other),
    };
    (t, value)
}

fn compare(ours: &GgufFile, py: &Json, with_data: bool) {
    assert_eq!(py["version"], json!(ours.version()));
    assert_eq!(py["alignment"], json!(ours.alignment()));
    assert_eq!(py["data_offset"], json!(ours.data_offset()));
    let kv = py["kv"].as_array().unwrap();
    assert_eq!(kv.len(), ours.metadata().len());
    for (p, (key, value)) in kv.iter().zip(ours.metadata().iter()) {
        assert_eq!(p["key"], json!(key));
        let (types, contents) = as_gguf_py(value);
        assert_eq!(p["types"], json!(types), "types of {key}");
        assert_eq!(p["value"], contents, "value of {key}");
    }
    let tensors = py["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), ours.tensors().len());
    for (p, t) in tensors.iter().zip(ours.tensors()) {
        assert_eq!(p["name"], json!(t.name));
        assert_eq!(p["shape"], json!(t.dims), "{}", t.name);
        assert_eq!(p["type"], json!(t.ggml_type.id()), "{}", t.name);
        assert_eq!(p["offset"], json!(t.offset), "{}", t.name);
        assert_eq!(p["n_bytes"], json!(t.n_bytes), "{}", t.name);
        if with_data {
            let hex: String = ours
                .tensor_data(t)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(p["data"], json!(hex), "{}", t.name);
        }
    }
}

#[test]
fn gguf_py_reads_what_we_write() {
    if !gguf_py_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.gguf");
    let tensors = sample::sample_tensors();
    let refs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    write_gguf(
        &path,
        &sample::sample_metadata(),
        &refs,
        WriteOptions::default(),
    )
    .unwrap();
    let ours = GgufFile::open(&path).unwrap();
    assert_eq!(ours.metadata(), &sample::sample_metadata());
    let py = dump(&path, true);
    compare(&ours, &py, true);
    // And the data gguf-py saw is the data we meant to write.
    for ((spec, data), p) in tensors.iter().zip(py["tensors"].as_array().unwrap()) {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(p["data"], json!(hex), "{}", spec.name);
    }
}

#[test]
fn smollm2_seen_identically_by_gguf_py() {
    let Some(path) = common::smollm2_path() else {
        return;
    };
    if !gguf_py_available() {
        return;
    }
    let ours = GgufFile::open(&path).unwrap();
    let py = dump(&path, false);
    assert_eq!(py["kv"].as_array().unwrap().len(), 33);
    assert_eq!(py["tensors"].as_array().unwrap().len(), 272);
    compare(&ours, &py, false);
}
