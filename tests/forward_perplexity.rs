//! Perplexity with llama.cpp's method against `llama-perplexity` on SmolLM2 and the licence text
//! (oracles in tests/data/llamacpp/smollm2_ppl*_ctx512_c24.json, made by
//! scripts/llamacpp/perplexity.sh, which records the exact command and the model's sha256), plus
//! the input errors.
//!
//! ctx 512, 24 chunks (6,120 scored tokens): F32 (the fixture dequantized by our converter), Q8_0
//! and Q4_K_M made by our converter from that F32 file, and the Q4_1 fixture as shipped.
//!
//! On a host with llama.cpp's arithmetic (x86-64 with AVX-512 VNNI, where the oracles were
//! recorded; `common::oracle_arithmetic_host`) the forward pass computes every intermediate bit
//! for bit as llama.cpp's default CPU path does (RoPE's fused multiply-add, the tiled attention's
//! softmax, tinyBLAS's Q8_0 sums, the tiled and repacked K-quant GEMMs' float steps; checked op by
//! op with scripts/llamacpp/dump_tensors.py), so the PPLs must be equal to the 4 decimals
//! llama.cpp prints (relative 1e-5; measured 7e-7 to 2e-6). Elsewhere both sides take other
//! kernels; activations are rounded to 8 bits before every product, so one-ulp differences flip
//! roundings and the PPLs differ by noise of about ±0.1 % at 24 chunks (measured before the match:
//! Q8_0 +0.047 %, Q4_K_M +0.12 %, and over all 65 chunks of the text −0.10 % and −0.05 %), hence
//! 0.1 % (F32) and 0.2 % (quantized) there.
//!
//! Needs `fixtures/fetch.sh`; without the fixtures the tests skip with a note, or fail when CI=true.
use longquant::eval::perplexity::{
    perplexity, perplexity_tokens, PerplexityError, PerplexityOptions,
};
use longquant::formats::gguf::GgufFile;
use longquant::model::{EvalOptions, Model};
use longquant::tokenizer::GgufTokenizer;
use std::path::Path;

mod common;
use common::fixture;

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

/// Our PPL for `model` at ctx 512 over 24 chunks against the oracle `name` (checking, when the
/// oracle recorded one, that `file` is the file llama.cpp ran).
fn check_24(model: &Model<'_>, tok: &GgufTokenizer, text: &str, name: &str, file: Option<&Path>) {
    let doc = common::oracle_json(name);
    let tol = common::ppl_tolerance(name);
    if let Some(f) = file {
        let sha = doc["model_sha256"].as_str().unwrap();
        assert_eq!(
            common::sha256_file(f),
            sha,
            "{name}: not the file llama.cpp ran"
        );
    }
    let want = doc["ppl"].as_f64().unwrap();
    let got = run(model, tok, text, 512, 24);
    let rel = (got - want).abs() / want;
    eprintln!(
        "{name} ({} oracles): ours {got:.4}, llama.cpp {want:.4}, relative {rel:.2e}, bound {tol:.2e}",
        common::oracle_class().dir
    );
    assert!(
        rel <= tol,
        "{name}: PPL {got:.4} vs llama.cpp {want:.4}: relative {rel:.2e} > {tol:.2e}"
    );
}

#[test]
fn smollm2_converted_f32_q8_0_q4_k_m_ppl_ctx512_match_llama_perplexity() {
    let Some(text) = fixture("text/licenses.txt") else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(files) = common::smol_converted(dir.path()) else {
        return;
    };
    for (path, tag) in files.iter().zip(["f32", "q8_0", "q4_k_m"]) {
        let file = GgufFile::open(path).unwrap();
        let tok = GgufTokenizer::from_gguf(&file).unwrap();
        let model = Model::load(&file).unwrap();
        let name = format!("smollm2_ppl_{tag}_ctx512_c24.json");
        check_24(&model, &tok, &text, &name, Some(path));
    }
}

#[test]
fn smollm2_q4_1_ppl_ctx512_matches_llama_perplexity() {
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
    check_24(
        &model,
        &tok,
        &text,
        "smollm2_ppl_ctx512_c24.json",
        Some(&gguf),
    );
}

/// The issue-14 file types as our converter makes them from the F32 file
/// (`quantize --type T smol-f32.gguf`; tensor for tensor the bytes llama-quantize writes):
/// - Q2_K: Q3_K on the 1536-wide `ffn_down` rows, Q4_0 (the fallback of the 576-wide rows, which
///   no 256-block type divides) elsewhere;
/// - Q3_K_M: Q4_K / Q5_K on the `ffn_down` and `attn_output` rows, Q4_0, Q5_0 and Q5_1 fallbacks;
/// - IQ4_NL: IQ4_NL (32-blocks fit every row), Q5_K on the first `ffn_down` layers;
/// - IQ4_XS: IQ4_XS on the 1536-wide `ffn_down` rows, its IQ4_NL fallback on the 576-wide rows, Q5_K
///   on the first `ffn_down` layers;
///
/// and Q8_0 for the tied embeddings, so every new block type runs through the forward pass (row
/// dots of the quants crate against Q8_K / Q8_0). Oracles:
/// `tests/data/llamacpp/avx2/smollm2_ppl_{q2_k,q3_k_m,iq4_nl,iq4_xs}_ctx512_c4.json`
/// (scripts/llamacpp/perplexity.sh 512 4 2 smol-TAG.gguf TAG with the build-avx2 binaries), ctx
/// 512, 4 chunks. Neither class is bit-exact for these types (llama.cpp runs them through its SIMD
/// and repacked Q4_0 / Q4_K / IQ4_NL GEMMs, we through other float steps), so every host reads
/// the `avx2/` oracle and is held to 1.5 × llama.cpp's own variation on that file (flash
/// attention off, repacking off; `avx2/variation.json`, `common::ppl_tolerance_inexact`), except
/// IQ4_XS (see the comment at its tolerance).
#[test]
fn smollm2_low_bit_ppl_ctx512_matches_llama_perplexity() {
    use longquant::convert::mix::FileType;
    use longquant::convert::quantize::{quantize, QuantizeOptions};
    let (Some(src), Some(text)) = (
        fixture("SmolLM2-135M-Instruct.Q4_1.gguf"),
        fixture("text/licenses.txt"),
    ) else {
        return;
    };
    let text = std::fs::read_to_string(text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f32 = dir.path().join("smol-f32.gguf");
    let mut o = QuantizeOptions::new(FileType::F32);
    o.allow_requantize = true;
    quantize(&src, &f32, &o, &mut |_| {}).unwrap();
    // IQ4_XS keeps the tolerance it had before llama.cpp's variation on its file was measured
    // (1.5 × 3.8e-3 = 5.7e-3, FA off): measured on the 2-core AVX2 host against llama.cpp's
    // 21.1885, with the scalar IQ4 dots 21.2790 (+0.43 %), with the first AVX2 ones (same integer
    // sums, other f32 accumulation order) 21.3306 (+0.67 %), and with session 6's AVX2 Q2_K/Q3_K
    // and IQ4 kernels 21.2463 (+0.27 %, inside the variation rule). Rounding alone moves this
    // 1,020-token PPL by a few tenths of a percent, and an AVX-512 host runs other float steps for
    // the file's Q5_K layers, so the rule's 5.7e-3 is not a safe bound on every host; 1.5 % is
    // about twice the worst measured, and layout or level-table errors are caught exactly by the
    // golden and gguf-py tests of the quants crate. The other types are held to the variation rule.
    let mut failures = Vec::new();
    for (ty, tag, fixed_tol) in [
        (FileType::Q2_K, "q2_k", None),
        (FileType::Q3_K_M, "q3_k_m", None),
        (FileType::IQ4_NL, "iq4_nl", None),
        (FileType::IQ4_XS, "iq4_xs", Some(1.5e-2)),
    ] {
        let path = dir.path().join(format!("smol-{tag}.gguf"));
        quantize(&f32, &path, &QuantizeOptions::new(ty), &mut |_| {}).unwrap();
        let name = format!("smollm2_ppl_{tag}_ctx512_c4.json");
        let doc = common::read_json(&common::root().join("tests/data/llamacpp/avx2").join(&name));
        assert_eq!(
            common::sha256_file(&path),
            doc["model_sha256"].as_str().unwrap(),
            "{tag}: not the file llama.cpp ran"
        );
        let variation_tol = common::ppl_tolerance_inexact(&name);
        let tol = fixed_tol.unwrap_or(variation_tol);
        let file = GgufFile::open(&path).unwrap();
        let tok = GgufTokenizer::from_gguf(&file).unwrap();
        let model = Model::load(&file).unwrap();
        let want = doc["ppl"].as_f64().unwrap();
        let got = run(&model, &tok, &text, 512, 4);
        let rel = (got - want).abs() / want;
        eprintln!(
            "{tag}: ours {got:.4}, llama.cpp {want:.4}, relative {rel:.2e}, bound {tol:.2e} \
             (1.5 x llama.cpp variation {variation_tol:.2e})"
        );
        if rel > tol {
            failures.push(format!(
                "{tag}: PPL {got:.4} vs llama.cpp {want:.4}: relative {rel:.2e} > {tol:.2e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
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
