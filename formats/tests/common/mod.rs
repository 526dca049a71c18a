//! Test-side helpers: a little-endian byte builder for hand-made (often corrupt) GGUF files.
#![allow(dead_code)]

use std::path::Path;

use longquant_formats::gguf::ParsedHeader;
use longquant_formats::{Error, ErrorKind, Limits};

/// Appends little-endian fields to a buffer.
#[derive(Default, Clone)]
pub struct B(pub Vec<u8>);

impl B {
    pub fn new() -> B {
        B(Vec::new())
    }
    pub fn raw(mut self, b: &[u8]) -> B {
        self.0.extend_from_slice(b);
        self
    }
    pub fn u8(self, v: u8) -> B {
        self.raw(&[v])
    }
    pub fn u32(self, v: u32) -> B {
        self.raw(&v.to_le_bytes())
    }
    pub fn u64(self, v: u64) -> B {
        self.raw(&v.to_le_bytes())
    }
    /// A GGUF string: u64 length + bytes.
    pub fn s(self, v: &str) -> B {
        self.sb(v.as_bytes())
    }
    pub fn sb(self, v: &[u8]) -> B {
        self.u64(v.len() as u64).raw(v)
    }
    /// GGUF header: magic, version, n_tensors, n_kv.
    pub fn header(version: u32, n_tensors: u64, n_kv: u64) -> B {
        B::new().raw(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)
    }
    /// A u32 key/value pair.
    pub fn kv_u32(self, key: &str, v: u32) -> B {
        self.s(key).u32(4).u32(v)
    }
    /// A tensor info.
    pub fn tensor(self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> B {
        let mut b = self.s(name).u32(dims.len() as u32);
        for d in dims {
            b = b.u64(*d);
        }
        b.u32(ggml_type).u64(offset)
    }
    /// Zero padding to a multiple of `align`.
    pub fn pad(mut self, align: usize) -> B {
        while !self.0.len().is_multiple_of(align) {
            self.0.push(0);
        }
        self
    }
    pub fn zeros(mut self, n: usize) -> B {
        self.0.resize(self.0.len() + n, 0);
        self
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

pub fn parse(bytes: &[u8]) -> Result<ParsedHeader, Error> {
    ParsedHeader::parse(bytes, Path::new("mem.gguf"), &Limits::default())
}

pub fn parse_err(bytes: &[u8]) -> ErrorKind {
    match parse(bytes) {
        Ok(h) => panic!("expected an error, parsed {h:?}"),
        Err(e) => {
            assert_eq!(e.path, Path::new("mem.gguf"));
            // Display must work and name the file.
            assert!(e.to_string().starts_with("mem.gguf: "), "{e}");
            e.kind
        }
    }
}

/// A small valid v3 file: 2 kv, 2 F32 tensors of 4 and 8 elements at offsets 0 and 32.
pub fn small_valid() -> Vec<u8> {
    let b = B::header(3, 2, 2)
        .s("general.architecture")
        .u32(8)
        .s("llama")
        .kv_u32("general.alignment", 32)
        .tensor("a", &[4], 0, 0)
        .tensor("b", &[2, 4], 0, 32)
        .pad(32);
    b.raw(&[1u8; 16]).zeros(16).raw(&[2u8; 32]).0
}

/// Whether the variable CI is "true" (the submission's CI run): missing fixtures are then failures.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

/// The SmolLM2 fixture: `$LONGQUANT_SMOLLM2_GGUF`, else `fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf`
/// under the workspace root. `None` (after printing a note) when it is missing outside CI; a missing
/// fixture in CI is a test failure.
pub fn smollm2_path() -> Option<std::path::PathBuf> {
    let p = match std::env::var_os("LONGQUANT_SMOLLM2_GGUF") {
        Some(p) => std::path::PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/cache/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if p.is_file() {
        return Some(p);
    }
    if in_ci() {
        panic!(
            "SmolLM2 fixture missing at {} (CI=true): run the fixture fetch script",
            p.display()
        );
    }
    eprintln!(
        "note: SmolLM2 fixture not found at {}; skipping (set LONGQUANT_SMOLLM2_GGUF)",
        p.display()
    );
    None
}
