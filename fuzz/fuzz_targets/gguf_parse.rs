//! Any byte string must parse to a header or a typed error, never panic, hang or over-allocate; and
//! every tensor of an accepted header must lie inside the buffer.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use longquant_formats::gguf::ParsedHeader;
use longquant_formats::Limits;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ParsedHeader::parse(data, Path::new("fuzz.gguf"), &Limits::default()) {
        for t in &h.tensors {
            assert_eq!(h.tensor_data(data, t).len() as u64, t.n_bytes);
        }
        let _ = h.metadata.iter().count();
    }
});
