//! `eval::kld` on the real SmolLM2 fixture (Q4_1 as shipped; its in-memory F32 dequantization is
//! the "unquantized" base):
//!
//! - the base against itself: mean KLD 0, no negative KLD beyond float noise, same top p 100 %,
//!   Δp 0, equal perplexities;
//! - Q4_1 (activations quantized per row, llama.cpp's numerics) against the F32 base: KLD > 0,
//!   never negative; the same comparison against the saved compact base results agrees with the
//!   exact lockstep KLD (relative error measured and bounded; same top p, Δp and PPL(base) exact)
//!   and its rigorous bounds bracket the exact value;
//! - models with different vocabularies are refused; hostile base-results files give typed errors.
//!
//! Needs `fixtures/fetch.sh`; without the fixture the test skips with a note, or fails when CI=true.
mod common;
use common::fixture;
use longquant::eval::kld::{
    check_same_vocab, compare_models, compare_with_saved, tokenize, vocab_fingerprint,
    BaseFileError, BaseResultsReader, BaseResultsWriter, CompareOptions, KldError,
};
use longquant::formats::gguf::GgufFile;
use longquant::model::{DequantizedTensors, EvalOptions, Model};
use longquant::tokenizer::GgufTokenizer;
use std::path::Path;

const CTX: usize = 256;
const CHUNKS: usize = 2;

fn opts() -> CompareOptions {
    CompareOptions {
        n_ctx: CTX,
        max_chunks: Some(CHUNKS),
        eval: EvalOptions::default(),
    }
}

#[test]
fn smollm2_self_zero_and_q4_1_against_f32_exact_and_saved() {
    let (Some(gguf), Some(text)) = (
        fixture("SmolLM2-135M-Instruct.Q4_1.gguf"),
        fixture("text/licenses.txt"),
    ) else {
        return;
    };
    let file = GgufFile::open(&gguf).unwrap();
    let f32s = DequantizedTensors::from_gguf(&file).unwrap();
    let base = Model::load_dequantized(&file, &f32s).unwrap();
    let q = Model::load(&file).unwrap();
    let tok = GgufTokenizer::from_gguf(&file).unwrap();
    let (tokens, bos) = tokenize(&tok, &std::fs::read_to_string(text).unwrap()).unwrap();

    // 1. The base against itself.
    let same =
        compare_models(&base, &base, &tokens, bos, &opts(), None, &mut |_, _, _| {}).unwrap();
    let n_scored = CHUNKS * (CTX - 1 - CTX / 2);
    assert_eq!(same.n_tokens_scored, n_scored);
    assert!(same.kld.value.abs() < 1e-6, "self KLD {}", same.kld.value);
    assert!(same.kld_percentiles.min > -1e-6 && same.kld_percentiles.max < 1e-5);
    assert_eq!(same.same_top_p.value, 100.0);
    assert!(
        same.rms_dp.value < 1e-4,
        "self RMS Δp {} %",
        same.rms_dp.value
    );
    assert!((same.ppl_model.value - same.ppl_base.value).abs() < 1e-6 * same.ppl_base.value);
    assert!(same.ppl_base.value > 1.0 && same.ppl_base.value < 100.0);

    // 2. Q4_1 (quantized activations) against the F32 base, saving the base's results.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("base.lqkb");
    let fp = vocab_fingerprint(file.metadata()).unwrap();
    let mut w = BaseResultsWriter::create(&saved, 32, fp).unwrap();
    let exact = compare_models(
        &base,
        &q,
        &tokens,
        bos,
        &opts(),
        Some(&mut w),
        &mut |_, _, _| {},
    )
    .unwrap();
    drop(w);
    assert!(exact.kld.value > 0.0);
    assert!(
        exact.kld_percentiles.min > -1e-6,
        "negative KLD {}",
        exact.kld_percentiles.min
    );
    assert!(exact.same_top_p.value < 100.0 + 1e-9 && exact.same_top_p.value > 80.0);
    assert!((exact.ppl_base.value - same.ppl_base.value).abs() < 1e-6 * same.ppl_base.value);
    assert!(exact.kld_percentiles.p99 >= exact.kld_percentiles.median);
    assert_eq!(exact.by_position.len(), 1);
    assert_eq!(exact.by_position[0].n_tokens, n_scored);

    let mut r = BaseResultsReader::open(&saved).unwrap();
    assert_eq!(r.header.n_ctx as usize, CTX);
    assert_eq!(r.header.n_chunk as usize, CHUNKS);
    assert_eq!(r.tokens.len(), CTX * CHUNKS);
    assert_eq!(&r.tokens[..], &tokens[..CTX * CHUNKS]);
    let approx = compare_with_saved(&mut r, &q, Some(fp), &opts(), &mut |_, _, _| {}).unwrap();
    let info = approx.approx.clone().unwrap();
    let rel = (approx.kld.value - exact.kld.value).abs() / exact.kld.value;
    eprintln!(
        "exact KLD {:.6}, saved {:.6} (rel {:.4}, sampling stderr {:.6}), bounds [{:.6}, {:.6}], tail mass {:.4}",
        exact.kld.value,
        approx.kld.value,
        rel,
        info.kld_sampling_stderr,
        info.kld_lower_mean,
        info.kld_upper_mean,
        info.tail_mass_mean
    );
    // The sampled estimate is unbiased; allow 4 sampling standard errors.
    assert!(
        (approx.kld.value - exact.kld.value).abs() <= 4.0 * info.kld_sampling_stderr + 1e-6,
        "saved {} vs exact {}",
        approx.kld.value,
        exact.kld.value
    );
    assert!(info.kld_lower_mean <= exact.kld.value + 1e-6);
    assert!(info.kld_upper_mean >= exact.kld.value - 1e-6);
    assert_eq!(approx.same_top_p.value, exact.same_top_p.value);
    assert!((approx.ppl_base.value - exact.ppl_base.value).abs() < 1e-6 * exact.ppl_base.value);
    assert!((approx.ppl_model.value - exact.ppl_model.value).abs() < 1e-9 * exact.ppl_model.value);
    assert!((approx.rms_dp.value - exact.rms_dp.value).abs() < 1e-3);

    // Context must match the file.
    let mut r = BaseResultsReader::open(&saved).unwrap();
    let mut o = opts();
    o.n_ctx = 128;
    assert!(matches!(
        compare_with_saved(&mut r, &q, Some(fp), &o, &mut |_, _, _| {}),
        Err(KldError::Options(_))
    ));
    // A different vocabulary fingerprint is refused.
    let mut r = BaseResultsReader::open(&saved).unwrap();
    assert!(matches!(
        compare_with_saved(&mut r, &q, Some(fp ^ 1), &opts(), &mut |_, _, _| {}),
        Err(KldError::VocabMismatch(_))
    ));

    hostile_base_files(&saved, &q, fp);
}

/// Corrupted copies of a valid base-results file.
fn hostile_base_files(valid: &Path, model: &Model<'_>, fp: u64) {
    let bytes = std::fs::read(valid).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let open = |name: &str, b: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, b).unwrap();
        BaseResultsReader::open(&p)
    };
    let base_err = |r: Result<BaseResultsReader, KldError>| match r {
        Err(KldError::BaseFile { source, .. }) => source,
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("hostile file accepted"),
    };
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(
        base_err(open("magic", &b)),
        BaseFileError::BadMagic
    ));
    let mut b = bytes.clone();
    b[8] = 9;
    assert!(matches!(
        base_err(open("ver", &b)),
        BaseFileError::UnsupportedVersion(9)
    ));
    assert!(matches!(
        base_err(open("trunc", &bytes[..bytes.len() - 1])),
        BaseFileError::SizeMismatch { .. }
    ));
    assert!(matches!(
        base_err(open("short", &bytes[..10])),
        BaseFileError::SizeMismatch { .. }
    ));
    let mut b = bytes.clone();
    b[24..28].copy_from_slice(&0u32.to_le_bytes()); // top_k = 0
    assert!(matches!(
        base_err(open("topk", &b)),
        BaseFileError::HeaderField { field: "top_k", .. }
    ));
    let mut b = bytes.clone();
    b[20..24].copy_from_slice(&u32::MAX.to_le_bytes()); // n_chunk huge: size cannot match
    assert!(matches!(
        base_err(open("chunks", &b)),
        BaseFileError::SizeMismatch { .. }
    ));
    let mut b = bytes.clone();
    b[40..44].copy_from_slice(&u32::MAX.to_le_bytes()); // first token out of the vocabulary
    assert!(matches!(
        base_err(open("tok", &b)),
        BaseFileError::TokenOutOfRange { index: 0, .. }
    ));
    // A record whose top-k is not sorted: found while streaming.
    let rec0 = 40 + 4 * CTX * CHUNKS;
    let mut b = bytes.clone();
    let lp = f32::from_le_bytes(b[rec0 + 16..rec0 + 20].try_into().unwrap());
    b[rec0 + 24..rec0 + 28].copy_from_slice(&(lp + 1.0).min(0.0).to_le_bytes());
    b[rec0 + 16..rec0 + 20].copy_from_slice(&(lp - 5.0).to_le_bytes());
    let mut r = open("rec", &b).unwrap();
    match compare_with_saved(&mut r, model, Some(fp), &opts(), &mut |_, _, _| {}) {
        Err(KldError::BaseFile {
            source: BaseFileError::BadRecord { chunk: 0, .. },
            ..
        }) => {}
        other => panic!(
            "corrupt record not caught: {:?}",
            other.map(|r| r.kld.value)
        ),
    }
}

#[test]
fn different_vocabularies_are_refused() {
    let (Some(smol), Some(llama)) = (
        fixture("SmolLM2-135M-Instruct.Q4_1.gguf"),
        fixture("llama-vocab/ggml-vocab-llama-bpe.gguf"),
    ) else {
        return;
    };
    let a = GgufFile::open(&smol).unwrap();
    let b = GgufFile::open(&llama).unwrap();
    assert!(check_same_vocab(&a, &a).is_ok());
    assert!(matches!(
        check_same_vocab(&a, &b),
        Err(KldError::VocabMismatch(_))
    ));
    assert_ne!(
        vocab_fingerprint(a.metadata()),
        vocab_fingerprint(b.metadata())
    );
}
