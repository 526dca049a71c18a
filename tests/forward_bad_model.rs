//! Model files that cannot be run are refused with typed errors at load time: tensors whose
//! shapes disagree with the metadata, a missing tensor, an unsupported tensor type or
//! architecture, inconsistent hyperparameters. Each case is a tiny GGUF written here with
//! `write_gguf`; the unmodified tiny model must load and evaluate (no over-rejection).
use longquant::formats::gguf::GgufFile;
use longquant::formats::gguf::{write_gguf, Metadata, TensorSpec, Value, WriteOptions};
use longquant::formats::GgmlType;
use longquant::model::{EvalOptions, Model, ModelError};
use std::path::Path;

const D: u64 = 256;
const FF: u64 = 512;
const VOCAB: u64 = 64;
const HEADS: u64 = 4;
const KV_HEADS: u64 = 2;
const KV: u64 = D / HEADS * KV_HEADS;

/// A tensor's name, dims (innermost first), type and bytes.
type Tensor = (String, Vec<u64>, GgmlType, Vec<u8>);

fn f32_tensor(name: &str, dims: Vec<u64>, seed: u32) -> Tensor {
    let n: u64 = dims.iter().product();
    let mut s = seed.wrapping_mul(2_654_435_761).max(1);
    let mut bytes = Vec::with_capacity(n as usize * 4);
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 17;
        s ^= s << 5;
        let v = (s as f32 / u32::MAX as f32 - 0.5) * 0.1;
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    (name.to_string(), dims, GgmlType::F32, bytes)
}

fn metadata(arch: &str) -> Metadata {
    let mut md = Metadata::new();
    md.insert("general.architecture", Value::String(arch.into()));
    md.insert("llama.context_length", Value::U32(128));
    md.insert("llama.embedding_length", Value::U32(D as u32));
    md.insert("llama.block_count", Value::U32(1));
    md.insert("llama.feed_forward_length", Value::U32(FF as u32));
    md.insert("llama.attention.head_count", Value::U32(HEADS as u32));
    md.insert("llama.attention.head_count_kv", Value::U32(KV_HEADS as u32));
    md.insert("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
    md.insert("llama.rope.freq_base", Value::F32(10000.0));
    md
}

fn tensors() -> Vec<Tensor> {
    let mut t = vec![
        f32_tensor("token_embd.weight", vec![D, VOCAB], 1),
        f32_tensor("output_norm.weight", vec![D], 2),
    ];
    let blk = [
        ("attn_norm", vec![D]),
        ("attn_q", vec![D, D]),
        ("attn_k", vec![D, KV]),
        ("attn_v", vec![D, KV]),
        ("attn_output", vec![D, D]),
        ("ffn_norm", vec![D]),
        ("ffn_gate", vec![D, FF]),
        ("ffn_up", vec![D, FF]),
        ("ffn_down", vec![FF, D]),
    ];
    for (i, (name, dims)) in blk.into_iter().enumerate() {
        t.push(f32_tensor(
            &format!("blk.0.{name}.weight"),
            dims,
            10 + i as u32,
        ));
    }
    t
}

fn write(dir: &Path, name: &str, md: &Metadata, tensors: &[Tensor]) -> GgufFile {
    let path = dir.join(name);
    let specs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(n, d, ty, b)| (TensorSpec::new(n.clone(), d.clone(), *ty), b.as_slice()))
        .collect();
    write_gguf(&path, md, &specs, WriteOptions::default()).unwrap();
    GgufFile::open(&path).unwrap()
}

fn load_err(file: &GgufFile) -> ModelError {
    match Model::load(file) {
        Ok(_) => panic!("model loaded but should have been refused"),
        Err(e) => e,
    }
}

#[test]
fn tiny_valid_model_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.gguf", &metadata("llama"), &tensors());
    let model = Model::load(&file).unwrap();
    assert!(model.weights.tied_output);
    let mut n = 0;
    model
        .eval(&[1, 2, 3, 63], 0, &EvalOptions::default(), &mut |_, l| {
            assert_eq!(l.len(), VOCAB as usize);
            assert!(l.iter().all(|v| v.is_finite()));
            n += 1;
        })
        .unwrap();
    assert_eq!(n, 4);
}

#[test]
fn tensor_shape_disagreeing_with_metadata_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors();
    // attn_k sized for 4 KV heads while the metadata says 2.
    let i = t.iter().position(|x| x.0 == "blk.0.attn_k.weight").unwrap();
    t[i] = f32_tensor("blk.0.attn_k.weight", vec![D, D], 99);
    let file = write(dir.path(), "shape.gguf", &metadata("llama"), &t);
    match load_err(&file) {
        ModelError::ShapeMismatch {
            tensor,
            expected,
            got,
        } => {
            assert_eq!(tensor, "blk.0.attn_k.weight");
            assert_eq!(expected, vec![D, KV]);
            assert_eq!(got, vec![D, D]);
        }
        e => panic!("unexpected error {e:?}"),
    }

    // A vocabulary size in the metadata that the embedding matrix does not have.
    let mut md = metadata("llama");
    md.insert("llama.vocab_size", Value::U32(VOCAB as u32 + 1));
    let file = write(dir.path(), "vocab.gguf", &md, &tensors());
    assert!(matches!(
        load_err(&file),
        ModelError::ShapeMismatch { tensor, .. } if tensor == "token_embd.weight"
    ));
}

#[test]
fn missing_tensor_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t: Vec<Tensor> = tensors()
        .into_iter()
        .filter(|x| x.0 != "blk.0.ffn_down.weight")
        .collect();
    let file = write(dir.path(), "missing.gguf", &metadata("llama"), &t);
    assert!(matches!(
        load_err(&file),
        ModelError::MissingTensor(name) if name == "blk.0.ffn_down.weight"
    ));
}

#[test]
fn unsupported_type_and_architecture_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // IQ2_XXS is a valid ggml type the forward pass has no kernels for (issue 15's i-quants).
    let mut t = tensors();
    let i = t.iter().position(|x| x.0 == "blk.0.ffn_up.weight").unwrap();
    let blocks = (D / 256 * FF) as usize;
    t[i] = (
        "blk.0.ffn_up.weight".into(),
        vec![D, FF],
        GgmlType::IQ2_XXS,
        vec![0u8; blocks * 66],
    );
    let file = write(dir.path(), "iq2xxs.gguf", &metadata("llama"), &t);
    assert!(matches!(
        load_err(&file),
        ModelError::UnsupportedType { tensor, ty: GgmlType::IQ2_XXS } if tensor == "blk.0.ffn_up.weight"
    ));

    let file = write(dir.path(), "arch.gguf", &metadata("gpt2"), &tensors());
    assert!(matches!(
        load_err(&file),
        ModelError::UnsupportedArchitecture(a) if a == "gpt2"
    ));
}

#[test]
fn inconsistent_hyperparameters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut md = metadata("llama");
    md.insert("llama.attention.head_count_kv", Value::U32(3));
    let file = write(dir.path(), "heads.gguf", &md, &tensors());
    assert!(matches!(load_err(&file), ModelError::InvalidConfig(_)));

    let mut md = metadata("llama");
    md.remove("llama.block_count");
    let file = write(dir.path(), "nokey.gguf", &md, &tensors());
    assert!(matches!(
        load_err(&file),
        ModelError::MissingKey { key, .. } if key == "llama.block_count"
    ));
}

// ---- absurd metadata values (issue 19): clear errors, no panic, nothing sized by the value ----

/// The error of loading the tiny model with one metadata key set to `value`.
fn with_key(dir: &Path, key: &str, value: Value) -> ModelError {
    let mut md = metadata("llama");
    md.insert(key, value);
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = write(dir, &format!("absurd{n}.gguf"), &md, &tensors());
    load_err(&file)
}

#[test]
fn absurd_hyperparameters_are_refused_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A billion layers beside one: refused by the limit before any per-layer table is sized.
    let e = with_key(d, "llama.block_count", Value::U32(1_000_000_000));
    assert!(
        matches!(&e, ModelError::TooLarge { key, value: 1_000_000_000, limit: 4096 } if key == "llama.block_count"),
        "{e:?}"
    );
    // Within the limit but beyond the file: the first missing block tensor is named.
    let e = with_key(d, "llama.block_count", Value::U32(4096));
    assert!(
        matches!(&e, ModelError::MissingTensor(n) if n == "blk.1.attn_norm.weight"),
        "{e:?}"
    );
    // u64 values that cannot fit any product.
    for key in [
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.context_length",
        "llama.attention.key_length",
    ] {
        let e = with_key(d, key, Value::U64(u64::MAX / 2 + 3));
        assert!(
            matches!(&e, ModelError::TooLarge { key: k, .. } if k == key),
            "{key}: {e:?}"
        );
    }
    // Zero heads, zero context.
    for key in [
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.context_length",
        "llama.block_count",
    ] {
        let e = with_key(d, key, Value::U32(0));
        assert!(matches!(&e, ModelError::InvalidConfig(_)), "{key}: {e:?}");
    }
    // head_dim × heads ≠ n_embd (explicit key_length), and heads not dividing the width.
    let e = with_key(d, "llama.attention.key_length", Value::U32(32));
    assert!(matches!(&e, ModelError::UnsupportedFeature(_)), "{e:?}");
    let e = with_key(d, "llama.attention.head_count", Value::U32(3));
    assert!(matches!(&e, ModelError::InvalidConfig(_)), "{e:?}");
    // Rope dimensions beyond the head, and odd.
    let e = with_key(d, "llama.rope.dimension_count", Value::U32(1 << 30));
    assert!(matches!(&e, ModelError::InvalidConfig(_)), "{e:?}");
    let e = with_key(d, "llama.rope.dimension_count", Value::U32(63));
    assert!(matches!(&e, ModelError::InvalidConfig(_)), "{e:?}");
    // Non-numbers and non-finite numbers.
    let e = with_key(d, "llama.rope.freq_base", Value::F32(f32::NAN));
    assert!(matches!(&e, ModelError::InvalidConfig(_)), "{e:?}");
    let e = with_key(d, "llama.attention.layer_norm_rms_epsilon", Value::F32(0.0));
    assert!(matches!(&e, ModelError::InvalidConfig(_)), "{e:?}");
    let e = with_key(d, "llama.context_length", Value::String("long".into()));
    assert!(matches!(&e, ModelError::MissingKey { .. }), "{e:?}");
    let e = with_key(d, "llama.vocab_size", Value::U64(1 << 32));
    assert!(
        matches!(&e, ModelError::ShapeMismatch { tensor, .. } if tensor == "token_embd.weight"),
        "{e:?}"
    );
}

#[test]
fn rope_freqs_of_the_wrong_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // head_dim 64 → 32 rope factors; 31 and 64 are wrong.
    for n in [31u64, 64] {
        let mut t = tensors();
        t.push(f32_tensor("rope_freqs.weight", vec![n], 7));
        let file = write(dir.path(), &format!("rope{n}.gguf"), &metadata("llama"), &t);
        assert!(
            matches!(load_err(&file), ModelError::ShapeMismatch { tensor, expected, got }
                if tensor == "rope_freqs.weight" && expected == vec![32] && got == vec![n]),
            "{n}"
        );
    }
    // The right length loads.
    let mut t = tensors();
    t.push(f32_tensor("rope_freqs.weight", vec![32], 7));
    let file = write(dir.path(), "rope_ok.gguf", &metadata("llama"), &t);
    Model::load(&file).unwrap();
}

#[test]
fn vocabulary_array_of_2_pow_32_entries_is_refused_at_open() {
    // A header declaring `tokenizer.ggml.tokens` with 2^32 strings in a file of a few bytes: the
    // reader refuses the count before allocating for it.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&1u64.to_le_bytes()); // key/values
    let key = b"tokenizer.ggml.tokens";
    b.extend_from_slice(&(key.len() as u64).to_le_bytes());
    b.extend_from_slice(key);
    b.extend_from_slice(&9u32.to_le_bytes()); // array
    b.extend_from_slice(&8u32.to_le_bytes()); // of strings
    b.extend_from_slice(&(1u64 << 32).to_le_bytes());
    b.extend_from_slice(&[0u8; 64]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.gguf");
    std::fs::write(&p, &b).unwrap();
    let e = GgufFile::open(&p).unwrap_err();
    assert!(
        matches!(
            e.kind,
            longquant::formats::ErrorKind::LimitExceeded { .. }
                | longquant::formats::ErrorKind::LengthExceedsData { .. }
                | longquant::formats::ErrorKind::Truncated { .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("vocab.gguf"), "{e}");
}

#[test]
fn an_empty_tensor_beside_the_model_does_not_panic() {
    // A zero-row extra tensor (accepted by the reader, like ggml): dequantizing the model for the
    // F32 reference skips it instead of cutting rows of length 0.
    let dir = tempfile::tempdir().unwrap();
    let mut t = tensors();
    t.push(("junk.weight".into(), vec![0, 5], GgmlType::F32, Vec::new()));
    let file = write(dir.path(), "empty.gguf", &metadata("llama"), &t);
    let f32s = longquant::model::DequantizedTensors::from_gguf(&file).unwrap();
    Model::load_dequantized(&file, &f32s).unwrap();
}
