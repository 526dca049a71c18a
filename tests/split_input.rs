//! Split GGUF sets as input everywhere: every command that reads a GGUF (inspect, perplexity,
//! compare, logits, recall, imatrix, sweep, quantize, export-hf), given the first file of a set,
//! gives what it gives on the merged file; a set with a missing, extra or mismatched part, or a
//! later part given first, is a clear error naming the file (exit code 2 from the CLI).
//!
//! Model: tiny-natural (committed), converted to Q8_0 and F32 by our converter, split with
//! `--split-max-size` into three files. Text: this repository's README.md.

mod common;
use common::root;
use longquant::convert::pipeline::{convert, ConvertOptions, TypeChoice};
use longquant::convert::FileType;
use longquant::formats::gguf::GgufFile;
use longquant::formats::ErrorKind;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_longquant");

/// The merged file and its split set (first file), of file type `ft`, in `dir`.
fn model(dir: &Path, ft: FileType, max: u64) -> (PathBuf, PathBuf) {
    let src = root().join("fixtures/tiny-natural");
    let one = dir.join(format!("one.{}.gguf", ft.name()));
    let mut o = ConvertOptions {
        file_type: TypeChoice::Fixed(ft),
        ..ConvertOptions::default()
    };
    convert(&src, &one, &o, &mut |_| {}).unwrap();
    o.split_max_size = Some(max);
    let rep = convert(
        &src,
        &dir.join(format!("set.{}.gguf", ft.name())),
        &o,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(rep.outputs.len(), 3, "{:?}", rep.outputs);
    (one, rep.output)
}

fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN).args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `--json` output without what legitimately differs between two runs (timings, the paths
/// given, file sizes on disk, the split list).
fn json_of(args: &[&str]) -> Json {
    let (rc, out, err) = run(args);
    assert_eq!(rc, 0, "{args:?}: {err}");
    let mut j: Json = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"));
    strip(&mut j);
    j
}

fn strip(j: &mut Json) {
    match j {
        Json::Object(m) => {
            m.retain(|k, _| {
                !(k.contains("per_second")
                    || k.contains("seconds")
                    || k.starts_with("split")
                    || matches!(
                        k.as_str(),
                        "path"
                            | "model"
                            | "base"
                            | "src"
                            | "file_size"
                            | "offset"
                            | "output"
                            | "outputs"
                    ))
            });
            m.values_mut().for_each(strip);
        }
        Json::Array(a) => a.iter_mut().for_each(strip),
        _ => {}
    }
}

/// Equal JSON documents; on a difference, names the first differing fields only.
fn same(a: &Json, b: &Json, what: &str) {
    if a == b {
        return;
    }
    let diff: Vec<String> = match (a, b) {
        (Json::Object(x), Json::Object(y)) => x
            .keys()
            .chain(y.keys())
            .filter(|k| x.get(*k) != y.get(*k))
            .take(4)
            .map(|k| {
                let cut = |v: Option<&Json>| {
                    let t = v.map_or("(absent)".to_string(), Json::to_string);
                    t.chars().take(300).collect::<String>()
                };
                format!("{k}: merged {} / split {}", cut(x.get(k)), cut(y.get(k)))
            })
            .collect(),
        _ => vec![format!("{a} / {b}").chars().take(600).collect()],
    };
    panic!("{what}: merged and split differ:\n{}", diff.join("\n"));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_command_reads_a_split_set_as_the_merged_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (q8, q8s) = model(d, FileType::Q8_0, 10_000_000);
    let (f32, f32s) = model(d, FileType::F32, 40_000_000);
    let text = root().join("README.md");
    let text = s(&text);

    // inspect: the merged model, not one split's tensors.
    let mut a = json_of(&["--json", "inspect", s(&q8), "--tensors"]);
    let mut b = json_of(&["--json", "inspect", s(&q8s), "--tensors"]);
    assert_eq!(b["tensor_count"], 146);
    // The set's first file also carries the three split keys.
    assert_eq!(
        b["metadata_count"].as_u64().unwrap(),
        a["metadata_count"].as_u64().unwrap() + 3
    );
    a["metadata_count"] = Json::Null;
    b["metadata_count"] = Json::Null;
    same(&a, &b, "inspect");

    for (m, ms) in [(&q8, &q8s), (&f32, &f32s)] {
        let args = |p: &Path| {
            vec![
                "--json".to_string(),
                "perplexity".into(),
                s(p).into(),
                "--file".into(),
                text.into(),
                "--ctx".into(),
                "128".into(),
                "--chunks".into(),
                "2".into(),
            ]
        };
        let a = json_of(&args(m).iter().map(String::as_str).collect::<Vec<_>>());
        let b = json_of(&args(ms).iter().map(String::as_str).collect::<Vec<_>>());
        assert!(a["ppl"].as_f64().unwrap() > 1.0);
        same(&a, &b, &format!("perplexity {}", m.display()));
    }

    let cmp = |base: &Path, model: &Path| {
        json_of(&[
            "--json",
            "compare",
            "--base",
            s(base),
            "--model",
            s(model),
            "--file",
            text,
            "--ctx",
            "128",
            "--chunks",
            "2",
        ])
    };
    let a = cmp(&f32, &q8);
    assert!(a["kld_mean"].as_f64().unwrap() > 0.0);
    same(&a, &cmp(&f32s, &q8s), "compare");

    let logits = |p: &Path| {
        json_of(&[
            "--json",
            "logits",
            s(p),
            "--prompt",
            "The license grants",
            "--top",
            "5",
        ])
    };
    same(&logits(&q8), &logits(&q8s), "logits");

    let recall = |p: &Path| {
        json_of(&[
            "--json",
            "recall",
            s(p),
            "--lengths",
            "384",
            "--depths",
            "0.5",
            "--samples",
            "1",
            "--max-new-tokens",
            "8",
        ])
    };
    same(&recall(&q8), &recall(&q8s), "recall");

    let imatrix = |p: &Path, out: &Path| {
        let (rc, _, err) = run(&[
            "imatrix",
            s(p),
            "--file",
            text,
            "-o",
            s(out),
            "--ctx",
            "128",
            "--chunks",
            "2",
        ]);
        assert_eq!(rc, 0, "imatrix: {err}");
        std::fs::read(out).unwrap()
    };
    assert_eq!(
        imatrix(&f32, &d.join("a.imatrix")),
        imatrix(&f32s, &d.join("b.imatrix")),
        "imatrix"
    );

    let sweep = |p: &Path| {
        json_of(&[
            "--json",
            "sweep",
            s(p),
            "--file",
            text,
            "--types",
            "Q8_0,Q4_K_M",
            "--ctx",
            "128",
            "--chunks",
            "1",
        ])
    };
    let (mut a, mut b) = (sweep(&f32), sweep(&f32s));
    // The reference's size is its bytes on disk: the set has two more headers.
    let (sa, sb) = (
        a["reference"]["size_bytes"].as_u64().unwrap(),
        b["reference"]["size_bytes"].as_u64().unwrap(),
    );
    assert!(sb > sa && sb - sa < 4096, "{sa} {sb}");
    a["reference"]["size_bytes"] = Json::Null;
    b["reference"]["size_bytes"] = Json::Null;
    assert!(a["rows"].as_array().is_some_and(|r| r.len() == 2), "{a}");
    same(&a, &b, "sweep");

    // quantize and export-hf: the same bytes.
    let qa = d.join("qa.gguf");
    let qb = d.join("qb.gguf");
    for (i, o) in [(&f32, &qa), (&f32s, &qb)] {
        let (rc, _, err) = run(&["quantize", s(i), s(o), "--type", "Q4_K_M"]);
        assert_eq!(rc, 0, "quantize: {err}");
    }
    assert_eq!(
        std::fs::read(&qa).unwrap(),
        std::fs::read(&qb).unwrap(),
        "quantize"
    );
    let (ea, eb) = (d.join("hf-a"), d.join("hf-b"));
    for (i, o) in [(&q8, &ea), (&q8s, &eb)] {
        let (rc, _, err) = run(&["export-hf", s(i), s(o)]);
        assert_eq!(rc, 0, "export-hf: {err}");
    }
    let mut names: Vec<_> = std::fs::read_dir(&ea)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names
        .iter()
        .any(|n| n.to_string_lossy().ends_with(".safetensors")));
    for n in &names {
        assert_eq!(
            std::fs::read(ea.join(n)).unwrap(),
            std::fs::read(eb.join(n)).unwrap(),
            "export-hf {n:?}"
        );
    }
}

/// The error, checked in the library (variant and file) and through the CLI (exit code 2, the
/// file named on stderr).
fn refused(first: &Path, culprit: &Path, want: &str, kind: impl Fn(&ErrorKind) -> bool) {
    let e = GgufFile::open(first).unwrap_err();
    assert_eq!(e.path, culprit, "{e}");
    assert!(kind(&e.kind), "{e}");
    let (rc, _, err) = run(&["perplexity", s(first), "--file", "README.md"]);
    assert_eq!(rc, 2, "{err}");
    let name = culprit.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains(want), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn incomplete_or_mixed_sets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, first) = model(d, FileType::Q8_0, 10_000_000);
    let part = |i: usize| d.join(format!("set.Q8_0-{i:05}-of-00003.gguf"));
    assert_eq!(first, part(1));

    // A later part given first.
    let e = GgufFile::open(part(2)).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::SplitNotFirst { no: 1, count: 3 }),
        "{e}"
    );
    assert!(e.to_string().contains("give the first file"), "{e}");
    // open_part still reads one file on its own.
    assert_eq!(GgufFile::open_part(part(2)).unwrap().metadata().len(), 3);

    // An extra part numbered past the count.
    let extra = d.join("set.Q8_0-00004-of-00003.gguf");
    std::fs::copy(part(3), &extra).unwrap();
    refused(&first, &extra, "extra split part", |k| {
        matches!(k, ErrorKind::SplitPartExtra { count: 3 })
    });
    std::fs::remove_file(&extra).unwrap();

    // A mismatched part: the second file of another split of the same model (two parts).
    let other = tempfile::tempdir().unwrap();
    let src = root().join("fixtures/tiny-natural");
    let o = ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q8_0),
        split_max_size: Some(20_000_000),
        ..ConvertOptions::default()
    };
    let rep = convert(&src, &other.path().join("o.gguf"), &o, &mut |_| {}).unwrap();
    assert_eq!(rep.outputs.len(), 2);
    let saved = d.join("saved.gguf");
    std::fs::rename(part(2), &saved).unwrap();
    std::fs::copy(&rep.outputs[1], part(2)).unwrap();
    refused(&first, &part(2), "do not continue the set", |k| {
        matches!(k, ErrorKind::SplitKeysMismatch { expected_no: 1, .. })
    });

    // A missing part.
    std::fs::remove_file(part(2)).unwrap();
    refused(&first, &part(2), "split part 2 of 3 is missing", |k| {
        matches!(k, ErrorKind::SplitPartMissing { no: 1, count: 3 })
    });
    std::fs::rename(&saved, part(2)).unwrap();
    assert_eq!(GgufFile::open(&first).unwrap().tensors().len(), 146);
}
