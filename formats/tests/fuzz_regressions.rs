//! Inputs found by the fuzz targets in `fuzz/` (see `fuzz/README.md`), kept verbatim as byte
//! literals, each with the outcome the parser must now give.

use std::path::Path;

use longquant_formats::safetensors::ParsedShard;
use longquant_formats::{ErrorKind, Limits};

fn st_kind(bytes: &[u8]) -> Result<ParsedShard, ErrorKind> {
    ParsedShard::parse(bytes, Path::new("fuzz.safetensors"), &Limits::default()).map_err(|e| e.kind)
}

/// A safetensors header from the `safetensors_parse` corpus (10-minute run): the tensor entry
/// `"__metada"` names `"shape"` twice (`[0]`, then `[2]`). We used to read it through a JSON map,
/// which keeps the last copy, so our own checks passed with shape [2]; only the `safetensors`
/// crate's second opinion (which refuses repeated fields) stopped it, as an opaque
/// `SafetensorsRejected`. Read first-copy-wins, the same header declares 0 elements over 8 bytes.
/// It must be refused by our own parser, naming the entry and the field.
#[test]
fn repeated_field_in_tensor_entry() {
    let input: &[u8] = b"\x8e\x00\x00\x00\x00\x00\x00\x00{\"__metada\":{\"dtype\":\"F32\",\"shape\":[0],\"dae\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]}}\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b";
    assert_eq!(input.len(), 8 + 0x8e + 12);
    let k = st_kind(input).unwrap_err();
    assert!(
        matches!(k, ErrorKind::DuplicateField { ref entry, ref field } if entry == "__metada" && field == "shape"),
        "{k:?}"
    );

    // The same file with the first `shape` renamed to an unknown field parses: the refusal is
    // about the repetition, not about the rest of the entry.
    let mut fixed = input.to_vec();
    let at = fixed.windows(7).position(|w| w == b"\"shape\"").unwrap();
    fixed[at + 5] = b'X';
    assert_eq!(fixed.len(), input.len());
    let p = st_kind(&fixed).unwrap();
    let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["__metada", "b"]);
    assert_eq!(p.tensors[0].shape, [2]);
}

/// Same class, other fields: repeated `data_offsets` or `dtype` in a tensor entry, and a repeated
/// key inside `__metadata__` (which the `safetensors` crate reads as a map and so accepts, last
/// copy winning), are all refused with the same variant.
#[test]
fn repeated_fields_elsewhere() {
    let cases: [(&str, &str, &str); 3] = [
        (
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8],"data_offsets":[0,4]}}"#,
            "a",
            "data_offsets",
        ),
        (
            r#"{"a":{"dtype":"F16","dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            "a",
            "dtype",
        ),
        (
            r#"{"__metadata__":{"format":"pt","format":"mlx"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            "__metadata__",
            "format",
        ),
    ];
    for (header, want_entry, want_field) in cases {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0u8; 4]);
        let k = st_kind(&bytes).unwrap_err();
        assert!(
            matches!(k, ErrorKind::DuplicateField { ref entry, ref field } if entry == want_entry && field == want_field),
            "{header}: {k:?}"
        );
    }
}

/// Entries that are not objects are still a JSON-shape error, now raised by the typed decode.
#[test]
fn non_object_entries_still_bad_header() {
    for header in [r#"{"a":5}"#, r#"{"__metadata__":"x"}"#, r#"{"a":[1]}"#] {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        let k = st_kind(&bytes).unwrap_err();
        assert!(matches!(k, ErrorKind::BadHeader { .. }), "{header}: {k:?}");
    }
}
