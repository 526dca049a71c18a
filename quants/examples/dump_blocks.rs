//! Write our blocks and our dequantization of them, per type, for an outside decoder to check.
//!
//! ```sh
//! cargo run -p longquant-quants --example dump_blocks -- /tmp/blocks
//! python3 scripts/golden/dequant_check.py /tmp/blocks
//! ```
//!
//! For every format in [`LAYOUT_FORMATS`] this quantizes the same pseudo-random rows with
//! `tensor::quantize_row` and writes `<TYPE>.bin` (raw blocks, exactly as they would sit in a
//! GGUF tensor) and `<TYPE>.f32` (our `tensor::dequantize_row` of those blocks, little-endian
//! f32). `scripts/golden/dequant_check.py` decodes the `.bin` files with gguf-py and compares.
//! `quants/tests/gguf_py_layout.rs` includes this file as a module and does the same under
//! `cargo test`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use longquant_quants::tensor::{dequantize_row, quantize_row};
use longquant_quants::BlockFormat;

/// Formats whose byte layout is checked against gguf-py (F32 is its own layout; Q8_K is
/// decoded by the script's own Q8_K reader since gguf-py has none).
pub const LAYOUT_FORMATS: [BlockFormat; 15] = [
    BlockFormat::F16,
    BlockFormat::BF16,
    BlockFormat::Q4_0,
    BlockFormat::Q4_1,
    BlockFormat::Q5_0,
    BlockFormat::Q5_1,
    BlockFormat::Q8_0,
    BlockFormat::Q4_K,
    BlockFormat::Q5_K,
    BlockFormat::Q6_K,
    BlockFormat::Q8_K,
    BlockFormat::Q2_K,
    BlockFormat::Q3_K,
    BlockFormat::IQ4_NL,
    BlockFormat::IQ4_XS,
];

/// Weights per row (two K-quant super-blocks).
pub const ROW_LEN: usize = 512;
/// Rows per format.
pub const ROWS: usize = 24;

/// SplitMix64: a small, well-mixed deterministic generator, so this needs no `rand` crate.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller; one of the pair is enough here).
    fn gauss(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Rows that touch every field of every layout: a per-row scale spread over seven decades (so
/// f16 scales, mins and the 6-bit K-quant sub-scales take many values), one-signed rows (mins),
/// zero and constant 32-blocks, and an outlier per row (extreme codes).
pub fn test_rows(seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let mut x = Vec::with_capacity(ROWS * ROW_LEN);
    for r in 0..ROWS {
        // 1e-4..1e3: every value (outlier included) stays far inside f16 range.
        let scale = 10f64.powf(-4.0 + 7.0 * rng.unit());
        let offset = match r % 4 {
            0 => 0.0,
            1 => 2.5 * scale,  // all positive
            2 => -2.5 * scale, // all negative
            _ => 0.1 * scale,
        };
        for _ in 0..ROW_LEN {
            x.push((offset + scale * rng.gauss()) as f32);
        }
        let row = &mut x[r * ROW_LEN..];
        // One zero and one constant 32-block in every row, at varying positions.
        let z = (r * 3) % (ROW_LEN / 32);
        let c = (r * 5 + 1) % (ROW_LEN / 32);
        row[z * 32..z * 32 + 32].fill(0.0);
        row[c * 32..c * 32 + 32].fill((0.75 * scale) as f32);
        let o = (rng.next_u64() % ROW_LEN as u64) as usize;
        row[o] = (-12.0 * scale) as f32;
    }
    x
}

/// Quantize [`test_rows`] into `fmt` and dequantize back, row by row, with the public byte API.
/// Returns (raw blocks, our dequantization).
pub fn roundtrip(fmt: BlockFormat, x: &[f32]) -> Result<(Vec<u8>, Vec<f32>), String> {
    let row_bytes = fmt
        .row_size(ROW_LEN)
        .ok_or_else(|| format!("{ROW_LEN} is not a whole number of {} blocks", fmt.name()))?;
    let n_rows = x.len() / ROW_LEN;
    let mut blocks = vec![0u8; n_rows * row_bytes];
    let mut deq = vec![0f32; x.len()];
    for r in 0..n_rows {
        let src = &x[r * ROW_LEN..(r + 1) * ROW_LEN];
        let dst = &mut blocks[r * row_bytes..(r + 1) * row_bytes];
        quantize_row(fmt, src, None, dst)
            .map_err(|e| format!("{}: quantize_row: {e}", fmt.name()))?;
        dequantize_row(fmt, dst, &mut deq[r * ROW_LEN..(r + 1) * ROW_LEN])
            .map_err(|e| format!("{}: dequantize_row: {e}", fmt.name()))?;
    }
    Ok((blocks, deq))
}

/// Write `<TYPE>.bin` and `<TYPE>.f32` for every format in [`LAYOUT_FORMATS`] into `dir`.
/// Returns the type names written.
pub fn dump_all(dir: &Path, seed: u64) -> io::Result<Vec<&'static str>> {
    fs::create_dir_all(dir)?;
    let x = test_rows(seed);
    let mut names = Vec::new();
    for fmt in LAYOUT_FORMATS {
        let (blocks, deq) = roundtrip(fmt, &x).map_err(io::Error::other)?;
        let f32_bytes: Vec<u8> = deq.iter().flat_map(|v| v.to_le_bytes()).collect();
        fs::write(dir.join(format!("{}.bin", fmt.name())), &blocks)?;
        fs::write(dir.join(format!("{}.f32", fmt.name())), &f32_bytes)?;
        names.push(fmt.name());
    }
    Ok(names)
}

#[allow(dead_code)] // unused when this file is included by tests/gguf_py_layout.rs
fn main() -> io::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("longquant-blocks"));
    let names = dump_all(&dir, 0x1A70_C0DE)?;
    println!(
        "wrote {} types to {}: {}",
        names.len(),
        dir.display(),
        names.join(" ")
    );
    println!(
        "check with: python3 scripts/golden/dequant_check.py {}",
        dir.display()
    );
    Ok(())
}
