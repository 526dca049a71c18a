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

/// Whether this host takes the float steps the llama.cpp oracles in tests/data/llamacpp were
/// recorded with: x86-64 with AVX-512 F/BW/VL/VNNI, FMA and F16C (the machine the oracles come
/// from; llama.cpp's native build there and our kernels then compute bit for bit alike). Other
/// hosts run other kernels on both sides (e.g. AVX2-only K-quant tiles keep the row dot's
/// eight-lane sums) and agree only to within the noise of activation rounding.
pub fn oracle_arithmetic_host() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Relative PPL tolerance against a `llama-perplexity` oracle: 1e-5 where the arithmetic is
/// llama.cpp's (the oracle prints 4 decimals, ≤ 3e-6 relative at these perplexities), `other`
/// elsewhere.
pub fn ppl_tolerance(other: f64) -> f64 {
    if oracle_arithmetic_host() {
        1e-5
    } else {
        other
    }
}
