//! Writer → reader round trips: every value type, nested and empty arrays, several tensor types and
//! alignments; the bytes read back are the bytes written, and rewriting what was read reproduces the
//! file exactly.

use longquant_formats::gguf::{
    write_gguf, Array, GgufFile, GgufWriter, Metadata, TensorSpec, Value, ValueType, WriteOptions,
};
use longquant_formats::{ErrorKind, GgmlType};

fn all_values() -> Metadata {
    let mut m = Metadata::new();
    m.insert("general.architecture", "llama");
    m.insert("u8", Value::U8(200));
    m.insert("i8", Value::I8(-100));
    m.insert("u16", Value::U16(60000));
    m.insert("i16", Value::I16(-30000));
    m.insert("u32", Value::U32(4_000_000_000));
    m.insert("i32", Value::I32(-2_000_000_000));
    m.insert("f32", Value::F32(-1.5e-5));
    m.insert("bool.t", Value::Bool(true));
    m.insert("bool.f", Value::Bool(false));
    m.insert("str", "héllo → 世界 🦙");
    m.insert("str.empty", "");
    m.insert("u64", Value::U64(u64::MAX));
    m.insert("i64", Value::I64(i64::MIN));
    m.insert("f64", Value::F64(std::f64::consts::PI));
    m.insert("arr.empty", Array::new(ValueType::F32, vec![]));
    m.insert(
        "arr.str",
        Array::new(ValueType::String, vec!["a".into(), "".into(), "ü".into()]),
    );
    m.insert(
        "arr.i32",
        Array::new(ValueType::I32, (-3..3).map(Value::I32).collect()),
    );
    m.insert(
        "arr.bool",
        Array::new(ValueType::Bool, vec![Value::Bool(true), Value::Bool(false)]),
    );
    let inner = |v: Vec<u8>| {
        Value::Array(Array::new(
            ValueType::U8,
            v.into_iter().map(Value::U8).collect(),
        ))
    };
    m.insert(
        "arr.nested",
        Array::new(
            ValueType::Array,
            vec![inner(vec![1, 2]), inner(vec![]), inner(vec![3])],
        ),
    );
    m
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn specs() -> Vec<(TensorSpec, Vec<u8>)> {
    let mk = |name: &str, dims: Vec<u64>, t: GgmlType, seed: u8| {
        let n: u64 = dims.iter().product();
        let bytes = t.row_size(n).unwrap() as usize;
        (TensorSpec::new(name, dims, t), pattern(bytes, seed))
    };
    vec![
        mk("f32", vec![7, 3], GgmlType::F32, 1),
        mk("f16", vec![5], GgmlType::F16, 2),
        mk("q8_0", vec![64, 2], GgmlType::Q8_0, 3),
        mk("q4_k", vec![256, 3], GgmlType::Q4_K, 4),
        mk("bf16.zero", vec![0, 4], GgmlType::BF16, 5),
        mk("q6_k", vec![512], GgmlType::Q6_K, 6),
        mk("i8.4d", vec![3, 2, 2, 2], GgmlType::I8, 7),
    ]
}

#[test]
fn round_trip_all_value_types_and_tensors_at_several_alignments() {
    let dir = tempfile::tempdir().unwrap();
    for align in [None, Some(1u32), Some(32), Some(64), Some(4096)] {
        let mut meta = all_values();
        if let Some(a) = align {
            meta.insert("general.alignment", Value::U32(a));
        }
        let tensors = specs();
        let refs: Vec<(TensorSpec, &[u8])> = tensors
            .iter()
            .map(|(s, d)| (s.clone(), d.as_slice()))
            .collect();
        let path = dir.path().join(format!("rt-{align:?}.gguf"));
        let size = write_gguf(&path, &meta, &refs, WriteOptions::default()).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());

        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), align.unwrap_or(32));
        assert_eq!(f.metadata(), &meta);
        let keys: Vec<&str> = f.metadata().keys().collect();
        let want: Vec<&str> = meta.keys().collect();
        assert_eq!(keys, want, "file order preserved");
        assert_eq!(f.tensors().len(), tensors.len());
        for (spec, data) in &tensors {
            let t = f.tensor(&spec.name).unwrap();
            assert_eq!((&t.dims, t.ggml_type), (&spec.dims, spec.ggml_type));
            assert_eq!(t.offset % u64::from(f.alignment()), 0);
            assert_eq!(f.tensor_data(t), data.as_slice(), "{}", spec.name);
        }
        assert_eq!(f.data_offset() % u64::from(f.alignment()), 0);

        // Rewrite what we read: identical bytes.
        let again = dir.path().join(format!("rt2-{align:?}.gguf"));
        let specs2: Vec<(TensorSpec, &[u8])> = f
            .tensors()
            .iter()
            .map(|t| {
                (
                    TensorSpec::new(t.name.clone(), t.dims.clone(), t.ggml_type),
                    f.tensor_data(t),
                )
            })
            .collect();
        write_gguf(&again, f.metadata(), &specs2, WriteOptions::default()).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }
}

#[test]
fn streaming_in_chunks_matches_one_shot() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = specs();
    let meta = all_values();
    let one = dir.path().join("one.gguf");
    let refs: Vec<(TensorSpec, &[u8])> = tensors
        .iter()
        .map(|(s, d)| (s.clone(), d.as_slice()))
        .collect();
    write_gguf(&one, &meta, &refs, WriteOptions::default()).unwrap();

    let chunked = dir.path().join("chunked.gguf");
    let mut w = GgufWriter::create(
        &chunked,
        &meta,
        tensors.iter().map(|t| t.0.clone()).collect(),
        WriteOptions::default(),
    )
    .unwrap();
    for (_, data) in &tensors {
        for c in data.chunks(7) {
            w.write_tensor_data(c).unwrap();
        }
    }
    let planned = w.planned_size();
    assert_eq!(w.finish().unwrap(), planned);
    assert_eq!(
        std::fs::read(&one).unwrap(),
        std::fs::read(&chunked).unwrap()
    );
}

#[test]
fn empty_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.gguf");
    write_gguf(&p, &Metadata::new(), &[], WriteOptions::default()).unwrap();
    let f = GgufFile::open(&p).unwrap();
    assert!(f.metadata().is_empty() && f.tensors().is_empty());
}

#[test]
fn writer_rejects_invalid_plans() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    let create = |m: &Metadata, t: Vec<TensorSpec>| {
        GgufWriter::create(&p, m, t, WriteOptions::default())
            .map(|_| ())
            .unwrap_err()
            .kind
    };
    let mut m = Metadata::new();
    m.insert("general.alignment", Value::U32(48));
    assert!(matches!(
        create(&m, vec![]),
        ErrorKind::BadAlignment { alignment: 48 }
    ));
    m.insert("general.alignment", Value::U64(32));
    assert!(matches!(
        create(&m, vec![]),
        ErrorKind::WrongValueType { .. }
    ));
    let mut m = Metadata::new();
    m.insert(
        "mixed",
        Array::new(ValueType::U32, vec![Value::U32(1), Value::I32(2)]),
    );
    assert!(matches!(
        create(&m, vec![]),
        ErrorKind::ArrayTypeMismatch { .. }
    ));
    let m = Metadata::new();
    let k = create(&m, vec![TensorSpec::new("q", vec![100], GgmlType::Q4_K)]);
    assert!(matches!(k, ErrorKind::RowNotBlockMultiple { .. }));
    let k = create(
        &m,
        vec![
            TensorSpec::new("a", vec![1], GgmlType::F32),
            TensorSpec::new("a", vec![1], GgmlType::F32),
        ],
    );
    assert!(matches!(k, ErrorKind::DuplicateTensorName { .. }));
    let k = create(
        &m,
        vec![TensorSpec::new("x".repeat(64), vec![1], GgmlType::F32)],
    );
    assert!(matches!(k, ErrorKind::TensorNameTooLong { .. }));
    let k = create(&m, vec![TensorSpec::new("", vec![1], GgmlType::F32)]);
    assert!(matches!(k, ErrorKind::EmptyTensorName { .. }));
    let k = create(&m, vec![TensorSpec::new("s", vec![], GgmlType::F32)]);
    assert!(matches!(k, ErrorKind::BadDimCount { .. }));
    assert!(!p.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no temp files left"
    );
}

#[test]
fn metadata_insert_replaces_in_place_and_remove_keeps_order() {
    let mut m = Metadata::new();
    m.insert("a", 1u32);
    m.insert("b", 2u32);
    m.insert("c", 3u32);
    assert_eq!(m.insert("a", "x"), Some(Value::U32(1)));
    assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(m.remove("b"), Some(Value::U32(2)));
    assert_eq!(m.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(m.get("c"), Some(&Value::U32(3)));
    assert_eq!(m.get("a").and_then(Value::as_str), Some("x"));
    assert_eq!(Value::I32(-1).as_u64(), None);
    assert_eq!(Value::I64(5).as_u64(), Some(5));
    assert_eq!(Value::U16(5).as_f64(), Some(5.0));
}
