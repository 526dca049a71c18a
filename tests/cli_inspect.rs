//! `longquant inspect` end to end: the real SmolLM2 fixture (issue "Foundation", done-when), the
//! committed tiny-natural HF folder, `--tensors`, and exit codes for bad input.
//! The SmolLM2 test needs `bash fixtures/fetch.sh`; without it, it fails under CI=true and is
//! skipped with a note otherwise.
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn longquant(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_longquant"))
        .args(args)
        .output()
        .expect("running the longquant binary")
}

fn json_of(out: &Output) -> Json {
    assert!(
        out.status.success(),
        "longquant failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON document")
}

fn smol() -> Option<PathBuf> {
    let p = root().join("fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{} is missing: run `bash fixtures/fetch.sh` (required under CI=true)",
            p.display()
        );
    }
    eprintln!(
        "note: skipping, {} is missing (run `bash fixtures/fetch.sh`)",
        p.display()
    );
    None
}

#[test]
fn smollm2_summary_matches_the_fixture() {
    let Some(p) = smol() else { return };
    let doc = json_of(&longquant(&["inspect", "--json", p.to_str().unwrap()]));
    assert_eq!(doc["format"], "gguf");
    assert_eq!(doc["gguf_version"], 3);
    assert_eq!(doc["architecture"], "llama");
    assert_eq!(doc["hparams"]["block_count"], 30);
    assert_eq!(doc["hparams"]["embedding_length"], 576);
    assert_eq!(doc["hparams"]["vocab_size"], 49152);
    assert_eq!(doc["metadata_count"], 33);
    assert_eq!(doc["tensor_count"], 272);
    assert_eq!(doc["types"]["q4_1"]["count"], 210);
    assert_eq!(doc["types"]["f32"]["count"], 61);
    assert_eq!(doc["types"]["q8_0"]["count"], 1);
    let params = doc["parameters"].as_u64().unwrap();
    assert!(
        (134_000_000..136_000_000).contains(&params),
        "parameters {params}"
    );
    let bpw = doc["bits_per_weight"].as_f64().unwrap();
    assert!((5.0..6.5).contains(&bpw), "bits per weight {bpw}");
    assert_eq!(
        doc["file_size"].as_u64(),
        Some(std::fs::metadata(&p).unwrap().len())
    );
    // Long arrays are summarised, not dumped.
    assert_eq!(doc["metadata"]["tokenizer.ggml.tokens"]["len"], 49152);
    assert!(doc.get("tensors").is_none());
}

#[test]
fn smollm2_tensor_listing_is_complete_and_consistent() {
    let Some(p) = smol() else { return };
    let doc = json_of(&longquant(&[
        "inspect",
        "--json",
        "--tensors",
        p.to_str().unwrap(),
    ]));
    let tensors = doc["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 272);
    let total: u64 = tensors.iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(Some(total), doc["tensor_bytes"].as_u64());
    let embd = tensors
        .iter()
        .find(|t| t["name"] == "token_embd.weight")
        .unwrap();
    assert_eq!(embd["shape"], serde_json::json!([576, 49152]));
    assert_eq!(embd["type"], "q8_0");
    // Offsets are absolute, inside the file, and 32-byte aligned.
    let size = doc["file_size"].as_u64().unwrap();
    for t in tensors {
        let off = t["offset"].as_u64().unwrap();
        assert_eq!(off % 32, 0, "{}", t["name"]);
        assert!(off + t["bytes"].as_u64().unwrap() <= size);
    }
    // The human rendering names the same facts.
    let out = longquant(&["inspect", "--tensors", p.to_str().unwrap()]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("architecture:  llama"), "{text}");
    assert!(text.contains("blk.29.ffn_down.weight"));
}

#[test]
fn hf_folder_summary_reads_config_and_tensors() {
    let dir = root().join("fixtures/tiny-natural");
    let doc = json_of(&longquant(&["inspect", "--json", dir.to_str().unwrap()]));
    assert_eq!(doc["format"], "safetensors");
    assert_eq!(doc["architecture"], "LlamaForCausalLM");
    assert_eq!(doc["hparams"]["num_hidden_layers"], 16);
    assert_eq!(doc["tensor_count"], 146);
    assert_eq!(doc["types"]["BF16"]["count"], 146);
    assert_eq!(doc["parameters"], 25_174_272);
    assert_eq!(doc["bits_per_weight"], 16.0);
}

#[test]
fn bad_input_gets_exit_code_2_and_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("broken.gguf");
    // Valid magic and version, then a tensor count that cannot fit in the bytes that follow.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend(3u32.to_le_bytes());
    bytes.extend(u64::MAX.to_le_bytes());
    bytes.extend(0u64.to_le_bytes());
    std::fs::write(&bad, bytes).unwrap();
    let out = longquant(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.gguf"), "{err}");

    let missing = dir.path().join("nope.gguf");
    let out = longquant(&["inspect", missing.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.gguf"));
}

#[test]
fn pickle_checkpoints_are_refused_with_exit_code_4() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pytorch_model.bin"),
        b"\x80\x04not really a pickle",
    )
    .unwrap();
    let out = longquant(&["inspect", dir.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "refusals for safety have their own exit code"
    );
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("pickle"), "{err}");
}
