//! The GGUF tokenizer against llama.cpp's own outputs:
//! - llama.cpp's test vectors for the Llama-3 tokenizer (`ggml-vocab-llama-bpe.gguf` with `.inp` /
//!   `.out`, read the way `tests/test-tokenizer-0.cpp` reads them: add_special = false,
//!   parse_special = false);
//! - the SmolLM2 fixture on a few texts, against `llama-tokenize` output committed in
//!   `tests/data/llamacpp/smollm2_tokens.json` (see `scripts/llamacpp/README.md`).
//!
//! Needs `fixtures/fetch.sh`; without the fixtures the tests skip with a note, or fail when CI=true.
mod common;
use common::fixture;
use longquant::formats::gguf::GgufFile;
use longquant::tokenizer::GgufTokenizer;
use std::path::Path;

/// Splits the `.inp` file on llama.cpp's separator exactly as test-tokenizer-0.cpp does.
fn read_vectors(inp: &str, out: &str) -> Vec<(String, Vec<u32>)> {
    let sep = "\n__ggml_vocab_test__\n";
    let mut texts = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(n) => {
                texts.push(inp[pos..pos + n].to_string());
                pos += n + sep.len();
            }
            None => {
                texts.push(inp[pos..].to_string());
                break;
            }
        }
    }
    let outs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        texts.len(),
        outs.len(),
        "input and output files disagree on the number of tests"
    );
    texts.into_iter().zip(outs).collect()
}

#[test]
fn llama_bpe_vectors_match_llamacpp() {
    let Some(gguf) = fixture("llama-vocab/ggml-vocab-llama-bpe.gguf") else {
        return;
    };
    let inp = std::fs::read_to_string(gguf.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(gguf.with_extension("gguf.out")).unwrap();
    let file = GgufFile::open(&gguf).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    assert!(tok.add_bos(), "Llama-3 asks for BOS");
    let vectors = read_vectors(&inp, &out);
    assert!(vectors.len() > 30, "only {} vectors", vectors.len());
    let mut failures = Vec::new();
    for (text, want) in &vectors {
        let got = tok.encode(text, false, false).unwrap();
        if &got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} vectors differ:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

#[test]
fn bos_follows_add_bos_token() {
    let Some(gguf) = fixture("llama-vocab/ggml-vocab-llama-bpe.gguf") else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let ids = tok.encode("Hello world", true, false).unwrap();
    assert_eq!(ids[0], 128000);
    assert_eq!(
        &ids[1..],
        &tok.encode("Hello world", false, false).unwrap()[..]
    );
    // Control tokens: whole only when parsing special tokens.
    assert_eq!(tok.encode("<|eot_id|>", false, true).unwrap(), vec![128009]);
    assert!(tok.encode("<|eot_id|>", false, false).unwrap().len() > 1);
}

#[test]
fn smollm2_matches_llama_tokenize() {
    let Some(gguf) = fixture("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    assert!(!tok.add_bos(), "SmolLM2 does not ask for BOS");
    let data =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/llamacpp/smollm2_tokens.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 5);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, true, false).unwrap();
        assert_eq!(got, want, "text {text:?}");
        // Byte-level BPE round-trips.
        assert_eq!(tok.decode(&got).unwrap(), text);
    }
}
