//! The file types of issue 14 (Q2_K, Q2_K_S, Q3_K_S/M/L, IQ4_NL, IQ4_XS) give every tensor of
//! tiny-natural the type and the bytes llama-quantize gave it.
//!
//! Reference: `tests/data/quantize/tiny-natural.low-bit.llama-quantize.json`, per file type the
//! exact llama-quantize command and, per tensor, its type and the sha256 of its bytes (commands
//! and input in `tests/data/quantize/PROVENANCE.md`). The input is our own F32 conversion of
//! `fixtures/tiny-natural`, whose sha256 the JSON records and this test checks first (so a change
//! in the converter cannot make the comparison meaningless). Both `quantize` (F32 GGUF → type) and
//! `convert` (HF folder → type, one pass) are checked. Q2_K_S without an importance matrix is
//! refused as llama-quantize refuses it, naming the first offending tensor; with the committed
//! llama-imatrix file it matches llama-quantize `--imatrix`.

mod common;
use common::root;
use longquant::convert::pipeline::{convert, ConvertError, ConvertOptions, TypeChoice};
use longquant::convert::quantize::{quantize, QuantizeOptions};
use longquant::convert::sha256::sha256_hex;
use longquant::convert::FileType;
use longquant::formats::gguf::GgufFile;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

type Hashes = BTreeMap<String, (String, String)>;

fn reference() -> Value {
    let p = root().join("tests/data/quantize/tiny-natural.low-bit.llama-quantize.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn imatrix_path() -> PathBuf {
    root().join("tests/data/imatrix/tiny-natural.imatrix.gguf")
}

/// Every tensor of a GGUF file: name → (type, sha256 of its bytes).
fn hashes(path: &Path) -> Hashes {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (
                    t.ggml_type.name().to_ascii_uppercase(),
                    sha256_hex(f.tensor_data(t)),
                ),
            )
        })
        .collect()
}

fn want(r: &Value, key: &str) -> Hashes {
    r["runs"][key]["tensors"]
        .as_object()
        .unwrap_or_else(|| panic!("no run {key} in the reference"))
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                (
                    t["type"].as_str().unwrap().to_ascii_uppercase(),
                    t["sha256"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

fn compare(got: &Hashes, want: &Hashes, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    let bad: Vec<String> = want
        .iter()
        .filter(|(n, w)| got.get(*n) != Some(w))
        .map(|(n, w)| format!("{n}: ours {:?}, llama-quantize {w:?}", got.get(n)))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} tensors differ:\n{}",
        bad.len(),
        want.len(),
        bad.join("\n")
    );
}

fn to_f32(dir: &Path, r: &Value) -> PathBuf {
    let out = dir.join("tiny.F32.gguf");
    let opts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::F32),
        ..ConvertOptions::default()
    };
    convert(
        &root().join("fixtures/tiny-natural"),
        &out,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    let sha = common::sha256_file(&out);
    assert_eq!(
        sha,
        r["input_sha256"].as_str().unwrap(),
        "our F32 conversion of tiny-natural is not the file llama-quantize was run on"
    );
    out
}

/// (reference run, file type, with the imatrix)
const RUNS: [(&str, FileType, bool); 8] = [
    ("Q2_K", FileType::Q2_K, false),
    ("Q2_K_S.imatrix", FileType::Q2_K_S, true),
    ("Q3_K_S", FileType::Q3_K_S, false),
    ("Q3_K_M", FileType::Q3_K_M, false),
    ("Q3_K_L", FileType::Q3_K_L, false),
    ("IQ4_NL", FileType::IQ4_NL, false),
    ("IQ4_XS", FileType::IQ4_XS, false),
    ("IQ4_XS.imatrix", FileType::IQ4_XS, true),
];

#[test]
fn quantize_matches_llama_quantize_bytes() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    let f32 = to_f32(dir.path(), &r);
    for (key, ft, im) in RUNS {
        let out = dir.path().join(format!("{key}.gguf"));
        let mut o = QuantizeOptions::new(ft);
        o.imatrix = im.then(imatrix_path);
        quantize(&f32, &out, &o, &mut |_| {}).unwrap_or_else(|e| panic!("{key}: {e}"));
        compare(&hashes(&out), &want(&r, key), &format!("quantize {key}"));
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn convert_matches_llama_quantize_bytes() {
    let r = reference();
    let dir = tempfile::tempdir().unwrap();
    for (key, ft, im) in [RUNS[0], RUNS[3], RUNS[6], RUNS[1]] {
        let out = dir.path().join(format!("{key}.gguf"));
        let opts = ConvertOptions {
            file_type: TypeChoice::Fixed(ft),
            imatrix: im.then(imatrix_path),
            ..ConvertOptions::default()
        };
        convert(
            &root().join("fixtures/tiny-natural"),
            &out,
            &opts,
            &mut |_| {},
        )
        .unwrap_or_else(|e| panic!("{key}: {e}"));
        compare(&hashes(&out), &want(&r, key), &format!("convert {key}"));
    }
}

#[test]
fn q2_k_s_without_imatrix_is_refused_like_llama_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q2ks.gguf");
    let opts = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q2_K_S),
        ..ConvertOptions::default()
    };
    let e = convert(
        &root().join("fixtures/tiny-natural"),
        &out,
        &opts,
        &mut |_| {},
    )
    .unwrap_err();
    match &e {
        ConvertError::ImatrixRequired { name, ggml_type } => {
            assert!(
                name.starts_with("blk.") && name.ends_with(".weight"),
                "{name}"
            );
            assert_eq!(ggml_type, "q2_K");
        }
        other => panic!("expected ImatrixRequired, got {other}"),
    }
    assert!(
        e.to_string()
            .contains("this quantization requires an importance matrix"),
        "{e}"
    );
    assert!(!out.exists(), "no output on refusal");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(leftovers.is_empty(), "no temporary file left behind");
}
