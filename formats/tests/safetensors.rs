//! Safetensors: one hand-built file per hostile class, sharded index resolution, pickle refusal, and
//! the real tiny-natural checkpoint.

use std::path::{Path, PathBuf};

use longquant_formats::safetensors::{Dtype, ParsedShard, SafetensorsModel};
use longquant_formats::{ErrorKind, Limits};

/// A safetensors file from a raw JSON header (written verbatim, so duplicates survive) and data.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut v = (header.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(data);
    v
}

/// One entry of a header.
fn ent(name: &str, dtype: &str, shape: &[u64], start: u64, end: u64) -> String {
    format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{start},{end}]}}"#)
}

fn st(entries: &[String], data_len: usize) -> Vec<u8> {
    st_raw(&format!("{{{}}}", entries.join(",")), &vec![0xAB; data_len])
}

fn err(bytes: &[u8]) -> ErrorKind {
    match ParsedShard::parse(bytes, Path::new("mem.safetensors"), &Limits::default()) {
        Ok(p) => panic!("expected an error, got {p:?}"),
        Err(e) => {
            assert!(e.to_string().starts_with("mem.safetensors: "));
            e.kind
        }
    }
}

fn ok(bytes: &[u8]) -> ParsedShard {
    ParsedShard::parse(bytes, Path::new("mem.safetensors"), &Limits::default()).unwrap()
}

#[test]
fn minimal_valid_files() {
    let p = ok(&st_raw("{}", &[]));
    assert!(p.tensors.is_empty());
    let p = ok(&st(
        &[
            ent("a", "F32", &[2, 3], 0, 24),
            ent("b", "BF16", &[4], 24, 32),
        ],
        32,
    ));
    assert_eq!(p.tensors.len(), 2);
    assert_eq!(p.tensors[0].shape, [2, 3]);
    assert_eq!(p.tensors[1].dtype, Dtype::BF16);
    // Zero-element tensors and scalars (shape []) are legal.
    ok(&st(
        &[ent("z", "F16", &[0, 5], 0, 0), ent("s", "I64", &[], 0, 8)],
        8,
    ));
    // Metadata of strings.
    let p = ok(&st_raw(r#"{"__metadata__":{"format":"pt"}}"#, &[]));
    assert_eq!(p.metadata.get("format").map(String::as_str), Some("pt"));
    // A dtype outside our main list but whole-byte.
    let p = ok(&st(&[ent("u", "U16", &[3], 0, 6)], 6));
    assert_eq!(p.tensors[0].dtype.size_bytes(), 2);
}

#[test]
fn header_too_small_past_end_or_over_limit() {
    assert!(matches!(
        err(&[1, 2, 3]),
        ErrorKind::HeaderTooSmall { file_len: 3 }
    ));
    assert!(matches!(err(&[]), ErrorKind::HeaderTooSmall { .. }));
    let mut b = 1000u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{}");
    assert!(matches!(
        err(&b),
        ErrorKind::LengthExceedsData {
            declared: 1000,
            available: 2,
            ..
        }
    ));
    let b = u64::MAX.to_le_bytes().to_vec();
    assert!(matches!(err(&b), ErrorKind::LimitExceeded { .. }));
}

#[test]
fn header_not_utf8_or_not_json() {
    assert!(matches!(
        err(&st_raw("{\"\u{1}", &[])),
        ErrorKind::BadHeader { .. }
    ));
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(b"{\xff}\n");
    assert!(matches!(err(&b), ErrorKind::InvalidUtf8 { .. }));
    assert!(matches!(
        err(&st_raw("[1,2]", &[])),
        ErrorKind::BadHeader { .. }
    ));
    assert!(matches!(
        err(&st_raw(r#"{"a":5}"#, &[])),
        ErrorKind::BadHeader { .. }
    ));
    assert!(matches!(
        err(&st_raw(
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}}"#,
            &[]
        )),
        ErrorKind::BadHeader { .. }
    ));
    assert!(matches!(
        err(&st_raw(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}"#,
            &[]
        )),
        ErrorKind::BadHeader { .. }
    ));
}

#[test]
fn metadata_values_must_be_strings() {
    let k = err(&st_raw(r#"{"__metadata__":{"format":"pt","n":3}}"#, &[]));
    assert!(
        matches!(k, ErrorKind::MetadataNotString { ref key } if key == "n"),
        "{k:?}"
    );
}

#[test]
fn unknown_dtype() {
    let k = err(&st(&[ent("a", "F13", &[1], 0, 2)], 2));
    assert!(
        matches!(k, ErrorKind::UnknownDtype { ref dtype, .. } if dtype == "F13"),
        "{k:?}"
    );
    let k = err(&st(&[ent("a", "F4", &[2], 0, 1)], 1));
    assert!(matches!(k, ErrorKind::UnknownDtype { .. }), "{k:?}");
}

#[test]
fn shape_product_overflow() {
    let k = err(&st(&[ent("a", "F32", &[1 << 40, 1 << 40], 0, 0)], 0));
    assert!(matches!(k, ErrorKind::ShapeOverflow { .. }), "{k:?}");
}

#[test]
fn size_disagreeing_with_shape() {
    let k = err(&st(&[ent("a", "F32", &[2], 0, 7)], 7));
    assert!(
        matches!(k, ErrorKind::TensorSizeMismatch { expected: 8, .. }),
        "{k:?}"
    );
    let k = err(&st(&[ent("a", "F32", &[2], 8, 0)], 8));
    assert!(matches!(k, ErrorKind::TensorSizeMismatch { .. }), "{k:?}");
}

#[test]
fn gaps_overlaps_trailing_and_past_end() {
    let k = err(&st(
        &[ent("a", "U8", &[4], 0, 4), ent("b", "U8", &[4], 6, 10)],
        10,
    ));
    assert!(
        matches!(
            k,
            ErrorKind::DataGap {
                gap_start: 4,
                gap_end: 6,
                ..
            }
        ),
        "{k:?}"
    );
    let k = err(&st(&[ent("a", "U8", &[4], 2, 6)], 6));
    assert!(
        matches!(
            k,
            ErrorKind::DataGap {
                gap_start: 0,
                gap_end: 2,
                ..
            }
        ),
        "{k:?}"
    );
    let k = err(&st(
        &[ent("a", "U8", &[4], 0, 4), ent("b", "U8", &[4], 2, 6)],
        6,
    ));
    assert!(
        matches!(k, ErrorKind::TensorOverlap { ref tensor, ref other, .. } if tensor == "b" && other == "a"),
        "{k:?}"
    );
    let k = err(&st(&[ent("a", "U8", &[4], 0, 4)], 5));
    assert!(
        matches!(
            k,
            ErrorKind::TrailingBytes {
                trailing: 1,
                data_len: 5
            }
        ),
        "{k:?}"
    );
    let k = err(&st(&[ent("a", "U8", &[4], 0, 4)], 3));
    assert!(
        matches!(k, ErrorKind::TensorPastEnd { available: 3, .. }),
        "{k:?}"
    );
}

#[test]
fn duplicate_names_within_a_file() {
    // The safetensors crate would keep the last entry; we refuse the file.
    let k = err(&st(
        &[ent("w", "U8", &[4], 0, 4), ent("w", "U8", &[4], 4, 8)],
        8,
    ));
    assert!(
        matches!(k, ErrorKind::DuplicateTensorName { ref name } if name == "w"),
        "{k:?}"
    );
    let k = err(&st_raw(r#"{"__metadata__":{},"__metadata__":{}}"#, &[]));
    assert!(matches!(k, ErrorKind::DuplicateTensorName { .. }), "{k:?}");
}

#[test]
fn every_prefix_is_an_error() {
    let full = st(
        &[
            ent("a", "F32", &[2, 3], 0, 24),
            ent("b", "BF16", &[4], 24, 32),
        ],
        32,
    );
    ok(&full);
    for n in 0..full.len() {
        assert!(
            ParsedShard::parse(&full[..n], Path::new("x"), &Limits::default()).is_err(),
            "prefix {n}"
        );
    }
}

// ---- folders, indexes and shards ----

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn two_shard_folder(index_json: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "model-00001-of-00002.safetensors",
        &st(
            &[ent("a", "F32", &[2], 0, 8), ent("b", "F16", &[2], 8, 12)],
            12,
        ),
    );
    write(
        d.path(),
        "model-00002-of-00002.safetensors",
        &st(&[ent("c", "BF16", &[3, 1], 0, 6)], 6),
    );
    write(
        d.path(),
        "model.safetensors.index.json",
        index_json.as_bytes(),
    );
    d
}

const GOOD_INDEX: &str = r#"{"metadata":{"total_size":26},"weight_map":{
  "a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors",
  "c":"model-00002-of-00002.safetensors"}}"#;

fn index_err(index: &str) -> ErrorKind {
    let d = two_shard_folder(index);
    let e = SafetensorsModel::open(d.path()).unwrap_err();
    assert_eq!(e.path, d.path().join("model.safetensors.index.json"));
    e.kind
}

#[test]
fn sharded_folder_resolves() {
    let d = two_shard_folder(GOOD_INDEX);
    for p in [
        d.path().to_path_buf(),
        d.path().join("model.safetensors.index.json"),
    ] {
        let m = SafetensorsModel::open(&p).unwrap();
        assert_eq!(m.shard_paths().len(), 2);
        let names: Vec<&str> = m.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        let c = m.get("c").unwrap();
        assert_eq!(
            (c.shard, c.shape.clone(), c.n_elements(), c.n_bytes()),
            (1, vec![3, 1], 3, 6)
        );
        assert_eq!(m.data(c), &[0xAB; 6][..]);
        assert!(m.shard_paths()[c.shard].ends_with("model-00002-of-00002.safetensors"));
        assert_eq!(m.total_bytes(), 8 + 4 + 6);
        assert_eq!(m.metadata().len(), 2);
    }
}

#[test]
fn index_naming_a_missing_shard() {
    let k = index_err(
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"nope.safetensors"}}"#,
    );
    assert!(
        matches!(k, ErrorKind::MissingShard { ref shard } if shard == "nope.safetensors"),
        "{k:?}"
    );
}

#[test]
fn shard_paths_escaping_the_folder() {
    for bad in [
        "../model-00002-of-00002.safetensors",
        "/etc/passwd",
        "sub/x.safetensors",
        "..",
        "a\\\\b",
        "",
    ] {
        let idx =
            format!(r#"{{"weight_map":{{"a":"model-00001-of-00002.safetensors","c":"{bad}"}}}}"#);
        let k = index_err(&idx);
        assert!(
            matches!(k, ErrorKind::UnsafeShardPath { .. }),
            "{bad}: {k:?}"
        );
    }
}

#[test]
fn index_and_shards_must_agree() {
    // The index maps "c" to shard 1, which does not contain it (shard 1 also then holds nothing
    // unexpected, but "c" sits in shard 2 which the index never names).
    let k = index_err(
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00001-of-00002.safetensors"}}"#,
    );
    assert!(
        matches!(k, ErrorKind::IndexTensorNotInShard { ref tensor, .. } if tensor == "c"),
        "{k:?}"
    );
    // "b" is in shard 1 but the index does not list it.
    let k = index_err(
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}}"#,
    );
    assert!(
        matches!(k, ErrorKind::ShardTensorNotInIndex { ref tensor, .. } if tensor == "b"),
        "{k:?}"
    );
    // The index names a tensor no shard has.
    let k = index_err(
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00001-of-00002.safetensors","c":"model-00002-of-00002.safetensors","ghost":"model-00002-of-00002.safetensors"}}"#,
    );
    assert!(
        matches!(k, ErrorKind::IndexTensorNotInShard { ref tensor, .. } if tensor == "ghost"),
        "{k:?}"
    );
    // Duplicate key in the weight map.
    let k = index_err(
        r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","a":"model-00002-of-00002.safetensors"}}"#,
    );
    assert!(matches!(k, ErrorKind::DuplicateTensorName { .. }), "{k:?}");
    // Not JSON / no weight_map.
    assert!(matches!(index_err("{"), ErrorKind::BadHeader { .. }));
    assert!(matches!(index_err("{}"), ErrorKind::BadHeader { .. }));
}

#[test]
fn duplicate_tensor_across_shards() {
    let d = two_shard_folder(GOOD_INDEX);
    // Shard 2 now also holds "a".
    write(
        d.path(),
        "model-00002-of-00002.safetensors",
        &st(
            &[
                ent("a", "F32", &[2], 0, 8),
                ent("c", "BF16", &[3, 1], 8, 14),
            ],
            14,
        ),
    );
    let k = SafetensorsModel::open(d.path()).unwrap_err().kind;
    assert!(
        matches!(k, ErrorKind::DuplicateAcrossShards { ref tensor, .. } if tensor == "a"),
        "{k:?}"
    );
}

#[test]
fn pickle_checkpoints_refused() {
    let d = tempfile::tempdir().unwrap();
    // Content that would be dangerous to unpickle; we must never read it.
    write(d.path(), "pytorch_model.bin", b"\x80\x04cos\nsystem\n");
    write(d.path(), "config.json", b"{}");
    let k = SafetensorsModel::open(d.path()).unwrap_err().kind;
    assert!(
        matches!(k, ErrorKind::PickleRefused { ref files } if files == &["pytorch_model.bin".to_string()]),
        "{k:?}"
    );
    for name in [
        "consolidated.00.pth",
        "model.pt",
        "pytorch_model-00001-of-00002.bin",
    ] {
        let p = write(d.path(), name, b"x");
        assert!(matches!(
            SafetensorsModel::open(&p).unwrap_err().kind,
            ErrorKind::PickleRefused { .. }
        ));
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        SafetensorsModel::open(empty.path()).unwrap_err().kind,
        ErrorKind::NoModelFound
    ));
}

#[test]
fn single_file_folder_and_path() {
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "model.safetensors",
        &st(&[ent("x", "F32", &[1], 0, 4)], 4),
    );
    for path in [d.path(), p.as_path()] {
        let m = SafetensorsModel::open(path).unwrap();
        assert_eq!(m.tensors().len(), 1);
        assert_eq!(m.data(m.get("x").unwrap()), &[0xAB; 4][..]);
    }
}

#[test]
fn real_tiny_natural_checkpoint() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-natural");
    let m = SafetensorsModel::open(&dir).unwrap();
    // 16 layers × 9 tensors + embeddings + final norm (embeddings tied: no lm_head).
    assert_eq!(m.tensors().len(), 16 * 9 + 2);
    let emb = m.get("model.embed_tokens.weight").unwrap();
    assert_eq!(
        (emb.dtype.clone(), emb.shape.clone()),
        (Dtype::BF16, vec![49152, 256])
    );
    assert!(emb.dtype.is_float_readable());
    assert_eq!(m.data(emb).len() as u64, 49152 * 256 * 2);
    let q = m.get("model.layers.15.self_attn.q_proj.weight").unwrap();
    assert_eq!(q.shape, [256, 256]);
    assert!(m.get("lm_head.weight").is_none());
    assert_eq!(
        m.metadata()[0].get("format").map(String::as_str),
        Some("pt")
    );
    let file_len = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(m.total_bytes() < file_len && m.total_bytes() > file_len - 100_000);
}
