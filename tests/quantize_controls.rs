//! llama-quantize's controls (`--tensor-type`, `--output-tensor-type`, `--token-embedding-type`,
//! `--leave-output-tensor`, `--override-kv`, `--include-weights`/`--exclude-weights`,
//! `--keep-split`, `--prune-layers`, `--dry-run`) give the tensors llama-quantize gives: same
//! names, types and bytes in every output file, and (for the inputs that are byte-identical on both
//! sides) the same metadata, key by key and in order (but for the two keys llama-quantize moves
//! last and we keep in place: general.quantization_version and general.file_type).
//!
//! Reference: `tests/data/quantize/tiny-natural.controls.llama-quantize.json`, made by
//! `make_controls.py` in that folder with llama.cpp's AVX2 llama-quantize (PROVENANCE.md has the
//! commands). Inputs: our F32 conversion of `fixtures/tiny-natural` (sha256 checked), the same
//! split in three by `convert --split-max-size 30M` (sha256 of every part checked), and an untied
//! variant (an `output.weight` equal to `token_embd.weight` appended), whose tensors are checked
//! against the ones the script wrote; the importance matrix is llama-imatrix's
//! (`tests/data/imatrix/tiny-natural.imatrix.gguf`, given by the same relative path, which the
//! output records).

mod common;
use common::root;
use longquant::convert::controls::{parse_ggml_type, KvOverride, TensorTypeRule};
use longquant::convert::pipeline::{
    convert, convert_dry_run, ConvertError, ConvertOptions, TypeChoice,
};
use longquant::convert::quantize::{quantize, quantize_dry_run, QuantizeOptions};
use longquant::convert::sha256::sha256_hex;
use longquant::convert::FileType;
use longquant::formats::gguf::{write_gguf, GgufFile, TensorSpec, Value, WriteOptions};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const IMATRIX: &str = "tests/data/imatrix/tiny-natural.imatrix.gguf";

fn reference() -> Json {
    common::read_json(&root().join("tests/data/quantize/tiny-natural.controls.llama-quantize.json"))
}

/// name → (type, bytes, sha256)
type Tensors = BTreeMap<String, (String, u64, String)>;

fn tensors_of(f: &GgufFile) -> Tensors {
    f.tensors()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                (
                    t.ggml_type.name().to_ascii_uppercase(),
                    t.n_bytes,
                    sha256_hex(f.tensor_data(t)),
                ),
            )
        })
        .collect()
}

fn want_tensors(j: &Json) -> Tensors {
    j.as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                (
                    t["type"].as_str().unwrap().to_ascii_uppercase(),
                    t["n_bytes"].as_u64().unwrap(),
                    t["sha256"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// The metadata as make_controls.py describes it: [key, TYPE, value].
fn metadata_of(f: &GgufFile) -> Vec<Json> {
    f.metadata()
        .iter()
        .map(|(k, v)| {
            let (ty, val) = match v {
                Value::U8(x) => ("UINT8", json!(x)),
                Value::I8(x) => ("INT8", json!(x)),
                Value::U16(x) => ("UINT16", json!(x)),
                Value::I16(x) => ("INT16", json!(x)),
                Value::U32(x) => ("UINT32", json!(x)),
                Value::I32(x) => ("INT32", json!(x)),
                Value::U64(x) => ("UINT64", json!(x)),
                Value::I64(x) => ("INT64", json!(x)),
                Value::F32(x) => ("FLOAT32", json!(f64::from(*x))),
                Value::F64(x) => ("FLOAT64", json!(x)),
                Value::Bool(x) => ("BOOL", json!(x)),
                Value::String(s) if s.len() > 256 => (
                    "STRING",
                    json!(format!("sha256:{}", sha256_hex(s.as_bytes()))),
                ),
                Value::String(s) => ("STRING", json!(s)),
                Value::Array(a) => {
                    let sub = format!("{:?}", a.elem_type).to_ascii_uppercase();
                    let sub = match sub.as_str() {
                        "U8" => "UINT8",
                        "I8" => "INT8",
                        "U16" => "UINT16",
                        "I16" => "INT16",
                        "U32" => "UINT32",
                        "I32" => "INT32",
                        "U64" => "UINT64",
                        "I64" => "INT64",
                        "F32" => "FLOAT32",
                        "F64" => "FLOAT64",
                        other => other,
                    }
                    .to_string();
                    return json!([k, "ARRAY", sub, a.len()]);
                }
            };
            json!([k, ty, val])
        })
        .collect()
}

fn compare_tensors(got: &Tensors, want: &Tensors, what: &str) {
    let names_got: Vec<&String> = got.keys().collect();
    let names_want: Vec<&String> = want.keys().collect();
    assert_eq!(names_got, names_want, "{what}: tensor names");
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

struct Inputs {
    _dir: tempfile::TempDir,
    tied: PathBuf,
    untied: PathBuf,
    split: PathBuf,
}

fn inputs(r: &Json) -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("fixtures/tiny-natural");
    let tied = dir.path().join("tiny.F32.gguf");
    let mut o = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::F32),
        ..ConvertOptions::default()
    };
    convert(&src, &tied, &o, &mut |_| {}).unwrap();
    assert_eq!(
        common::sha256_file(&tied),
        r["input_sha256"].as_str().unwrap(),
        "our F32 conversion of tiny-natural is not the file llama-quantize was run on"
    );
    o.split_max_size = Some(30_000_000);
    let rep = convert(
        &src,
        &dir.path().join("tiny.F32.gguf.split"),
        &o,
        &mut |_| {},
    );
    // The split set is named after the given name; keep the reference's names.
    let rep = rep.unwrap();
    let want_parts = r["split_input"].as_array().unwrap();
    assert_eq!(rep.outputs.len(), want_parts.len(), "split input parts");
    let mut split = PathBuf::new();
    for (i, (p, w)) in rep.outputs.iter().zip(want_parts).enumerate() {
        let named = dir.path().join(w["file"].as_str().unwrap());
        std::fs::rename(p, &named).unwrap();
        assert_eq!(
            common::sha256_file(&named),
            w["sha256"].as_str().unwrap(),
            "split input part {}",
            i + 1
        );
        if i == 0 {
            split = named;
        }
    }
    // The untied variant: token_embd.weight's bytes again as output.weight, appended.
    let untied = dir.path().join("tiny-untied.F32.gguf");
    {
        let f = GgufFile::open(&tied).unwrap();
        let mut specs: Vec<(TensorSpec, &[u8])> = f
            .tensors()
            .iter()
            .map(|t| {
                (
                    TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type),
                    f.tensor_data(t),
                )
            })
            .collect();
        let emb = f.tensor("token_embd.weight").unwrap();
        specs.push((
            TensorSpec::new("output.weight", emb.dims.clone(), emb.ggml_type),
            f.tensor_data(emb),
        ));
        write_gguf(&untied, f.metadata(), &specs, WriteOptions::default()).unwrap();
    }
    compare_tensors(
        &tensors_of(&GgufFile::open(&untied).unwrap()),
        &want_tensors(&r["untied_input_tensors"]),
        "untied input",
    );
    Inputs {
        _dir: dir,
        tied,
        untied,
        split,
    }
}

/// QuantizeOptions from a llama-quantize option list (the ones the reference runs use).
fn options(args: &[&str], ft: FileType) -> QuantizeOptions {
    let mut o = QuantizeOptions::new(ft);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap().to_string();
        let c = &mut o.controls;
        match *a {
            "--tensor-type" => c.tensor_types.push(TensorTypeRule::parse(&val()).unwrap()),
            "--output-tensor-type" => {
                c.output_tensor_type =
                    Some(parse_ggml_type("--output-tensor-type", &val()).unwrap())
            }
            "--token-embedding-type" => {
                c.token_embedding_type =
                    Some(parse_ggml_type("--token-embedding-type", &val()).unwrap())
            }
            "--leave-output-tensor" => c.leave_output_tensor = true,
            "--override-kv" => c.override_kv.push(KvOverride::parse(&val()).unwrap()),
            "--include-weights" => c.include_weights.push(val()),
            "--exclude-weights" => c.exclude_weights.push(val()),
            "--prune-layers" => {
                c.prune_layers = longquant::convert::controls::parse_prune_layers(&val()).unwrap()
            }
            "--keep-split" => c.keep_split = true,
            "--imatrix" => {
                assert_eq!(val(), "tiny-natural.imatrix.gguf");
                o.imatrix = Some(PathBuf::from(IMATRIX));
            }
            other => panic!("option {other} not handled by this test"),
        }
    }
    o
}

/// (options, file type) of a reference run.
fn run_args(r: &Json, key: &str) -> (Vec<String>, FileType) {
    let run = &r["runs"][key];
    let args = run["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    (
        args,
        FileType::from_name(run["type"].as_str().unwrap()).unwrap(),
    )
}

fn input_for<'a>(inp: &'a Inputs, r: &Json, key: &str) -> &'a Path {
    match r["runs"][key]["input"].as_str().unwrap() {
        "tied" => &inp.tied,
        "untied" => &inp.untied,
        "split" => &inp.split,
        other => panic!("input {other}"),
    }
}

fn check_run(r: &Json, key: &str, outputs: &[PathBuf], compare_metadata: bool) {
    let want = r["runs"][key]["outputs"].as_array().unwrap();
    assert_eq!(outputs.len(), want.len(), "{key}: output files");
    for (p, w) in outputs.iter().zip(want) {
        assert_eq!(
            p.file_name().unwrap().to_str().unwrap(),
            w["file"].as_str().unwrap(),
            "{key}: file name"
        );
        let f = GgufFile::open_part(p).unwrap();
        compare_tensors(&tensors_of(&f), &want_tensors(&w["tensors"]), key);
        if compare_metadata {
            // Every key, type and value, in llama-quantize's order, except where the two keys it
            // moves last and we keep in place stand (src/convert/quantize.rs says why): those
            // are compared by value.
            let moved =
                |e: &Json| e[0] == "general.quantization_version" || e[0] == "general.file_type";
            let got = metadata_of(&f);
            let want_md = w["metadata"].as_array().unwrap();
            let (got_moved, got_rest): (Vec<&Json>, Vec<&Json>) =
                got.iter().partition(|e| moved(e));
            let (want_moved, want_rest): (Vec<&Json>, Vec<&Json>) =
                want_md.iter().partition(|e| moved(e));
            for (i, (g, m)) in got_rest.iter().zip(&want_rest).enumerate() {
                assert_eq!(g, m, "{key} {}: metadata entry {i}", w["file"]);
            }
            assert_eq!(got_rest.len(), want_rest.len(), "{key}: metadata count");
            let sorted = |v: Vec<&Json>| {
                let mut v: Vec<Json> = v.into_iter().cloned().collect();
                v.sort_by_key(|e| e[0].to_string());
                v
            };
            assert_eq!(
                sorted(got_moved),
                sorted(want_moved),
                "{key}: version and file type"
            );
        }
    }
}

#[test]
fn quantize_controls_match_llama_quantize() {
    let r = reference();
    let inp = inputs(&r);
    let keys: Vec<String> = r["runs"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "dry_run")
        .cloned()
        .collect();
    assert!(keys.len() >= 13, "{keys:?}");
    for key in &keys {
        let (args, ft) = run_args(&r, key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = options(&args, ft);
        let out_dir = tempfile::tempdir().unwrap();
        let out = out_dir.path().join("out.gguf");
        let rep = quantize(input_for(&inp, &r, key), &out, &o, &mut |_| {})
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let untied = r["runs"][key]["input"] == "untied";
        check_run(&r, key, &rep.outputs, !untied);
    }
}

#[test]
fn dry_run_reports_llama_quantize_types_and_sizes_and_writes_nothing() {
    let r = reference();
    let inp = inputs(&r);
    let (args, ft) = run_args(&r, "tensor_type");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = options(&args, ft);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never.gguf");
    let d = quantize_dry_run(&inp.tied, Some(&out), &o).unwrap();
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(d.outputs, vec![out.clone()]);
    // The types llama-quantize --dry-run printed, and the sizes of its real output.
    let types = r["runs"]["dry_run"]["types"].as_object().unwrap();
    let real = want_tensors(&r["runs"]["tensor_type"]["outputs"][0]["tensors"]);
    assert_eq!(d.tensors.len(), types.len());
    for t in &d.tensors {
        assert_eq!(
            t.to.name().to_ascii_uppercase(),
            types[&t.name].as_str().unwrap(),
            "{}",
            t.name
        );
        assert_eq!(t.bytes_out, real[&t.name].1, "{}", t.name);
        assert_eq!(t.bytes_in, t.dims.iter().product::<u64>() * 4, "{}", t.name);
    }
    let total: u64 = real.values().map(|t| t.1).sum();
    assert_eq!(d.total_out(), total);
    let mib = format!("{:.2}", total as f64 / (1u64 << 20) as f64);
    assert_eq!(
        mib,
        r["runs"]["dry_run"]["quant_size_mib"].as_str().unwrap()
    );

    // Q2_K_S without an importance matrix: the dry run warns, as llama-quantize's does.
    let w = quantize_dry_run(&inp.tied, None, &QuantizeOptions::new(FileType::Q2_K_S)).unwrap();
    assert!(
        w.warnings.iter().any(|w| w.contains("importance matrix")),
        "{:?}",
        w.warnings
    );
    // convert --dry-run plans the same types from the checkpoint, writing nothing.
    let c = ConvertOptions {
        file_type: TypeChoice::Fixed(ft),
        controls: o.controls.clone(),
        ..ConvertOptions::default()
    };
    let cd = convert_dry_run(&root().join("fixtures/tiny-natural"), &out, &c).unwrap();
    assert!(!out.exists());
    let by_name: BTreeMap<&str, _> = cd.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    for t in &d.tensors {
        assert_eq!(by_name[t.name.as_str()].to, t.to, "{}", t.name);
    }
    assert_eq!(cd.total_out(), total);
}

/// `convert` with a control gives what llama-quantize gives with it on the F32 conversion (the
/// runs on the tied input: tiny-natural's own layout; metadata differs in order, by design, so
/// only the overridden keys are compared).
#[test]
fn convert_controls_match_llama_quantize() {
    let r = reference();
    for key in [
        "tensor_type",
        "output_tied",
        "token_embd_tied",
        "override_kv",
        "include_weights",
        "exclude_weights",
        "prune_layers",
        "prune_layers_imatrix",
    ] {
        let (args, ft) = run_args(&r, key);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let q = options(&args, ft);
        let c = ConvertOptions {
            file_type: TypeChoice::Fixed(ft),
            imatrix: q.imatrix.clone(),
            controls: q.controls.clone(),
            ..ConvertOptions::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.gguf");
        let rep = convert(&root().join("fixtures/tiny-natural"), &out, &c, &mut |_| {})
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        let want = &r["runs"][key]["outputs"][0];
        let f = GgufFile::open(&rep.output).unwrap();
        compare_tensors(&tensors_of(&f), &want_tensors(&want["tensors"]), key);
        let got: BTreeMap<String, Json> = metadata_of(&f)
            .into_iter()
            .map(|e| (e[0].as_str().unwrap().to_string(), e))
            .collect();
        for o in &q.controls.override_kv {
            let w = want["metadata"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e[0] == o.key.as_str())
                .unwrap();
            assert_eq!(&got[&o.key], w, "{key}: {}", o.key);
        }
        for k in ["llama.block_count", "quantize.imatrix.entries_count"] {
            let w = want["metadata"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e[0] == k);
            assert_eq!(got.get(k), w, "{key}: {k}");
        }
    }
}

#[test]
fn bad_controls_are_clear_errors() {
    for (s, what) in [
        ("attn_v", "PATTERN=TYPE"),
        ("attn_v=q9_9", "not a ggml type"),
        ("attn_v=iq2_xxs", "cannot write"),
        ("(=q8_0", "regular expression"),
    ] {
        let e = TensorTypeRule::parse(s).unwrap_err().to_string();
        assert!(e.contains("--tensor-type") && e.contains(what), "{s}: {e}");
    }
    for (s, what) in [
        ("a=int:x", "not an integer"),
        ("a=int:4294967296", "UINT32"),
        ("a=bool:1", "true"),
        ("a=blob:1", "int, float, bool or str"),
    ] {
        let e = KvOverride::parse(s).unwrap_err().to_string();
        assert!(e.contains("--override-kv") && e.contains(what), "{s}: {e}");
    }
    // A forced type that does not fit the rows is refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let mut c = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q4_K_M),
        ..ConvertOptions::default()
    };
    c.controls.token_embedding_type = Some(parse_ggml_type("x", "q8_0").unwrap());
    c.controls.include_weights = vec!["a".into()];
    c.controls.exclude_weights = vec!["b".into()];
    let e = convert(&root().join("fixtures/tiny-natural"), &out, &c, &mut |_| {}).unwrap_err();
    assert!(matches!(e, ConvertError::Control(_)), "{e}");
    assert!(e.to_string().contains("cannot be used together"), "{e}");
    c.controls.include_weights.clear();
    c.controls.exclude_weights.clear();
    c.controls.keep_split = true;
    c.split_max_size = Some(1 << 20);
    let e = convert(&root().join("fixtures/tiny-natural"), &out, &c, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("--split-max-size"), "{e}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
