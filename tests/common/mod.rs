//! Shared by the integration tests: where the fetched fixtures live and the rule for a missing
//! one. Under `CI=true` (or `1`) a missing fixture fails the test; elsewhere the test prints a note
//! and returns, so a plain clone without `fixtures/fetch.sh` still runs everything else.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `Some(path)` when it exists; otherwise panics under CI and returns `None` with a note elsewhere.
pub fn require(p: PathBuf) -> Option<PathBuf> {
    if p.exists() {
        return Some(p);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "fixture {} is missing: run `bash fixtures/fetch.sh` (required under CI=true)",
            p.display()
        );
    }
    eprintln!(
        "note: skipping, fixture {} is missing (run `bash fixtures/fetch.sh`)",
        p.display()
    );
    None
}

/// A file or folder under `fixtures/cache/` (see `fixtures/fetch.sh`).
pub fn fixture(rel: &str) -> Option<PathBuf> {
    require(root().join("fixtures/cache").join(rel))
}

/// SmolLM2 as our converter makes it from the fixture, in `dir`: `smol-f32.gguf` (the Q4_1
/// fixture dequantized, `quantize --type F32 --allow-requantize`), then `smol-q8_0.gguf` and
/// `smol-q4_k_m.gguf` quantized from that F32 file — the files the llama.cpp oracles in
/// tests/data/llamacpp were computed on (their sha256 is recorded there and checked by
/// [`sha256_file`] callers). `None` when the fixture is missing outside CI.
pub fn smol_converted(dir: &Path) -> Option<[PathBuf; 3]> {
    use longquant::convert::mix::FileType;
    use longquant::convert::quantize::{quantize, QuantizeOptions};
    let src = fixture("SmolLM2-135M-Instruct.Q4_1.gguf")?;
    let f32 = dir.join("smol-f32.gguf");
    let mut o = QuantizeOptions::new(FileType::F32);
    o.allow_requantize = true;
    quantize(&src, &f32, &o, &mut |_| {}).expect("F32 conversion of the fixture");
    let out = [
        f32.clone(),
        dir.join("smol-q8_0.gguf"),
        dir.join("smol-q4_k_m.gguf"),
    ];
    for (ty, path) in [(FileType::Q8_0, &out[1]), (FileType::Q4_K_M, &out[2])] {
        quantize(&f32, path, &QuantizeOptions::new(ty), &mut |_| {}).expect("quantize");
    }
    Some(out)
}

/// Lower-case hex sha256 of a file.
pub fn sha256_file(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    longquant::convert::sha256::sha256_hex(&bytes)
}

/// Which llama.cpp build's oracles this process is compared with (tests/data/llamacpp/CLASS/,
/// each class's build flags in tests/data/llamacpp/README.md), and whether our arithmetic there
/// is llama.cpp's bit for bit.
///
/// The class follows the kernels the process actually runs (`longquant_quants::simd::cpu`, so
/// `LONGQUANT_ISA=avx2` on an AVX-512 host selects the AVX2 class):
/// - AVX-512 F/BW/VL/VNNI + FMA + F16C: `avx512` (llama.cpp `GGML_NATIVE=ON` on such a host).
///   Exact: the forward pass reproduces that build's CPU path op by op — unless a partial
///   override (`LONGQUANT_KQUANT_VARIANT`, `LONGQUANT_FORCE_SCALAR`) sends some products
///   through other kernels.
/// - AVX2 + FMA + F16C without AVX-512: `avx2` (llama.cpp `GGML_NATIVE=OFF`, AVX2/FMA/F16C on,
///   AVX-512 off). Not exact: our AVX2 attention, SwiGLU and K-quant tiles keep their own
///   float steps, so agreement there is bounded by llama.cpp's measured variation against
///   itself ([`ppl_tolerance`]).
/// - anything else: compared with the `avx2` oracles, not exact.
#[derive(Clone, Copy, Debug)]
pub struct OracleClass {
    /// Folder under tests/data/llamacpp.
    pub dir: &'static str,
    /// Whether results must equal the oracle's bit for bit.
    pub exact: bool,
}

/// The [`OracleClass`] of this process.
pub fn oracle_class() -> OracleClass {
    use longquant::quants::simd::cpu::{features, ArithClass};
    let partial = std::env::var_os("LONGQUANT_KQUANT_VARIANT")
        .is_some_and(|v| !v.eq_ignore_ascii_case("avx512"))
        || std::env::var_os("LONGQUANT_FORCE_SCALAR").is_some_and(|v| v == "1");
    match features().class() {
        ArithClass::Avx512Vnni => OracleClass {
            dir: "avx512",
            exact: !partial,
        },
        ArithClass::Avx2 | ArithClass::Other => OracleClass {
            dir: "avx2",
            exact: false,
        },
    }
}

/// Whether results must equal the oracles bit for bit here ([`oracle_class`]).
pub fn oracle_arithmetic_host() -> bool {
    oracle_class().exact
}

/// A class-dependent llama.cpp oracle file: tests/data/llamacpp/CLASS/NAME.
pub fn oracle_path(name: &str) -> PathBuf {
    root()
        .join("tests/data/llamacpp")
        .join(oracle_class().dir)
        .join(name)
}

/// The JSON oracle tests/data/llamacpp/CLASS/NAME.
pub fn oracle_json(name: &str) -> serde_json::Value {
    read_json(&oracle_path(name))
}

/// A committed JSON file, panicking with its path on any error.
pub fn read_json(p: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// llama.cpp's measured variation against itself on the model file of the perplexity oracle
/// `name` (a file name such as `smollm2_ppl_q8_0_ctx512_c24.json`), relative: the largest, over
/// every oracle of that file (same sha256, any context), of
/// - the AVX2-only build against the AVX-512 build (the two classes' oracles), and
/// - within one build, flash attention off and weight repacking off against that build's
///   default (`CLASS/variation.json`, made with the oracles by
///   scripts/llamacpp/make_class_oracles.sh, at ctx 512).
///
/// A file's variation applies to its oracles at every context: one chunk of 8192 tokens and 24
/// of 512 score 4,095 and 6,120 tokens, so their noise is of one size.
pub fn llama_cpp_ppl_variation(name: &str) -> f64 {
    let base = root().join("tests/data/llamacpp");
    let read = read_json;
    let sha = read(&base.join("avx2").join(name))["model_sha256"].clone();
    assert!(sha.is_string(), "{name}: no model_sha256");
    let mut worst: f64 = 0.0;
    let mut seen = 0;
    for class in ["avx512", "avx2"] {
        let dir = base.join(class);
        let oracles: Vec<(String, serde_json::Value)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy();
                n.starts_with("smollm2_ppl") && n.ends_with(".json")
            })
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    read(&p),
                )
            })
            .filter(|(_, d)| d["model_sha256"] == sha)
            .collect();
        let ppl = |d: &serde_json::Value| d["ppl"].as_f64().unwrap();
        for (n, d) in &oracles {
            // Cross-build: the same oracle in the other class.
            if class == "avx2" {
                let other = base.join("avx512").join(n);
                if other.exists() {
                    let a = ppl(&read(&other));
                    worst = worst.max((a - ppl(d)).abs() / a);
                    seen += 1;
                }
            }
        }
        // Within one build. The AVX-512 class's own runs need an AVX-512 host to measure; a
        // class without the file contributes nothing here.
        let var_path = dir.join("variation.json");
        if !var_path.exists() {
            continue;
        }
        let var = read(&var_path);
        for runs in var["runs"].as_object().unwrap().values() {
            for (run_name, run) in runs.as_object().unwrap() {
                if run["model_sha256"] != sha {
                    continue;
                }
                let on = ppl(&read(&dir.join(run_name)));
                worst = worst.max((ppl(run) - on).abs() / on);
                seen += 1;
            }
        }
    }
    assert!(
        seen > 0,
        "{name}: no llama.cpp variation measured on its model file"
    );
    worst
}

/// Relative PPL tolerance against the `llama-perplexity` oracle `name` of this class: 1e-5
/// where the arithmetic is llama.cpp's (the oracle prints 4 decimals, ≤ 3e-6 relative at these
/// perplexities); elsewhere 1.5 × llama.cpp's own measured variation on that file
/// ([`llama_cpp_ppl_variation`]), and never below the 1e-5 that the printed decimals resolve.
/// Measured on the 2-core AVX2 EPYC against the `avx2/` oracles: F32 4.1e-6 (bound 3.6e-5),
/// the Q4_1 fixture 4.4e-4 (bound 1.7e-3).
pub fn ppl_tolerance(name: &str) -> f64 {
    if oracle_arithmetic_host() {
        1e-5
    } else {
        ppl_tolerance_inexact(name)
    }
}

/// Relative PPL tolerance against a `llama-perplexity` oracle that no host computes bit for bit
/// (the issue-14 file types, recorded in `avx2/` only; every host reads that one): 1.5 ×
/// llama.cpp's own measured variation on that file ([`llama_cpp_ppl_variation`]), never below
/// the 1e-5 that the printed decimals resolve.
pub fn ppl_tolerance_inexact(name: &str) -> f64 {
    (1.5 * llama_cpp_ppl_variation(name)).max(1e-5)
}
