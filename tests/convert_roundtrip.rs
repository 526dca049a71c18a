//! The first CI test, on the real model: export-hf(SmolLM2 fixture) → convert --type F32
//! gives, tensor for tensor, exactly our dequantization of the original file (which equals
//! gguf-py's: tests/export_hf.rs checks that), with the same tokenizer arrays and hyperparameters.

use longquant::convert::pipeline::{convert, ConvertOptions, Progress, TypeChoice};
use longquant::convert::stream::block_format;
use longquant::convert::FileType;
use longquant::export::{export_hf, ExportDtype, ExportOptions};
use longquant::formats::gguf::{GgufFile, Value};
use longquant::formats::GgmlType;
use longquant::quants::tensor::dequantize_tensor;
use std::path::PathBuf;

fn fixture() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{} missing; run fixtures/fetch.sh",
        p.display()
    );
    eprintln!(
        "note: {} missing (run fixtures/fetch.sh); skipped",
        p.display()
    );
    None
}

#[test]
fn smollm2_export_then_convert_f32_is_exact() {
    let Some(input) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("SmolLM2-135M-Instruct");
    export_hf(
        &input,
        &hf,
        &ExportOptions {
            dtype: ExportDtype::F32,
            ..ExportOptions::default()
        },
        &|_| {},
    )
    .unwrap();
    let out = dir.path().join("smol.F32.gguf");
    let opts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::F32),
        ..ConvertOptions::default()
    };
    let rep = convert(&hf, &out, &opts, &mut |_p: Progress<'_>| {}).unwrap();

    let orig = GgufFile::open(&input).unwrap();
    let ours = GgufFile::open(&out).unwrap();
    assert_eq!(rep.tensors.len(), orig.tensors().len());
    assert_eq!(ours.tensors().len(), orig.tensors().len());
    let mut checked = 0usize;
    for t in orig.tensors() {
        let u = ours
            .tensor(&t.name)
            .unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!(u.dims, t.dims, "{}", t.name);
        assert_eq!(u.ggml_type, GgmlType::F32, "{}", t.name);
        let row = t.dims[0] as usize;
        let mut want = vec![0f32; t.n_elements() as usize];
        dequantize_tensor(
            block_format(t.ggml_type).unwrap(),
            orig.tensor_data(t),
            row,
            &mut want,
        )
        .unwrap();
        let got: Vec<f32> = ours
            .tensor_data(u)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // Bit for bit (q/k went through the un-permutation and back).
        let same = got
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{} differs from the dequantized original", t.name);
        checked += 1;
    }
    assert_eq!(checked, 272);

    let (mo, mu) = (orig.metadata(), ours.metadata());
    for key in [
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
        "llama.block_count",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.dimension_count",
        "llama.vocab_size",
    ] {
        let (a, b) = (mo.get(key), mu.get(key));
        if a.is_none() {
            // Keys the original lacks must not appear from nowhere, except what the converter
            // always writes (vocab_size, rope.dimension_count).
            assert!(
                b.is_none() || key.ends_with("vocab_size") || key.ends_with("dimension_count"),
                "{key}: {b:?} appeared"
            );
            continue;
        }
        // Integers may be written with another width (u32 vs i32); compare values.
        let same = a == b
            || (a.and_then(Value::as_u64).is_some()
                && a.and_then(Value::as_u64) == b.and_then(Value::as_u64));
        assert!(
            same,
            "{key}: original {:?}, ours {:?}",
            a.map(short),
            b.map(short)
        );
    }
    let tokens = mo
        .get("tokenizer.ggml.tokens")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(tokens.len(), 49152);
}

fn short(v: &Value) -> String {
    let s = format!("{v:?}");
    s.chars().take(120).collect()
}
