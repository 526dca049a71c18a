//! Any byte string must parse to a validated safetensors header or a typed error, never panic; an
//! accepted header's tensors must tile the data section exactly.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use longquant_formats::safetensors::ParsedShard;
use longquant_formats::Limits;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ParsedShard::parse(data, Path::new("fuzz.safetensors"), &Limits::default()) {
        let covered: u64 = p.tensors.iter().map(|t| t.n_bytes()).sum();
        assert_eq!(p.data_start + covered, data.len() as u64);
    }
});
