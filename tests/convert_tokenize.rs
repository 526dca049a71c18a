//! llama.cpp's tokenization equals HF `tokenizers`' on the tokenizer.json the synthetic ProLong
//! checkpoint ships (the real Llama-3 tokenizer with its BOS post-processor): ids for ASCII,
//! digits, code, CJK, emoji and chat-template text. llama.cpp's ids were produced by
//! scripts/llamacpp/load_check.py (llama-cpp-python 0.3.36 on our converted GGUF, add_bos and
//! special tokens on) into tests/data/convert/llama3_tokenize_llamacpp.json.

#[path = "../examples/synth_checkpoint.rs"]
#[allow(dead_code)]
mod synth;

use std::path::PathBuf;

#[test]
fn tokenizers_crate_matches_llama_cpp() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("fixtures/cache/llama3-tokenizer");
    if !src.join("tokenizer.json").is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} missing; run fixtures/fetch.sh",
            src.display()
        );
        eprintln!("note: {} missing; skipped", src.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    synth::write_tokenizer(&src, dir.path()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/data/convert/llama3_tokenize_llamacpp.json"))
            .unwrap(),
    )
    .unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    let mut kinds = (false, false, false);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
        kinds.0 |= text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        kinds.1 |= text.chars().any(|c| c as u32 >= 0x1f300);
        kinds.2 |= text.contains("<|eot_id|>");
    }
    assert_eq!(
        kinds,
        (true, true, true),
        "CJK, emoji and chat-template cases present"
    );
}
