//! Writer atomicity: nothing appears under the final name before `finish`; existing files are kept
//! unless overwriting was asked for; abandoned writers leave no temporary file; byte counts are
//! enforced.

use longquant_formats::gguf::{GgufFile, GgufWriter, Metadata, TensorSpec, WriteOptions};
use longquant_formats::{ErrorKind, GgmlType};

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn two_tensors() -> Vec<TensorSpec> {
    vec![
        TensorSpec::new("a", vec![4], GgmlType::F32),
        TensorSpec::new("b", vec![32], GgmlType::Q8_0),
    ]
}

#[test]
fn target_absent_until_finish() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.gguf");
    let mut w =
        GgufWriter::create(&p, &Metadata::new(), two_tensors(), WriteOptions::default()).unwrap();
    assert!(!p.exists());
    let tmp = names(dir.path());
    assert_eq!(tmp.len(), 1);
    assert!(tmp[0].starts_with(".out.gguf.tmp-"), "{tmp:?}");
    w.write_tensor_data(&[1; 16]).unwrap();
    w.write_tensor_data(&[2; 34]).unwrap();
    assert!(!p.exists());
    let size = w.finish().unwrap();
    assert_eq!(names(dir.path()), ["out.gguf"]);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), size);
    let f = GgufFile::open(&p).unwrap();
    assert_eq!(f.tensor_data(f.tensor("b").unwrap()), &[2u8; 34][..]);
}

#[test]
fn existing_target_refused_without_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.gguf");
    std::fs::write(&p, b"precious").unwrap();
    let e = GgufWriter::create(&p, &Metadata::new(), vec![], WriteOptions::default()).unwrap_err();
    assert!(matches!(e.kind, ErrorKind::OutputExists));
    assert_eq!(e.path, p);
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    assert_eq!(names(dir.path()), ["out.gguf"]);

    let w = GgufWriter::create(
        &p,
        &Metadata::new(),
        vec![],
        WriteOptions { overwrite: true },
    )
    .unwrap();
    w.finish().unwrap();
    assert!(GgufFile::open(&p).is_ok());
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.gguf");
    {
        let mut w =
            GgufWriter::create(&p, &Metadata::new(), two_tensors(), WriteOptions::default())
                .unwrap();
        w.write_tensor_data(&[1; 10]).unwrap();
    }
    assert!(names(dir.path()).is_empty());

    // A panic while writing also cleans up (the writer is dropped during unwinding).
    let p2 = p.clone();
    let r = std::panic::catch_unwind(move || {
        let _w = GgufWriter::create(
            &p2,
            &Metadata::new(),
            two_tensors(),
            WriteOptions::default(),
        )
        .unwrap();
        panic!("simulated failure mid-write");
    });
    assert!(r.is_err());
    assert!(names(dir.path()).is_empty());
}

#[test]
fn wrong_byte_counts_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.gguf");
    let mut w =
        GgufWriter::create(&p, &Metadata::new(), two_tensors(), WriteOptions::default()).unwrap();
    // Too many for tensor "a" (16 bytes): refused, nothing written, writer still usable.
    let e = w.write_tensor_data(&[0; 17]).unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::TooManyBytes { ref tensor, declared: 16, remaining: 16, given: 17 } if tensor == "a")
    );
    w.write_tensor_data(&[0; 10]).unwrap();
    let e = w.write_tensor_data(&[0; 7]).unwrap_err();
    assert!(matches!(
        e.kind,
        ErrorKind::TooManyBytes { remaining: 6, .. }
    ));
    w.write_tensor_data(&[0; 6]).unwrap();
    assert_eq!(w.current_tensor().map(|t| t.name.as_str()), Some("b"));
    w.write_tensor_data(&[0; 20]).unwrap();
    // Finishing with "b" short is an error, and the target never appears.
    let e = w.finish().unwrap_err();
    assert!(
        matches!(e.kind, ErrorKind::TensorIncomplete { ref tensor, declared: 34, written: 20 } if tensor == "b")
    );
    assert!(names(dir.path()).is_empty());

    // Bytes after the last tensor.
    let mut w = GgufWriter::create(
        &p,
        &Metadata::new(),
        vec![TensorSpec::new("a", vec![1], GgmlType::F32)],
        WriteOptions::default(),
    )
    .unwrap();
    w.write_tensor_data(&[0; 4]).unwrap();
    assert!(matches!(
        w.write_tensor_data(&[0]).unwrap_err().kind,
        ErrorKind::TooManyBytes { .. }
    ));
    w.finish().unwrap();
}

/// Two writers of one name at once, streaming in interleaved chunks: each fills its own
/// temporary, so the file left is exactly one of the two; without overwrite the second commit is
/// refused instead of replacing the first.
#[test]
fn concurrent_writers_of_one_name_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("out.gguf");
    let spec = || vec![TensorSpec::new("t", vec![1 << 20], GgmlType::F32)];
    for overwrite in [true, false] {
        let _ = std::fs::remove_file(&p);
        let opts = WriteOptions { overwrite };
        let mut a = GgufWriter::create(&p, &Metadata::new(), spec(), opts).unwrap();
        let mut b = GgufWriter::create(&p, &Metadata::new(), spec(), opts).unwrap();
        for _ in 0..64 {
            a.write_tensor_data(&[0xAA; 1 << 16]).unwrap();
            b.write_tensor_data(&[0xBB; 1 << 16]).unwrap();
        }
        a.finish().unwrap();
        let rb = b.finish();
        let f = GgufFile::open(&p).unwrap();
        let data = f.tensor_data(f.tensor("t").unwrap());
        if overwrite {
            rb.unwrap();
            assert!(data.iter().all(|&x| x == 0xBB), "mixed or wrong file");
        } else {
            assert!(matches!(rb.unwrap_err().kind, ErrorKind::OutputExists));
            assert!(data.iter().all(|&x| x == 0xAA), "mixed or wrong file");
        }
        assert_eq!(names(dir.path()), ["out.gguf"]);
    }
}
