//! One hand-built file per class of corrupt or hostile GGUF input, each asserting the error variant,
//! plus over-rejection guards (minimal and unusual-but-valid files still parse).

mod common;

use common::{parse, parse_err, small_valid, B};
use longquant_formats::gguf::{ParsedHeader, ValueType};
use longquant_formats::{ErrorKind, Limits};
use std::path::Path;

#[test]
fn minimal_files_parse() {
    let h = parse(&B::header(3, 0, 0).0).unwrap();
    assert_eq!(
        (h.tensors.len(), h.metadata.len(), h.data_offset),
        (0, 0, 24)
    );
    assert_eq!(h.alignment, 32);

    let one = B::header(3, 1, 0).tensor("t", &[1], 0, 0).pad(32).zeros(4);
    let h = parse(&one.0).unwrap();
    assert_eq!(h.tensors[0].n_bytes, 4);
    assert_eq!(h.data_offset, 64);

    let h = parse(&small_valid()).unwrap();
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensor_data(&small_valid(), &h.tensors[1]), &[2u8; 32][..]);
}

#[test]
fn version_2_parses() {
    let h = parse(&B::header(2, 0, 1).kv_u32("k", 7).0).unwrap();
    assert_eq!(h.version, 2);
    assert_eq!(h.metadata.get("k").and_then(|v| v.as_u64()), Some(7));
}

#[test]
fn bad_magic() {
    assert!(matches!(
        parse_err(b"GGUX\x03\0\0\0"),
        ErrorKind::BadMagic { .. }
    ));
    assert!(matches!(parse_err(b""), ErrorKind::BadMagic { .. }));
    assert!(matches!(parse_err(b"GG"), ErrorKind::BadMagic { .. }));
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, 0xFFFF_FFFF] {
        let k = parse_err(&B::header(v, 0, 0).0);
        assert!(
            matches!(k, ErrorKind::UnsupportedVersion { version } if version == v),
            "{v}: {k:?}"
        );
    }
}

#[test]
fn big_endian_refused() {
    let be = B::new()
        .raw(b"GGUF")
        .raw(&3u32.to_be_bytes())
        .raw(&0u64.to_be_bytes())
        .raw(&0u64.to_be_bytes());
    assert!(matches!(parse_err(&be.0), ErrorKind::BigEndian { .. }));
}

#[test]
fn every_prefix_of_a_valid_file_is_an_error() {
    let full = small_valid();
    parse(&full).unwrap();
    let data_start = parse(&full).unwrap().data_offset as usize;
    for n in 0..full.len() {
        let r = parse(&full[..n]);
        assert!(r.is_err(), "prefix of {n} bytes parsed");
        if n >= 8 && n < data_start - 8 {
            // Cut inside the header or tensor infos: a truncation or a count that no longer fits.
            let k = r.unwrap_err().kind;
            assert!(
                matches!(
                    k,
                    ErrorKind::Truncated { .. } | ErrorKind::LengthExceedsData { .. }
                ),
                "prefix {n}: {k:?}"
            );
        }
    }
}

#[test]
fn counts_that_cannot_fit() {
    // Above the limit.
    assert!(matches!(
        parse_err(&B::header(3, 0, u64::MAX).0),
        ErrorKind::LimitExceeded { .. }
    ));
    assert!(matches!(
        parse_err(&B::header(3, u64::MAX, 0).0),
        ErrorKind::LimitExceeded { .. }
    ));
    // Within the limit but not within the bytes.
    let k = parse_err(&B::header(3, 0, 1000).kv_u32("a", 1).0);
    assert!(
        matches!(k, ErrorKind::LengthExceedsData { declared: 1000, .. }),
        "{k:?}"
    );
    let k = parse_err(&B::header(3, 1000, 0).zeros(64).0);
    assert!(
        matches!(k, ErrorKind::LengthExceedsData { declared: 1000, .. }),
        "{k:?}"
    );
    // With limits lifted, u64::MAX must still be refused without overflow or allocation.
    let open = Limits {
        max_kv: u64::MAX,
        max_tensors: u64::MAX,
        ..Limits::default()
    };
    for b in [B::header(3, 0, u64::MAX), B::header(3, u64::MAX, 0)] {
        let k = ParsedHeader::parse(&b.0, Path::new("x"), &open)
            .unwrap_err()
            .kind;
        assert!(matches!(k, ErrorKind::LengthExceedsData { .. }), "{k:?}");
    }
}

#[test]
fn huge_string_lengths() {
    let k = parse_err(&B::header(3, 0, 1).u64(u64::MAX).zeros(16).0);
    assert!(
        matches!(k, ErrorKind::LimitExceeded { limit, .. } if limit == 1 << 30),
        "{k:?}"
    );
    let k = parse_err(&B::header(3, 0, 1).u64(1000).raw(b"abcdefghijklmn").0);
    assert!(
        matches!(k, ErrorKind::LengthExceedsData { declared: 1000, .. }),
        "{k:?}"
    );
    // A string value (not key) that runs past the end.
    let k = parse_err(&B::header(3, 0, 1).s("key").u32(8).u64(50).raw(b"short").0);
    assert!(
        matches!(k, ErrorKind::LengthExceedsData { declared: 50, .. }),
        "{k:?}"
    );
}

#[test]
fn huge_array_lengths() {
    let arr = |elem: u32, n: u64| B::header(3, 0, 1).s("arr").u32(9).u32(elem).u64(n);
    let k = parse_err(&arr(0, u64::MAX).u8(1).0);
    assert!(matches!(k, ErrorKind::LimitExceeded { .. }), "{k:?}");
    let k = parse_err(&arr(0, 1 << 29).u8(1).0);
    assert!(
        matches!(k, ErrorKind::LengthExceedsData { declared, available: 1, .. } if declared == 1 << 29),
        "{k:?}"
    );
    // Count × element size overflows u64: must be refused, not wrapped.
    let open = Limits {
        max_array_len: u64::MAX,
        ..Limits::default()
    };
    let b = arr(10, u64::MAX / 4).zeros(16);
    let k = ParsedHeader::parse(&b.0, Path::new("x"), &open)
        .unwrap_err()
        .kind;
    assert!(matches!(k, ErrorKind::LengthExceedsData { .. }), "{k:?}");
    // An array of strings whose count cannot fit at 8 bytes per empty string.
    let k = parse_err(&arr(8, 3).u64(0).u64(0).0);
    assert!(
        matches!(k, ErrorKind::LengthExceedsData { declared: 3, .. }),
        "{k:?}"
    );
}

#[test]
fn unknown_value_types() {
    let k = parse_err(&B::header(3, 0, 1).s("k").u32(13).u32(0).0);
    assert!(
        matches!(k, ErrorKind::UnknownValueType { type_id: 13, .. }),
        "{k:?}"
    );
    let k = parse_err(&B::header(3, 0, 1).s("k").u32(9).u32(99).u64(0).0);
    assert!(
        matches!(k, ErrorKind::UnknownValueType { type_id: 99, .. }),
        "{k:?}"
    );
}

#[test]
fn unknown_and_removed_tensor_types() {
    for id in [4u32, 5, 31, 36, 43, 1000] {
        let b = B::header(3, 1, 0)
            .tensor("t", &[32], id, 0)
            .pad(32)
            .zeros(64);
        let k = parse_err(&b.0);
        assert!(
            matches!(k, ErrorKind::UnknownTensorType { type_id, .. } if type_id == id),
            "{k:?}"
        );
    }
}

#[test]
fn arrays_nested_too_deep() {
    let nest = |depth: usize| {
        let mut b = B::header(3, 0, 1).s("deep").u32(9);
        for _ in 0..depth - 1 {
            b = b.u32(9).u64(1);
        }
        b.u32(4).u64(0)
    };
    assert!(parse(&nest(8).0).is_ok());
    let k = parse_err(&nest(9).0);
    assert!(
        matches!(
            k,
            ErrorKind::ArrayTooDeep {
                depth: 9,
                limit: 8,
                ..
            }
        ),
        "{k:?}"
    );
}

#[test]
fn bool_byte_must_be_0_or_1() {
    let k = parse_err(&B::header(3, 0, 1).s("b").u32(7).u8(2).0);
    assert!(matches!(k, ErrorKind::InvalidBool { byte: 2, .. }), "{k:?}");
    let k = parse_err(
        &B::header(3, 0, 1)
            .s("b")
            .u32(9)
            .u32(7)
            .u64(2)
            .u8(1)
            .u8(255)
            .0,
    );
    assert!(
        matches!(k, ErrorKind::InvalidBool { byte: 255, .. }),
        "{k:?}"
    );
}

#[test]
fn bad_keys() {
    let k = parse_err(&B::header(3, 0, 1).kv_u32("", 1).0);
    assert!(matches!(k, ErrorKind::EmptyKey { offset: 24 }), "{k:?}");
    let k = parse_err(&B::header(3, 0, 2).kv_u32("a", 1).kv_u32("a", 2).0);
    assert!(
        matches!(k, ErrorKind::DuplicateKey { ref key, .. } if key == "a"),
        "{k:?}"
    );
    let k = parse_err(&B::header(3, 0, 1).sb(b"\xff\xfe").u32(4).u32(1).0);
    assert!(
        matches!(k, ErrorKind::InvalidUtf8 { offset: 24, .. }),
        "{k:?}"
    );
    let k = parse_err(&B::header(3, 0, 1).s("k").u32(8).sb(b"\xc3\x28").0);
    assert!(matches!(k, ErrorKind::InvalidUtf8 { .. }), "{k:?}");
}

#[test]
fn bad_tensor_names() {
    let one = |name: &[u8]| {
        B::header(3, 1, 0)
            .sb(name)
            .u32(1)
            .u64(4)
            .u32(0)
            .u64(0)
            .pad(32)
            .zeros(16)
    };
    assert!(matches!(
        parse_err(&one(b"").0),
        ErrorKind::EmptyTensorName { index: 0 }
    ));
    assert!(matches!(
        parse_err(&one(b"\x80abc").0),
        ErrorKind::InvalidUtf8 { .. }
    ));
    let k = parse_err(&one(&[b'x'; 64]).0);
    assert!(
        matches!(
            k,
            ErrorKind::TensorNameTooLong {
                len: 64,
                limit: 63,
                ..
            }
        ),
        "{k:?}"
    );
    // 63 bytes is the longest ggml allows: accepted.
    assert!(parse(&one(&[b'x'; 63]).0).is_ok());
    // A name length field of u64::MAX is refused by the name limit before anything else.
    let k = parse_err(&B::header(3, 1, 0).u64(u64::MAX).zeros(40).0);
    assert!(matches!(k, ErrorKind::TensorNameTooLong { .. }), "{k:?}");
    let dup = B::header(3, 2, 0)
        .tensor("t", &[4], 0, 0)
        .tensor("t", &[4], 0, 32)
        .pad(32)
        .zeros(64);
    assert!(
        matches!(parse_err(&dup.0), ErrorKind::DuplicateTensorName { ref name } if name == "t")
    );
}

#[test]
fn bad_alignment() {
    let k = parse_err(
        &B::header(3, 0, 1)
            .s("general.alignment")
            .u32(6)
            .raw(&32f32.to_le_bytes())
            .0,
    );
    assert!(
        matches!(
            k,
            ErrorKind::WrongValueType {
                found: ValueType::F32,
                ..
            }
        ),
        "{k:?}"
    );
    let k = parse_err(&B::header(3, 0, 1).s("general.alignment").u32(10).u64(32).0);
    assert!(
        matches!(
            k,
            ErrorKind::WrongValueType {
                found: ValueType::U64,
                ..
            }
        ),
        "{k:?}"
    );
    for a in [0u32, 3, 48, u32::MAX] {
        let k = parse_err(&B::header(3, 0, 1).kv_u32("general.alignment", a).0);
        assert!(
            matches!(k, ErrorKind::BadAlignment { alignment } if alignment == u64::from(a)),
            "{k:?}"
        );
    }
    // Alignment 1 is a power of two: tensors may sit anywhere.
    let b = B::header(3, 2, 1)
        .kv_u32("general.alignment", 1)
        .tensor("a", &[1], 24, 0)
        .tensor("b", &[1], 0, 1)
        .raw(&[7, 1, 2, 3, 4]);
    let h = parse(&b.0).unwrap();
    assert_eq!((h.alignment, h.tensors[1].offset), (1, 1));
}

#[test]
fn bad_dim_counts() {
    let k = parse_err(&B::header(3, 1, 0).s("t").u32(0).u32(0).u64(0).pad(32).0);
    assert!(
        matches!(k, ErrorKind::BadDimCount { n_dims: 0, .. }),
        "{k:?}"
    );
    let k = parse_err(
        &B::header(3, 1, 0)
            .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
            .pad(32)
            .zeros(4)
            .0,
    );
    assert!(
        matches!(
            k,
            ErrorKind::BadDimCount {
                n_dims: 5,
                limit: 4,
                ..
            }
        ),
        "{k:?}"
    );
    let k = parse_err(&B::header(3, 1, 0).s("t").u32(u32::MAX).zeros(64).0);
    assert!(matches!(k, ErrorKind::BadDimCount { .. }), "{k:?}");
}

#[test]
fn zero_sized_dims_are_accepted_like_ggml() {
    let b = B::header(3, 2, 0)
        .tensor("empty", &[0, 5], 0, 0)
        .tensor("x", &[1], 0, 0)
        .pad(32)
        .zeros(4);
    let h = parse(&b.0).unwrap();
    assert_eq!((h.tensors[0].n_bytes, h.tensors[0].n_elements()), (0, 0));
}

/// A zero dimension beside an enormous one: no data, but 2^62 empty rows for any code that walks
/// rows. Refused (issue 19, item 4), at every position of the zero and of the huge dimension,
/// while the limit itself (2^24) and real-looking empty tensors still parse.
#[test]
fn zero_dims_beside_enormous_ones_are_refused() {
    let with_dims = |dims: &[u64]| {
        B::header(3, 2, 0)
            .tensor("empty", dims, 0, 0)
            .tensor("x", &[1], 0, 0)
            .pad(32)
            .zeros(4)
    };
    for dims in [
        vec![0, 1 << 62],
        vec![1 << 62, 0],
        vec![0, 1 << 25],
        vec![0, 1 << 20, 1 << 20],
        vec![4096, 0, 4096, 2],
        vec![0, u64::MAX],
        vec![0, i64::MAX as u64, i64::MAX as u64, 2],
    ] {
        let k = parse_err(&with_dims(&dims).0);
        match &k {
            ErrorKind::LimitExceeded {
                what,
                declared,
                limit,
                ..
            } => {
                assert!(what.contains("\"empty\""), "{dims:?}: {what}");
                assert_eq!(*limit, 1 << 24);
                assert!(*declared > *limit, "{dims:?}");
            }
            ErrorKind::ShapeOverflow { .. } => {
                // Dimensions beyond i64 are refused by the overflow check first.
                assert!(dims.iter().any(|&d| d > i64::MAX as u64), "{dims:?}");
            }
            other => panic!("{dims:?}: {other:?}"),
        }
    }
    for dims in [
        vec![0, 1 << 24],
        vec![4096, 0, 4096],
        vec![0],
        vec![0, 0, 0],
    ] {
        let h = parse(&with_dims(&dims).0).unwrap_or_else(|e| panic!("{dims:?}: {e}"));
        assert_eq!(h.tensors[0].n_bytes, 0);
    }
    // A raised limit accepts what the default refuses.
    let open = Limits {
        max_empty_tensor_extent: u64::MAX,
        ..Limits::default()
    };
    let b = with_dims(&[0, 1 << 62]);
    ParsedHeader::parse(&b.0, Path::new("t.gguf"), &open).unwrap();
}

#[test]
fn shape_overflow() {
    let k = parse_err(
        &B::header(3, 1, 0)
            .tensor("t", &[1 << 32, 1 << 32], 0, 0)
            .pad(32)
            .0,
    );
    assert!(matches!(k, ErrorKind::ShapeOverflow { .. }), "{k:?}");
    // Fits u64 but not i64 (ggml's int64_t ne).
    let k = parse_err(&B::header(3, 1, 0).tensor("t", &[1 << 63], 24, 0).pad(32).0);
    assert!(matches!(k, ErrorKind::ShapeOverflow { .. }), "{k:?}");
    // Element count fits i64 but bytes (× 8 for F64) overflow u64.
    let k = parse_err(&B::header(3, 1, 0).tensor("t", &[1 << 62], 28, 0).pad(32).0);
    assert!(matches!(k, ErrorKind::ShapeOverflow { .. }), "{k:?}");
}

#[test]
fn padded_sum_overflow() {
    let n = i64::MAX as u64; // I8: n bytes each, padded to 2^63; two of them overflow u64.
    let b = B::header(3, 2, 0)
        .tensor("a", &[n], 24, 0)
        .tensor("b", &[n], 24, 1 << 63)
        .pad(32);
    let k = parse_err(&b.0);
    assert!(matches!(k, ErrorKind::SizeOverflow { .. }), "{k:?}");
}

#[test]
fn row_not_block_multiple() {
    // Q4_K (id 12) needs rows of 256.
    let k = parse_err(
        &B::header(3, 1, 0)
            .tensor("t", &[100, 2], 12, 0)
            .pad(32)
            .zeros(1000)
            .0,
    );
    assert!(
        matches!(
            k,
            ErrorKind::RowNotBlockMultiple {
                row: 100,
                block_size: 256,
                ..
            }
        ),
        "{k:?}"
    );
}

#[test]
fn bad_offsets() {
    let k = parse_err(
        &B::header(3, 1, 0)
            .tensor("t", &[4], 0, 8)
            .pad(32)
            .zeros(64)
            .0,
    );
    assert!(
        matches!(
            k,
            ErrorKind::MisalignedTensor {
                offset: 8,
                alignment: 32,
                ..
            }
        ),
        "{k:?}"
    );

    let k = parse_err(
        &B::header(3, 2, 0)
            .tensor("a", &[16], 0, 0)
            .tensor("b", &[4], 0, 32)
            .pad(32)
            .zeros(64)
            .0,
    );
    assert!(
        matches!(k, ErrorKind::TensorOverlap { ref tensor, ref other, .. } if tensor == "b" && other == "a"),
        "{k:?}"
    );

    let k = parse_err(
        &B::header(3, 1, 0)
            .tensor("t", &[16], 0, 0)
            .pad(32)
            .zeros(63)
            .0,
    );
    assert!(
        matches!(
            k,
            ErrorKind::TensorPastEnd {
                n_bytes: 64,
                available: 63,
                ..
            }
        ),
        "{k:?}"
    );

    let k = parse_err(
        &B::header(3, 1, 0)
            .tensor("t", &[16], 0, u64::MAX - 31)
            .pad(32)
            .zeros(64)
            .0,
    );
    assert!(matches!(k, ErrorKind::TensorPastEnd { .. }), "{k:?}");

    // Header ends, but the padding to the data section is missing.
    let b = B::header(3, 1, 0).tensor("t", &[0], 0, 0);
    assert!(matches!(parse_err(&b.0), ErrorKind::Truncated { .. }));
}

#[test]
fn tensors_out_of_offset_order_are_fine() {
    let b = B::header(3, 2, 0)
        .tensor("second", &[4], 0, 32)
        .tensor("first", &[8], 0, 0)
        .pad(32)
        .zeros(48);
    let h = parse(&b.0).unwrap();
    assert_eq!(h.tensors[0].name, "second");
}
