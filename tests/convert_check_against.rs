//! `inspect --check-against HF_DIR` (library side): the long-context facts of a converted GGUF
//! agree with its checkpoint, and a changed rope theta or context length in config.json is caught.

use longquant::convert::pipeline::{check_against, convert, ConvertOptions, Progress, TypeChoice};
use longquant::convert::FileType;
use std::path::PathBuf;

#[test]
fn facts_agree_then_mismatches_are_found() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-natural");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.Q8_0.gguf");
    let opts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q8_0),
        ..ConvertOptions::default()
    };
    convert(&src, &out, &opts, &mut |_p: Progress<'_>| {}).unwrap();
    let facts = check_against(&out, &src).unwrap();
    assert!(facts.len() >= 10);
    assert!(
        facts.iter().all(|f| !f.checked() || f.gguf == f.source),
        "{facts:?}"
    );

    // A folder whose config.json says another rope theta and context length (only the files the
    // check reads are copied).
    let hf = dir.path().join("edited");
    std::fs::create_dir(&hf).unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "special_tokens_map.json",
    ] {
        if src.join(f).is_file() {
            std::fs::copy(src.join(f), hf.join(f)).unwrap();
        }
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = serde_json::json!(131072);
    if cfg.get("rope_theta").is_some() {
        cfg["rope_theta"] = serde_json::json!(500000.0);
    } else {
        cfg["rope_parameters"]["rope_theta"] = serde_json::json!(500000.0);
    }
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    let facts = check_against(&out, &hf).unwrap();
    let bad: Vec<&str> = facts
        .iter()
        .filter(|f| f.checked() && f.gguf != f.source)
        .map(|f| f.what)
        .collect();
    assert_eq!(bad, vec!["context length", "rope theta"]);
}
