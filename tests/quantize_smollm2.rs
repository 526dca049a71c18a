//! `longquant quantize` on the real SmolLM2 fixture (Q4_1): the same per-tensor types as
//! llama-quantize (tests/data/mixes/smollm2.json, made from an F32 input, and
//! smollm2-requant.json, made from this Q4_1 input) and the same bytes as llama-quantize
//! --allow-requantize (sha256 per tensor in smollm2-requant.json, see PROVENANCE.md there);
//! refusals; --pure; split output read back across files.

use longquant::convert::mix::FileType;
use longquant::convert::pipeline::{ConvertError, Progress};
use longquant::convert::quantize::{quantize, QuantizeOptions};
use longquant::convert::sha256::sha256_hex;
use longquant::convert::split::{KEY_SPLIT_COUNT, KEY_SPLIT_NO};
use longquant::formats::gguf::{GgufFile, Value};
use longquant::formats::GgmlType;
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture() -> Option<PathBuf> {
    let p = root().join("fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf");
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

fn run(
    input: &Path,
    out: &Path,
    o: &QuantizeOptions,
) -> Result<longquant::convert::ConvertReport, ConvertError> {
    quantize(input, out, o, &mut |_p: Progress<'_>| {})
}

fn json(name: &str) -> Json {
    let p = root().join("tests/data/mixes").join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Nothing but the expected files in a directory (no temporary files left behind).
fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn requantize_matches_llama_quantize_types_and_bytes() {
    let Some(input) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let from_f32 = json("smollm2.json");
    let requant = json("smollm2-requant.json");
    for ty in ["Q4_K_M", "Q8_0", "Q6_K"] {
        let out = dir.path().join(format!("smol.{ty}.gguf"));
        let mut o = QuantizeOptions::new(FileType::from_name(ty).unwrap());
        o.allow_requantize = true;
        let rep = run(&input, &out, &o).unwrap();
        assert_eq!(rep.tensors.len(), 272);
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(
            g.metadata()
                .get("general.file_type")
                .and_then(Value::as_u64),
            Some(u64::from(o.file_type.llama_ftype()))
        );
        let want = requant[ty].as_object().unwrap();
        assert_eq!(want.len(), g.tensors().len());
        for t in g.tensors() {
            let got_type = t.ggml_type.name().to_ascii_uppercase();
            // Types depend on names and shapes only: the table made from the F32 input agrees.
            assert_eq!(
                Some(got_type.as_str()),
                from_f32[ty][&t.name]
                    .as_str()
                    .map(|s| s.to_ascii_uppercase())
                    .as_deref(),
                "{ty} {} vs the F32-input table",
                t.name
            );
            let w = want[&t.name].as_array().unwrap();
            assert_eq!(
                Some(got_type.as_str()),
                w[0].as_str().map(|s| s.to_ascii_uppercase()).as_deref(),
                "{ty} {}",
                t.name
            );
            assert_eq!(
                sha256_hex(g.tensor_data(t)),
                w[1].as_str().unwrap(),
                "{ty} {}: bytes differ from llama-quantize's",
                t.name
            );
        }
        // Q4_K_M: DESIGN.md's 180 fallbacks.
        if ty == "Q4_K_M" {
            assert_eq!(rep.n_fallback, 180);
        }
        // Long-context facts carried over unchanged.
        assert!(rep.facts.iter().all(|f| f.gguf == f.source));
        assert!(rep
            .facts
            .iter()
            .any(|f| f.what == "pre-tokenizer" && f.gguf == "smollm"));
    }
    let mut names = files_in(dir.path());
    names.retain(|n| !n.starts_with("smol."));
    assert!(names.is_empty(), "stray files: {names:?}");
}

#[test]
fn refusals_leave_nothing_behind() {
    let Some(input) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    // Quantized input without --allow-requantize.
    let e = run(&input, &out, &QuantizeOptions::new(FileType::Q4_K_M)).unwrap_err();
    match &e {
        ConvertError::RequantizeRefused { from, .. } => assert_eq!(from, "q4_1"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(files_in(dir.path()).is_empty());
    // Q4_1 → Q4_1 needs no requantization: every tensor already has its target type (token_embd
    // stays Q8_0 by the tied-output rule), so it is a byte copy and needs no flag.
    let same = dir.path().join("same.gguf");
    let rep = run(&input, &same, &QuantizeOptions::new(FileType::Q4_1)).unwrap();
    let (a, b) = (
        GgufFile::open(&input).unwrap(),
        GgufFile::open(&same).unwrap(),
    );
    for t in a.tensors() {
        let u = b.tensor(&t.name).unwrap();
        assert_eq!(u.ggml_type, t.ggml_type, "{}", t.name);
        assert_eq!(b.tensor_data(u), a.tensor_data(t), "{}", t.name);
    }
    assert_eq!(rep.tensors.len(), a.tensors().len());
    std::fs::remove_file(&same).unwrap();

    // Input == output, even with --force and through another spelling of the path.
    let copy = dir.path().join("in.gguf");
    std::fs::copy(&input, &copy).unwrap();
    let mut o = QuantizeOptions::new(FileType::Q8_0);
    o.allow_requantize = true;
    o.force = true;
    let other_spelling = dir.path().join(".").join("in.gguf");
    let e = run(&copy, &other_spelling, &o).unwrap_err();
    assert!(matches!(e, ConvertError::Refused(_)), "{e:?}");
    // Existing output without --force.
    std::fs::write(&out, b"keep me").unwrap();
    o.force = false;
    let e = run(&copy, &out, &o).unwrap_err();
    assert!(matches!(e, ConvertError::Refused(_)), "{e:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    assert_eq!(files_in(dir.path()), vec!["in.gguf", "x.gguf"]);
    // A missing imatrix file is a typed error that leaves the existing output alone.
    o.imatrix = Some(dir.path().join("imatrix.dat"));
    o.force = true;
    assert!(matches!(
        run(&copy, &out, &o).unwrap_err(),
        ConvertError::Imatrix(_)
    ));
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
}

#[test]
fn pure_uses_the_base_type_everywhere() {
    let Some(input) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pure.gguf");
    let mut o = QuantizeOptions::new(FileType::Q4_K_M);
    o.allow_requantize = true;
    o.pure = true;
    run(&input, &out, &o).unwrap();
    let g = GgufFile::open(&out).unwrap();
    for t in g.tensors() {
        let want = if t.dims.len() < 2 || t.name.contains("_norm") {
            GgmlType::F32
        } else if t.dims[0] % 256 == 0 {
            GgmlType::Q4_K
        } else {
            // The shape fallback still applies (576-wide rows).
            GgmlType::Q5_0
        };
        assert_eq!(t.ggml_type, want, "{}", t.name);
    }
}

#[test]
fn split_output_reads_back_whole() {
    let Some(input) = fixture() else { return };
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("one.gguf");
    let mut o = QuantizeOptions::new(FileType::Q8_0);
    o.allow_requantize = true;
    run(&input, &single, &o).unwrap();
    let split = dir.path().join("many.gguf");
    o.split_max_size = Some(40_000_000);
    let rep = run(&input, &split, &o).unwrap();
    let n = rep.outputs.len();
    assert!(n >= 3, "{n} files");
    assert_eq!(
        rep.output,
        dir.path().join(format!("many-00001-of-{n:05}.gguf"))
    );
    assert!(!split.exists(), "no unsplit file");

    let m = GgufFile::open(&rep.output).unwrap();
    assert_eq!(m.paths().len(), n);
    let one = GgufFile::open(&single).unwrap();
    assert_eq!(m.tensors().len(), one.tensors().len());
    // Only the first file carries the model's metadata; every file carries the split keys.
    for (i, (_, f)) in m.part_headers().enumerate() {
        let md = &f.metadata;
        assert_eq!(md.get(KEY_SPLIT_NO), Some(&Value::U16(i as u16)));
        assert_eq!(md.get(KEY_SPLIT_COUNT), Some(&Value::U16(n as u16)));
        assert_eq!(
            md.get("split.tensors.count"),
            Some(&Value::I32(one.tensors().len() as i32))
        );
        assert_eq!(md.contains_key("tokenizer.ggml.tokens"), i == 0);
        let bytes: u64 = f.tensors.iter().map(|t| t.n_bytes.div_ceil(32) * 32).sum();
        assert!(bytes <= 40_000_000 || f.tensors.len() == 1);
    }
    let md0: BTreeMap<&str, &Value> = m
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("split."))
        .collect();
    let md1: BTreeMap<&str, &Value> = one.metadata().iter().collect();
    assert_eq!(md0, md1);
    for t in one.tensors() {
        let info = m.tensor(&t.name).unwrap();
        assert_eq!((info.ggml_type, &info.dims), (t.ggml_type, &t.dims));
        assert_eq!(m.tensor_data(info), one.tensor_data(t), "{}", t.name);
    }
    // A split set requantizes as its first file: same result as the single file (F32 copy of Q8_0
    // tensors dequantized, then back to Q8_0: identical bytes since Q8_0 → Q8_0 is a copy).
    let again = dir.path().join("again.gguf");
    let mut o2 = QuantizeOptions::new(FileType::Q8_0);
    o2.allow_requantize = true;
    run(&rep.output, &again, &o2).unwrap();
    let a = GgufFile::open(&again).unwrap();
    for t in one.tensors() {
        let ta = a.tensor(&t.name).unwrap();
        assert_eq!(a.tensor_data(ta), one.tensor_data(t), "{}", t.name);
    }
    // Giving a later file of the set is refused, as llama.cpp refuses it.
    let second = rep.outputs[1].clone();
    assert!(GgufFile::open(&second).is_err());
    // A missing member is an error, not a silently smaller model.
    std::fs::remove_file(rep.outputs.last().unwrap()).unwrap();
    assert!(GgufFile::open(&rep.output).is_err());
}
