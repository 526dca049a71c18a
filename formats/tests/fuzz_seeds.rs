//! A cheap, deterministic stand-in for the fuzzers: the committed fuzz seeds parse, and every
//! single-byte mutation and every prefix of them yields Ok or a typed error without panicking, with
//! accepted results still internally consistent (the fuzz targets' own invariants).

use std::path::Path;

use longquant_formats::gguf::ParsedHeader;
use longquant_formats::safetensors::ParsedShard;
use longquant_formats::Limits;

fn seed(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/seeds")
            .join(rel),
    )
    .unwrap()
}

fn variants(base: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let prefixes = (0..base.len()).map(|n| base[..n].to_vec());
    let mutations = (0..base.len()).flat_map(move |i| {
        [0u8, 0xFF, 0x80]
            .into_iter()
            .chain([base[i].wrapping_add(1)])
            .map(move |b| {
                let mut v = base.to_vec();
                v[i] = b;
                v
            })
    });
    prefixes.chain(mutations)
}

fn check_gguf(bytes: &[u8]) -> bool {
    match ParsedHeader::parse(bytes, Path::new("seed.gguf"), &Limits::default()) {
        Ok(h) => {
            for t in &h.tensors {
                assert_eq!(h.tensor_data(bytes, t).len() as u64, t.n_bytes);
            }
            true
        }
        Err(_) => false,
    }
}

fn check_st(bytes: &[u8]) -> bool {
    match ParsedShard::parse(bytes, Path::new("seed.safetensors"), &Limits::default()) {
        Ok(p) => {
            let covered: u64 = p.tensors.iter().map(|t| t.n_bytes()).sum();
            assert_eq!(p.data_start + covered, bytes.len() as u64);
            true
        }
        Err(_) => false,
    }
}

#[test]
fn gguf_seeds_and_mutations() {
    for name in ["gguf_parse/minimal.gguf", "gguf_parse/sample.gguf"] {
        let base = seed(name);
        assert!(check_gguf(&base), "{name} must parse");
        let accepted = variants(&base).filter(|v| check_gguf(v)).count();
        // Many mutations land in tensor data or values and stay valid; many must not.
        assert!(accepted < base.len() * 5, "{name}");
    }
}

#[test]
fn safetensors_seed_and_mutations() {
    let base = seed("safetensors_parse/tiny.safetensors");
    assert!(check_st(&base));
    for v in variants(&base) {
        check_st(&v);
    }
}
