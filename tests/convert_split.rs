//! `convert --split-max-size`: llama.cpp's split layout, read back whole (and equal to the unsplit
//! file), refusals covering every split name, nothing left behind on failure.

use longquant::convert::pipeline::{convert, ConvertError, ConvertOptions, Progress, TypeChoice};
use longquant::convert::FileType;
use longquant::formats::gguf::{GgufFile, Value};
use std::path::PathBuf;

fn opts(max: Option<u64>) -> ConvertOptions {
    ConvertOptions {
        file_type: TypeChoice::Fixed(FileType::Q8_0),
        split_max_size: max,
        ..ConvertOptions::default()
    }
}

#[test]
fn tiny_natural_split_equals_single_file() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-natural");
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("one.gguf");
    convert(&src, &single, &opts(None), &mut |_p: Progress<'_>| {}).unwrap();
    let out = dir.path().join("tiny.Q8_0.gguf");
    let rep = convert(&src, &out, &opts(Some(8_000_000)), &mut |_p: Progress<
        '_,
    >| {})
    .unwrap();
    let n = rep.outputs.len();
    assert!(n >= 3, "{n} files");
    for (i, p) in rep.outputs.iter().enumerate() {
        assert_eq!(
            p,
            &dir.path()
                .join(format!("tiny.Q8_0-{:05}-of-{n:05}.gguf", i + 1))
        );
    }
    assert_eq!(rep.output, rep.outputs[0]);
    let m = GgufFile::open(&rep.output).unwrap();
    let one = GgufFile::open(&single).unwrap();
    assert_eq!(m.tensors().len(), one.tensors().len());
    for t in one.tensors() {
        let info = m.tensor(&t.name).unwrap();
        assert_eq!((info.ggml_type, &info.dims), (t.ggml_type, &t.dims));
        assert_eq!(m.tensor_data(info), one.tensor_data(t), "{}", t.name);
    }
    // The first file has the model's metadata (the facts were checked on it), the others only
    // the split keys.
    let parts: Vec<_> = m.part_headers().collect();
    assert_eq!(parts.len(), n);
    assert_eq!(
        parts[0].1.metadata.get("llama.rope.freq_base"),
        Some(&Value::F32(8_000_000.0))
    );
    assert_eq!(parts[1].1.metadata.len(), 3);
    assert_eq!(
        parts[1].1.metadata.get("split.count"),
        Some(&Value::U16(n as u16))
    );

    // Existing split files are kept without --force (checked for every name, before writing).
    let e = convert(&src, &out, &opts(Some(8_000_000)), &mut |_p: Progress<
        '_,
    >| {})
    .unwrap_err();
    assert!(matches!(e, ConvertError::Refused(_)), "{e:?}");
    let mut o = opts(Some(8_000_000));
    o.force = true;
    convert(&src, &out, &o, &mut |_p: Progress<'_>| {}).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), n + 1, "no temporary files left: {names:?}");
}
