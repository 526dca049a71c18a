//! Perplexity with llama.cpp's method against `llama-perplexity` on the SmolLM2 fixture and the
//! licence text (oracles in tests/data/llamacpp/smollm2_ppl*_ctx512_*.json, made by
//! scripts/llamacpp/perplexity.sh, which records the exact command), plus the input errors.
//!
//! - F32 (fixture dequantized; llama.cpp on the F32 GGUF llama-quantize makes from it), ctx 512,
//!   one chunk: within 0.1 %.
//! - Q4_1 as shipped, ctx 512, one chunk: within 2 %. Quantized activations make single logits
//!   chaotic in their last bits (see tests/forward_logits.rs); over one 255-token chunk that
//!   noise does not average out to 0.1 %.
//!
//! Needs `fixtures/fetch.sh`; without the fixtures the tests skip with a note, or fail when CI=true.
use longquant::eval::perplexity::{
    perplexity, perplexity_tokens, PerplexityError, PerplexityOptions,
};
use longquant::formats::gguf::GgufFile;
use longquant::model::{DequantizedTensors, EvalOptions, Model};
use longquant::tokenizer::GgufTokenizer;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cache")
        .join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
    {
        panic!("fixture {} missing (run fixtures/fetch.sh)", p.display());
    }
    eprintln!(
        "SKIP: fixture {} missing; run fixtures/fetch.sh",
        p.display()
    );
    None
}

fn oracle(name: &str) -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/llamacpp")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn opts(n_ctx: usize, chunks: usize) -> PerplexityOptions {
    PerplexityOptions {
        n_ctx,
        max_chunks: Some(chunks),
        eval: EvalOptions::default(),
    }
}

fn run(model: &Model<'_>, tok: &GgufTokenizer, text: &str, n_ctx: usize, chunks: usize) -> f64 {
    let r = perplexity(model, tok, text, &opts(n_ctx, chunks), &mut |_, _, _| {}).unwrap();
    assert_eq!(r.n_tokens_scored, chunks * (n_ctx - n_ctx / 2 - 1));
    assert_eq!(r.chunks.len(), chunks);
    assert!(r.ppl.is_finite() && r.ppl > 1.0);
    assert!(r.ppl_stderr > 0.0);
    assert_eq!(r.by_position.len(), 1);
    eprintln!(
        "ctx {n_ctx}, {chunks} chunk(s): PPL {:.4} ± {:.4}, {:.1} tokens/s",
        r.ppl, r.ppl_stderr, r.tokens_per_second
    );
    r.ppl
}

#[test]
fn smollm2_f32_ppl_ctx512_matches_llama_perplexity() {
    let (Some(gguf), Some(text)) = (
        fixture("SmolLM2-135M-Instruct.Q4_1.gguf"),
        fixture("text/licenses.txt"),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let file = GgufFile::open(&gguf).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let f32s = DequantizedTensors::from_gguf(&file).unwrap();
    let model = Model::load_dequantized(&file, &f32s).unwrap();
    let want = oracle("smollm2_ppl_f32_ctx512_c1.json")["ppl"]
        .as_f64()
        .unwrap();
    let got = run(&model, &tok, &text, 512, 1);
    let rel = (got - want).abs() / want;
    assert!(
        rel <= 1e-3,
        "PPL {got:.4} vs llama.cpp {want:.4}: relative {rel:.2e} > 1e-3"
    );
}

#[test]
fn smollm2_q4_1_ppl_ctx512_close_to_llama_perplexity() {
    let (Some(gguf), Some(text)) = (
        fixture("SmolLM2-135M-Instruct.Q4_1.gguf"),
        fixture("text/licenses.txt"),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let file = GgufFile::open(&gguf).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let model = Model::load(&file).unwrap();
    // Chunks are independent, so llama.cpp's running PPL after chunk 1 is chunk 1's PPL.
    let want = oracle("smollm2_ppl_ctx512_c4.json")["running_ppl"][0]
        .as_f64()
        .unwrap();
    let got = run(&model, &tok, &text, 512, 1);
    let rel = (got - want).abs() / want;
    assert!(
        rel <= 2e-2,
        "PPL {got:.4} vs llama.cpp {want:.4}: relative {rel:.2e} > 2e-2"
    );
}

#[test]
fn bad_inputs_are_clear_errors() {
    let Some(gguf) = fixture("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let model = Model::load(&file).unwrap();
    let none = &mut |_: usize, _: usize, _: f64| {};
    assert!(matches!(
        perplexity(&model, &tok, "", &opts(512, 1), none),
        Err(PerplexityError::EmptyText)
    ));
    assert!(matches!(
        perplexity(&model, &tok, "Just a few words.", &opts(512, 1), none),
        Err(PerplexityError::TooShort {
            n_ctx: 512,
            needed: 1024,
            ..
        })
    ));
    let many = vec![100u32; 20_000];
    assert!(matches!(
        perplexity_tokens(&model, &many, None, &opts(16384, 1), none),
        Err(PerplexityError::ContextTooLong {
            requested: 16384,
            max: 8192
        })
    ));
    assert!(matches!(
        perplexity_tokens(&model, &many, None, &opts(2, 1), none),
        Err(PerplexityError::ContextTooSmall(2))
    ));
    // The forward pass itself refuses out-of-vocabulary ids, empty input and over-long sequences.
    let mut sink = |_: usize, _: &[f32]| {};
    let ev = EvalOptions::default();
    assert!(matches!(
        model.eval(&[], 0, &ev, &mut sink),
        Err(longquant::model::ModelError::EmptyInput)
    ));
    assert!(matches!(
        model.eval(&[1, 49152], 0, &ev, &mut sink),
        Err(longquant::model::ModelError::TokenOutOfRange {
            id: 49152,
            pos: 1,
            ..
        })
    ));
    assert!(matches!(
        model.eval(&vec![1u32; 8193], 0, &ev, &mut sink),
        Err(longquant::model::ModelError::ContextTooLong {
            requested: 8193,
            max: 8192
        })
    ));
}

/// Long-sequence check that fits CI's budget: one 2048-token chunk of the Q4_1 fixture (1023
/// scored tokens) against llama-perplexity at the same context (tests/data/llamacpp/
/// smollm2_ppl_ctx2048_c1.json), within the long-context tolerance of 0.5 % (measured:
/// 0.23 %). The 8192-token run is in scripts/llamacpp/README.md (too slow for CI on 2 cores).
#[test]
fn smollm2_q4_1_ppl_ctx2048_close_to_llama_perplexity() {
    let (Some(gguf), Some(text)) = (
        fixture("SmolLM2-135M-Instruct.Q4_1.gguf"),
        fixture("text/licenses.txt"),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let file = GgufFile::open(&gguf).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let model = Model::load(&file).unwrap();
    let want = oracle("smollm2_ppl_ctx2048_c1.json")["ppl"]
        .as_f64()
        .unwrap();
    let got = run(&model, &tok, &text, 2048, 1);
    assert!(got.is_finite());
    let rel = (got - want).abs() / want;
    assert!(
        rel <= 5e-3,
        "PPL {got:.4} vs llama.cpp {want:.4}: relative {rel:.2e} > 5e-3"
    );
}
